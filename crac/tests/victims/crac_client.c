/* A CRaC JVM stand-in written from the engine protocols (crlib v2 and the executable engine
 * of JDK 17): checkpoints itself from one thread while three others run and 8 MiB of data are
 * live, and restores itself in a fresh process, handing over restore data through
 * /dev/shm/crac_<pid> as the JVM does.
 *
 *   crac_client lib  LIBRARY DIR checkpoint [keep] [hold=FILE] [again=DIR2] [nochld]
 *   crac_client lib  LIBRARY DIR restore [pidns] [pages=MODE] [arch=REQUIRED_ARCH]
 *   crac_client exec ENGINE  DIR checkpoint [keep] [hold=FILE]
 *   crac_client exec ENGINE  DIR restore
 *
 * Lines it prints (the test reads them): "checkpointing pid=P", then after the engine call
 * "returned rc=R size=N data=D", "data ok", "threads ok N", "restored shm=TEXT" (restored
 * only), "done". With hold=FILE a restored client waits for FILE to exist before "done"; with
 * again=DIR2 a restored client checkpoints itself again into DIR2 (and ends there). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* crlib.h, version 2, as the protocol describes it. */
typedef struct crlib_conf crlib_conf_t;
typedef struct crlib_extension { const char *name; size_t size; } crlib_extension_t;
typedef struct crlib_api {
    crlib_conf_t *(*create_conf)(void);
    void (*destroy_conf)(crlib_conf_t *);
    int (*checkpoint)(crlib_conf_t *);
    int (*restore)(crlib_conf_t *);
    bool (*can_configure)(crlib_conf_t *, const char *key);
    bool (*configure)(crlib_conf_t *, const char *key, const char *value);
    const crlib_extension_t *(*get_extension)(const char *name, size_t size);
} crlib_api_t;
typedef struct {
    crlib_extension_t header;
    bool (*set_restore_data)(crlib_conf_t *, const void *data, size_t size);
    size_t (*get_restore_data)(crlib_conf_t *, void *buf, size_t size);
} crlib_restore_data_t;
typedef struct {
    crlib_extension_t header;
    bool (*set_label)(crlib_conf_t *, const char *name, const char *value);
    bool (*set_bitmap)(crlib_conf_t *, const char *name, const unsigned char *value, size_t len);
    bool (*require_label)(crlib_conf_t *, const char *name, const char *value);
    bool (*require_bitmap)(crlib_conf_t *, const char *name, const unsigned char *value, size_t len, int cmp);
    bool (*is_failed)(crlib_conf_t *, const char *name);
    size_t (*get_failed_bitmap)(crlib_conf_t *, const char *name, unsigned char *buf, size_t len);
} crlib_image_constraints_t;
typedef struct {
    crlib_extension_t header;
    bool (*set_score)(crlib_conf_t *, const char *metric, double value);
} crlib_image_score_t;
typedef struct {
    const char *key;
    unsigned int flags;
    const char *value_type, *default_value, *description;
} crlib_conf_option_t;
typedef struct {
    crlib_extension_t header;
    const char *(*identity)(crlib_conf_t *);
    const char *(*description)(crlib_conf_t *);
    const char *(*configuration_doc)(crlib_conf_t *);
    const char *const *(*configurable_keys)(crlib_conf_t *);
    const crlib_extension_t *const *(*supported_extensions)(crlib_conf_t *);
    const crlib_conf_option_t *(*configuration_options)(crlib_conf_t *);
} crlib_description_t;

#define DIE(...) do { printf("FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); exit(3); } while (0)
#define CHECK(c) do { if (!(c)) DIE("%s (line %d)", #c, __LINE__); } while (0)

#define NTHREADS 3
#define DATA_BYTES (8u << 20)
static volatile uint64_t counters[NTHREADS];
static uint8_t *data;
static uint64_t data_sum;

static uint64_t checksum(void) {
    uint64_t s = 1469598103934665603ull;
    for (size_t i = 0; i < DATA_BYTES; i += 8) s = (s ^ *(uint64_t *)(data + i)) * 1099511628211ull;
    return s;
}

static void *worker(void *arg) {
    long i = (long)arg;
    for (;;) { counters[i]++; if (counters[i] % 4096 == 0) sched_yield(); }
    return NULL;
}

static int count_tasks(void) {
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n;
}

static void check_threads_run(void) {
    uint64_t before[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) before[i] = counters[i];
    for (int tries = 0; tries < 100000; tries++) {
        int moved = 0;
        for (int i = 0; i < NTHREADS; i++) moved += counters[i] != before[i];
        if (moved == NTHREADS) { printf("threads ok %d\n", count_tasks() - 1); return; }
        usleep(100);
    }
    DIE("the worker threads do not run");
}

static const void *lib_sym(void *h, const char *name) { void *s = dlsym(h, name); if (!s) DIE("dlsym %s", name); return s; }

static int restore_signal(void) { return SIGRTMIN + 2; }

/* lib mode: the engine, for checkpointing again once restored (again=DIR). */
static const crlib_api_t *g_api;
static crlib_conf_t *g_conf;
static const crlib_restore_data_t *g_rd;
static const char *again;

/* After the engine call: what the JVM does with the restore data. */
static void report(int rc, size_t size, int value) {
    printf("returned rc=%d size=%zu data=%d\n", rc, size, value);
    fflush(stdout);
    CHECK(checksum() == data_sum);
    printf("data ok\n");
    check_threads_run();
    if (rc != 0) exit(4); /* a failed checkpoint: the process runs on as before */
    if (value > 0) {
        char name[64], buf[256] = {0};
        snprintf(name, sizeof name, "/crac_%d", value);
        int fd = shm_open(name, O_RDONLY, 0);
        if (fd < 0) DIE("shm_open %s", name);
        CHECK(read(fd, buf, sizeof buf - 1) > 0);
        close(fd);
        shm_unlink(name);
        printf("restored shm=%s\n", buf);
        fflush(stdout);
    }
}

static void after(int rc, size_t size, int value, const char *hold) {
    report(rc, size, value);
    if (value > 0 && again && g_api) {
        /* The restored JVM checkpoints again, into another directory; it ends there. */
        const char *dir = again;
        again = NULL;
        CHECK(g_api->configure(g_conf, "image_location", dir));
        CHECK(g_api->configure(g_conf, "keep_running", "false"));
        printf("checkpointing again pid=%d\n", getpid());
        fflush(stdout);
        int rc2 = g_api->checkpoint(g_conf);
        value = 0;
        size_t n2 = rc2 == 0 ? g_rd->get_restore_data(g_conf, &value, sizeof value) : 0;
        report(rc2, n2, value);
    }
    if (value > 0 && hold) while (access(hold, F_OK) != 0) usleep(1000);
    printf("done\n");
    fflush(stdout);
    exit(0);
}

static void make_shm(void) {
    char name[64], text[64];
    snprintf(name, sizeof name, "/crac_%d", getpid());
    snprintf(text, sizeof text, "from restoring pid %d", getpid());
    int fd = shm_open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) DIE("shm_open %s", name);
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
}

static void start_threads(void) {
    data = malloc(DATA_BYTES);
    CHECK(data);
    srand(getpid());
    for (size_t i = 0; i < DATA_BYTES; i += 4) *(uint32_t *)(data + i) = (uint32_t)rand();
    data_sum = checksum();
    for (long i = 0; i < NTHREADS; i++) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, worker, (void *)i) == 0);
    }
}

static int lib_mode(const char *lib, const char *dir, bool checkpoint, bool keep, bool pidns,
                    const char *pages, const char *hold, const char *arch) {
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) DIE("dlopen %s: %s", lib, dlerror());
    const crlib_api_t *(*entry)(int, size_t) = (const crlib_api_t *(*)(int, size_t))lib_sym(h, "crlib_api");
    CHECK(entry(1, sizeof(crlib_api_t)) == NULL);
    const crlib_api_t *api = entry(2, sizeof(crlib_api_t));
    CHECK(api && api->create_conf && api->destroy_conf && api->checkpoint && api->restore &&
          api->can_configure && api->configure && api->get_extension);
    const crlib_restore_data_t *rd = (const void *)api->get_extension("restore data", sizeof *rd);
    const crlib_image_constraints_t *ic = (const void *)api->get_extension("image constraints", sizeof *ic);
    const crlib_image_score_t *sc = (const void *)api->get_extension("image score", sizeof *sc);
    const crlib_description_t *de = (const void *)api->get_extension("description", sizeof *de);
    CHECK(rd && ic && sc && de);
    CHECK(strcmp(rd->header.name, "restore data") == 0 && rd->header.size >= sizeof *rd);
    CHECK(api->get_extension("no such extension", 16) == NULL);
    CHECK(de->identity(NULL) && de->configuration_doc(NULL));
    int nkeys = 0;
    for (const char *const *k = de->configurable_keys(NULL); *k; k++) nkeys++;
    CHECK(nkeys >= 3);
    int nopts = 0, nexts = 0;
    for (const crlib_conf_option_t *o = de->configuration_options(NULL); o->key; o++) nopts++;
    for (const crlib_extension_t *const *e = de->supported_extensions(NULL); *e; e++) nexts++;
    CHECK(nopts == nkeys && nexts == 4);
    crlib_conf_t *conf = api->create_conf();
    CHECK(conf);
    g_api = api;
    g_conf = conf;
    g_rd = rd;
    CHECK(!api->can_configure(conf, "unknown"));
    CHECK(!api->configure(conf, "unknown", "1"));
    CHECK(api->can_configure(conf, "image_location") && api->can_configure(conf, "keep_running") &&
          api->can_configure(conf, "direct_map"));
    CHECK(api->configure(conf, "image_location", dir));
    const unsigned char features[2] = {0x05, 0x01};
    if (checkpoint) {
        if (keep) CHECK(api->configure(conf, "keep_running", "true"));
        CHECK(ic->set_label(conf, "cpu.arch", "test-arch"));
        CHECK(!ic->set_label(conf, "cpu.arch", "again"));
        CHECK(ic->set_bitmap(conf, "cpu.features", features, sizeof features));
        CHECK(sc->set_score(conf, "vm.uptime", 1.5));
        start_threads();
        printf("checkpointing pid=%d\n", getpid());
        fflush(stdout);
        int rc = api->checkpoint(conf);
        int value = 0;
        size_t size = rc == 0 ? rd->get_restore_data(conf, &value, sizeof value) : 0;
        after(rc, size, value, hold);
    }
    if (pidns) CHECK(api->configure(conf, "crest.pidns", "true"));
    if (pages) CHECK(api->configure(conf, "crest.pages", pages));
    else CHECK(api->configure(conf, "direct_map", "true"));
    CHECK(ic->require_label(conf, "cpu.arch", arch ? arch : "test-arch"));
    const unsigned char host[3] = {0x07, 0x01, 0x00};
    CHECK(ic->require_bitmap(conf, "cpu.features", host, sizeof host, 1 /* SUBSET */));
    /* With another arch required, the features are required exactly too (and differ). */
    if (arch) CHECK(ic->require_bitmap(conf, "cpu.features", host, sizeof host, 0 /* EQUALS */));
    make_shm();
    int me = getpid();
    CHECK(rd->set_restore_data(conf, &me, sizeof me));
    int rc = api->restore(conf);
    unsigned char image[4] = {0};
    size_t n = ic->get_failed_bitmap(conf, "cpu.features", image, sizeof image);
    printf("restore returned %d failed=%d,%d bitmap=%zu:%02x%02x\n", rc, ic->is_failed(conf, "cpu.arch"),
           ic->is_failed(conf, "cpu.features"), n, image[0], image[1]);
    fflush(stdout);
    return 5;
}

static int exec_mode(const char *engine, const char *dir, bool checkpoint, bool keep, const char *hold) {
    if (!checkpoint) {
        make_shm();
        char id[32];
        snprintf(id, sizeof id, "%d", getpid());
        setenv("CRAC_NEW_ARGS_ID", id, 1);
        char *argv[] = {(char *)engine, "restore", (char *)dir, NULL};
        execv(engine, argv);
        DIE("execv %s", engine);
    }
    /* Like the JVM: the restore signal is blocked in every thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, restore_signal());
    CHECK(pthread_sigmask(SIG_BLOCK, &set, NULL) == 0);
    start_threads();
    printf("checkpointing pid=%d\n", getpid());
    fflush(stdout);
    if (keep) setenv("CRAC_CRIU_LEAVE_RUNNING", "", 1);
    char *argv[] = {(char *)engine, "checkpoint", (char *)dir, NULL};
    pid_t pid;
    CHECK(posix_spawn(&pid, engine, NULL, NULL, argv, environ) == 0);
    int status;
    while (waitpid(pid, &status, 0) < 0) CHECK(errno == EINTR);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) after(-1, 0, 0, NULL);
    siginfo_t info;
    int sig;
    do sig = sigwaitinfo(&set, &info); while (sig < 0 && errno == EINTR);
    CHECK(sig == restore_signal());
    if (info.si_code != SI_QUEUE) after(-1, 0, 0, NULL);
    int value = info.si_value.sival_int;
    after(value < 0 ? -1 : 0, value > 0 ? 4 : 0, value, hold);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 5) { fprintf(stderr, "usage: see the source\n"); return 2; }
    bool keep = false, pidns = false;
    const char *hold = NULL, *pages = NULL, *arch = NULL;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "keep")) keep = true;
        else if (!strcmp(argv[i], "pidns")) pidns = true;
        else if (!strncmp(argv[i], "hold=", 5)) hold = argv[i] + 5;
        else if (!strncmp(argv[i], "pages=", 6)) pages = argv[i] + 6;
        else if (!strncmp(argv[i], "arch=", 5)) arch = argv[i] + 5;
        else if (!strncmp(argv[i], "again=", 6)) again = argv[i] + 6;
        else if (!strcmp(argv[i], "nochld")) signal(SIGCHLD, SIG_IGN); /* children reaped by the kernel */
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    bool checkpoint = !strcmp(argv[4], "checkpoint");
    if (!strcmp(argv[1], "lib")) return lib_mode(argv[2], argv[3], checkpoint, keep, pidns, pages, hold, arch);
    return exec_mode(argv[2], argv[3], checkpoint, keep, hold);
}

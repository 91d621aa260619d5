/*
 * Shared pieces of the crest test victims: the control protocol with the test harness and the
 * checks every victim makes of its own process state.
 *
 * Control protocol (all files live in the victim's control directory DIR):
 *   DIR/verify-request  created by the test; the victim removes it, checks all of its state and
 *                       writes DIR/verify-result: "ok <pid> <counter>\n" or "FAIL <what>\n".
 *                       The result is written to a temporary name and renamed, so a reader never
 *                       sees half a file.
 *   DIR/exit-request    created by the test with a decimal exit code; the victim exits with it.
 *
 * Victims are single-threaded (except threads.c, which exists to be refused) and install no
 * signal handlers: SIGTERM and SIGKILL keep their default action.
 */
#ifndef CREST_VICTIM_H
#define CREST_VICTIM_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Not every victim uses every helper. */
#pragma GCC diagnostic ignored "-Wunused-function"

#define CTL_PATH_MAX 4096

static char ctl_request[CTL_PATH_MAX];
static char ctl_result[CTL_PATH_MAX];
static char ctl_result_tmp[CTL_PATH_MAX];
static char ctl_exit[CTL_PATH_MAX];

/* First failure found by a verification pass; empty while everything matches. */
static char fail_msg[512];

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(111);
}

/* Records the first failure only: later ones are usually consequences of it. */
static void fail(const char *fmt, ...)
{
    if (fail_msg[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fail_msg, sizeof fail_msg, fmt, ap);
    va_end(ap);
}

static void ctl_init(const char *dir)
{
    snprintf(ctl_request, sizeof ctl_request, "%s/verify-request", dir);
    snprintf(ctl_result, sizeof ctl_result, "%s/verify-result", dir);
    snprintf(ctl_result_tmp, sizeof ctl_result_tmp, "%s/verify-result.tmp", dir);
    snprintf(ctl_exit, sizeof ctl_exit, "%s/exit-request", dir);
}

/* Returns 1 (and consumes the request) when the test asked for a verification. */
static int ctl_verify_requested(void)
{
    if (access(ctl_request, F_OK) != 0)
        return 0;
    unlink(ctl_request);
    return 1;
}

/* Returns the requested exit code, or -1 when no exit was requested. */
static int ctl_exit_requested(void)
{
    int fd = open(ctl_exit, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[32] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1; /* the test has created the file but not written it yet */
    unlink(ctl_exit);
    return atoi(buf);
}

static void write_all(int fd, const char *buf, size_t len, const char *what)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("write to %s failed: %s", what, strerror(errno));
        buf += n;
        len -= (size_t)n;
    }
}

/* Writes the verification result atomically (temporary file + rename). */
static void ctl_report(unsigned long long counter)
{
    char line[700];
    if (fail_msg[0])
        snprintf(line, sizeof line, "FAIL %s\n", fail_msg);
    else
        snprintf(line, sizeof line, "ok %d %llu\n", (int)getpid(), counter);
    int fd = open(ctl_result_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create %s: %s", ctl_result_tmp, strerror(errno));
    write_all(fd, line, strlen(line), ctl_result_tmp);
    close(fd);
    if (rename(ctl_result_tmp, ctl_result) != 0)
        die("cannot rename %s: %s", ctl_result_tmp, strerror(errno));
    if (fail_msg[0])
        fputs(line, stderr);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    /* Sleep out the remainder after EINTR, as careful programs do. Without signal handlers the
     * kernel restarts nanosleep across a ptrace stop by itself; a restored process may still
     * see EINTR, because the kernel's restart block cannot be carried into a new process, but
     * the remaining time the kernel wrote to `ts` at the interruption must be sane. */
    while (nanosleep(&ts, &ts) != 0) {
        if (errno != EINTR)
            die("nanosleep: %s", strerror(errno));
        if (ts.tv_sec > ms / 1000 + 1)
            die("nanosleep left %lld s to sleep of a %ld ms sleep", (long long)ts.tv_sec, ms);
    }
}

/* Writes DIR/NAME with `text` atomically (NAME.tmp + rename), so a test never reads half of it. */
static void ctl_write_file(const char *dir, const char *name, const char *text)
{
    char path[CTL_PATH_MAX], tmp[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create %s: %s", tmp, strerror(errno));
    write_all(fd, text, strlen(text), tmp);
    close(fd);
    if (rename(tmp, path) != 0)
        die("rename %s: %s", tmp, strerror(errno));
}

/* Opens the victim's log (appended to, one "pid=P n=N" line a tick). */
static int log_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot open log %s: %s", path, strerror(errno));
    return fd;
}

static void log_tick(int fd, unsigned long long n)
{
    char line[64];
    int len = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), n);
    write_all(fd, line, (size_t)len, "log");
}

/* Forks a child that dies with its parent (PR_SET_PDEATHSIG; it exits at once when the parent
 * is already gone). Returns what fork does: 0 in the child, the child's pid in the parent. */
static pid_t fork_dying_child(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
            die("PR_SET_PDEATHSIG: %s", strerror(errno));
        if (getppid() != parent)
            _exit(0);
    }
    return pid;
}

/* A file open as `fd` and mapped MAP_SHARED at `shared`, echoed by a child: writes "via fd N"
 * at byte `page` through the fd and checks the mapping shows it, then puts 1000 + N in word 0
 * and waits for the child to echo it in word 1. `what` names the file in failures. */
static void check_fd_and_child_echo(int fd, volatile uint64_t *shared, long page,
                                    const char *what)
{
    static unsigned token;
    token++;
    char msg[32];
    int len = snprintf(msg, sizeof msg, "via fd %u", token);
    if (pwrite(fd, msg, (size_t)len + 1, page) != len + 1)
        fail("pwrite %s: %s", what, strerror(errno));
    if (strcmp((const char *)shared + page, msg) != 0)
        fail("the shared mapping of %s does not show what its fd wrote", what);
    shared[0] = 1000 + token;
    int waited = 0;
    while (shared[1] != 1000 + token && waited++ < 5000)
        sleep_ms(1);
    if (shared[1] != 1000 + token)
        fail("the child did not echo %u through %s (it shows %llu)", 1000 + token, what,
             (unsigned long long)shared[1]);
}

/* In a child that checks itself: after a failure, says it on stderr and exits with status 3. */
static void child_exit_on_failure(void)
{
    if (fail_msg[0]) {
        fprintf(stderr, "child: %s\n", fail_msg);
        _exit(3);
    }
}

/* What ctl_loop does besides logging: every field but log_fd and period_ms may be left out. */
struct ctl_loop {
    int log_fd;
    long period_ms;
    void (*tick)(void);    /* after each log line */
    void (*verify)(void);  /* on a verify request, with fail_msg cleared first */
    pid_t child;           /* killed and reaped on an exit request, when > 0 */
    void (*cleanup)(void); /* on an exit request, after the child is reaped */
};

/* The victims' main loop: logs a line every period_ms and answers the test's verify and exit
 * requests. Never returns. */
static __attribute__((noreturn)) void ctl_loop(struct ctl_loop l)
{
    for (unsigned long long n = 1;; n++) {
        log_tick(l.log_fd, n);
        if (l.tick)
            l.tick();
        if (ctl_verify_requested()) {
            fail_msg[0] = 0;
            if (l.verify)
                l.verify();
            ctl_report(n);
        }
        int code = ctl_exit_requested();
        if (code >= 0) {
            if (l.child > 0) {
                kill(l.child, SIGKILL);
                waitpid(l.child, NULL, 0);
            }
            if (l.cleanup)
                l.cleanup();
            exit(code);
        }
        sleep_ms(l.period_ms);
    }
}

/* ---- whole-file snapshots of /proc/self files that must read the same after a restore ---- */

struct snapshot {
    const char *path;
    char *data;
    size_t len;
};

static char *read_file(const char *path, size_t *len_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    *len_out = len;
    return buf;
}

static void snapshot_take(struct snapshot *s, const char *path)
{
    s->path = path;
    s->data = read_file(path, &s->len);
    if (!s->data)
        die("cannot read %s: %s", path, strerror(errno));
}

static void snapshot_check(const struct snapshot *s)
{
    size_t len;
    char *now = read_file(s->path, &len);
    if (!now) {
        fail("cannot read %s: %s", s->path, strerror(errno));
        return;
    }
    if (len != s->len)
        fail("%s changed length: %zu at start, %zu now", s->path, s->len, len);
    else if (memcmp(now, s->data, len) != 0) {
        size_t i = 0;
        while (now[i] == s->data[i])
            i++;
        fail("%s differs from its start at byte %zu", s->path, i);
    }
    free(now);
}

/* /proc/self/cmdline, environ and auxv: the restore sets them through PR_SET_MM_MAP. */
static struct snapshot snap_cmdline, snap_environ, snap_auxv;

static void proc_snapshots_take(void)
{
    snapshot_take(&snap_cmdline, "/proc/self/cmdline");
    snapshot_take(&snap_environ, "/proc/self/environ");
    snapshot_take(&snap_auxv, "/proc/self/auxv");
}

static void proc_snapshots_check(void)
{
    snapshot_check(&snap_cmdline);
    snapshot_check(&snap_environ);
    snapshot_check(&snap_auxv);
}

/* Finds the /proc/self/maps line of the VMA containing `addr` and checks its permissions
 * ("r--p", "rw-s", ...). Containment, not the start address: the kernel merges adjacent VMAs
 * with equal flags, before and after a restore alike. */
static void check_vma_perms(const void *addr, const char *perms, const char *what)
{
    size_t len;
    char *maps = read_file("/proc/self/maps", &len);
    if (!maps) {
        fail("cannot read /proc/self/maps: %s", strerror(errno));
        return;
    }
    maps = realloc(maps, len + 1);
    maps[len] = 0;
    unsigned long a = (unsigned long)addr;
    int found = 0;
    for (char *line = maps; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        unsigned long start, end;
        char p[8];
        if (sscanf(line, "%lx-%lx %4s", &start, &end, p) == 3 && start <= a && a < end) {
            found = 1;
            if (strncmp(p, perms, 4) != 0)
                fail("%s at %p lies in a VMA with the wrong permissions: '%s', want %s", what,
                     addr, line, perms);
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    if (!found)
        fail("%s: no VMA contains %p in /proc/self/maps", what, addr);
    free(maps);
}

/* xorshift64* : cheap, deterministic pseudo-random data that does not compress or dedupe. */
static inline uint64_t xs_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t xs_seed(uint64_t seed, uint64_t salt)
{
    uint64_t s = seed ^ (salt * 0x9E3779B97F4A7C15ULL);
    return s ? s : 0x1234567;
}

static void random_fill(uint64_t *p, size_t words, uint64_t seed, uint64_t salt)
{
    uint64_t s = xs_seed(seed, salt);
    for (size_t i = 0; i < words; i++)
        p[i] = xs_next(&s);
}

static __attribute__((noinline)) void random_check(const uint64_t *p, size_t words, uint64_t seed,
                                                   uint64_t salt, const char *what)
{
    uint64_t s = xs_seed(seed, salt);
    for (size_t i = 0; i < words; i++) {
        uint64_t want = xs_next(&s);
        if (p[i] != want) {
            fail("%s: word %zu at %p is %#llx, want %#llx", what, i, (void *)&p[i],
                 (unsigned long long)p[i], (unsigned long long)want);
            return;
        }
    }
}

/* Mixes a counter value into a word for the history ring (must never be 0 for i >= 1). */
static inline uint64_t mix(uint64_t i)
{
    uint64_t x = i * 0xD6E8FEB86659FD93ULL;
    return (x ^ (x >> 32)) | 1;
}

#endif

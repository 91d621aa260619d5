/*
 * fds: a crest test victim for the per-process state around memory: the fd table, cwd, umask,
 * rlimits, shared anonymous memory and the mm fields behind /proc/self/{cmdline,environ,auxv}.
 * Single-threaded, no signal handlers.
 *
 *   fd 0, 1     whatever the test gave (/dev/null); fd 2 its stderr file
 *   fd 3        CTL_DIR/data, O_RDWR
 *   fd 4        dup(3): shares fd 3's open file description, so its offset
 *   fd 5        CTL_DIR/data opened again, O_RDONLY: its own offset
 *   fd 6        /dev/null, O_RDONLY|O_CLOEXEC
 *   fd 7        CTL_DIR, O_RDONLY|O_DIRECTORY
 *   fd 8        the log, O_WRONLY|O_APPEND
 *   fd 150      dup2(3, 150): a sparse fd table, again sharing fd 3's description
 *   cwd         CTL_DIR/cwd; umask 027; RLIMIT_NOFILE soft limit 200
 *   1 MiB       MAP_SHARED|MAP_ANONYMOUS area with a pattern, one word rewritten every tick
 *
 * Every tick it writes an 8-byte record through fd 3 or fd 4 (alternating), reads one byte
 * through fd 5 while it is inside the initial 4 KiB, and appends a log line through fd 8. It
 * tracks the offsets it expects and checks them on request, and also that a write through fd 3
 * moves fd 4's offset but not fd 5's.
 *
 * usage: fds CTL_DIR LOG_FILE [ARGS...]   (extra args only make /proc/self/cmdline longer)
 */
#include "victim.h"

#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sysmacros.h>

#define SHM_BYTES (1024 * 1024)
#define SHM_WORDS (SHM_BYTES / 8)
#define INITIAL_BYTES 4096
#define NOFILE_SOFT 200
#define HIGH_FD 150

static pid_t start_pid;
static unsigned long long counter;
static off_t off34; /* expected offset of the description behind fds 3, 4 and 150 */
static off_t off5;  /* expected offset of fd 5 */
static uint64_t *shm;
static char cwd_path[CTL_PATH_MAX];
static char data_path[CTL_PATH_MAX];
static char ctl_dir[CTL_PATH_MAX];
static struct rlimit limits_at_start[RLIM_NLIMITS];

static unsigned char initial_byte(off_t pos) { return (unsigned char)(pos * 7 + 3); }

static uint64_t shm_word(size_t i, unsigned long long gen)
{
    return mix(i + 1) ^ (gen * 0x100000001B3ULL);
}

/* Word i of the shared area was last rewritten at tick `gen`, or never (gen 0). */
static unsigned long long shm_gen(size_t i)
{
    if (counter == 0)
        return 0;
    /* tick t rewrites word t % SHM_WORDS */
    if (counter < SHM_WORDS)
        return (i >= 1 && i <= counter) ? i : 0;
    return counter - ((counter - i) % SHM_WORDS);
}

static void expect_fd(int fd, int want)
{
    if (fd != want)
        die("expected to get fd %d, got %d", want, fd);
}

static void setup(const char *dir, const char *log)
{
    umask(027);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit: %s", strerror(errno));
    rl.rlim_cur = NOFILE_SOFT;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("setrlimit: %s", strerror(errno));
    for (int r = 0; r < RLIM_NLIMITS; r++)
        if (getrlimit(r, &limits_at_start[r]) != 0)
            die("getrlimit %d: %s", r, strerror(errno));

    snprintf(ctl_dir, sizeof ctl_dir, "%s", dir);
    snprintf(data_path, sizeof data_path, "%s/data", dir);
    char cwd[CTL_PATH_MAX];
    snprintf(cwd, sizeof cwd, "%s/cwd", dir);
    if (mkdir(cwd, 0755) != 0 && errno != EEXIST)
        die("mkdir %s: %s", cwd, strerror(errno));
    if (chdir(cwd) != 0)
        die("chdir %s: %s", cwd, strerror(errno));
    if (!getcwd(cwd_path, sizeof cwd_path))
        die("getcwd: %s", strerror(errno));

    expect_fd(open(data_path, O_RDWR | O_CREAT | O_TRUNC, 0640), 3);
    expect_fd(dup(3), 4);
    unsigned char init[INITIAL_BYTES];
    for (off_t i = 0; i < INITIAL_BYTES; i++)
        init[i] = initial_byte(i);
    write_all(3, (const char *)init, sizeof init, "data");
    off34 = INITIAL_BYTES;
    expect_fd(open(data_path, O_RDONLY), 5);
    off5 = 100;
    if (lseek(5, off5, SEEK_SET) != off5)
        die("lseek: %s", strerror(errno));
    expect_fd(open("/dev/null", O_RDONLY | O_CLOEXEC), 6);
    expect_fd(open(dir, O_RDONLY | O_DIRECTORY), 7);
    expect_fd(open(log, O_WRONLY | O_APPEND | O_CREAT, 0640), 8);
    expect_fd(dup2(3, HIGH_FD), HIGH_FD);

    shm = mmap(NULL, SHM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        die("mmap shared: %s", strerror(errno));
    for (size_t i = 0; i < SHM_WORDS; i++)
        shm[i] = shm_word(i, 0);
}

static void check_flags(int fd, int want_acc, int want_append, int want_cloexec)
{
    int fl = fcntl(fd, F_GETFL);
    int fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0) {
        fail("fd %d is not open: %s", fd, strerror(errno));
        return;
    }
    if ((fl & O_ACCMODE) != want_acc)
        fail("fd %d access mode %#x, want %#x", fd, fl & O_ACCMODE, want_acc);
    if (!!(fl & O_APPEND) != want_append)
        fail("fd %d O_APPEND is %d, want %d", fd, !!(fl & O_APPEND), want_append);
    if (!!(fdfl & FD_CLOEXEC) != want_cloexec)
        fail("fd %d FD_CLOEXEC is %d, want %d", fd, !!(fdfl & FD_CLOEXEC), want_cloexec);
}

static void check_offset(int fd, off_t want)
{
    off_t pos = lseek(fd, 0, SEEK_CUR);
    if (pos != want)
        fail("fd %d offset is %lld, want %lld", fd, (long long)pos, (long long)want);
}

static void check_same_file(int fd, const struct stat *want, const char *what)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fail("fstat fd %d: %s", fd, strerror(errno));
        return;
    }
    if (st.st_dev != want->st_dev || st.st_ino != want->st_ino)
        fail("fd %d is not %s", fd, what);
}

static void verify_all(void)
{
    fail_msg[0] = 0;
    if (getpid() != start_pid)
        fail("getpid() is %d, started as %d", (int)getpid(), (int)start_pid);

    struct stat data_st, dir_st, null_st;
    if (stat(data_path, &data_st) != 0 || stat(ctl_dir, &dir_st) != 0 ||
        stat("/dev/null", &null_st) != 0) {
        fail("stat of the control files failed: %s", strerror(errno));
        return;
    }
    check_same_file(3, &data_st, data_path);
    check_same_file(4, &data_st, data_path);
    check_same_file(5, &data_st, data_path);
    check_same_file(HIGH_FD, &data_st, data_path);
    check_same_file(6, &null_st, "/dev/null");
    check_same_file(7, &dir_st, ctl_dir);
    struct stat st6;
    if (fstat(6, &st6) == 0 && (!S_ISCHR(st6.st_mode) || st6.st_rdev != makedev(1, 3)))
        fail("fd 6 is not the character device 1:3");
    check_flags(3, O_RDWR, 0, 0);
    check_flags(4, O_RDWR, 0, 0);
    check_flags(HIGH_FD, O_RDWR, 0, 0);
    check_flags(5, O_RDONLY, 0, 0);
    check_flags(6, O_RDONLY, 0, 1);
    check_flags(7, O_RDONLY, 0, 0);
    check_flags(8, O_WRONLY, 1, 0);
    for (int fd = 9; fd < NOFILE_SOFT; fd++)
        if (fd != HIGH_FD && fcntl(fd, F_GETFD) >= 0)
            fail("fd %d is open but the victim never opened it", fd);

    /* Offsets as tracked, then one write through fd 3: fds 4 and 150 follow, fd 5 does not. */
    check_offset(3, off34);
    check_offset(4, off34);
    check_offset(HIGH_FD, off34);
    check_offset(5, off5);
    uint64_t rec = 0xFEEDFACE00000000ULL | counter;
    write_all(3, (const char *)&rec, sizeof rec, "data");
    off34 += sizeof rec;
    check_offset(4, off34);
    check_offset(HIGH_FD, off34);
    check_offset(5, off5);
    /* At least, not exactly: after a -R dump the original went on writing, so a restore of that
     * image finds the file longer than its own offset. */
    struct stat now;
    if (fstat(3, &now) == 0 && now.st_size < off34)
        fail("data file size %lld, want at least %lld", (long long)now.st_size, (long long)off34);

    char cwd[CTL_PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        fail("getcwd: %s", strerror(errno));
    else if (strcmp(cwd, cwd_path) != 0)
        fail("cwd is %s, want %s", cwd, cwd_path);
    mode_t old = umask(027);
    if (old != 027)
        fail("umask is %03o, want 027", (unsigned)old);
    for (int r = 0; r < RLIM_NLIMITS; r++) {
        struct rlimit rl;
        if (getrlimit(r, &rl) != 0)
            fail("getrlimit %d: %s", r, strerror(errno));
        else if (rl.rlim_cur != limits_at_start[r].rlim_cur ||
                 rl.rlim_max != limits_at_start[r].rlim_max)
            fail("rlimit %d is %llu/%llu, want %llu/%llu", r, (unsigned long long)rl.rlim_cur,
                 (unsigned long long)rl.rlim_max,
                 (unsigned long long)limits_at_start[r].rlim_cur,
                 (unsigned long long)limits_at_start[r].rlim_max);
    }

    for (size_t i = 0; i < SHM_WORDS; i++) {
        uint64_t want = shm_word(i, shm_gen(i));
        if (shm[i] != want) {
            fail("shared area word %zu at %p is %#llx, want %#llx", i, (void *)&shm[i],
                 (unsigned long long)shm[i], (unsigned long long)want);
            break;
        }
    }
    check_vma_perms(shm, "rw-s", "shared anonymous area");

    long pagesz = sysconf(_SC_PAGESIZE);
    if (getauxval(AT_PAGESZ) != (unsigned long)pagesz)
        fail("getauxval(AT_PAGESZ) is %lu, page size %ld", getauxval(AT_PAGESZ), pagesz);
    size_t auxlen;
    uint64_t *aux = (uint64_t *)read_file("/proc/self/auxv", &auxlen);
    int seen_pagesz = 0;
    for (size_t i = 0; aux && i + 1 < auxlen / 8; i += 2)
        if (aux[i] == AT_PAGESZ) {
            seen_pagesz = 1;
            if (aux[i + 1] != (uint64_t)pagesz)
                fail("/proc/self/auxv AT_PAGESZ is %llu", (unsigned long long)aux[i + 1]);
        }
    if (!seen_pagesz)
        fail("/proc/self/auxv has no AT_PAGESZ");
    free(aux);
    const char *env = getenv("CREST_VICTIM_ENV");
    if (!env || strcmp(env, "environment-survives-restore") != 0)
        fail("CREST_VICTIM_ENV is %s", env ? env : "(unset)");
    proc_snapshots_check();
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [ARGS...]", argv[0]);
    for (int fd = 3; fd < 256; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            die("fd %d was inherited; start me with only fds 0-2 open", fd);
    ctl_init(argv[1]);
    start_pid = getpid();
    setup(argv[1], argv[2]);
    proc_snapshots_take();
    verify_all();
    if (fail_msg[0])
        die("self-check at start failed: %s", fail_msg);

    char line[128];
    for (;;) {
        sleep_ms(20);
        counter++;
        shm[counter % SHM_WORDS] = shm_word(counter % SHM_WORDS, counter);
        uint64_t rec = counter;
        write_all((counter & 1) ? 3 : 4, (const char *)&rec, sizeof rec, "data");
        off34 += sizeof rec;
        if (off5 < INITIAL_BYTES) {
            unsigned char b;
            if (read(5, &b, 1) != 1)
                die("read fd 5: %s", strerror(errno));
            if (b != initial_byte(off5))
                die("fd 5 read %#x at %lld, want %#x", b, (long long)off5, initial_byte(off5));
            off5++;
        }
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(8, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            verify_all();
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}

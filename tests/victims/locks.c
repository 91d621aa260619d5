/*
 * locks: a crest test victim holding file locks of every kind crest restores.
 *
 *   CTL_DIR/flock-ex   flock LOCK_EX, through fd ex; ex_dup = dup(ex) shares the description
 *   CTL_DIR/flock-sh   flock LOCK_SH
 *   CTL_DIR/posix      POSIX locks (fcntl F_SETLK) through fd px (O_RDWR): write on bytes 0-99,
 *                      read on 200-299, write from 1000 to the end of the file; through a
 *                      second description px_ro (O_RDONLY): read on 500-599. The file is also
 *                      mapped MAP_SHARED, so a restore has a mapped-file fd of it to close.
 *   CTL_DIR/ofd        OFD locks (F_OFD_SETLK): write on bytes 10-19, read on 40-49
 *   CTL_DIR/mapped     flock LOCK_EX, then mapped MAP_SHARED and its fd closed: the lock lives
 *                      on in the description the mapping holds (what HotSpot does with its
 *                      hsperfdata file)
 *
 * Checking (the same code as `locks --check`): another process must see every lock held by
 * this pid and every range in between free: flock LOCK_NB conflicts (and /proc/locks names
 * this pid for each flock), F_GETLK reports each POSIX lock with its type, range and this pid,
 * F_OFD_GETLK reports each OFD lock; the free ranges report F_UNLCK. On a verify request the
 * victim forks a child to run the checks (a process's own locks never conflict with itself).
 *
 * With "inherited": CTL_DIR/flock-inh is flocked LOCK_EX by this process, then a child (which
 * dies with it, and closes every other fd) inherits the fd and this process closes its own: the
 * lock lives on in the child's description although /proc/locks names this pid. CTL_DIR/info:
 * "child PID".
 *
 * usage: locks CTL_DIR LOG_FILE [lease|inherited]
 *   lease: also hold a read lease on CTL_DIR/leased as fd 10 and a write lease on
 *   CTL_DIR/wleased as fd 11, both opened O_RDONLY, with SIGIO blocked so that a lease break
 *   leaves it pending; verify checks both with F_GETLEASE
 *        locks --check CTL_DIR PID        prints "ok" or "FAIL <what>"; exit status 0 or 1
 */
#include "victim.h"

#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define POSIX_SIZE 4096

static char path_ex[CTL_PATH_MAX], path_sh[CTL_PATH_MAX], path_px[CTL_PATH_MAX],
    path_ofd[CTL_PATH_MAX], path_mapped[CTL_PATH_MAX], path_lease[CTL_PATH_MAX],
    path_wlease[CTL_PATH_MAX];
static int leases;

static void paths(const char *dir)
{
    snprintf(path_ex, sizeof path_ex, "%s/flock-ex", dir);
    snprintf(path_sh, sizeof path_sh, "%s/flock-sh", dir);
    snprintf(path_px, sizeof path_px, "%s/posix", dir);
    snprintf(path_ofd, sizeof path_ofd, "%s/ofd", dir);
    snprintf(path_mapped, sizeof path_mapped, "%s/mapped", dir);
    snprintf(path_lease, sizeof path_lease, "%s/leased", dir);
    snprintf(path_wlease, sizeof path_wlease, "%s/wleased", dir);
}

struct range {
    short type; /* F_RDLCK, F_WRLCK, or F_UNLCK for a range that must be free */
    off_t start, len;
};

static const struct range posix_ranges[] = {
    {F_WRLCK, 0, 100},   {F_UNLCK, 100, 100}, {F_RDLCK, 200, 100}, {F_UNLCK, 300, 200},
    {F_RDLCK, 500, 100}, {F_UNLCK, 600, 400}, {F_WRLCK, 1000, 0},
};
static const struct range ofd_ranges[] = {
    {F_UNLCK, 0, 10}, {F_WRLCK, 10, 10}, {F_UNLCK, 20, 20}, {F_RDLCK, 40, 10}, {F_UNLCK, 50, 0},
};

static const char *type_name(short t)
{
    return t == F_RDLCK ? "read" : t == F_WRLCK ? "write" : "none";
}

static int open_or_fail(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        fail("cannot open %s: %s", path, strerror(errno));
    return fd;
}

/* /proc/locks lists a FLOCK of `type` held by `pid` on the inode of `path`. */
static void check_flock_owner(const char *path, const char *type, int pid)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fail("stat %s: %s", path, strerror(errno));
        return;
    }
    FILE *f = fopen("/proc/locks", "re");
    if (!f) {
        fail("cannot read /proc/locks: %s", strerror(errno));
        return;
    }
    char line[256], cls[16], kind[16], mode[16], dev[64];
    int found = 0, lpid;
    while (fgets(line, sizeof line, f)) {
        unsigned long long ino = 0;
        unsigned maj, min;
        if (strstr(line, "->") ||
            sscanf(line, "%*d: %15s %15s %15s %d %63s", cls, kind, mode, &lpid, dev) != 5 ||
            sscanf(dev, "%x:%x:%llu", &maj, &min, &ino) != 3)
            continue;
        if (ino == (unsigned long long)st.st_ino && strcmp(cls, "FLOCK") == 0) {
            found = 1;
            if (strcmp(mode, type) != 0 || lpid != pid)
                fail("/proc/locks: the flock on %s is %s held by pid %d, want %s held by pid %d",
                     path, mode, lpid, type, pid);
        }
    }
    fclose(f);
    if (!found)
        fail("/proc/locks lists no flock on %s", path);
}

/* flock(op | LOCK_NB) on a new description of `path` must succeed (want_ok) or conflict. */
static void check_flock(const char *path, int op, int want_ok)
{
    int fd = open_or_fail(path, O_RDONLY);
    if (fd < 0)
        return;
    int r = flock(fd, op | LOCK_NB);
    if (want_ok && r != 0)
        fail("%s: flock %s is refused: %s", path, op == LOCK_EX ? "LOCK_EX" : "LOCK_SH",
             strerror(errno));
    if (!want_ok && (r == 0 || errno != EWOULDBLOCK))
        fail("%s: flock %s does not conflict (%s)", path, op == LOCK_EX ? "LOCK_EX" : "LOCK_SH",
             r == 0 ? "granted" : strerror(errno));
    close(fd);
}

/* F_GETLK (or F_OFD_GETLK) for a write lock over each range reports exactly the holder. */
static void check_ranges(const char *path, const struct range *rs, size_t n, int cmd, int pid)
{
    int fd = open_or_fail(path, O_RDWR);
    if (fd < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        const struct range *r = &rs[i];
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = r->start,
                           .l_len = r->len};
        if (fcntl(fd, cmd, &fl) != 0) {
            fail("%s: F_GETLK on %lld+%lld: %s", path, (long long)r->start, (long long)r->len,
                 strerror(errno));
            break;
        }
        if (fl.l_type != r->type ||
            (r->type != F_UNLCK &&
             (fl.l_start != r->start || fl.l_len != r->len || fl.l_pid != pid))) {
            fail("%s: bytes %lld+%lld: lock %s at %lld+%lld by pid %d, want %s by pid %d", path,
                 (long long)r->start, (long long)r->len, type_name(fl.l_type),
                 (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid, type_name(r->type),
                 r->type == F_UNLCK ? 0 : pid);
            break;
        }
    }
    close(fd);
}

/* Everything another process should see of pid's locks; records the first failure. */
static void check_all(int pid)
{
    check_flock(path_ex, LOCK_SH, 0);
    check_flock(path_sh, LOCK_SH, 1);
    check_flock(path_sh, LOCK_EX, 0);
    check_flock_owner(path_ex, "WRITE", pid);
    check_flock_owner(path_sh, "READ", pid);
    check_flock(path_mapped, LOCK_SH, 0);
    check_flock_owner(path_mapped, "WRITE", pid);
    check_ranges(path_px, posix_ranges, sizeof posix_ranges / sizeof *posix_ranges, F_GETLK, pid);
    /* OFD locks report l_pid -1. */
    check_ranges(path_ofd, ofd_ranges, sizeof ofd_ranges / sizeof *ofd_ranges, F_OFD_GETLK, -1);
}

static int ex, ex_dup, sh, px, px_ro, ofd;
static const char *mapped, *mapped_locked;

static void set_lock(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &fl) != 0)
        die("%s: %s", what, strerror(errno));
}

static int create(const char *path, int flags)
{
    int fd = open(path, flags | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create %s: %s", path, strerror(errno));
    return fd;
}

static void take_locks(int lease)
{
    ex = create(path_ex, O_RDWR);
    ex_dup = dup(ex);
    sh = create(path_sh, O_RDWR);
    if (ex_dup < 0 || flock(ex, LOCK_EX | LOCK_NB) != 0 || flock(sh, LOCK_SH | LOCK_NB) != 0)
        die("flock: %s", strerror(errno));

    px = create(path_px, O_RDWR);
    if (ftruncate(px, POSIX_SIZE) != 0)
        die("ftruncate %s: %s", path_px, strerror(errno));
    px_ro = open(path_px, O_RDONLY | O_CLOEXEC);
    if (px_ro < 0)
        die("open %s: %s", path_px, strerror(errno));
    mapped = mmap(NULL, POSIX_SIZE, PROT_READ, MAP_SHARED, px_ro, 0);
    if (mapped == MAP_FAILED)
        die("mmap %s: %s", path_px, strerror(errno));
    set_lock(px, F_SETLK, F_WRLCK, 0, 100, "POSIX write lock 0-99");
    set_lock(px, F_SETLK, F_RDLCK, 200, 100, "POSIX read lock 200-299");
    set_lock(px, F_SETLK, F_WRLCK, 1000, 0, "POSIX write lock 1000-EOF");
    set_lock(px_ro, F_SETLK, F_RDLCK, 500, 100, "POSIX read lock 500-599");

    ofd = create(path_ofd, O_RDWR);
    set_lock(ofd, F_OFD_SETLK, F_WRLCK, 10, 10, "OFD write lock 10-19");
    set_lock(ofd, F_OFD_SETLK, F_RDLCK, 40, 10, "OFD read lock 40-49");

    int fd = create(path_mapped, O_RDWR);
    if (ftruncate(fd, POSIX_SIZE) != 0 || flock(fd, LOCK_EX | LOCK_NB) != 0)
        die("%s: ftruncate/flock: %s", path_mapped, strerror(errno));
    mapped_locked = mmap(NULL, POSIX_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mapped_locked == MAP_FAILED)
        die("mmap %s: %s", path_mapped, strerror(errno));
    close(fd);

    if (lease) {
        sigset_t io;
        sigemptyset(&io);
        sigaddset(&io, SIGIO);
        sigprocmask(SIG_BLOCK, &io, NULL);
        const char *path[2] = {path_lease, path_wlease};
        const int type[2] = {F_RDLCK, F_WRLCK};
        for (int i = 0; i < 2; i++) {
            close(create(path[i], O_RDWR));
            int fd = open(path[i], O_RDONLY | O_CLOEXEC);
            if (fd < 0 || (fd != 10 + i && dup3(fd, 10 + i, O_CLOEXEC) != 10 + i))
                die("open %s as fd %d: %s", path[i], 10 + i, strerror(errno));
            if (fd != 10 + i)
                close(fd);
            if (fcntl(10 + i, F_SETLEASE, type[i]) != 0)
                die("%s lease on %s: %s", type_name(type[i]), path[i], strerror(errno));
        }
        leases = 1;
    }
}

/* Runs check_all in a child (this process's own locks never conflict with itself). */
static void verify(void)
{
    if (leases) {
        if (fcntl(10, F_GETLEASE) != F_RDLCK)
            fail("fd 10 has lease %d, want a read lease", fcntl(10, F_GETLEASE));
        if (fcntl(11, F_GETLEASE) != F_WRLCK)
            fail("fd 11 has lease %d, want a write lease", fcntl(11, F_GETLEASE));
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        fail("pipe2: %s", strerror(errno));
        return;
    }
    pid_t parent = getpid(), child = fork();
    if (child < 0) {
        fail("fork: %s", strerror(errno));
        return;
    }
    if (child == 0) {
        check_all(parent);
        write_all(p[1], fail_msg, strlen(fail_msg), "result pipe");
        _exit(0);
    }
    close(p[1]);
    char msg[sizeof fail_msg] = {0};
    size_t got = 0;
    ssize_t n;
    while (got < sizeof msg - 1 && (n = read(p[0], msg + got, sizeof msg - 1 - got)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        got += (size_t)n;
    }
    close(p[0]);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (msg[0])
        fail("checker child: %s", msg);
    /* The mapping of the POSIX-locked file still reads its (zero) bytes. */
    if (mapped[0] != 0 || mapped[POSIX_SIZE - 1] != 0)
        fail("the mapping of %s reads non-zero bytes", path_px);
    if (mapped_locked[0] != 0)
        fail("the mapping of %s reads non-zero bytes", path_mapped);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--check") == 0) {
        paths(argv[2]);
        check_all(atoi(argv[3]));
        if (fail_msg[0])
            printf("FAIL %s\n", fail_msg);
        else
            printf("ok\n");
        return fail_msg[0] ? 1 : 0;
    }
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [lease] | --check CTL_DIR PID", argv[0]);
    ctl_init(argv[1]);
    paths(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    take_locks(argc > 3 && strcmp(argv[3], "lease") == 0);
    if (argc > 3 && strcmp(argv[3], "inherited") == 0) {
        char path[CTL_PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/flock-inh", argv[1]);
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0 || flock(fd, LOCK_EX) != 0)
            die("flock %s: %s", path, strerror(errno));
        pid_t child = fork_dying_child();
        if (child == 0) {
            /* Only the inherited flock's fd: the parent's other locks stay the parent's. */
            for (int other = 3; other < 1024; other++)
                if (other != fd)
                    close(other);
            for (;;)
                sleep_ms(100);
        }
        close(fd);
        char info[64];
        snprintf(info, sizeof info, "child %d\n", (int)child);
        ctl_write_file(argv[1], "info", info);
    }

    char line[128];
    unsigned long long counter = 0;
    for (;;) {
        sleep_ms(20);
        counter++;
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            verify();
            ctl_report(counter);
            fail_msg[0] = 0;
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}

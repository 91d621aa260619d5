/*
 * ftable: a crest test victim holding the rest of the fd table (issue #11):
 *
 *   fd 100  /proc/1/status (another process's /proc file), read up to offset 100
 *   fd 101  /proc/meminfo, read up to offset 10
 *   fd 102  /sys/devices/system/cpu/online, read up to offset 1
 *   fd 103  TMPFS/direct, O_RDWR|O_DIRECT, a 4096-byte block written (offset 4096)
 *   fd 104  DISK/noatime, O_RDONLY|O_NOATIME, read up to offset 5
 *   fd 105  DISK/path, O_PATH
 *   fd 106  DISK/direct, O_RDONLY|O_DIRECT, one 4096-byte block read (offset 4096)
 *   fd 109  DISK/dangling, a symbolic link to "no-such-target", itself open with
 *           O_PATH|O_NOFOLLOW
 *   fd 110  DISK/gone-link, a symbolic link to "gone-target" held itself (O_PATH|O_NOFOLLOW),
 *           then removed: the fd links to "DISK/gone-link (deleted)"
 *
 * DISK and TMPFS are $CREST_DISK_DIR and $CREST_TMPFS_DIR (default: CTL_DIR). With
 * $CREST_LIB set it dlopen()s that library and calls its value(), which must return
 * $CREST_LIB_VALUE; with $CREST_AIO=1 it holds an AIO context (io_setup) whose ring it made
 * read-only (mprotect), which crest refuses; with
 * $CREST_PROC_SELF=1 it holds /proc/self/status at fd 111 (offset 20), its /proc/PID/stat at
 * fd 112 (O_NONBLOCK, offset 5) and, at fd 113 (offset 10), /proc/CHILD/status of a child it
 * forks (which dies with it): /proc files of the tree, opened again by the restored process.
 * Verify checks their flags, offsets and links, and that 111 and 113 still show this process
 * and the child.
 *
 * On a verify request it checks every fd's status flags (as at start), offset and link
 * (/proc/1/status must still show pid 1), reads on through each /proc and /sys file (then
 * seeks back), reads the O_DIRECT blocks back, and calls value() again.
 *
 * usage: ftable CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <dlfcn.h>
#include <linux/aio_abi.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define NFD 7
static int flags_at_start[NFD];
static const long want_pos[NFD] = {100, 10, 1, 4096, 5, -1, 4096};
static char want_link[NFD][CTL_PATH_MAX];
static int (*lib_value)(void);
static int lib_want;
static char *block;
/* $CREST_PROC_SELF: fds 111..113. */
#define NPROC 3
static int proc_files;
static pid_t proc_child;
static int proc_flags[NPROC];
static const long proc_pos[NPROC] = {20, 5, 10};
static char proc_link[NPROC][CTL_PATH_MAX];

/* fd `fd` (a /proc status file) shows `Pid: pid`. */
static void check_shows_pid(int fd, pid_t pid)
{
    char buf[2048], want[32];
    ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
    buf[got < 0 ? 0 : got] = 0;
    snprintf(want, sizeof want, "\nPid:\t%d\n", (int)pid);
    if (!strstr(buf, want))
        fail("fd %d does not show pid %d: %s", fd, (int)pid, got < 0 ? strerror(errno) : buf);
}

static void check_proc_files(void)
{
    for (int i = 0; i < NPROC; i++) {
        int fd = 111 + i;
        char link[CTL_PATH_MAX], proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(proc, link, sizeof link - 1);
        link[n < 0 ? 0 : n] = 0;
        if (strcmp(link, proc_link[i]) != 0)
            fail("fd %d is %s, want %s", fd, link, proc_link[i]);
        if (fcntl(fd, F_GETFL) != proc_flags[i])
            fail("fd %d: status flags %#o, %#o at start", fd, fcntl(fd, F_GETFL), proc_flags[i]);
        if (lseek(fd, 0, SEEK_CUR) != proc_pos[i])
            fail("fd %d: offset %ld, want %ld", fd, (long)lseek(fd, 0, SEEK_CUR), proc_pos[i]);
    }
    check_shows_pid(111, getpid());
    check_shows_pid(113, proc_child);
    int status;
    if (waitpid(proc_child, &status, WNOHANG) != 0)
        fail("the child %d has ended", (int)proc_child);
}
static int symlink_flags;
static char symlink_link[CTL_PATH_MAX], gone_link[CTL_PATH_MAX];

static void must_open(const char *path, int flags, int to, long pos)
{
    int fd = open(path, flags, 0644);
    if (fd < 0)
        die("open %s: %s", path, strerror(errno));
    if (dup3(fd, to, 0) != to)
        die("dup3 %s: %s", path, strerror(errno));
    close(fd);
    if (pos > 0 && lseek(to, pos, SEEK_SET) != pos)
        die("lseek %s: %s", path, strerror(errno));
}

static void make_file(const char *path, int direct)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("create %s: %s", path, strerror(errno));
    write_all(fd, block, 4096, path);
    if (direct)
        write_all(fd, block, 4096, path);
    close(fd);
}

static void verify(void)
{
    for (int i = 0; i < NFD; i++) {
        int fd = 100 + i;
        int fl = fcntl(fd, F_GETFL);
        if (fl != flags_at_start[i])
            fail("fd %d: status flags %#o, %#o at start", fd, fl, flags_at_start[i]);
        char link[CTL_PATH_MAX], proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(proc, link, sizeof link - 1);
        link[n < 0 ? 0 : n] = 0;
        if (strcmp(link, want_link[i]) != 0)
            fail("fd %d is %s, want %s", fd, link, want_link[i]);
        if (want_pos[i] >= 0 && lseek(fd, 0, SEEK_CUR) != want_pos[i])
            fail("fd %d: offset %ld, want %ld", fd, (long)lseek(fd, 0, SEEK_CUR), want_pos[i]);
    }
    struct stat st;
    char target[64] = {0}, link[CTL_PATH_MAX] = {0};
    if (fstat(109, &st) != 0 || !S_ISLNK(st.st_mode) ||
        readlinkat(109, "", target, sizeof target - 1) != 14 ||
        strcmp(target, "no-such-target") != 0)
        fail("fd 109 is not the symbolic link to no-such-target (mode %o, '%s'): %s",
             st.st_mode, target, strerror(errno));
    if (fcntl(109, F_GETFL) != symlink_flags || readlink("/proc/self/fd/109", link,
                                                         sizeof link - 1) < 0 ||
        strcmp(link, symlink_link) != 0)
        fail("fd 109: flags %#o (want %#o), link '%s' (want '%s')", fcntl(109, F_GETFL),
             symlink_flags, link, symlink_link);
    char gone_target[64] = {0};
    if (fstat(110, &st) != 0 || !S_ISLNK(st.st_mode) || st.st_nlink != 0 ||
        readlinkat(110, "", gone_target, sizeof gone_target - 1) != 11 ||
        strcmp(gone_target, "gone-target") != 0)
        fail("fd 110 is not the removed symbolic link to gone-target (mode %o, %lu links, '%s')",
             st.st_mode, (unsigned long)st.st_nlink, gone_target);
    memset(link, 0, sizeof link);
    if (readlink("/proc/self/fd/110", link, sizeof link - 1) < 0 || strcmp(link, gone_link) != 0)
        fail("fd 110 links to '%s', want '%s'", link, gone_link);
    if (fail_msg[0])
        return;
    char buf[256];
    for (int fd = 100; fd <= 102; fd++) {
        ssize_t n = read(fd, buf, 3);
        if (n <= 0 && fd != 102)
            fail("fd %d: read: %s", fd, n < 0 ? strerror(errno) : "end of file");
        lseek(fd, want_pos[fd - 100], SEEK_SET);
    }
    /* The /proc/1 file is still pid 1's. */
    ssize_t got = pread(100, buf, sizeof buf - 1, 0);
    buf[got < 0 ? 0 : got] = 0;
    if (!strstr(buf, "\nPid:\t1\n"))
        fail("fd 100 does not show pid 1: %s", got < 0 ? strerror(errno) : buf);
    char *back = aligned_alloc(4096, 4096);
    for (int fd = 103; fd <= 106; fd += 3) {
        if (pread(fd, back, 4096, 0) != 4096 || memcmp(back, block, 4096) != 0)
            fail("fd %d: the O_DIRECT block does not read back: %s", fd, strerror(errno));
    }
    free(back);
    if (proc_files)
        check_proc_files();
    if (lib_value && lib_value() != lib_want)
        fail("value() of $CREST_LIB is %d, want %d", lib_value(), lib_want);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    const char *disk = getenv("CREST_DISK_DIR") ? getenv("CREST_DISK_DIR") : argv[1];
    const char *tmpfs = getenv("CREST_TMPFS_DIR") ? getenv("CREST_TMPFS_DIR") : argv[1];
    block = aligned_alloc(4096, 4096);
    for (int i = 0; i < 4096; i++)
        block[i] = (char)('a' + i % 26);

    char p[NFD][CTL_PATH_MAX];
    snprintf(p[0], sizeof p[0], "/proc/1/status");
    snprintf(p[1], sizeof p[1], "/proc/meminfo");
    snprintf(p[2], sizeof p[2], "/sys/devices/system/cpu/online");
    snprintf(p[3], sizeof p[3], "%s/direct", tmpfs);
    snprintf(p[4], sizeof p[4], "%s/noatime", disk);
    snprintf(p[5], sizeof p[5], "%s/path", disk);
    snprintf(p[6], sizeof p[6], "%s/direct", disk);
    make_file(p[3], 0);
    make_file(p[4], 0);
    make_file(p[5], 0);
    make_file(p[6], 1);
    must_open(p[0], O_RDONLY, 100, 100);
    must_open(p[1], O_RDONLY, 101, 10);
    must_open(p[2], O_RDONLY, 102, 1);
    must_open(p[3], O_RDWR | O_DIRECT, 103, 0);
    if (write(103, block, 4096) != 4096)
        die("O_DIRECT write: %s", strerror(errno));
    must_open(p[4], O_RDONLY | O_NOATIME, 104, 5);
    must_open(p[5], O_PATH, 105, 0);
    must_open(p[6], O_RDONLY | O_DIRECT, 106, 4096);
    for (int i = 0; i < NFD; i++) {
        flags_at_start[i] = fcntl(100 + i, F_GETFL);
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", 100 + i);
        ssize_t n = readlink(proc, want_link[i], sizeof want_link[i] - 1);
        if (n < 0)
            die("readlink %s: %s", proc, strerror(errno));
        want_link[i][n] = 0;
    }
    char dangling[CTL_PATH_MAX];
    snprintf(dangling, sizeof dangling, "%s/dangling", disk);
    if (symlink("no-such-target", dangling) != 0)
        die("symlink %s: %s", dangling, strerror(errno));
    must_open(dangling, O_PATH | O_NOFOLLOW, 109, 0);
    symlink_flags = fcntl(109, F_GETFL);
    if (readlink("/proc/self/fd/109", symlink_link, sizeof symlink_link - 1) < 0)
        die("readlink fd 109: %s", strerror(errno));

    char gone[CTL_PATH_MAX];
    snprintf(gone, sizeof gone, "%s/gone-link", disk);
    if (symlink("gone-target", gone) != 0)
        die("symlink %s: %s", gone, strerror(errno));
    must_open(gone, O_PATH | O_NOFOLLOW, 110, 0);
    if (unlink(gone) != 0)
        die("unlink %s: %s", gone, strerror(errno));
    if (readlink("/proc/self/fd/110", gone_link, sizeof gone_link - 1) < 0)
        die("readlink fd 110: %s", strerror(errno));

    if (getenv("CREST_PROC_SELF") && strcmp(getenv("CREST_PROC_SELF"), "1") == 0) {
        char own[64], child[64];
        proc_child = fork_dying_child();
        if (proc_child == 0) {
            for (;;)
                pause();
        }
        snprintf(own, sizeof own, "/proc/%d/stat", (int)getpid());
        snprintf(child, sizeof child, "/proc/%d/status", (int)proc_child);
        must_open("/proc/self/status", O_RDONLY, 111, proc_pos[0]);
        must_open(own, O_RDONLY | O_NONBLOCK, 112, proc_pos[1]);
        must_open(child, O_RDONLY, 113, proc_pos[2]);
        for (int i = 0; i < NPROC; i++) {
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", 111 + i);
            ssize_t n = readlink(proc, proc_link[i], sizeof proc_link[i] - 1);
            if (n < 0)
                die("readlink %s: %s", proc, strerror(errno));
            proc_link[i][n] = 0;
            proc_flags[i] = fcntl(111 + i, F_GETFL);
        }
        proc_files = 1;
    }

    if (getenv("CREST_LIB")) {
        void *h = dlopen(getenv("CREST_LIB"), RTLD_NOW);
        if (!h)
            die("dlopen: %s", dlerror());
        lib_value = (int (*)(void))dlsym(h, "value");
        if (!lib_value)
            die("dlsym value: %s", dlerror());
        lib_want = atoi(getenv("CREST_LIB_VALUE") ? getenv("CREST_LIB_VALUE") : "0");
    }
    if (getenv("CREST_AIO") && strcmp(getenv("CREST_AIO"), "1") == 0) {
        aio_context_t ctx = 0;
        if (syscall(SYS_io_setup, 8, &ctx) != 0)
            die("io_setup: %s", strerror(errno));
        if (mprotect((void *)ctx, 4096, PROT_READ) != 0)
            die("mprotect the AIO ring: %s", strerror(errno));
    }

    ctl_loop((struct ctl_loop){
        .log_fd = log_open(argv[2]), .period_ms = 20, .verify = verify, .child = proc_child});
}

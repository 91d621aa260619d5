/*
 * fifos: a crest test victim holding named FIFOs with unread data, shared with a child
 * (issue #11). The FIFOs live in the control directory:
 *
 *   CTL/fifo-a   fd 100 read end (O_NONBLOCK), fd 101 write end (FD_CLOEXEC), fd 104 a third
 *                description open read-write; enlarged to A_SIZE (F_SETPIPE_SZ). Holds the
 *                current generation's A bytes.
 *   CTL/fifo-b   fd 102 open read-write; the test may hold it open too (then the FIFO is
 *                shared with a process outside the tree). Holds the B bytes.
 *   CTL/fifo-c   fd 103 write end only: no process of the tree reads it. Holds the C bytes.
 *   CTL/fifo-d   fd 105 open read-write, fd 106 write end; mode 0640; removed (unlinked)
 *                once open, so only the fds keep it. Holds the D bytes. A verify checks it
 *                is still a FIFO with no name (st_nlink 0, the fd link "PATH (deleted)"), its
 *                mode and that the child shares both descriptions.
 *
 * A forked child inherits every fd and just waits (it dies with the parent). CTL/info says
 * "child PID" once everything is set up. On a verify request the parent checks every fd's
 * access mode, O_NONBLOCK, FD_CLOEXEC and inode (the FIFO at its path), that the child's fd is
 * the same open file description (kcmp), the pipe size of A; then reads each FIFO until it is
 * empty (the data must be exactly the current generation's, in order: C through a read open
 * of its own, closed again once the next generation is written) and writes the next
 * generation, which stays buffered.
 *
 * usage: fifos CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <linux/kcmp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define A_SIZE (128 * 1024)

static char path_a[CTL_PATH_MAX], path_b[CTL_PATH_MAX], path_c[CTL_PATH_MAX],
    path_d[CTL_PATH_MAX];
static unsigned generation;
static pid_t child;

static size_t len_of(char which, unsigned g)
{
    return (which == 'a' ? 5000 : which == 'b' ? 300 : 200) + 7 * (size_t)g;
}
static char byte_of(char which, unsigned g, size_t i) { return (char)(which + (g * 5 + i) % 23); }

static void put(int fd, char which, unsigned g)
{
    char buf[8192];
    size_t len = len_of(which, g);
    for (size_t i = 0; i < len; i++)
        buf[i] = byte_of(which, g, i);
    write_all(fd, buf, len, "fifo");
}

static void fill(unsigned g)
{
    put(101, 'a', g);
    put(102, 'b', g);
    put(103, 'c', g);
    put(106, 'd', g);
}

static void move_fd(int fd, int to, const char *what)
{
    if (fd < 0)
        die("%s: %s", what, strerror(errno));
    if (dup3(fd, to, 0) != to)
        die("dup3 %s: %s", what, strerror(errno));
    close(fd);
}

static void check_fd(int fd, const char *path, int acc, int nonblock, int cloexec)
{
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    struct stat st, by_path;
    if (fl < 0 || fdfl < 0 || fstat(fd, &st) != 0 || stat(path, &by_path) != 0) {
        fail("fd %d (%s): %s", fd, path, strerror(errno));
        return;
    }
    if (!S_ISFIFO(st.st_mode) || st.st_ino != by_path.st_ino || st.st_dev != by_path.st_dev)
        fail("fd %d is not the FIFO %s (mode %o ino %lu)", fd, path, st.st_mode,
             (unsigned long)st.st_ino);
    if ((fl & O_ACCMODE) != acc)
        fail("fd %d (%s): access mode %d, want %d", fd, path, fl & O_ACCMODE, acc);
    if (!!(fl & O_NONBLOCK) != nonblock)
        fail("fd %d (%s): O_NONBLOCK is %s", fd, path, nonblock ? "clear" : "set");
    if (!!(fdfl & FD_CLOEXEC) != cloexec)
        fail("fd %d (%s): FD_CLOEXEC is %s", fd, path, cloexec ? "clear" : "set");
    long same = syscall(SYS_kcmp, getpid(), child, KCMP_FILE, fd, fd);
    if (same != 0)
        fail("fd %d (%s): the child's fd %d is not the same description (kcmp %ld: %s)", fd,
             path, fd, same, same < 0 ? strerror(errno) : "differs");
}

/* fd of the deleted FIFO D: no name left, its mode, access mode, shared with the child. */
static void check_deleted(int fd, int acc)
{
    struct stat st;
    char link[CTL_PATH_MAX + 32], want[CTL_PATH_MAX + 32], proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, link, sizeof link - 1);
    int fl = fcntl(fd, F_GETFL);
    if (n < 0 || fl < 0 || fstat(fd, &st) != 0) {
        fail("fd %d (deleted fifo-d): %s", fd, strerror(errno));
        return;
    }
    link[n] = 0;
    snprintf(want, sizeof want, "%s (deleted)", path_d);
    if (strcmp(link, want) != 0)
        fail("fd %d links to '%s', want '%s'", fd, link, want);
    if (!S_ISFIFO(st.st_mode) || st.st_nlink != 0 || (st.st_mode & 07777) != 0640)
        fail("fd %d: mode %o, %lu links, want a FIFO 0640 with none", fd, st.st_mode,
             (unsigned long)st.st_nlink);
    if (st.st_uid != getuid() || st.st_gid != getgid())
        fail("fd %d: owner %u:%u, want %u:%u", fd, st.st_uid, st.st_gid, getuid(), getgid());
    if ((fl & O_ACCMODE) != acc)
        fail("fd %d (deleted fifo-d): access mode %d, want %d", fd, fl & O_ACCMODE, acc);
    long same = syscall(SYS_kcmp, getpid(), child, KCMP_FILE, fd, fd);
    if (same != 0)
        fail("fd %d (deleted fifo-d): the child's fd is not the same description", fd);
}

/* Reads exactly generation g's bytes of `which` from `fd` (FIONREAD must say so first). */
static void drain(int fd, char which, unsigned g)
{
    int avail = -1;
    size_t len = len_of(which, g);
    if (ioctl(fd, FIONREAD, &avail) != 0 || avail != (int)len) {
        fail("fifo-%c: %d bytes buffered, want %zu", which, avail, len);
        return;
    }
    char buf[8192];
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0) {
            fail("fifo-%c: read: %s", which, n < 0 ? strerror(errno) : "end of file");
            return;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < len; i++)
        if (buf[i] != byte_of(which, g, i)) {
            fail("fifo-%c: byte %zu of generation %u differs", which, i, g);
            return;
        }
}

static void verify(void)
{
    check_fd(100, path_a, O_RDONLY, 1, 0);
    check_fd(101, path_a, O_WRONLY, 0, 1);
    check_fd(104, path_a, O_RDWR, 0, 0);
    check_fd(102, path_b, O_RDWR, 0, 0);
    check_fd(103, path_c, O_WRONLY, 0, 0);
    check_deleted(105, O_RDWR);
    check_deleted(106, O_WRONLY);
    int sz = fcntl(100, F_GETPIPE_SZ);
    if (sz != A_SIZE)
        fail("fifo-a: pipe size %d, want %d", sz, A_SIZE);
    if (fail_msg[0])
        return;
    drain(100, 'a', generation);
    drain(102, 'b', generation);
    drain(105, 'd', generation);
    int c = open(path_c, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (c < 0) {
        fail("open %s: %s", path_c, strerror(errno));
        return;
    }
    drain(c, 'c', generation);
    /* The next generation is written while this reader exists (no reader: EPIPE). */
    if (!fail_msg[0]) {
        generation++;
        fill(generation);
    }
    close(c);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    snprintf(path_a, sizeof path_a, "%s/fifo-a", argv[1]);
    snprintf(path_b, sizeof path_b, "%s/fifo-b", argv[1]);
    snprintf(path_c, sizeof path_c, "%s/fifo-c", argv[1]);
    snprintf(path_d, sizeof path_d, "%s/fifo-d", argv[1]);
    const char *paths[] = {path_a, path_b, path_c};
    for (int i = 0; i < 3; i++)
        if (mkfifo(paths[i], 0600) != 0)
            die("mkfifo %s: %s", paths[i], strerror(errno));

    move_fd(open(path_a, O_RDONLY | O_NONBLOCK), 100, "fifo-a read end");
    move_fd(open(path_a, O_WRONLY), 101, "fifo-a write end");
    if (fcntl(101, F_SETFD, FD_CLOEXEC) != 0)
        die("F_SETFD: %s", strerror(errno));
    move_fd(open(path_a, O_RDWR), 104, "fifo-a read-write");
    if (fcntl(100, F_SETPIPE_SZ, A_SIZE) != A_SIZE)
        die("F_SETPIPE_SZ: %s", strerror(errno));
    move_fd(open(path_b, O_RDWR), 102, "fifo-b");
    /* A write end with no reader anywhere: opened through a read-write open dropped after. */
    int c_rw = open(path_c, O_RDWR);
    move_fd(open(path_c, O_WRONLY), 103, "fifo-c write end");
    if (mkfifo(path_d, 0600) != 0 || chmod(path_d, 0640) != 0)
        die("mkfifo %s: %s", path_d, strerror(errno));
    move_fd(open(path_d, O_RDWR), 105, "fifo-d read-write");
    move_fd(open(path_d, O_WRONLY), 106, "fifo-d write end");
    if (unlink(path_d) != 0)
        die("unlink %s: %s", path_d, strerror(errno));
    fill(0);
    close(c_rw);

    pid_t parent = getpid();
    child = fork_dying_child();
    if (child == 0) {
        while (getppid() == parent)
            sleep_ms(20);
        _exit(0);
    }

    char info[64];
    snprintf(info, sizeof info, "child %d\n", (int)child);
    ctl_write_file(argv[1], "info", info);

    ctl_loop((struct ctl_loop){
        .log_fd = log_open(argv[2]), .period_ms = 20, .verify = verify, .child = child});
}

/*
 * fdshare: a crest test victim whose processes share an fd table (clone with CLONE_FILES).
 *
 *   root  holds fd 50 (CTL_DIR/data, O_RDWR, offset 4) and fd 51 (CTL_DIR/data2, O_RDONLY,
 *         close-on-exec, offset 2)
 *   A     child of root, clone(CLONE_FILES): root's table
 *   C     child of A, clone(CLONE_FILES): root's table too
 *   B     child of root, plain fork: a copy of the table (same descriptions)
 *
 * The helpers answer requests through a shared anonymous page: "is fd N open in your table",
 * "open /dev/null at fd N". A verify request checks fds 50 and 51 (offsets, close-on-exec), then
 * that an fd the root opens is seen by A and C and not by B, that one A opens is seen by the
 * root, and that a close by the root is seen by A. The pids of A, B and C are written to
 * CTL_DIR/pids ("A B C").
 *
 * With $CREST_FDSHARE_APART=1 it is another layout: the root clones X and Y with CLONE_FILES,
 * then leaves their table (unshare): X and Y share a table their parent does not hold (a dump
 * refuses it). CTL_DIR/pids then holds "X Y".
 *
 * usage: fdshare CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

enum { ASK_OPEN_FD = 1, ASK_DO_OPEN = 2 };
enum { HELPER_A, HELPER_B, HELPER_C, HELPERS };

struct slot {
    volatile int req;    /* (what << 16) | fd, set by the root; 0: none */
    volatile int seq;    /* bumped by the root with each request */
    volatile int done;   /* = seq once answered */
    volatile int answer; /* 1: yes / done, 2: no */
};

static struct slot *slots;
static pid_t helpers[HELPERS];
static const char *names[HELPERS] = {"A", "B", "C"};

static pid_t clone_raw(unsigned long flags)
{
    return (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
}

static void die_with_parent(void)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("prctl PR_SET_PDEATHSIG: %s", strerror(errno));
}

static __attribute__((noreturn)) void helper(struct slot *s)
{
    int seen = 0;
    for (;;) {
        int seq = s->seq;
        if (seq != seen) {
            __sync_synchronize();
            int what = s->req >> 16, fd = s->req & 0xffff;
            if (what == ASK_OPEN_FD) {
                s->answer = fcntl(fd, F_GETFD) >= 0 ? 1 : 2;
            } else if (what == ASK_DO_OPEN) {
                int n = open("/dev/null", O_RDONLY);
                s->answer = (n >= 0 && dup2(n, fd) == fd) ? 1 : 2;
                if (n >= 0 && n != fd)
                    close(n);
            }
            __sync_synchronize();
            s->done = seq;
            seen = seq;
        }
        sleep_ms(1);
    }
}

/* Asks helper `h`; returns its answer, or 0 (after a failure) when it does not answer. */
static int ask(int h, int what, int fd)
{
    struct slot *s = &slots[h];
    s->req = (what << 16) | fd;
    __sync_synchronize();
    int seq = s->seq + 1;
    s->seq = seq;
    for (int i = 0; i < 10000; i++) {
        if (s->done == seq) {
            __sync_synchronize();
            return s->answer;
        }
        sleep_ms(1);
    }
    fail("helper %s (pid %d) does not answer", names[h], (int)helpers[h]);
    return 0;
}

static void check_offset(int fd, off_t want, int cloexec)
{
    off_t at = lseek(fd, 0, SEEK_CUR);
    if (at != want)
        fail("fd %d at offset %lld, not %lld", fd, (long long)at, (long long)want);
    int fdflags = fcntl(fd, F_GETFD);
    if (fdflags < 0 || !!(fdflags & FD_CLOEXEC) != cloexec)
        fail("fd %d: close-on-exec is %d, not %d", fd, fdflags & FD_CLOEXEC, cloexec);
}

static void verify(void)
{
    check_offset(50, 4, 0);
    check_offset(51, 2, 1);
    /* An fd opened by the root now: A and C share the table, B has its own. */
    int n = open("/dev/null", O_RDONLY);
    if (n < 0 || dup2(n, 60) != 60)
        fail("open fd 60: %s", strerror(errno));
    if (n != 60)
        close(n);
    static const int want[HELPERS] = {1, 2, 1};
    for (int h = 0; h < HELPERS; h++) {
        int got = ask(h, ASK_OPEN_FD, 60);
        if (got && got != want[h])
            fail("helper %s %s the root's new fd 60", names[h], got == 1 ? "sees" : "does not see");
    }
    close(60);
    if (ask(HELPER_A, ASK_OPEN_FD, 60) == 1)
        fail("helper A still sees fd 60 the root closed");
    /* One A opens, the root sees. */
    if (ask(HELPER_A, ASK_DO_OPEN, 61) == 1) {
        if (fcntl(61, F_GETFD) < 0)
            fail("the root does not see fd 61 helper A opened");
        close(61);
    }
}

static void cleanup(void)
{
    for (int h = 0; h < HELPERS; h++)
        if (helpers[h] > 0)
            kill(helpers[h], SIGKILL);
    for (int h = 0; h < HELPERS; h++)
        if (h != HELPER_C && helpers[h] > 0)
            waitpid(helpers[h], NULL, __WALL);
}

static void open_at(const char *path, int flags, int fd, off_t offset)
{
    int n = open(path, flags | O_CREAT, 0600);
    if (n < 0)
        die("open %s: %s", path, strerror(errno));
    if (n != fd && (dup3(n, fd, flags & O_CLOEXEC) != fd || close(n) != 0))
        die("dup3 %s: %s", path, strerror(errno));
    if ((flags & O_ACCMODE) != O_RDONLY && write(fd, "0123456789", 10) != 10)
        die("write %s: %s", path, strerror(errno));
    if (lseek(fd, offset, SEEK_SET) != offset)
        die("lseek %s: %s", path, strerror(errno));
}

static __attribute__((noreturn)) void apart(const char *dir, int log_fd)
{
    pid_t x = clone_raw(CLONE_FILES);
    if (x == 0) {
        die_with_parent();
        for (;;)
            pause();
    }
    pid_t y = clone_raw(CLONE_FILES);
    if (y == 0) {
        die_with_parent();
        for (;;)
            pause();
    }
    if (x < 0 || y < 0)
        die("clone: %s", strerror(errno));
    if (unshare(CLONE_FILES) != 0)
        die("unshare: %s", strerror(errno));
    char text[64];
    snprintf(text, sizeof text, "%d %d\n", (int)x, (int)y);
    ctl_write_file(dir, "pids", text);
    helpers[HELPER_A] = x;
    helpers[HELPER_B] = y;
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 20, .cleanup = cleanup});
}

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: fdshare CTL_DIR LOG_FILE");
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);
    if (getenv("CREST_FDSHARE_APART"))
        apart(argv[1], log_fd);
    char path[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/data", argv[1]);
    open_at(path, O_RDWR, 50, 4);
    snprintf(path, sizeof path, "%s/data2", argv[1]);
    int n = open(path, O_WRONLY | O_CREAT, 0600);
    if (n < 0 || write(n, "0123456789", 10) != 10)
        die("write %s: %s", path, strerror(errno));
    close(n);
    open_at(path, O_RDONLY | O_CLOEXEC, 51, 2);

    slots = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    /* The pid of C comes from A through the page too. */
    volatile pid_t *c_pid = (volatile pid_t *)&slots[HELPERS];
    pid_t a = clone_raw(CLONE_FILES);
    if (a == 0) {
        die_with_parent();
        pid_t c = clone_raw(CLONE_FILES);
        if (c == 0) {
            die_with_parent();
            helper(&slots[HELPER_C]);
        }
        *c_pid = c;
        helper(&slots[HELPER_A]);
    }
    pid_t b = clone_raw(0);
    if (b == 0) {
        die_with_parent();
        helper(&slots[HELPER_B]);
    }
    if (a < 0 || b < 0)
        die("clone: %s", strerror(errno));
    while (*c_pid == 0)
        sleep_ms(1);
    if (*c_pid < 0)
        die("clone of C failed");
    helpers[HELPER_A] = a;
    helpers[HELPER_B] = b;
    helpers[HELPER_C] = *c_pid;
    char text[64];
    snprintf(text, sizeof text, "%d %d %d\n", (int)a, (int)b, (int)*c_pid);
    ctl_write_file(argv[1], "pids", text);
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 20, .verify = verify, .cleanup = cleanup});
}

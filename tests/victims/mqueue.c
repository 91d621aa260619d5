/*
 * mqueue: a crest test victim holding POSIX message queues, shared with a child.
 *
 *   parent (started by the harness; logs "pid=P n=N" to LOG_FILE, answers verify requests)
 *   `-- child (dies with its parent, PR_SET_PDEATHSIG; exits 3 if something it checks changed)
 *
 * fd 100: queue /crest-mq-PID (mode 0640, at most 8 messages of 64 bytes), read-write,
 *         holding five messages of priorities 1, 5, 5, 0, 9 ("one", "five-a", "five-b", "",
 *         "nine"), sent in that order.
 * fd 101: the same queue, a second description, write-only and O_NONBLOCK.
 * fd 102: queue /crest-mq-PID-gone (mode 0600, 2 messages of 16 bytes), read-write, holding
 *         "ghost" at priority 3, unlinked (mq_unlink) while open.
 * All three are inherited by the child, which checks their names and attributes.
 *
 * The parent's verify receives every message of both queues (checking content and order)
 * and sends them back, so the queues hold the same after each verify.
 *
 * CTL/info: "child PID\nname /crest-mq-PID\n".
 *
 * usage: mqueue CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <mqueue.h>

#define Q_FD 100
#define QW_FD 101
#define GONE_FD 102

static pid_t child;
static char name[64], gone[64], gone_link[80];

struct msg {
    unsigned prio;
    const char *text;
};

/* In receive order: highest priority first, oldest first within one. */
static const struct msg want_q[] = {
    {9, "nine"}, {5, "five-a"}, {5, "five-b"}, {1, "one"}, {0, ""},
};
static const struct msg want_gone[] = {{3, "ghost"}};

static void move_fd(int fd, int to, const char *what)
{
    if (fd < 0)
        die("%s: %s", what, strerror(errno));
    if (dup3(fd, to, 0) != to)
        die("dup3 %s: %s", what, strerror(errno));
    close(fd);
}

static void check_link(int fd, const char *want)
{
    char path[64], got[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(path, got, sizeof got - 1);
    if (len < 0) {
        fail("readlink %s: %s", path, strerror(errno));
        return;
    }
    got[len] = 0;
    if (strcmp(got, want) != 0)
        fail("fd %d is '%s', want '%s'", fd, got, want);
}

static void check_attr(int fd, long maxmsg, long msgsize, long curmsgs, long flags, int acc,
                       unsigned mode)
{
    struct mq_attr a;
    struct stat st;
    if (mq_getattr(fd, &a) != 0) {
        fail("mq_getattr fd %d: %s", fd, strerror(errno));
        return;
    }
    /* curmsgs < 0: not checked (the child, while the parent's verify drains the queue). */
    if (a.mq_maxmsg != maxmsg || a.mq_msgsize != msgsize ||
        (curmsgs >= 0 && a.mq_curmsgs != curmsgs) || a.mq_flags != flags)
        fail("fd %d: maxmsg %ld msgsize %ld curmsgs %ld flags %#lx, want %ld %ld %ld %#lx", fd,
             a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs, a.mq_flags, maxmsg, msgsize, curmsgs,
             flags);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) != acc)
        fail("fd %d has access mode %d, want %d", fd, fl & O_ACCMODE, acc);
    if (fstat(fd, &st) != 0 || (st.st_mode & 07777) != mode)
        fail("fd %d has mode %o, want %o", fd, st.st_mode & 07777, mode);
}

static void check_common(int counts)
{
    check_link(Q_FD, name);
    check_link(QW_FD, name);
    check_link(GONE_FD, gone_link);
    check_attr(Q_FD, 8, 64, counts ? 5 : -1, 0, O_RDWR, 0640);
    check_attr(QW_FD, 8, 64, counts ? 5 : -1, O_NONBLOCK, O_WRONLY, 0640);
    check_attr(GONE_FD, 2, 16, counts ? 1 : -1, 0, O_RDWR, 0600);
    struct stat a, b;
    if (fstat(Q_FD, &a) != 0 || fstat(QW_FD, &b) != 0 || a.st_ino != b.st_ino)
        fail("fds %d and %d are not one queue", Q_FD, QW_FD);
    if (fcntl(Q_FD, F_GETFL) == fcntl(QW_FD, F_GETFL))
        fail("fds %d and %d have the same flags", Q_FD, QW_FD);
}

static void send_all(int fd, const struct msg *m, int n)
{
    for (int i = 0; i < n; i++)
        if (mq_send(fd, m[i].text, strlen(m[i].text), m[i].prio) != 0)
            die("mq_send '%s': %s", m[i].text, strerror(errno));
}

/* Receives every message of queue `fd` (with a timeout already past, so an empty queue
 * answers ETIMEDOUT and the description's flags, shared with the child, stay), checks them
 * against `want` and sends them back in the same order. */
static void check_messages(int fd, const struct msg *want, int n, long msgsize)
{
    char buf[64][64];
    unsigned prio[64];
    ssize_t len[64];
    int got = 0;
    const struct timespec past = {0, 0};
    while (got < 64) {
        len[got] = mq_timedreceive(fd, buf[got], (size_t)msgsize, &prio[got], &past);
        if (len[got] < 0)
            break;
        got++;
    }
    if (errno != ETIMEDOUT)
        fail("mq_receive fd %d: %s", fd, strerror(errno));
    for (int i = 0; i < got; i++)
        if (mq_send(fd, buf[i], (size_t)len[i], prio[i]) != 0)
            die("mq_send back: %s", strerror(errno));
    if (got != n) {
        fail("fd %d holds %d messages, want %d", fd, got, n);
        return;
    }
    for (int i = 0; i < n; i++)
        if (prio[i] != want[i].prio || (size_t)len[i] != strlen(want[i].text) ||
            memcmp(buf[i], want[i].text, (size_t)len[i]) != 0)
            fail("message %d of fd %d is '%.*s' at priority %u, want '%s' at %u", i, fd,
                 (int)len[i], buf[i], prio[i], want[i].text, want[i].prio);
}

static void check_parent(void)
{
    check_common(1);
    check_messages(Q_FD, want_q, 5, 64);
    check_messages(GONE_FD, want_gone, 1, 16);
    check_common(1);
    int status;
    if (waitpid(child, &status, WNOHANG) != 0)
        fail("the child %d has ended", (int)child);
}

static void cleanup(void)
{
    mq_unlink(name);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    snprintf(name, sizeof name, "/crest-mq-%d", (int)getpid());
    snprintf(gone, sizeof gone, "/crest-mq-%d-gone", (int)getpid());
    snprintf(gone_link, sizeof gone_link, "%s (deleted)", gone);
    umask(0);

    struct mq_attr a = {.mq_maxmsg = 8, .mq_msgsize = 64};
    move_fd(mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0640, &a), Q_FD, "mq_open");
    move_fd(mq_open(name, O_WRONLY | O_NONBLOCK), QW_FD, "mq_open write-only");
    static const struct msg sent[] = {
        {1, "one"}, {5, "five-a"}, {5, "five-b"}, {0, ""}, {9, "nine"},
    };
    send_all(QW_FD, sent, 5);

    struct mq_attr g = {.mq_maxmsg = 2, .mq_msgsize = 16};
    move_fd(mq_open(gone, O_RDWR | O_CREAT | O_EXCL, 0600, &g), GONE_FD, "mq_open gone");
    send_all(GONE_FD, want_gone, 1);
    if (mq_unlink(gone) != 0)
        die("mq_unlink: %s", strerror(errno));

    child = fork_dying_child();
    if (child == 0) {
        for (unsigned long n = 0;; n++) {
            if (n % 20 == 0) {
                check_common(0);
                child_exit_on_failure();
            }
            sleep_ms(5);
        }
    }

    char info[160];
    snprintf(info, sizeof info, "child %d\nname %s\n", (int)child, name);
    ctl_write_file(argv[1], "info", info);

    ctl_loop((struct ctl_loop){.log_fd = log_open(argv[2]),
                               .period_ms = 20,
                               .verify = check_parent,
                               .child = child,
                               .cleanup = cleanup});
}

/*
 * epoll: a crest test victim holding an epoll with targets of every kind, an epoll inside it,
 * an inotify instance and a pidfd of itself.
 *
 *   fd 100  the outer epoll, with (data: target, flags):
 *             0x1001  fd 101, a pipe's read end holding one byte, EPOLLIN
 *             0x1002  fd 102, that pipe's write end, EPOLLOUT | EPOLLET
 *             0x1003  fd 103, an eventfd at 5, EPOLLIN | EPOLLONESHOT (re-armed after each
 *                     verify with EPOLL_CTL_MOD on fd 103)
 *             0x1004  fd 104, a timerfd due in an hour, EPOLLIN
 *             0x1005  fd 105, a socketpair end whose peer (fd 106) sent "hi", EPOLLIN|EPOLLRDHUP
 *             0x1007  fd 107, the inner epoll, EPOLLIN
 *             0x1008  fd 108, an eventfd at 1, EPOLLIN | EPOLLONESHOT, fired and not re-armed
 *             0x1009  an eventfd at 0 registered as fd 109, then moved to fd 110 (109 closed)
 *             0x100a  fd 111, an eventfd, EPOLLIN | EPOLLET
 *             0x100b  fd 112, a signalfd for SIGUSR2 (blocked), EPOLLIN: a signal sent after
 *                     the restore must wake the epoll (the kernel hooks a signalfd registration
 *                     on the signal queue of the task that added it)
 *   fd 107  the inner epoll: 0x2006  fd 106 (the peer socket), EPOLLOUT
 *   fd 120  inotify (non-blocking): wd 2 on CTL/watched (IN_CREATE), wd 3 on CTL/watched-file
 *           (IN_MODIFY); wd 1 was added and removed, so the wds do not start at 1
 *   fd 121  a pidfd of the victim itself
 *
 * On a verify request it checks what epoll_wait returns on both epolls (the data and events
 * above: level-triggered targets ready, the fired one-shot silent, the edge-triggered eventfd
 * reported once per write), that EPOLL_CTL_MOD on fd 103 and EPOLL_CTL_DEL of the moved target
 * (ENOENT under fd 110) behave as the kernel's keys say, that a file created in CTL/watched and a
 * write to CTL/watched-file arrive with wds 2 and 3, and that the pidfd names itself.
 *
 * usage: epoll CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>

static const char *ctl;
static unsigned long long verifies;

static void put(int fd, int to, const char *what)
{
    if (fd < 0)
        die("%s: %s", what, strerror(errno));
    if (fd == to)
        return;
    if (dup3(fd, to, O_CLOEXEC) != to)
        die("dup3 %s: %s", what, strerror(errno));
    close(fd);
}

static void add(int ep, int fd, unsigned events, unsigned long long data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        die("epoll_ctl ADD fd %d: %s", fd, strerror(errno));
}

/* data -> events of what epoll_wait(ep) returns now; 0 when not reported. */
static int ready(int ep, unsigned long long *data, unsigned *events, int max)
{
    struct epoll_event evs[32];
    int n = epoll_wait(ep, evs, 32, 0);
    if (n < 0)
        fail("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n && i < max; i++) {
        data[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

static unsigned find(unsigned long long *data, unsigned *events, int n, unsigned long long want)
{
    for (int i = 0; i < n; i++)
        if (data[i] == want)
            return events[i] ? events[i] : 0x80000000u;
    return 0;
}

static void verify_epoll(void)
{
    unsigned long long data[32];
    unsigned events[32];
    int n = ready(100, data, events, 32);
    if (!(find(data, events, n, 0x1001) & EPOLLIN))
        fail("the pipe with a byte is not reported readable");
    if (!(find(data, events, n, 0x1003) & EPOLLIN))
        fail("the armed one-shot eventfd is not reported");
    if (find(data, events, n, 0x1004))
        fail("the timerfd due in an hour is reported");
    if (!(find(data, events, n, 0x1005) & EPOLLIN))
        fail("the socket with data is not reported readable");
    if (!(find(data, events, n, 0x1007) & EPOLLIN))
        fail("the inner epoll is not reported ready");
    if (find(data, events, n, 0x1008))
        fail("the fired one-shot eventfd is reported again");
    if (find(data, events, n, 0x1009))
        fail("the empty eventfd is reported");
    unsigned e2 = find(data, events, n, 0x1002);
    if (e2 && !(e2 & EPOLLOUT))
        fail("the pipe's write end is reported with events %#x", e2);
    /* One-shot: silent until re-armed, under the number it was added with. */
    n = ready(100, data, events, 32);
    if (find(data, events, n, 0x1003))
        fail("the one-shot eventfd fired twice");
    /* The moved target is still keyed by fd 109. */
    if (epoll_ctl(100, EPOLL_CTL_DEL, 110, NULL) != -1 || errno != ENOENT)
        fail("EPOLL_CTL_DEL fd 110 did not fail with ENOENT");
    /* Edge-triggered: one report per write. */
    uint64_t one = 1;
    if (write(111, &one, 8) != 8)
        fail("eventfd write: %s", strerror(errno));
    n = ready(100, data, events, 32);
    if (!(find(data, events, n, 0x100a) & EPOLLIN))
        fail("the edge-triggered eventfd did not report a write");
    n = ready(100, data, events, 32);
    if (find(data, events, n, 0x100a))
        fail("the edge-triggered eventfd reported one write twice");
    /* The signalfd: silent until SIGUSR2 arrives, then reported, then silent once read. */
    n = ready(100, data, events, 32);
    if (find(data, events, n, 0x100b))
        fail("the signalfd is reported before any signal");
    if (kill(getpid(), SIGUSR2) != 0)
        fail("kill SIGUSR2: %s", strerror(errno));
    n = ready(100, data, events, 32);
    if (!(find(data, events, n, 0x100b) & EPOLLIN))
        fail("SIGUSR2 arrived, but the epoll does not report the signalfd");
    struct signalfd_siginfo si;
    if (read(112, &si, sizeof si) != (ssize_t)sizeof si || si.ssi_signo != SIGUSR2)
        fail("the signalfd did not give SIGUSR2: %s", strerror(errno));
    n = ready(100, data, events, 32);
    if (find(data, events, n, 0x100b))
        fail("the signalfd is reported after its signal was read");
    /* Re-armed last, so the next verify finds it armed as before. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0x1003};
    if (epoll_ctl(100, EPOLL_CTL_MOD, 103, &ev) != 0)
        fail("EPOLL_CTL_MOD fd 103: %s", strerror(errno));
    /* The inner epoll. */
    n = ready(107, data, events, 32);
    if (n != 1 || data[0] != 0x2006 || !(events[0] & EPOLLOUT))
        fail("the inner epoll gave %d events (first %#llx)", n, n > 0 ? data[0] : 0ULL);
}

static void verify_inotify(void)
{
    char path[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/watched/n%llu", ctl, ++verifies);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        fail("create %s: %s", path, strerror(errno));
    else
        close(fd);
    snprintf(path, sizeof path, "%s/watched-file", ctl);
    fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || write(fd, "x", 1) != 1)
        fail("write %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    char buf[4096] __attribute__((aligned(8)));
    ssize_t len = read(120, buf, sizeof buf);
    int created = 0, modified = 0;
    for (ssize_t off = 0; len > 0 && off < len;) {
        struct inotify_event *e = (struct inotify_event *)(buf + off);
        if (e->wd == 2 && (e->mask & IN_CREATE))
            created++;
        else if (e->wd == 3 && (e->mask & IN_MODIFY))
            modified++;
        else
            fail("unexpected inotify event wd %d mask %#x", e->wd, e->mask);
        off += (ssize_t)sizeof *e + e->len;
    }
    if (created != 1 || modified != 1)
        fail("inotify gave %d creations (wd 2) and %d modifications (wd 3)", created, modified);
}

static void verify_pidfd(void)
{
    if (syscall(SYS_pidfd_send_signal, 121, 0, NULL, 0) != 0)
        fail("pidfd_send_signal: %s", strerror(errno));
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/self/fdinfo/121");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, text, sizeof text - 1);
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        fail("cannot read %s", path);
        return;
    }
    text[n] = 0;
    char want[32];
    snprintf(want, sizeof want, "Pid:\t%d\n", (int)getpid());
    if (!strstr(text, want))
        fail("the pidfd does not name the victim itself: %s", text);
}

static void verify(void)
{
    verify_epoll();
    verify_inotify();
    verify_pidfd();
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: epoll CTL_DIR LOG_FILE");
    ctl = argv[1];
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);

    put(epoll_create1(EPOLL_CLOEXEC), 100, "epoll_create1");
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0)
        die("pipe2: %s", strerror(errno));
    put(p[0], 101, "pipe");
    put(p[1], 102, "pipe");
    write_all(102, "x", 1, "pipe");
    put(eventfd(5, EFD_NONBLOCK | EFD_CLOEXEC), 103, "eventfd");
    put(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), 104, "timerfd");
    struct itimerspec hour = {{0, 0}, {3600, 0}};
    if (timerfd_settime(104, 0, &hour, NULL) != 0)
        die("timerfd_settime: %s", strerror(errno));
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    put(sv[0], 105, "socket");
    put(sv[1], 106, "socket");
    write_all(106, "hi", 2, "socket");
    put(epoll_create1(EPOLL_CLOEXEC), 107, "inner epoll");
    add(107, 106, EPOLLOUT, 0x2006);
    put(eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC), 108, "eventfd");
    put(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 109, "eventfd");
    put(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), 111, "eventfd");

    /* The one-shot that fires before anything else is added, and stays disarmed. */
    add(100, 108, EPOLLIN | EPOLLONESHOT, 0x1008);
    struct epoll_event ev;
    if (epoll_wait(100, &ev, 1, 0) != 1 || ev.data.u64 != 0x1008)
        die("the one-shot eventfd did not fire");
    add(100, 101, EPOLLIN, 0x1001);
    add(100, 102, EPOLLOUT | EPOLLET, 0x1002);
    add(100, 103, EPOLLIN | EPOLLONESHOT, 0x1003);
    add(100, 104, EPOLLIN, 0x1004);
    add(100, 105, EPOLLIN | EPOLLRDHUP, 0x1005);
    add(100, 107, EPOLLIN, 0x1007);
    add(100, 109, EPOLLIN, 0x1009);
    put(dup(109), 110, "dup");
    close(109);
    add(100, 111, EPOLLIN | EPOLLET, 0x100a);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &usr2, NULL) != 0)
        die("sigprocmask: %s", strerror(errno));
    put(signalfd(-1, &usr2, SFD_NONBLOCK | SFD_CLOEXEC), 112, "signalfd");
    add(100, 112, EPOLLIN, 0x100b);

    char path[CTL_PATH_MAX];
    put(inotify_init1(IN_NONBLOCK | IN_CLOEXEC), 120, "inotify_init1");
    snprintf(path, sizeof path, "%s/watched", ctl);
    if (mkdir(path, 0700) != 0)
        die("mkdir %s: %s", path, strerror(errno));
    int wd = inotify_add_watch(120, path, IN_CREATE);
    if (wd != 1 || inotify_rm_watch(120, wd) != 0)
        die("the throwaway watch: wd %d: %s", wd, strerror(errno));
    char drain[4096];
    while (read(120, drain, sizeof drain) > 0)
        ;
    if (inotify_add_watch(120, path, IN_CREATE) != 2)
        die("the directory's watch is not wd 2");
    snprintf(path, sizeof path, "%s/watched-file", ctl);
    int f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (f < 0)
        die("create %s: %s", path, strerror(errno));
    close(f);
    if (inotify_add_watch(120, path, IN_MODIFY) != 3)
        die("the file's watch is not wd 3");
    put((int)syscall(SYS_pidfd_open, getpid(), 0), 121, "pidfd_open");

    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 5, .verify = verify});
}

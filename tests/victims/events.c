/*
 * events: a crest test victim holding event fds (eventfd, signalfd, timerfd).
 *
 *   fd 100  an eventfd in semaphore mode, counter 3, non-blocking
 *   fd 101  a signalfd for SIGUSR1 and SIGRTMIN+1 (both blocked); one SIGRTMIN+1 with value
 *           42 is queued for it and left unread
 *   fd 102  a CLOCK_MONOTONIC timerfd firing every 20 ms, its expirations read on each tick
 *   fd 103  a CLOCK_MONOTONIC timerfd due in an hour, never read
 *
 * On a verify request it checks the eventfd's count and mode (reads three 1s, then EAGAIN,
 * then writes 3 back), that the signalfd has the queued SIGRTMIN+1 with its value (read, then
 * queued again), that the periodic timerfd keeps expiring (its ticks move within a second),
 * and that the one-shot one is still armed for about an hour.
 *
 * usage: events CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

#define EFD 100
#define SFD 101
#define TFD 102
#define LONG_TFD 103

static unsigned long long ticks;

static void put(int fd, int to, const char *what)
{
    if (fd < 0)
        die("%s: %s", what, strerror(errno));
    if (dup3(fd, to, O_CLOEXEC) != to)
        die("dup3 %s: %s", what, strerror(errno));
    close(fd);
}

static void queue_signal(void)
{
    union sigval v = {.sival_int = 42};
    if (sigqueue(getpid(), SIGRTMIN + 1, v) != 0)
        die("sigqueue: %s", strerror(errno));
}

static void read_ticks(void)
{
    uint64_t n;
    if (read(TFD, &n, sizeof n) == sizeof n)
        ticks += n;
}

static void verify(void)
{
    uint64_t v;
    for (int i = 0; i < 3; i++)
        if (read(EFD, &v, sizeof v) != sizeof v || v != 1)
            fail("eventfd read %d: %s", i, strerror(errno));
    if (read(EFD, &v, sizeof v) != -1 || errno != EAGAIN)
        fail("eventfd: a fourth read did not find it empty");
    v = 3;
    if (write(EFD, &v, sizeof v) != sizeof v)
        fail("eventfd write: %s", strerror(errno));

    struct signalfd_siginfo si;
    if (read(SFD, &si, sizeof si) != sizeof si)
        fail("signalfd: nothing to read (%s)", strerror(errno));
    else if ((int)si.ssi_signo != SIGRTMIN + 1 || si.ssi_int != 42)
        fail("signalfd gave signal %u value %d", si.ssi_signo, si.ssi_int);
    queue_signal();

    unsigned long long before = ticks;
    for (int i = 0; i < 100 && ticks == before; i++) {
        sleep_ms(10);
        read_ticks();
    }
    if (ticks == before)
        fail("the periodic timerfd stopped");

    struct itimerspec cur;
    if (timerfd_gettime(LONG_TFD, &cur) != 0)
        fail("timerfd_gettime: %s", strerror(errno));
    else if (cur.it_value.tv_sec < 3000 || cur.it_value.tv_sec > 3600)
        fail("the one-hour timerfd is due in %ld s", (long)cur.it_value.tv_sec);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: events CTL_DIR LOG_FILE");
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);

    put(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK), EFD, "eventfd");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGRTMIN + 1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        die("sigprocmask: %s", strerror(errno));
    put(signalfd(-1, &set, SFD_NONBLOCK), SFD, "signalfd");
    queue_signal();
    put(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), TFD, "timerfd");
    struct itimerspec every = {{0, 20000000}, {0, 20000000}};
    if (timerfd_settime(TFD, 0, &every, NULL) != 0)
        die("timerfd_settime: %s", strerror(errno));
    put(timerfd_create(CLOCK_MONOTONIC, 0), LONG_TFD, "timerfd");
    struct itimerspec hour = {{0, 0}, {3600, 0}};
    if (timerfd_settime(LONG_TFD, 0, &hour, NULL) != 0)
        die("timerfd_settime: %s", strerror(errno));

    ctl_loop((struct ctl_loop){
        .log_fd = log_fd, .period_ms = 5, .tick = read_ticks, .verify = verify});
}

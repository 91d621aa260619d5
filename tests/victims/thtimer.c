/*
 * thtimer: a crest test victim whose second thread owns a POSIX timer that signals that thread
 * alone (SIGEV_THREAD_ID, SIGRTMIN+3 every 5 ms): after a restore the timer must still exist
 * under its id, signal the same thread, and tick.
 *
 * On a verify request the main thread checks that the thread's tick count moves, that no tick
 * arrived on another thread, and that timer_gettime on the timer id still answers.
 *
 * usage: thtimer CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

static volatile pid_t worker_tid;
static volatile unsigned long long ticks, misdirected;
static timer_t timer;
static volatile int timer_ready;

static void on_tick(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if ((pid_t)syscall(SYS_gettid) == worker_tid && si->si_value.sival_int == 77)
        ticks++;
    else
        misdirected++;
}

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = (pid_t)syscall(SYS_gettid);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGRTMIN + 3;
    ev.sigev_value.sival_int = 77;
    ev._sigev_un._tid = worker_tid;
    if (timer_create(CLOCK_MONOTONIC, &ev, &timer) != 0)
        die("timer_create: %s", strerror(errno));
    struct itimerspec every = {{0, 5000000}, {0, 5000000}};
    if (timer_settime(timer, 0, &every, NULL) != 0)
        die("timer_settime: %s", strerror(errno));
    timer_ready = 1;
    for (;;)
        pause();
    return NULL;
}

static void verify(void)
{
    unsigned long long before = ticks;
    for (int i = 0; i < 200 && ticks == before; i++)
        sleep_ms(5);
    if (ticks == before)
        fail("the thread's timer stopped ticking (%llu ticks)", ticks);
    if (misdirected)
        fail("%llu ticks arrived on another thread", misdirected);
    struct itimerspec cur;
    if (timer_gettime(timer, &cur) != 0)
        fail("timer_gettime: %s", strerror(errno));
    else if (cur.it_interval.tv_nsec != 5000000)
        fail("the timer's period is %ld ns", cur.it_interval.tv_nsec);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: thtimer CTL_DIR LOG_FILE");
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_tick;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    if (sigaction(SIGRTMIN + 3, &sa, NULL) != 0)
        die("sigaction: %s", strerror(errno));
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        die("pthread_create failed");
    while (!timer_ready)
        sleep_ms(1);
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 5, .verify = verify});
}

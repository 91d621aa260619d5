/*
 * manythreads: a victim with 300 threads (the leader and 299 workers), for the restore of many
 * threads at once (issue #12): crest stops each on a breakpoint, whose forced SIGTRAP must leave
 * no trace in the thread's signal mask once it is back in its own.
 *
 * Every worker k records its gettid() at start, sets its name to "mt-<k>", keeps a __thread
 * value that depends on k and notes its address, then sleeps 5 ms at a time and bumps its own
 * tick counter; each round it checks that its tid, name, __thread value and its address are
 * unchanged, and records the first violation. The leader and the odd workers block SIGTRAP,
 * the even ones do not (a forced SIGTRAP unblocks it), and each checks its mask still says so. The leader appends "pid=<pid> n=<counter>" to an
 * O_APPEND log every ~20 ms; on a verify request it checks that /proc/self/task lists every
 * thread, that each worker ticked since the previous verify (waiting up to 10 s) and reported
 * nothing wrong.
 *
 * usage: manythreads CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define NTHREADS 300

struct worker {
    pid_t tid;
    unsigned long long ticks;
    char problem[128];
};

static struct worker workers[NTHREADS];
static __thread unsigned long long tls_value;

static void note(struct worker *w, const char *fmt, int k, long long got, long long want)
{
    if (w->problem[0])
        return;
    snprintf(w->problem, sizeof w->problem, fmt, k, got, want);
}

static void *worker_main(void *arg)
{
    int k = (int)(long)arg;
    struct worker *w = &workers[k];
    char name[16], now[16] = {0};
    snprintf(name, sizeof name, "mt-%d", k);
    prctl(PR_SET_NAME, name);
    tls_value = 0x9e3779b97f4a7c15ULL * (unsigned long long)(k + 1);
    unsigned long long *tls_at = &tls_value;
    /* Inherited blocked from the leader: the even workers unblock it. */
    sigset_t trap;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    if (k % 2 == 0)
        pthread_sigmask(SIG_UNBLOCK, &trap, NULL);
    __atomic_store_n(&w->tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
    for (;;) {
        sleep_ms(5);
        pid_t tid = (pid_t)syscall(SYS_gettid);
        if (tid != w->tid)
            note(w, "thread %d: gettid() is %lld, was %lld", k, tid, w->tid);
        if (tls_value != 0x9e3779b97f4a7c15ULL * (unsigned long long)(k + 1))
            note(w, "thread %d: its __thread value is %#llx, want %#llx", k, (long long)tls_value,
                 (long long)(0x9e3779b97f4a7c15ULL * (unsigned long long)(k + 1)));
        if (&tls_value != tls_at)
            note(w, "thread %d: its __thread value moved to %#llx from %#llx", k,
                 (long long)(uintptr_t)&tls_value, (long long)(uintptr_t)tls_at);
        prctl(PR_GET_NAME, now);
        if (strcmp(now, name) != 0 && !w->problem[0])
            snprintf(w->problem, sizeof w->problem, "thread %d: its name is \"%s\", want \"%s\"",
                     k, now, name);
        sigset_t cur;
        pthread_sigmask(SIG_BLOCK, NULL, &cur);
        if (sigismember(&cur, SIGTRAP) != (k % 2))
            note(w, "thread %d: SIGTRAP is %lld in its mask, want %lld", k,
                 sigismember(&cur, SIGTRAP), k % 2);
        __atomic_add_fetch(&w->ticks, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

static int count_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static unsigned long long last_ticks[NTHREADS];

static void verify(void)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    if (!sigismember(&cur, SIGTRAP))
        fail("the leader's mask lost SIGTRAP");
    int n = count_tasks();
    if (n != NTHREADS)
        fail("/proc/self/task lists %d threads, want %d", n, NTHREADS);
    for (int k = 1; k < NTHREADS; k++) {
        int waited = 0;
        while (__atomic_load_n(&workers[k].ticks, __ATOMIC_ACQUIRE) == last_ticks[k] &&
               waited < 10000) {
            sleep_ms(5);
            waited += 5;
        }
        unsigned long long t = __atomic_load_n(&workers[k].ticks, __ATOMIC_ACQUIRE);
        if (t == last_ticks[k])
            fail("thread %d (tid %d) made no progress for 10 s", k, (int)workers[k].tid);
        last_ticks[k] = t;
        if (workers[k].problem[0])
            fail("%s", workers[k].problem);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    int log_fd = log_open(argv[2]);
    sigset_t trap;
    sigemptyset(&trap);
    sigaddset(&trap, SIGTRAP);
    pthread_sigmask(SIG_BLOCK, &trap, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int k = 1; k < NTHREADS; k++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker_main, (void *)(long)k) != 0)
            die("pthread_create of worker %d failed", k);
    }
    for (int k = 1; k < NTHREADS; k++)
        while (__atomic_load_n(&workers[k].tid, __ATOMIC_ACQUIRE) == 0)
            sleep_ms(1);
    ctl_loop((struct ctl_loop){.log_fd = log_fd, .period_ms = 20, .verify = verify});
}

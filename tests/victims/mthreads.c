/*
 * mthreads: a 13-thread victim (the leader and 12 workers) for multi-threaded dump and restore.
 *
 * Workers, three of each role:
 *   condvar  pthread_cond_timedwait loops with a 3 ms CLOCK_MONOTONIC deadline (futex waits with
 *            an absolute timeout): every other wait is woken by the busy workers' broadcasts, the
 *            others wait on a condvar nobody signals and time out
 *   sleeper  nanosleep of 2-5 ms (one of them clock_nanosleep with TIMER_ABSTIME)
 *   busy     increment shared counters under a mutex in bursts (mostly running in user space)
 *   cpu      sched_getcpu() in a loop: glibc answers it from the thread's rseq area, so a restore
 *            that does not register rseq again leaves it frozen at the CPU of the dump
 *
 * Every thread (leader included, index k = 0..12):
 *   - records its gettid() at start and checks it never changes (crest restores every thread
 *     under its original tid; glibc caches the tid for its mutexes);
 *   - blocks its own signal set (SIGRTMIN+k, plus SIGUSR1/SIGUSR2 for some k) and checks its mask
 *     with pthread_sigmask; the leader queues SIGRTMIN+k to thread k once (pthread_sigqueue), so
 *     every thread holds one thread-directed pending signal, which sigpending() must keep showing
 *     (it would kill the process if a mask were lost: no handlers are installed);
 *   - odd k run with their own sigaltstack, checked with sigaltstack(NULL, ...);
 *   - holds __thread data set to per-thread values and checks the values and their address
 *     (the FS base);
 *   - checks sched_getcpu() is a CPU it may run on, that it agrees with getcpu(2) at least once
 *     in a run of samples, and that its rseq area is still registered with the kernel (a second
 *     registration of the same area answers EBUSY);
 *   - bumps its own progress counter, and records the first violation it sees.
 *
 * The leader appends "pid=<pid> n=<counter>" to an O_APPEND log every ~20 ms. On a verify request
 * it asks every worker to run its full checks (a generation counter), waits up to 10 s until each
 * has done so and made progress since the previous verify, then checks the workers' reports, its
 * own state, that /proc/self/task lists exactly the 13 tids of the start, the shared counters'
 * invariants and /proc/self/{cmdline,environ,auxv}. See victim.h for the control protocol.
 *
 * usage: mthreads CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>

#define NTHREADS 13 /* the leader and 12 workers */
#define PROGRESS_WAIT_MS 10000
#define TLS_WORDS 32
#define ALTSTACK_BYTES (64 * 1024)

enum role { ROLE_LEADER, ROLE_CONDVAR, ROLE_SLEEPER, ROLE_BUSY, ROLE_CPU };

static const char *role_name[] = {"leader", "condvar", "sleeper", "busy", "cpu"};

struct tstate {
    int index;
    enum role role;
    pthread_t th;
    pid_t tid;
    const uint64_t *tls_addr; /* &tls_word as this thread saw it at start */
    unsigned char *altstack;  /* NULL: the thread runs without an alternate stack */
    /* Busy workers: increments of the shared counters, made under shared_mu. */
    unsigned long long tally;
    /* Condvar waiters: how their waits ended. */
    _Atomic unsigned long long wakeups, timeouts;
    _Atomic unsigned long long progress;
    _Atomic unsigned long long checked_gen;
    _Atomic int ready;
    /* The first violation this thread saw; `violated` is set after the text is complete. */
    char violation[256];
    _Atomic int violated;
};

static struct tstate threads[NTHREADS];
static pid_t start_pid;
static int ncpus;
static _Atomic int started;
static _Atomic unsigned long long check_gen;
static unsigned long long last_progress[NTHREADS];

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t shared_cv, quiet_cv;
static unsigned long long shared_a, shared_b; /* under shared_mu: shared_b == 3 * shared_a */

static __thread uint64_t tls_word;
static __thread uint64_t tls_arr[TLS_WORDS];

static void violation(struct tstate *t, const char *fmt, ...)
{
    if (atomic_load(&t->violated))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->violation, sizeof t->violation, fmt, ap);
    va_end(ap);
    atomic_store(&t->violated, 1);
}

static uint64_t tls_value(int k, int j) { return mix((uint64_t)k * 1000 + (uint64_t)j + 1); }

static int thread_sig(int k) { return SIGRTMIN + k; }

/* The signals thread k keeps blocked. */
static void expected_mask(int k, sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, thread_sig(k));
    if (k % 2 == 1)
        sigaddset(set, SIGUSR1);
    if (k % 3 == 0)
        sigaddset(set, SIGUSR2);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void ts_add_ns(struct timespec *ts, long ns)
{
    ts->tv_nsec += ns;
    while (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec -= 1000000000L;
        ts->tv_sec++;
    }
}

/* Sleeps ms milliseconds, sleeping out the remainder after EINTR; checks the kernel's
 * remaining time and that at least ms elapsed. */
static void thread_sleep_ms(struct tstate *t, long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    long long begin = now_ns();
    while (nanosleep(&ts, &ts) != 0) {
        if (errno != EINTR) {
            violation(t, "nanosleep: %s", strerror(errno));
            return;
        }
        if (ts.tv_sec > ms / 1000 + 1) {
            violation(t, "nanosleep left %lld s to sleep of a %ld ms sleep", (long long)ts.tv_sec,
                      ms);
            return;
        }
    }
    if (now_ns() - begin < ms * 1000000LL)
        violation(t, "a %ld ms nanosleep returned after %lld ns", ms, now_ns() - begin);
}

/* Whether the kernel still has this thread's rseq area registered: registering the same area,
 * length and signature again answers EBUSY; a thread without a registration would get 0 (and be
 * registered by this very call, so the violation is what records the loss). */
static void check_rseq(struct tstate *t)
{
    if (__rseq_size == 0)
        return; /* glibc did not register rseq (glibc.pthread.rseq=0): nothing to keep */
    void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
    /* glibc 2.35-2.39 register 32 bytes and export 32; later versions export the feature size
     * (20) but still register at least 32. Try the exported size first. */
    unsigned int lens[2] = {__rseq_size, 32};
    for (int i = 0; i < 2; i++) {
        long r = syscall(SYS_rseq, area, lens[i], 0, RSEQ_SIG);
        if (r == 0) {
            violation(t, "rseq area %p was not registered with the kernel", area);
            return;
        }
        if (errno == EBUSY)
            return;
        if (errno == EPERM) {
            violation(t, "rseq area %p is registered with another signature", area);
            return;
        }
        /* EINVAL: registered with another address or length; try the other length. */
    }
    violation(t, "rseq: the kernel has another area than %p (len %u) registered: %s", area,
              __rseq_size, strerror(errno));
}

static void check_cpu(struct tstate *t, int full)
{
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= ncpus) {
        violation(t, "sched_getcpu() = %d (%s), the machine has %d CPUs", cpu,
                  cpu < 0 ? strerror(errno) : "out of range", ncpus);
        return;
    }
    if (!full)
        return;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        violation(t, "sched_getaffinity: %s", strerror(errno));
        return;
    }
    if (!CPU_ISSET(cpu, &allowed))
        violation(t, "sched_getcpu() = %d, a CPU outside the thread's affinity mask", cpu);
    /* A migration between the two calls can make one sample disagree; a stale rseq cpu_id
     * disagrees every time the thread runs elsewhere. */
    int agreed = 0;
    unsigned raw = 0;
    for (int i = 0; i < 200 && !agreed; i++) {
        int a = sched_getcpu();
        if (syscall(SYS_getcpu, &raw, NULL, NULL) != 0) {
            violation(t, "getcpu: %s", strerror(errno));
            return;
        }
        agreed = a == (int)raw;
        if (!agreed)
            sched_yield();
    }
    if (!agreed)
        violation(t, "sched_getcpu() never agreed with getcpu(2) (last %u) in 200 samples", raw);
    check_rseq(t);
}

/* The checks every thread makes of itself: cheap ones often, all of them when `full`. */
static void thread_check(struct tstate *t, int full)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (tid != t->tid)
        violation(t, "gettid() is %d, the thread started as %d", (int)tid, (int)t->tid);
    if (gettid() != t->tid)
        violation(t, "glibc gettid() is %d, the thread started as %d", (int)gettid(), (int)t->tid);
    if (&tls_word != t->tls_addr)
        violation(t, "&tls_word moved from %p to %p (FS base)", (void *)t->tls_addr,
                  (void *)&tls_word);
    if (tls_word != tls_value(t->index, 0))
        violation(t, "tls_word is %#llx, want %#llx", (unsigned long long)tls_word,
                  (unsigned long long)tls_value(t->index, 0));
    check_cpu(t, full);
    if (!full)
        return;

    for (int j = 0; j < TLS_WORDS; j++)
        if (tls_arr[j] != tls_value(t->index, j + 1)) {
            violation(t, "tls_arr[%d] is %#llx, want %#llx", j, (unsigned long long)tls_arr[j],
                      (unsigned long long)tls_value(t->index, j + 1));
            break;
        }

    sigset_t want, cur, pend;
    expected_mask(t->index, &want);
    if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0) {
        violation(t, "pthread_sigmask: %s", strerror(errno));
        return;
    }
    if (sigpending(&pend) != 0) {
        violation(t, "sigpending: %s", strerror(errno));
        return;
    }
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP || (sig >= 32 && sig < SIGRTMIN))
            continue; /* never blockable, or glibc's own signals */
        if (sigismember(&cur, sig) != sigismember(&want, sig)) {
            violation(t, "signal %d is %s, it should be %s", sig,
                      sigismember(&cur, sig) ? "blocked" : "not blocked",
                      sigismember(&want, sig) ? "blocked" : "not blocked");
            break;
        }
        /* Once the leader has queued them, each thread holds exactly its own signal. */
        int want_pending = atomic_load(&started) && sig == thread_sig(t->index);
        if (sigismember(&pend, sig) != want_pending) {
            violation(t, "signal %d is %s", sig,
                      want_pending ? "no longer pending" : "pending, and nobody sent it");
            break;
        }
    }

    stack_t ss;
    if (sigaltstack(NULL, &ss) != 0) {
        violation(t, "sigaltstack: %s", strerror(errno));
        return;
    }
    if (t->altstack) {
        if (ss.ss_sp != t->altstack || ss.ss_size != ALTSTACK_BYTES || ss.ss_flags != 0)
            violation(t, "sigaltstack is sp %p size %zu flags %#x, want %p %d 0", ss.ss_sp,
                      ss.ss_size, ss.ss_flags, (void *)t->altstack, ALTSTACK_BYTES);
    } else if (!(ss.ss_flags & SS_DISABLE)) {
        violation(t, "sigaltstack is enabled (sp %p size %zu), the thread never set one",
                  ss.ss_sp, ss.ss_size);
    }
}

/* Runs the full checks once per verify generation, the cheap ones otherwise. */
static void checkpoint(struct tstate *t)
{
    unsigned long long gen = atomic_load(&check_gen);
    if (gen != atomic_load(&t->checked_gen)) {
        thread_check(t, 1);
        atomic_store(&t->checked_gen, gen);
    } else {
        thread_check(t, 0);
    }
    atomic_fetch_add(&t->progress, 1);
}

static void thread_setup(struct tstate *t)
{
    t->tid = (pid_t)syscall(SYS_gettid);
    tls_word = tls_value(t->index, 0);
    for (int j = 0; j < TLS_WORDS; j++)
        tls_arr[j] = tls_value(t->index, j + 1);
    t->tls_addr = &tls_word;
    sigset_t set;
    expected_mask(t->index, &set);
    if (pthread_sigmask(SIG_SETMASK, &set, NULL) != 0)
        die("pthread_sigmask failed");
    if (t->altstack) {
        stack_t ss = {.ss_sp = t->altstack, .ss_size = ALTSTACK_BYTES, .ss_flags = 0};
        if (sigaltstack(&ss, NULL) != 0)
            die("sigaltstack: %s", strerror(errno));
    }
    if (t->index > 0) {
        char name[16];
        snprintf(name, sizeof name, "mt-%s-%d", role_name[t->role], t->index);
        pthread_setname_np(pthread_self(), name);
    }
    thread_check(t, 1);
    if (atomic_load(&t->violated))
        die("thread %d failed its first self-check: %s", t->index, t->violation);
}

static void run_condvar(struct tstate *t)
{
    for (unsigned long long i = 0;;) {
        checkpoint(t);
        if (pthread_mutex_lock(&shared_mu) != 0)
            violation(t, "pthread_mutex_lock failed");
        unsigned long long seen = shared_a;
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        ts_add_ns(&deadline, 3000000L);
        int rc = 0;
        /* Every other wait is on a condvar nobody signals: it can only time out. */
        int quiet = (i++ % 2) == 1;
        while ((quiet || shared_a == seen) && rc == 0)
            rc = pthread_cond_timedwait(quiet ? &quiet_cv : &shared_cv, &shared_mu, &deadline);
        pthread_mutex_unlock(&shared_mu);
        if (rc == ETIMEDOUT) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec < deadline.tv_sec ||
                (now.tv_sec == deadline.tv_sec && now.tv_nsec < deadline.tv_nsec))
                violation(t, "pthread_cond_timedwait timed out before its deadline");
            atomic_fetch_add(&t->timeouts, 1);
        } else if (rc == 0) {
            atomic_fetch_add(&t->wakeups, 1);
        } else {
            violation(t, "pthread_cond_timedwait: %s", strerror(rc));
            thread_sleep_ms(t, 3);
        }
    }
}

static void run_sleeper(struct tstate *t)
{
    int absolute = t->index == 2; /* the first sleeper */
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (unsigned long long i = 0;; i++) {
        checkpoint(t);
        long ms = 2 + (long)((i + (unsigned)t->index) % 4);
        if (!absolute) {
            thread_sleep_ms(t, ms);
            continue;
        }
        ts_add_ns(&next, ms * 1000000L);
        int rc;
        while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL)) == EINTR)
            ;
        if (rc != 0)
            violation(t, "clock_nanosleep: %s", strerror(rc));
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec < next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec < next.tv_nsec))
            violation(t, "clock_nanosleep(TIMER_ABSTIME) returned before its deadline");
        /* After a long stop (a dump), start again from now instead of catching up. */
        if (now.tv_sec > next.tv_sec + 1)
            next = now;
    }
}

static void run_busy(struct tstate *t)
{
    volatile uint64_t sink = 0;
    for (unsigned long long round = 0;; round++) {
        checkpoint(t);
        for (int i = 0; i < 2000; i++) {
            if (pthread_mutex_lock(&shared_mu) != 0)
                violation(t, "pthread_mutex_lock failed");
            shared_a++;
            shared_b += 3;
            t->tally++;
            pthread_mutex_unlock(&shared_mu);
            uint64_t x = (uint64_t)i + round;
            for (int j = 0; j < 20; j++)
                x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            sink += x;
        }
        if (round % 4 == 0)
            pthread_cond_broadcast(&shared_cv);
        /* Mostly busy, but leave the CPUs to the rest of the test suite now and then. */
        if (round % 2 == 0)
            thread_sleep_ms(t, 1);
    }
}

static void run_cpu(struct tstate *t)
{
    for (;;) {
        checkpoint(t);
        for (int i = 0; i < 500; i++) {
            int cpu = sched_getcpu();
            if (cpu < 0 || cpu >= ncpus) {
                violation(t, "sched_getcpu() = %d in a loop", cpu);
                break;
            }
            if (i % 100 == 0)
                sched_yield();
        }
        thread_sleep_ms(t, 1);
    }
}

static void *worker_main(void *arg)
{
    struct tstate *t = arg;
    thread_setup(t);
    atomic_store(&t->ready, 1);
    while (!atomic_load(&started))
        thread_sleep_ms(t, 1);
    switch (t->role) {
    case ROLE_CONDVAR:
        run_condvar(t);
        break;
    case ROLE_SLEEPER:
        run_sleeper(t);
        break;
    case ROLE_BUSY:
        run_busy(t);
        break;
    case ROLE_CPU:
        run_cpu(t);
        break;
    case ROLE_LEADER:
        break;
    }
    return NULL;
}

static int is_our_tid(pid_t tid)
{
    for (int k = 0; k < NTHREADS; k++)
        if (threads[k].tid == tid)
            return 1;
    return 0;
}

static void check_task_list(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d) {
        fail("cannot open /proc/self/task: %s", strerror(errno));
        return;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        pid_t tid = (pid_t)atoi(e->d_name);
        n++;
        if (!is_our_tid(tid))
            fail("/proc/self/task lists tid %d, which is none of the threads started", (int)tid);
    }
    closedir(d);
    if (n != NTHREADS)
        fail("/proc/self/task lists %d threads, want %d", n, NTHREADS);
}

static void check_thread_names(void)
{
    for (int k = 1; k < NTHREADS; k++) {
        char path[64], want[16], got[32] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)threads[k].tid);
        snprintf(want, sizeof want, "mt-%s-%d", role_name[threads[k].role], k);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fail("cannot open %s: %s", path, strerror(errno));
            return;
        }
        ssize_t r = read(fd, got, sizeof got - 1);
        close(fd);
        if (r > 0 && got[r - 1] == '\n')
            got[r - 1] = 0;
        if (strcmp(got, want) != 0) {
            fail("thread %d (tid %d) is named '%s', want '%s'", k, (int)threads[k].tid, got, want);
            return;
        }
    }
}

static void check_shared(void)
{
    pthread_mutex_lock(&shared_mu);
    unsigned long long a = shared_a, b = shared_b, sum = 0;
    for (int k = 0; k < NTHREADS; k++)
        sum += threads[k].tally;
    pthread_mutex_unlock(&shared_mu);
    if (b != 3 * a)
        fail("shared counters out of step: a=%llu b=%llu (want b = 3a)", a, b);
    if (a != sum)
        fail("shared counter a=%llu, but the busy workers made %llu increments", a, sum);
}

static void verify_all(void)
{
    fail_msg[0] = 0;
    if (getpid() != start_pid)
        fail("getpid() is %d, started as %d", (int)getpid(), (int)start_pid);
    if ((pid_t)syscall(SYS_getpid) != start_pid)
        fail("SYS_getpid is %ld, started as %d", syscall(SYS_getpid), (int)start_pid);

    /* Ask every worker for a full self-check and wait until each has run one and made
     * progress since the previous verify. */
    unsigned long long gen = atomic_fetch_add(&check_gen, 1) + 1;
    long long deadline = now_ns() + PROGRESS_WAIT_MS * 1000000LL;
    for (int k = 1; k < NTHREADS; k++) {
        struct tstate *t = &threads[k];
        while (atomic_load(&t->checked_gen) < gen ||
               atomic_load(&t->progress) <= last_progress[k]) {
            if (now_ns() > deadline) {
                fail("thread %d (tid %d, %s) made no progress in %d ms (progress %llu, checked "
                     "generation %llu of %llu)",
                     k, (int)t->tid, role_name[t->role], PROGRESS_WAIT_MS,
                     atomic_load(&t->progress), atomic_load(&t->checked_gen), gen);
                break;
            }
            sleep_ms(1);
        }
    }
    struct tstate *self = &threads[0];
    thread_check(self, 1);
    for (int k = 0; k < NTHREADS; k++)
        if (atomic_load(&threads[k].violated))
            fail("thread %d (tid %d, %s): %s", k, (int)threads[k].tid,
                 role_name[threads[k].role], threads[k].violation);
    check_task_list();
    check_thread_names();
    check_shared();
    /* Both ways a timed wait ends must have happened (by the deadline, at the first verify). */
    for (;;) {
        unsigned long long cv_wakeups = 0, cv_timeouts = 0;
        for (int k = 1; k < NTHREADS; k++) {
            cv_wakeups += atomic_load(&threads[k].wakeups);
            cv_timeouts += atomic_load(&threads[k].timeouts);
        }
        if (cv_wakeups > 0 && cv_timeouts > 0)
            break;
        if (now_ns() > deadline) {
            fail("condvar waits: %llu woken by a broadcast, %llu timed out; want both", cv_wakeups,
                 cv_timeouts);
            break;
        }
        sleep_ms(1);
    }
    proc_snapshots_check();
    for (int k = 0; k < NTHREADS; k++)
        last_progress[k] = atomic_load(&threads[k].progress);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    start_pid = getpid();
    ncpus = get_nprocs_conf();
    if (thread_sig(NTHREADS - 1) > SIGRTMAX)
        die("SIGRTMIN+%d is above SIGRTMAX", NTHREADS - 1);

    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&shared_cv, &ca);
    pthread_cond_init(&quiet_cv, &ca);

    static const enum role roles[4] = {ROLE_CONDVAR, ROLE_SLEEPER, ROLE_BUSY, ROLE_CPU};
    for (int k = 0; k < NTHREADS; k++) {
        threads[k].index = k;
        threads[k].role = k == 0 ? ROLE_LEADER : roles[(k - 1) % 4];
        if (k % 2 == 1) {
            threads[k].altstack = malloc(ALTSTACK_BYTES);
            if (!threads[k].altstack)
                die("malloc failed");
        }
    }
    thread_setup(&threads[0]);
    threads[0].th = pthread_self();
    for (int k = 1; k < NTHREADS; k++)
        if (pthread_create(&threads[k].th, NULL, worker_main, &threads[k]) != 0)
            die("pthread_create failed");
    for (int k = 1; k < NTHREADS; k++)
        while (!atomic_load(&threads[k].ready))
            sleep_ms(1);
    /* One thread-directed signal for each thread, blocked by that thread only. */
    for (int k = 0; k < NTHREADS; k++) {
        union sigval v = {.sival_int = k};
        int rc = pthread_sigqueue(threads[k].th, thread_sig(k), v);
        if (rc != 0)
            die("pthread_sigqueue to thread %d: %s", k, strerror(rc));
    }
    atomic_store(&started, 1);
    proc_snapshots_take();

    /* Check the freshly built state once, so a broken victim fails before any dump. */
    verify_all();
    if (fail_msg[0])
        die("self-check at start failed: %s", fail_msg);

    unsigned long long counter = 0;
    char line[128];
    for (;;) {
        sleep_ms(20);
        counter++;
        thread_check(&threads[0], 0);
        atomic_fetch_add(&threads[0].progress, 1);
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        if (ctl_verify_requested()) {
            verify_all();
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}

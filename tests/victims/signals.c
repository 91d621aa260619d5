/*
 * signals: a crest test victim for the state only the process itself can see (issue #3).
 * Single-threaded. At start it sets up:
 *
 *   handlers    SA_SIGINFO|SA_ONSTACK|SA_RESTART with a non-empty sa_mask for SIGUSR1, SIGALRM,
 *               SIGRTMIN+2, SIGUSR2, SIGRTMIN+5 and SIGRTMIN+6; each checks that it runs on the
 *               alternate stack and that its sa_mask (and its own signal) is blocked while it runs
 *   SIG_IGN     for SIGPIPE
 *   altstack    a 64 KiB mmap'd sigaltstack
 *   ITIMER_REAL every 5 ms (SIGALRM, counted; si_code must be SI_KERNEL)
 *   ITIMER_VIRTUAL, ITIMER_PROF  value 1000 s, interval 500 s: armed, never firing
 *   POSIX timer CLOCK_MONOTONIC, SIGEV_SIGNAL on SIGRTMIN+2 with sigev_value 0x5eed, every 7 ms
 *               (counted; si_code must be SI_TIMER, si_value 0x5eed, si_timerid the timer)
 *   blocked     SIGUSR2, SIGRTMIN+5, SIGRTMIN+6 in the process mask, left pending:
 *               sigqueue(getpid(), SIGUSR2, 0x1234), sigqueue(getpid(), SIGRTMIN+5, 1) and (.., 2)
 *               (process-wide), pthread_sigqueue(self, SIGRTMIN+6, 0x77) (thread-directed)
 *   prctl       PR_SET_CHILD_SUBREAPER 1, PR_SET_NO_NEW_PRIVS 1; dumpable, personality, the
 *               clear-child-tid address and the robust list as glibc left them
 *
 * Every ~20 ms (nanosleep, restarted with the remaining time after EINTR, which the timers cause
 * all the time) it increments a counter, sigqueue()s SIGUSR1 to itself with the counter as value
 * (the handler runs before sigqueue returns and checks the value), and appends
 * "pid=<pid> n=<counter>" to an O_APPEND log.
 *
 * On a verify request (see victim.h) it checks: its pid; all 64 sigactions read back exactly as
 * after setup (raw rt_sigaction: handler, flags incl. SA_RESTORER, restorer, mask), and the
 * installed ones carry the flags and masks it asked for; SIGPIPE is SIG_IGN; the altstack; the
 * process mask; all three itimers and the POSIX timer armed with their intervals; the pending
 * set; the prctl state; no handler ran off the altstack or with a wrong mask or siginfo; and it
 * waits (up to 2 s) until both timers fire again. When the request file contains "final", it
 * then unblocks the three pending signals and checks that SIGUSR2 arrived once (value 0x1234,
 * SI_QUEUE, from its own pid), SIGRTMIN+5 twice with values 1 then 2, and SIGRTMIN+6 once
 * (0x77). After that, later verifies check the signals stay delivered exactly once.
 *
 * The result is "ok <pid> <counter> <SIGALRM count> <RT timer count> <SIGUSR1 count>" or
 * "FAIL <what>". At start it writes CTL_DIR/info ("key value" lines: SIGRTMIN, timer id,
 * altstack, handler and restorer addresses, robust list, clear-child-tid address) for the tests
 * to compare with an image.
 *
 * usage: signals CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define ALTSTACK_BYTES (64 * 1024)
#define ITIMER_US 5000L
#define PTIMER_NS 7000000L
#define PTIMER_VALUE 0x5eed
#define USR2_VALUE 0x1234
#define RT6_VALUE 0x77
#define CPU_ITIMER_VALUE_S 1000L
#define CPU_ITIMER_INTERVAL_S 500L
#define GROWTH_WAIT_MS 2000
#define WANT_FLAGS (SA_SIGINFO | SA_ONSTACK | SA_RESTART)
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif
/* glibc sets SA_RESTORER (its __restore_rt) on x86_64; arm64 has no sa_restorer at all (the
 * kernel returns through the vDSO's sigreturn trampoline). */
#ifdef __x86_64__
#define WANT_RESTORER SA_RESTORER
#else
#define WANT_RESTORER 0
#endif
#define NSIGS 64

/* The kernel's struct sigaction for rt_sigaction(2) on x86_64 (what crest dumps). */
struct ksigaction {
    unsigned long handler;
    unsigned long flags;
    unsigned long restorer;
    uint64_t mask;
};

static pid_t start_pid;
static unsigned long long counter;
static int log_fd;
static char info_path[CTL_PATH_MAX], info_tmp[CTL_PATH_MAX];

static void *alt_sp;
static size_t alt_size;
static timer_t ptimer;
static int ptimer_kid; /* the kernel's timer id (glibc's timer_t for SIGEV_SIGNAL) */
static int sig_rt2, sig_rt5, sig_rt6;

static struct ksigaction kact_at_start[NSIGS + 1];
static int personality_at_start;
static unsigned long tid_address_at_start;
static int have_tid_address;
static unsigned long robust_head_at_start;
static size_t robust_len_at_start;

/* Written by handlers, read by the main loop (single-threaded: volatile is enough). */
static volatile unsigned long alrm_count, alrm_bad_code, rt2_count, rt2_bad;
static volatile unsigned long usr1_count, usr1_bad, usr1_sent;
static volatile unsigned long off_altstack, bad_mask;
static volatile int last_bad_sig;
static volatile unsigned long usr2_count, rt5_count, rt6_count;
static volatile int usr2_value, usr2_code, usr2_pid, rt6_value, rt6_code;
static volatile int rt5_values[4], rt5_codes[4];

static unsigned long alrm_at_last_verify, rt2_at_last_verify;
static int final_done;

/* One installed handler: the signal, the function and the signals of its sa_mask. */
struct handler {
    int sig;
    void (*fn)(int, siginfo_t *, void *);
    int mask[2];
};
static struct handler handlers[6];

static const struct handler *handler_of(int sig)
{
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if (handlers[i].sig == sig)
            return &handlers[i];
    return NULL;
}

/* Every handler: it must run on the altstack (SA_ONSTACK), with its own signal and its sa_mask
 * blocked (the kernel applies both on delivery; no SA_NODEFER). Counts violations only:
 * sigprocmask is async-signal-safe, formatting a message is not. */
static void handler_checks(int sig)
{
    volatile char here = 0;
    uintptr_t a = (uintptr_t)&here, lo = (uintptr_t)alt_sp;
    if (a < lo || a >= lo + alt_size) {
        off_altstack++;
        last_bad_sig = sig;
    }
    sigset_t cur;
    const struct handler *h = handler_of(sig);
    if (sigprocmask(SIG_BLOCK, NULL, &cur) != 0 || !h || !sigismember(&cur, sig) ||
        !sigismember(&cur, h->mask[0]) || !sigismember(&cur, h->mask[1])) {
        bad_mask++;
        last_bad_sig = sig;
    }
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handler_checks(sig);
    usr1_count++;
    if (si->si_code != SI_QUEUE || si->si_value.sival_int != (int)usr1_sent ||
        si->si_pid != start_pid)
        usr1_bad++;
}

static void on_alrm(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handler_checks(sig);
    alrm_count++;
    /* ITIMER_REAL expiry is sent by the kernel (it_real_fn -> SEND_SIG_PRIV): SI_KERNEL. */
    if (si->si_code != SI_KERNEL)
        alrm_bad_code++;
}

static void on_rt2(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handler_checks(sig);
    rt2_count++;
    if (si->si_code != SI_TIMER || si->si_value.sival_int != PTIMER_VALUE ||
        si->si_timerid != ptimer_kid)
        rt2_bad++;
}

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handler_checks(sig);
    usr2_count++;
    usr2_value = si->si_value.sival_int;
    usr2_code = si->si_code;
    usr2_pid = si->si_pid;
}

static void on_rt5(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handler_checks(sig);
    unsigned long i = rt5_count++;
    if (i < 4) {
        rt5_values[i] = si->si_value.sival_int;
        rt5_codes[i] = si->si_code;
    }
}

static void on_rt6(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handler_checks(sig);
    rt6_count++;
    rt6_value = si->si_value.sival_int;
    rt6_code = si->si_code;
}

static int ksigaction_get(int sig, struct ksigaction *ka)
{
    memset(ka, 0, sizeof *ka);
    return (int)syscall(SYS_rt_sigaction, sig, NULL, ka, 8);
}

static void install_handlers(void)
{
    struct handler h[6] = {
        {SIGUSR1, on_usr1, {SIGHUP, SIGTERM}},
        {SIGALRM, on_alrm, {SIGUSR1, sig_rt2}},
        {sig_rt2, on_rt2, {SIGALRM, SIGWINCH}},
        {SIGUSR2, on_usr2, {SIGHUP, SIGQUIT}},
        {sig_rt5, on_rt5, {SIGUSR1, SIGALRM}},
        {sig_rt6, on_rt6, {SIGTERM, SIGCHLD}},
    };
    memcpy(handlers, h, sizeof h);
    for (size_t i = 0; i < 6; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = handlers[i].fn;
        sa.sa_flags = WANT_FLAGS;
        sigemptyset(&sa.sa_mask);
        sigaddset(&sa.sa_mask, handlers[i].mask[0]);
        sigaddset(&sa.sa_mask, handlers[i].mask[1]);
        if (sigaction(handlers[i].sig, &sa, NULL) != 0)
            die("sigaction(%d): %s", handlers[i].sig, strerror(errno));
    }
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &ign, NULL) != 0)
        die("sigaction(SIGPIPE): %s", strerror(errno));
}

static void arm_timers(void)
{
    struct itimerval real = {{0, ITIMER_US}, {0, ITIMER_US}};
    if (setitimer(ITIMER_REAL, &real, NULL) != 0)
        die("setitimer(ITIMER_REAL): %s", strerror(errno));
    struct itimerval cpu = {{CPU_ITIMER_INTERVAL_S, 0}, {CPU_ITIMER_VALUE_S, 0}};
    if (setitimer(ITIMER_VIRTUAL, &cpu, NULL) != 0 || setitimer(ITIMER_PROF, &cpu, NULL) != 0)
        die("setitimer(ITIMER_VIRTUAL/PROF): %s", strerror(errno));

    struct sigevent sev;
    memset(&sev, 0, sizeof sev); /* all 64 bits of sigev_value are 0x5eed, not just sival_int */
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = sig_rt2;
    sev.sigev_value.sival_int = PTIMER_VALUE;
    if (timer_create(CLOCK_MONOTONIC, &sev, &ptimer) != 0)
        die("timer_create: %s", strerror(errno));
    /* For SIGEV_SIGNAL glibc hands out the kernel's timer id as the timer_t. */
    ptimer_kid = (int)(intptr_t)ptimer;
    struct itimerspec its = {{0, PTIMER_NS}, {0, PTIMER_NS}};
    if (timer_settime(ptimer, 0, &its, NULL) != 0)
        die("timer_settime: %s", strerror(errno));
}

static void queue_pending(void)
{
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, sig_rt5);
    sigaddset(&block, sig_rt6);
    if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
        die("sigprocmask: %s", strerror(errno));
    union sigval v;
    v.sival_ptr = NULL;
    v.sival_int = USR2_VALUE;
    if (sigqueue(getpid(), SIGUSR2, v) != 0)
        die("sigqueue(SIGUSR2): %s", strerror(errno));
    /* Real-time signals queue: both instances stay pending, in order. */
    v.sival_int = 1;
    if (sigqueue(getpid(), sig_rt5, v) != 0)
        die("sigqueue(SIGRTMIN+5): %s", strerror(errno));
    v.sival_int = 2;
    if (sigqueue(getpid(), sig_rt5, v) != 0)
        die("sigqueue(SIGRTMIN+5): %s", strerror(errno));
    /* rt_tgsigqueueinfo: pending on this thread, not process-wide. */
    v.sival_int = RT6_VALUE;
    int err = pthread_sigqueue(pthread_self(), sig_rt6, v);
    if (err != 0)
        die("pthread_sigqueue(SIGRTMIN+6): %s", strerror(err));
}

static void set_prctls(void)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
}

static void take_snapshots(void)
{
    for (int sig = 1; sig <= NSIGS; sig++)
        if (ksigaction_get(sig, &kact_at_start[sig]) != 0)
            die("rt_sigaction(%d) query: %s", sig, strerror(errno));
    personality_at_start = personality(0xffffffff);
    /* PR_GET_TID_ADDRESS exists only with CONFIG_CHECKPOINT_RESTORE. */
    have_tid_address = prctl(PR_GET_TID_ADDRESS, &tid_address_at_start, 0, 0, 0) == 0;
    if (syscall(SYS_get_robust_list, 0, &robust_head_at_start, &robust_len_at_start) != 0)
        die("get_robust_list: %s", strerror(errno));
}

static void write_info(void)
{
    char buf[2048];
    int n = snprintf(buf, sizeof buf,
                     "sigrtmin %d\ntimer_id %d\naltstack_sp %#lx\naltstack_size %zu\n"
                     "restorer %#lx\n",
                     SIGRTMIN, ptimer_kid, (unsigned long)alt_sp, alt_size,
                     kact_at_start[SIGUSR1].restorer);
    n += snprintf(buf + n, sizeof buf - (size_t)n, "robust_list %#lx\nrobust_len %zu\n",
                  robust_head_at_start, robust_len_at_start);
    if (have_tid_address)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "tid_address %#lx\n",
                      tid_address_at_start);
    for (size_t i = 0; i < 6; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "handler %d %#lx\n", handlers[i].sig,
                      (unsigned long)handlers[i].fn);
    int fd = open(info_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create %s: %s", info_tmp, strerror(errno));
    write_all(fd, buf, (size_t)n, info_tmp);
    close(fd);
    if (rename(info_tmp, info_path) != 0)
        die("cannot rename %s: %s", info_tmp, strerror(errno));
}

/* ---- verification ---- */

static void check_sigactions(void)
{
    for (int sig = 1; sig <= NSIGS; sig++) {
        struct ksigaction now, *was = &kact_at_start[sig];
        if (ksigaction_get(sig, &now) != 0) {
            fail("rt_sigaction(%d) query: %s", sig, strerror(errno));
            return;
        }
        if (memcmp(&now, was, sizeof now) != 0) {
            fail("signal %d: handler %#lx flags %#lx restorer %#lx mask %#llx, at start "
                 "handler %#lx flags %#lx restorer %#lx mask %#llx",
                 sig, now.handler, now.flags, now.restorer, (unsigned long long)now.mask,
                 was->handler, was->flags, was->restorer, (unsigned long long)was->mask);
            return;
        }
    }
    /* And what the snapshot holds is what was asked for (so a broken setup cannot pass). */
    for (size_t i = 0; i < 6; i++) {
        const struct handler *h = &handlers[i];
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        if (sigaction(h->sig, NULL, &sa) != 0) {
            fail("sigaction(%d) query: %s", h->sig, strerror(errno));
            return;
        }
        if (sa.sa_sigaction != h->fn)
            fail("signal %d: handler %p, want %p", h->sig, (void *)sa.sa_sigaction,
                 (void *)h->fn);
        if ((sa.sa_flags & (WANT_FLAGS | WANT_RESTORER)) != (WANT_FLAGS | WANT_RESTORER))
            fail("signal %d: flags %#x lack some of SA_SIGINFO|SA_ONSTACK|SA_RESTART|"
                 "SA_RESTORER",
                 h->sig, sa.sa_flags);
        for (int s = 1; s <= NSIGS; s++) {
            int want = s == h->mask[0] || s == h->mask[1];
            int has = sigismember(&sa.sa_mask, s);
            /* has < 0: glibc's reserved signals (32, 33), which it refuses to name. */
            if (has >= 0 && has != want)
                fail("signal %d: sa_mask %s signal %d", h->sig, want ? "lacks" : "has", s);
        }
    }
    struct sigaction pipe_sa;
    memset(&pipe_sa, 0, sizeof pipe_sa);
    if (sigaction(SIGPIPE, NULL, &pipe_sa) != 0 || pipe_sa.sa_handler != SIG_IGN)
        fail("SIGPIPE is no longer SIG_IGN (handler %p)", (void *)pipe_sa.sa_handler);
}

static void check_altstack(void)
{
    stack_t cur;
    memset(&cur, 0, sizeof cur);
    if (sigaltstack(NULL, &cur) != 0) {
        fail("sigaltstack query: %s", strerror(errno));
        return;
    }
    if (cur.ss_sp != alt_sp || cur.ss_size != alt_size || cur.ss_flags != 0)
        fail("sigaltstack is sp %p size %zu flags %#x, want sp %p size %zu flags 0", cur.ss_sp,
             cur.ss_size, cur.ss_flags, alt_sp, alt_size);
}

/* The blocked mask and the pending set, before and after the final unblock. */
static void check_mask_and_pending(void)
{
    sigset_t blocked, pending;
    if (sigprocmask(SIG_BLOCK, NULL, &blocked) != 0 || sigpending(&pending) != 0) {
        fail("sigprocmask/sigpending: %s", strerror(errno));
        return;
    }
    for (int s = 1; s <= NSIGS; s++) {
        int held = s == SIGUSR2 || s == sig_rt5 || s == sig_rt6;
        int want = held && !final_done;
        if (sigismember(&blocked, s) != want)
            fail("signal %d is %sblocked, want %sblocked", s, want ? "not " : "",
                 want ? "" : "not ");
        if (held && sigismember(&pending, s) != want)
            fail("signal %d is %spending, want %spending", s, want ? "not " : "",
                 want ? "" : "not ");
    }
}

static long tv_us(struct timeval tv) { return tv.tv_sec * 1000000L + tv.tv_usec; }

static void check_itimers(void)
{
    static const struct {
        int which;
        const char *name;
        long interval_us, max_value_us;
    } want[3] = {
        {ITIMER_REAL, "ITIMER_REAL", ITIMER_US, ITIMER_US},
        {ITIMER_VIRTUAL, "ITIMER_VIRTUAL", CPU_ITIMER_INTERVAL_S * 1000000L,
         CPU_ITIMER_VALUE_S * 1000000L},
        {ITIMER_PROF, "ITIMER_PROF", CPU_ITIMER_INTERVAL_S * 1000000L,
         CPU_ITIMER_VALUE_S * 1000000L},
    };
    for (int i = 0; i < 3; i++) {
        struct itimerval cur;
        /* ITIMER_REAL's hrtimer is not re-armed when it fires (it_real_fn returns
         * HRTIMER_NORESTART) but when its SIGALRM is dequeued, so in between getitimer reads a
         * value of 0. Such a SIGALRM is delivered as this getitimer returns, so a second read
         * sees the timer armed again; a disarmed timer reads 0 every time. */
        int tries = 0, ok;
        do
            ok = getitimer(want[i].which, &cur) == 0;
        while (ok && want[i].which == ITIMER_REAL && tv_us(cur.it_value) == 0 && ++tries < 3);
        if (!ok) {
            fail("getitimer(%s): %s", want[i].name, strerror(errno));
            continue;
        }
        long iv = tv_us(cur.it_interval), val = tv_us(cur.it_value);
        /* An armed timer never reads 0 remaining (the kernel reports at least 1 us). A CPU
         * timer's value may read up to a tick above what was set: set_cpu_itimer adds
         * TICK_NSEC to a non-zero value. */
        long slack = want[i].which == ITIMER_REAL ? 0 : 100000L;
        if (iv != want[i].interval_us || val <= 0 || val > want[i].max_value_us + slack)
            fail("%s: interval %ld us, value %ld us; want interval %ld us, value in (0, %ld]",
                 want[i].name, iv, val, want[i].interval_us, want[i].max_value_us);
    }

    struct itimerspec its;
    if (timer_gettime(ptimer, &its) != 0) {
        fail("timer_gettime(timer %d): %s", ptimer_kid, strerror(errno));
        return;
    }
    long iv = its.it_interval.tv_sec * 1000000000L + its.it_interval.tv_nsec;
    long val = its.it_value.tv_sec * 1000000000L + its.it_value.tv_nsec;
    if (iv != PTIMER_NS || val <= 0 || val > PTIMER_NS)
        fail("POSIX timer %d: interval %ld ns, value %ld ns; want interval %ld ns, value in "
             "(0, %ld]",
             ptimer_kid, iv, val, PTIMER_NS, PTIMER_NS);
    if (timer_getoverrun(ptimer) < 0)
        fail("timer_getoverrun(timer %d): %s", ptimer_kid, strerror(errno));
}

static void check_prctls(void)
{
    int v = -1;
    if (prctl(PR_GET_CHILD_SUBREAPER, &v, 0, 0, 0) != 0 || v != 1)
        fail("PR_GET_CHILD_SUBREAPER is %d, want 1", v);
    v = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    if (v != 1)
        fail("PR_GET_NO_NEW_PRIVS is %d, want 1", v);
    v = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    if (v != 1)
        fail("PR_GET_DUMPABLE is %d, want 1", v);
    v = -1;
    if (prctl(PR_GET_PDEATHSIG, &v, 0, 0, 0) != 0 || v != 0)
        fail("PR_GET_PDEATHSIG is %d, want 0", v);
    v = personality(0xffffffff);
    if (v != personality_at_start)
        fail("personality is %#x, was %#x", v, personality_at_start);
    if (have_tid_address) {
        unsigned long a = 0;
        if (prctl(PR_GET_TID_ADDRESS, &a, 0, 0, 0) != 0 || a != tid_address_at_start)
            fail("clear-child-tid address is %#lx, was %#lx", a, tid_address_at_start);
    }
    unsigned long head = 0;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, 0, &head, &len) != 0 || head != robust_head_at_start ||
        len != robust_len_at_start)
        fail("robust list is %#lx (len %zu), was %#lx (len %zu)", head, len,
             robust_head_at_start, robust_len_at_start);
}

static void check_handler_counts(void)
{
    if (off_altstack)
        fail("%lu handler runs were off the alternate stack (last: signal %d)", off_altstack,
             last_bad_sig);
    if (bad_mask)
        fail("%lu handler runs had their sa_mask or own signal unblocked (last: signal %d)",
             bad_mask, last_bad_sig);
    if (alrm_bad_code)
        fail("%lu SIGALRMs did not carry si_code SI_KERNEL", alrm_bad_code);
    if (rt2_bad)
        fail("%lu timer signals did not carry SI_TIMER, timer %d and value %#x", rt2_bad,
             ptimer_kid, PTIMER_VALUE);
    if (usr1_bad)
        fail("%lu SIGUSR1s did not carry SI_QUEUE, our pid and the value sent", usr1_bad);
    if (usr1_count != usr1_sent)
        fail("SIGUSR1 sent to self %lu times, handled %lu times", usr1_sent, usr1_count);
    unsigned long want_usr2 = final_done, want_rt5 = final_done ? 2 : 0, want_rt6 = final_done;
    if (usr2_count != want_usr2 || rt5_count != want_rt5 || rt6_count != want_rt6)
        fail("held signals handled SIGUSR2 x%lu, SIGRTMIN+5 x%lu, SIGRTMIN+6 x%lu; want x%lu, "
             "x%lu, x%lu",
             usr2_count, rt5_count, rt6_count, want_usr2, want_rt5, want_rt6);
}

/* Both timers must fire again now (not merely be armed): waits until each count grows. */
static void check_timers_tick(void)
{
    unsigned long a0 = alrm_count, r0 = rt2_count;
    for (int waited = 0; waited < GROWTH_WAIT_MS; waited += 5) {
        if (alrm_count > a0 && rt2_count > r0)
            break;
        sleep_ms(5);
    }
    if (alrm_count <= a0 || rt2_count <= r0)
        fail("timers stopped: in %d ms SIGALRM went %lu -> %lu, the POSIX timer %lu -> %lu",
             GROWTH_WAIT_MS, a0, alrm_count, r0, rt2_count);
    if (alrm_count <= alrm_at_last_verify || rt2_count <= rt2_at_last_verify)
        fail("timer counts did not grow since the last verify");
    alrm_at_last_verify = alrm_count;
    rt2_at_last_verify = rt2_count;
}

/* Lets the held signals in and checks each arrived once with what was queued. Handlers run
 * before sigprocmask returns (in some order: each frame goes onto the altstack on top of the
 * previous one), but SIGRTMIN+5 masks itself, so its two instances run in queue order. */
static void deliver_held(void)
{
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, SIGUSR2);
    sigaddset(&unblock, sig_rt5);
    sigaddset(&unblock, sig_rt6);
    if (sigprocmask(SIG_UNBLOCK, &unblock, NULL) != 0) {
        fail("sigprocmask(SIG_UNBLOCK): %s", strerror(errno));
        return;
    }
    final_done = 1;
    if (usr2_count != 1 || usr2_value != USR2_VALUE || usr2_code != SI_QUEUE ||
        usr2_pid != start_pid)
        fail("pending SIGUSR2: handled %lu times, value %#x code %d pid %d; want once, "
             "value %#x code %d (SI_QUEUE) pid %d",
             usr2_count, usr2_value, usr2_code, usr2_pid, USR2_VALUE, SI_QUEUE, (int)start_pid);
    if (rt5_count != 2 || rt5_values[0] != 1 || rt5_values[1] != 2 || rt5_codes[0] != SI_QUEUE ||
        rt5_codes[1] != SI_QUEUE)
        fail("pending SIGRTMIN+5: handled %lu times, values %d, %d codes %d, %d; want values "
             "1, 2 with SI_QUEUE",
             rt5_count, rt5_values[0], rt5_values[1], rt5_codes[0], rt5_codes[1]);
    if (rt6_count != 1 || rt6_value != RT6_VALUE || rt6_code != SI_QUEUE)
        fail("pending SIGRTMIN+6: handled %lu times, value %#x code %d; want once, %#x, "
             "SI_QUEUE",
             rt6_count, rt6_value, rt6_code, RT6_VALUE);
}

static void verify_all(int final)
{
    fail_msg[0] = 0;
    if (getpid() != start_pid)
        fail("getpid() is %d, started as %d", (int)getpid(), (int)start_pid);
    if ((pid_t)syscall(SYS_getpid) != start_pid)
        fail("SYS_getpid is %ld, started as %d", syscall(SYS_getpid), (int)start_pid);
    int fl = fcntl(log_fd, F_GETFL);
    if (fl < 0 || !(fl & O_APPEND))
        fail("log fd %d lost O_APPEND (flags %#x)", log_fd, fl);
    check_sigactions();
    check_altstack();
    check_mask_and_pending();
    check_itimers();
    check_prctls();
    check_handler_counts();
    check_timers_tick();
    if (final && !final_done)
        deliver_held();
    check_mask_and_pending();
    check_handler_counts();
}

/* Like ctl_verify_requested, but also reads the request: "final" asks for the final check. */
static int verify_requested(int *final)
{
    int fd = open(ctl_request, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[64] = {0};
    ssize_t n;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    unlink(ctl_request);
    *final = n > 0 && strstr(buf, "final") != NULL;
    return 1;
}

/* Like ctl_report, with the signal counters after the loop counter. */
static void report(void)
{
    char line[700];
    if (fail_msg[0])
        snprintf(line, sizeof line, "FAIL %s\n", fail_msg);
    else
        snprintf(line, sizeof line, "ok %d %llu %lu %lu %lu\n", (int)getpid(), counter,
                 alrm_count, rt2_count, usr1_count);
    int fd = open(ctl_result_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create %s: %s", ctl_result_tmp, strerror(errno));
    write_all(fd, line, strlen(line), ctl_result_tmp);
    close(fd);
    if (rename(ctl_result_tmp, ctl_result) != 0)
        die("cannot rename %s: %s", ctl_result_tmp, strerror(errno));
    if (fail_msg[0])
        fputs(line, stderr);
}

static void run(void)
{
    char line[128];
    for (;;) {
        sleep_ms(20);
        counter++;
        usr1_sent++;
        union sigval v;
        v.sival_ptr = NULL;
        v.sival_int = (int)usr1_sent;
        /* Not blocked, single thread: the handler runs before sigqueue returns. */
        if (sigqueue(getpid(), SIGUSR1, v) != 0)
            die("sigqueue(SIGUSR1): %s", strerror(errno));
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        int final;
        if (verify_requested(&final)) {
            verify_all(final);
            report();
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    snprintf(info_path, sizeof info_path, "%s/info", argv[1]);
    snprintf(info_tmp, sizeof info_tmp, "%s/info.tmp", argv[1]);
    start_pid = getpid();
    sig_rt2 = SIGRTMIN + 2;
    sig_rt5 = SIGRTMIN + 5;
    sig_rt6 = SIGRTMIN + 6;

    log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));

    alt_size = ALTSTACK_BYTES;
    alt_sp = mmap(NULL, alt_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (alt_sp == MAP_FAILED)
        die("mmap altstack: %s", strerror(errno));
    stack_t ss = {.ss_sp = alt_sp, .ss_flags = 0, .ss_size = alt_size};
    if (sigaltstack(&ss, NULL) != 0)
        die("sigaltstack: %s", strerror(errno));

    install_handlers();
    queue_pending();
    set_prctls();
    take_snapshots();
    arm_timers();
    write_info();

    /* Check the freshly built state once (timers ticking included), so a broken victim fails
     * before any dump. */
    verify_all(0);
    if (fail_msg[0])
        die("self-check at start failed: %s", fail_msg);

    run();
    return 0;
}

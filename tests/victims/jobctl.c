/*
 * jobctl: a crest test victim for SIGTRAP handlers, job-control stops and vfork.
 * Single-threaded. At start it installs a SIGTRAP handler (SA_SIGINFO|SA_RESTART, sa_mask
 * {SIGUSR1}) that counts each SIGTRAP by origin: si_code SI_USER (kill(2) from another
 * process) or SI_TKILL (its own raise(3)).
 *
 * Every ~10 ms (nanosleep) it increments a counter, appends "pid=<pid> n=<counter>" to an
 * O_APPEND log and, when a count changed, writes CTL_DIR/traps: "<kill count> <raise count>
 * <si_pid of the last kill>" (temporary file + rename).
 *
 * On a verify request it checks that its SIGTRAP action reads back exactly as after setup (raw
 * rt_sigaction: handler, flags, restorer, mask), then raise()s SIGTRAP and checks that the
 * handler ran once more, with si_code SI_TKILL and its own pid. Result as in victim.h.
 *
 * With a third argument "vfork" it vfork()s after its first log line; the child (sharing the
 * parent's memory, the parent blocked in the kernel until it execs) sleeps until killed and
 * never execs.
 *
 * usage: jobctl CTL_DIR LOG_FILE [vfork]
 */
#include "victim.h"

#include <signal.h>
#include <sys/syscall.h>

struct ksigaction {
    unsigned long handler;
    unsigned long flags;
    unsigned long restorer;
    uint64_t mask;
};

static char traps_path[CTL_PATH_MAX], traps_tmp[CTL_PATH_MAX];
static volatile unsigned long kill_count, raise_count, bad_traps;
static volatile int last_kill_pid;
static struct ksigaction trap_at_start;

static void on_trap(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code == SI_USER) {
        kill_count++;
        last_kill_pid = si->si_pid;
    } else if (si->si_code == SI_TKILL && si->si_pid == getpid()) {
        raise_count++;
    } else {
        bad_traps++;
    }
}

static void get_trap_action(struct ksigaction *out)
{
    if (syscall(SYS_rt_sigaction, SIGTRAP, NULL, out, 8) != 0)
        die("rt_sigaction(SIGTRAP): %s", strerror(errno));
}

static void write_traps(void)
{
    char line[128];
    int n = snprintf(line, sizeof line, "%lu %lu %d\n", kill_count, raise_count, last_kill_pid);
    int fd = open(traps_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create %s: %s", traps_tmp, strerror(errno));
    write_all(fd, line, (size_t)n, traps_tmp);
    close(fd);
    if (rename(traps_tmp, traps_path) != 0)
        die("cannot rename %s: %s", traps_tmp, strerror(errno));
}

static void verify(void)
{
    struct ksigaction now;
    get_trap_action(&now);
    if (memcmp(&now, &trap_at_start, sizeof now) != 0)
        fail("SIGTRAP action changed: handler %#lx flags %#lx mask %#llx, at start %#lx %#lx "
             "%#llx",
             now.handler, now.flags, (unsigned long long)now.mask, trap_at_start.handler,
             trap_at_start.flags, (unsigned long long)trap_at_start.mask);
    unsigned long before = raise_count;
    if (raise(SIGTRAP) != 0)
        fail("raise(SIGTRAP): %s", strerror(errno));
    if (raise_count != before + 1)
        fail("raise(SIGTRAP) ran the handler %lu times", raise_count - before);
    if (bad_traps)
        fail("%lu SIGTRAPs with an unexpected si_code or si_pid", bad_traps);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE [vfork]", argv[0]);
    ctl_init(argv[1]);
    snprintf(traps_path, sizeof traps_path, "%s/traps", argv[1]);
    snprintf(traps_tmp, sizeof traps_tmp, "%s/traps.tmp", argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR1);
    if (sigaction(SIGTRAP, &sa, NULL) != 0)
        die("sigaction(SIGTRAP): %s", strerror(errno));
    get_trap_action(&trap_at_start);
    write_traps();

    unsigned long long counter = 0;
    unsigned long seen_kill = 0, seen_raise = 0;
    int do_vfork = argc > 3 && strcmp(argv[3], "vfork") == 0;
    for (;;) {
        counter++;
        char line[64];
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
        if (do_vfork) {
            do_vfork = 0;
            pid_t child = vfork();
            if (child == 0) {
                /* Only system calls here: the child runs on the parent's stack and memory. */
                for (;;)
                    pause();
            }
            if (child < 0)
                die("vfork: %s", strerror(errno));
        }
        if (kill_count != seen_kill || raise_count != seen_raise) {
            seen_kill = kill_count;
            seen_raise = raise_count;
            write_traps();
        }
        if (ctl_verify_requested()) {
            fail_msg[0] = 0;
            verify();
            ctl_report(counter);
        }
        int code = ctl_exit_requested();
        if (code >= 0)
            exit(code);
        sleep_ms(10);
    }
}

/*
 * tree: a crest test victim that is a whole process tree (issue #9).
 *
 *   root (started in its own session by the harness)
 *   |-- A   same session and group as the root; answers the root's pings through two pipes
 *   |-- B   same session, its own process group; answers the root's pings through a socket pair
 *   |-- C   a new session (setsid)
 *   |   |-- D   C's session, its own group
 *   |   `-- E   C's session and group
 *   `-- Z   exited with status 42 at start, left unreaped: a zombie
 *
 * Every live process ticks every 2 ms: it bumps its counter in a shared anonymous mapping
 * (MAP_SHARED, made by the root before any fork), checks its parent, group and session, and
 * appends one 24-byte record "<pid> <seq>\n" through one file description all of them share
 * (opened by the root without O_APPEND, so records only stay whole and in sequence if the
 * offset is one for all). Children die with their parent (PR_SET_PDEATHSIG).
 *
 * CTL/pids lists "name pid" for every member. On a verify request the root checks its own ids,
 * that every child's counter moves, that no child reported a problem, that A answers a ping,
 * that its pidfd of its grandchild D still names D and can signal it,
 * and that Z is still an unreaped zombie that ended with status 42; when CTL/final exists it
 * also reaps Z. On an exit request the root kills and reaps its children.
 *
 * usage: tree CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

enum { A, B, C, D, E, NLIVE };
static const char *names[NLIVE] = {"A", "B", "C", "D", "E"};

struct shared {
    volatile unsigned long long ticks[NLIVE];
    volatile int problem[NLIVE];
    char why[NLIVE][160];
};

static struct shared *shm;
static int records_fd;
static int ping_w, pong_r; /* root's ends */
static int sock_root, sock_b; /* a socket pair: the root's end and B's */

static void record(unsigned long long seq)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%10d %12llu\n", (int)getpid(), seq);
    if (n != 24)
        die("record of %d bytes", n);
    write_all(records_fd, buf, (size_t)n, "the shared records file");
}

/* The loop of every child: tick, check its ids, answer pings (A). Never returns. */
static void child_loop(int me, pid_t ppid, pid_t pgid, pid_t sid, int ping_r, int pong_w)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        die("PR_SET_PDEATHSIG: %s", strerror(errno));
    if (getppid() != ppid)
        _exit(0); /* the parent is gone already */
    unsigned long long seq = 0;
    for (;;) {
        seq++;
        shm->ticks[me] = seq;
        record(seq);
        if (!shm->problem[me] && (getppid() != ppid || getpgrp() != pgid || getsid(0) != sid)) {
            snprintf(shm->why[me], sizeof shm->why[me],
                     "%s (pid %d): parent %d group %d session %d, expected %d %d %d", names[me],
                     (int)getpid(), (int)getppid(), (int)getpgrp(), (int)getsid(0), (int)ppid,
                     (int)pgid, (int)sid);
            shm->problem[me] = 1;
        }
        if (ping_r >= 0) {
            unsigned v;
            ssize_t n = read(ping_r, &v, sizeof v);
            if (n == (ssize_t)sizeof v) {
                v += 1;
                write_all(pong_w, (const char *)&v, sizeof v, "pong");
            }
        }
        sleep_ms(2);
    }
}

static pid_t spawn(void (*body)(void))
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        body();
        _exit(0);
    }
    return pid;
}

static pid_t root_pid, pids[NLIVE], zombie;
static int a_ping_r, a_pong_w;

static void body_a(void)
{
    close(ping_w);
    close(pong_r);
    close(sock_root);
    close(sock_b);
    child_loop(A, root_pid, getpgrp(), getsid(0), a_ping_r, a_pong_w);
}

static void body_b(void)
{
    close(a_ping_r);
    close(a_pong_w);
    close(sock_root);
    if (setpgid(0, 0) != 0)
        die("B setpgid: %s", strerror(errno));
    child_loop(B, root_pid, getpid(), getsid(0), sock_b, sock_b);
}

static pid_t c_pid;

static void body_d(void)
{
    if (setpgid(0, 0) != 0)
        die("D setpgid: %s", strerror(errno));
    child_loop(D, c_pid, getpid(), c_pid, -1, -1);
}

static void body_e(void) { child_loop(E, c_pid, c_pid, c_pid, -1, -1); }

static void body_c(void)
{
    close(a_ping_r);
    close(a_pong_w);
    close(sock_root);
    close(sock_b);
    if (setsid() < 0)
        die("C setsid: %s", strerror(errno));
    c_pid = getpid();
    /* The grandchildren's pids go to the root through the shared mapping. */
    pid_t d = spawn(body_d);
    pid_t e = spawn(body_e);
    shm->ticks[D] = 0;
    shm->why[D][0] = 0;
    snprintf(shm->why[C], sizeof shm->why[C], "%d %d", (int)d, (int)e);
    child_loop(C, root_pid, getpid(), getpid(), -1, -1);
}

static void body_z(void) { _exit(42); }

static void write_pids(const char *dir)
{
    char path[CTL_PATH_MAX], tmp[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/pids", dir);
    snprintf(tmp, sizeof tmp, "%s/pids.tmp", dir);
    FILE *f = fopen(tmp, "w");
    if (!f)
        die("cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "root %d\n", (int)root_pid);
    for (int i = 0; i < NLIVE; i++)
        fprintf(f, "%s %d\n", names[i], (int)pids[i]);
    fprintf(f, "Z %d\n", (int)zombie);
    fclose(f);
    if (rename(tmp, path) != 0)
        die("rename %s: %s", tmp, strerror(errno));
}

/* Waits up to two seconds for every child's counter to move. */
static void check_children_tick(void)
{
    unsigned long long before[NLIVE];
    for (int i = 0; i < NLIVE; i++)
        before[i] = shm->ticks[i];
    for (int waited = 0; waited < 2000; waited += 5) {
        int all = 1;
        for (int i = 0; i < NLIVE; i++)
            all &= shm->ticks[i] != before[i];
        if (all)
            return;
        sleep_ms(5);
    }
    for (int i = 0; i < NLIVE; i++)
        if (shm->ticks[i] == before[i])
            fail("child %s (pid %d) does not tick in the shared memory", names[i], (int)pids[i]);
}

static void check_ping(int out, int in, const char *who, unsigned v)
{
    write_all(out, (const char *)&v, sizeof v, "ping");
    for (int waited = 0; waited < 2000; waited += 2) {
        unsigned got;
        ssize_t n = read(in, &got, sizeof got);
        if (n == (ssize_t)sizeof got) {
            if (got != v + 1)
                fail("%s answered ping %u with %u", who, v, got);
            return;
        }
        sleep_ms(2);
    }
    fail("%s did not answer ping %u", who, v);
}

static int d_pidfd = -1;

/* The root's pidfd of its grandchild D still names D and reaches it. */
static void check_grandchild_pidfd(void)
{
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", d_pidfd);
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
    snprintf(want, sizeof want, "Pid:\t%d\n", (int)pids[D]);
    if (!strstr(text, want))
        fail("the pidfd of D (pid %d) names another process: %s", (int)pids[D], text);
    if (syscall(SYS_pidfd_send_signal, d_pidfd, 0, NULL, 0) != 0)
        fail("pidfd_send_signal to D: %s", strerror(errno));
}

static void check_zombie(int reap)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)zombie, &si, WEXITED | WNOHANG | (reap ? 0 : WNOWAIT)) != 0) {
        fail("waitid for the zombie %d: %s", (int)zombie, strerror(errno));
        return;
    }
    if (si.si_pid != zombie || si.si_code != CLD_EXITED || si.si_status != 42)
        fail("the zombie %d reports pid %d code %d status %d, expected an exit with 42",
             (int)zombie, (int)si.si_pid, si.si_code, si.si_status);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: tree CTL_DIR LOG_FILE");
    ctl_init(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    char path[CTL_PATH_MAX];
    snprintf(path, sizeof path, "%s/records", argv[1]);
    records_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (records_fd < 0)
        die("cannot open %s: %s", path, strerror(errno));
    shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        die("mmap shared: %s", strerror(errno));
    int ping[2], pong[2];
    if (pipe2(ping, O_NONBLOCK) != 0 || pipe2(pong, O_NONBLOCK) != 0)
        die("pipe: %s", strerror(errno));
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0)
        die("socketpair: %s", strerror(errno));
    sock_root = sv[0];
    sock_b = sv[1];
    ping_w = ping[1];
    a_ping_r = ping[0];
    a_pong_w = pong[1];
    pong_r = pong[0];
    root_pid = getpid();
    pid_t sid = getsid(0), pgid = getpgrp();

    pids[A] = spawn(body_a);
    close(a_ping_r);
    close(a_pong_w);
    pids[B] = spawn(body_b);
    close(sock_b);
    pids[C] = spawn(body_c);
    zombie = spawn(body_z);
    for (int waited = 0; !shm->why[C][0]; waited++) {
        if (waited > 5000)
            die("C did not report its children");
        sleep_ms(1);
    }
    int d, e;
    if (sscanf(shm->why[C], "%d %d", &d, &e) != 2)
        die("C reported %s", shm->why[C]);
    pids[D] = d;
    pids[E] = e;
    shm->why[C][0] = 0;
    d_pidfd = (int)syscall(SYS_pidfd_open, pids[D], 0);
    if (d_pidfd < 0)
        die("pidfd_open of D: %s", strerror(errno));
    /* Let the zombie be a zombie before anyone looks. */
    siginfo_t si;
    if (waitid(P_PID, (id_t)zombie, &si, WEXITED | WNOWAIT) != 0)
        die("waitid: %s", strerror(errno));
    write_pids(argv[1]);

    unsigned long long n = 0;
    int zombie_reaped = 0;
    for (;;) {
        n++;
        char line[64];
        int len = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), n);
        write_all(log_fd, line, (size_t)len, "log");
        record(n);
        if (ctl_verify_requested()) {
            fail_msg[0] = 0;
            if (getpid() != root_pid || getsid(0) != sid || getpgrp() != pgid)
                fail("root: pid %d session %d group %d, expected %d %d %d", (int)getpid(),
                     (int)getsid(0), (int)getpgrp(), (int)root_pid, (int)sid, (int)pgid);
            for (int i = 0; i < NLIVE; i++)
                if (shm->problem[i])
                    fail("%s", shm->why[i]);
            check_children_tick();
            check_ping(ping_w, pong_r, "A (through the pipes)", (unsigned)n);
            check_ping(sock_root, sock_root, "B (through the socket pair)", (unsigned)n);
            check_grandchild_pidfd();
            snprintf(path, sizeof path, "%s/final", argv[1]);
            int final = access(path, F_OK) == 0;
            if (!zombie_reaped)
                check_zombie(final);
            if (final)
                zombie_reaped = 1;
            ctl_report(n);
        }
        int code = ctl_exit_requested();
        if (code >= 0) {
            for (int i = 0; i < NLIVE; i++)
                kill(pids[i], SIGKILL);
            /* D and E are C's: they die with it (PR_SET_PDEATHSIG) and come to the subreaper. */
            waitpid(pids[A], NULL, 0);
            waitpid(pids[B], NULL, 0);
            waitpid(pids[C], NULL, 0);
            if (!zombie_reaped)
                waitpid(zombie, NULL, 0);
            exit(code);
        }
        sleep_ms(2);
    }
}

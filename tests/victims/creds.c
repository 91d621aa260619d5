/*
 * creds: a crest test victim that runs with credentials of its own. Started as root, it
 * makes its control directory usable for its new ids, then:
 *   setgroups {65534, 100, 4242}; PR_CAPBSET_DROP CAP_SYS_MODULE; PR_SET_KEEPCAPS 1 (securebits
 *   SECBIT_KEEP_CAPS); setresgid(65534, 65533, 65532); setresuid(65534, 65533, 65532) (the
 *   filesystem ids follow the effective ones); capset permitted {NET_BIND_SERVICE, NET_RAW},
 *   effective {NET_BIND_SERVICE}, inheritable {NET_BIND_SERVICE}; PR_CAP_AMBIENT_RAISE
 *   NET_BIND_SERVICE; PR_SET_NO_NEW_PRIVS 1; PR_SET_DUMPABLE 1 (the uid change reset it).
 * and records its ids, groups, capability sets (capget, PR_CAPBSET_READ, PR_CAP_AMBIENT_IS_SET),
 * securebits, no_new_privs and dumpable as they are then.
 *
 * Every ~10 ms it increments a counter and appends "pid=<pid> n=<counter>" to its log. On a
 * verify request it checks that all of the recorded state reads the same, and that it can
 * bind a TCP socket to 127.0.0.1 port 1023 (a privileged port: CAP_NET_BIND_SERVICE) but cannot
 * open /proc/1/mem (no root powers). Result as in victim.h.
 *
 * usage: creds CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <grp.h>
#include <libgen.h>
#include <netinet/in.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/capability.h>

#define CAP_BIT(c) (1ULL << (c))
#define WANT_PRM (CAP_BIT(CAP_NET_BIND_SERVICE) | CAP_BIT(CAP_NET_RAW))
#define WANT_EFF CAP_BIT(CAP_NET_BIND_SERVICE)
#define WANT_INH CAP_BIT(CAP_NET_BIND_SERVICE)

struct state {
    uid_t uid[3], fsuid;
    gid_t gid[3], fsgid;
    gid_t groups[16];
    int ngroups;
    uint64_t eff, prm, inh, bnd, amb;
    int securebits, no_new_privs, dumpable;
};

static struct state at_start;

static void caps_get(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0)
        die("capget: %s", strerror(errno));
    *eff = d[0].effective | (uint64_t)d[1].effective << 32;
    *prm = d[0].permitted | (uint64_t)d[1].permitted << 32;
    *inh = d[0].inheritable | (uint64_t)d[1].inheritable << 32;
}

static void read_state(struct state *s)
{
    memset(s, 0, sizeof *s);
    getresuid(&s->uid[0], &s->uid[1], &s->uid[2]);
    getresgid(&s->gid[0], &s->gid[1], &s->gid[2]);
    s->fsuid = (uid_t)setfsuid((uid_t)-1);
    s->fsgid = (gid_t)setfsgid((gid_t)-1);
    s->ngroups = getgroups(16, s->groups);
    caps_get(&s->eff, &s->prm, &s->inh);
    for (int c = 0; c < 64; c++) {
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
            s->bnd |= CAP_BIT(c);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
            s->amb |= CAP_BIT(c);
    }
    s->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
    s->no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    s->dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

static void drop_privileges(const char *ctl_dir)
{
    char parent[CTL_PATH_MAX];
    snprintf(parent, sizeof parent, "%s", ctl_dir);
    if (chmod(dirname(parent), 0711) != 0 || chmod(ctl_dir, 0777) != 0)
        die("preparing %s: %s", ctl_dir, strerror(errno));
    gid_t groups[] = {65534, 100, 4242};
    if (setgroups(3, groups) != 0)
        die("setgroups: %s", strerror(errno));
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0) != 0)
        die("PR_CAPBSET_DROP: %s", strerror(errno));
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
        die("PR_SET_KEEPCAPS: %s", strerror(errno));
    if (setresgid(65534, 65533, 65532) != 0)
        die("setresgid: %s", strerror(errno));
    if (setresuid(65534, 65533, 65532) != 0)
        die("setresuid: %s", strerror(errno));
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{WANT_EFF, WANT_PRM, WANT_INH}, {0, 0, 0}};
    if (syscall(SYS_capset, &h, d) != 0)
        die("capset: %s", strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) != 0)
        die("PR_CAP_AMBIENT_RAISE: %s", strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0)
        die("PR_SET_DUMPABLE: %s", strerror(errno));
}

static void verify(void)
{
    struct state now;
    read_state(&now);
    if (memcmp(now.uid, at_start.uid, sizeof now.uid) || now.fsuid != at_start.fsuid)
        fail("uids %u %u %u fs %u, at start %u %u %u fs %u", now.uid[0], now.uid[1], now.uid[2],
             now.fsuid, at_start.uid[0], at_start.uid[1], at_start.uid[2], at_start.fsuid);
    if (memcmp(now.gid, at_start.gid, sizeof now.gid) || now.fsgid != at_start.fsgid)
        fail("gids %u %u %u fs %u, at start %u %u %u fs %u", now.gid[0], now.gid[1], now.gid[2],
             now.fsgid, at_start.gid[0], at_start.gid[1], at_start.gid[2], at_start.fsgid);
    if (now.ngroups != at_start.ngroups ||
        memcmp(now.groups, at_start.groups, sizeof now.groups[0] * (size_t)now.ngroups))
        fail("%d supplementary groups, %d at start (or other ones)", now.ngroups,
             at_start.ngroups);
    if (now.eff != at_start.eff || now.prm != at_start.prm || now.inh != at_start.inh ||
        now.bnd != at_start.bnd || now.amb != at_start.amb)
        fail("capabilities eff %#llx prm %#llx inh %#llx bnd %#llx amb %#llx, at start %#llx "
             "%#llx %#llx %#llx %#llx",
             (unsigned long long)now.eff, (unsigned long long)now.prm,
             (unsigned long long)now.inh, (unsigned long long)now.bnd,
             (unsigned long long)now.amb, (unsigned long long)at_start.eff,
             (unsigned long long)at_start.prm, (unsigned long long)at_start.inh,
             (unsigned long long)at_start.bnd, (unsigned long long)at_start.amb);
    if (now.securebits != at_start.securebits)
        fail("securebits %#x, at start %#x", now.securebits, at_start.securebits);
    if (now.no_new_privs != at_start.no_new_privs || now.dumpable != at_start.dumpable)
        fail("no_new_privs %d dumpable %d, at start %d %d", now.no_new_privs, now.dumpable,
             at_start.no_new_privs, at_start.dumpable);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(1023)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0)
        fail("binding port 1023 failed (CAP_NET_BIND_SERVICE lost?): %s", strerror(errno));
    if (s >= 0)
        close(s);
    int fd = open("/proc/1/mem", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        fail("opened /proc/1/mem: the process has root powers");
        close(fd);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    int log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (log_fd < 0)
        die("cannot open log %s: %s", argv[2], strerror(errno));
    drop_privileges(argv[1]);
    read_state(&at_start);
    fail_msg[0] = 0;
    unsigned long long counter = 0;
    for (;;) {
        counter++;
        char line[64];
        int n = snprintf(line, sizeof line, "pid=%d n=%llu\n", (int)getpid(), counter);
        write_all(log_fd, line, (size_t)n, "log");
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

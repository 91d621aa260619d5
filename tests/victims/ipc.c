/*
 * ipc: a crest test victim holding SysV shared memory, shared with a child.
 *
 *   parent (started by the harness; logs "pid=P n=N" to LOG_FILE, answers verify requests)
 *   `-- child (dies with its parent, PR_SET_PDEATHSIG; exits 3 if something it checks changed)
 *
 * segment A: key 0x4352PPPP (PPPP: the low 16 bits of the pid), 3 pages + 100 bytes, mode 0640, owner changed to 65534:65534
 *            with IPC_SET; a pattern in pages 0 and 2 (page 1 never written), attached
 *            read-write at `a` and read-only at `a_ro`; both attachments inherited by the
 *            child, which echoes the word the parent writes at a[page 1 + 0] into a[page 1 + 8].
 * segment B: IPC_PRIVATE, 1 page, "being removed" written in it, attached at `b` (inherited
 *            by the child) and marked for removal (IPC_RMID) while attached.
 *
 * queue Q: key 0x4351PPPP, mode 0640, owner 65534:65534, qbytes 4000; the child sends messages of
 *          types 3, 1, 2 and 9, the parent receives the type 9 one: three stay queued. Each
 *          verify receives them (type 1 first by type, then the rest in order) and sends them
 *          again in the original order.
 * set S:   key 0x4353PPPP, mode 0600, 3 semaphores: the child adds 5 to semaphore 0, the
 *          parent 7 and 11 to semaphores 1 and 2 (so GETPID names the child, then the parent).
 *
 * CTL/info: "child PID\nA ID\nB ID\nkey KEY\nQ ID\nS ID\nqkey KEY\nskey KEY\n".
 *
 * usage: ipc CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/wait.h>

/* Per victim, so that tests can run at once. */
static key_t KEY_A, KEY_Q, KEY_S;
static int id_q, id_s;
static pid_t child;
/* Who sent the queued messages last: the child at first, the parent after a verify. */
static pid_t sender;

struct msg {
    long mtype;
    char text[64];
};

static const long TYPES[3] = {3, 1, 2};
static const char *const TEXTS[3] = {"three: the first queued", "one", "two, second"};

static void send_msg(long type, const char *text)
{
    struct msg m = {.mtype = type};
    strcpy(m.text, text);
    if (msgsnd(id_q, &m, strlen(text), IPC_NOWAIT) != 0)
        fail("msgsnd type %ld: %s", type, strerror(errno));
}

static void check_sems(void)
{
    unsigned short v[3];
    if (semctl(id_s, 0, GETALL, v) != 0) {
        fail("GETALL S %d: %s", id_s, strerror(errno));
        return;
    }
    if (v[0] != 5 || v[1] != 7 || v[2] != 11)
        fail("semaphore values %u %u %u, want 5 7 11", v[0], v[1], v[2]);
}

/* Queue and set as made (parent: also their messages and last pids). */
static void check_queue_and_set(pid_t parent)
{
    struct msqid_ds q;
    if (msgget(KEY_Q, 0) != id_q)
        fail("key %#x names queue %d, not %d", KEY_Q, msgget(KEY_Q, 0), id_q);
    if (msgctl(id_q, IPC_STAT, &q) != 0) {
        fail("IPC_STAT Q %d: %s", id_q, strerror(errno));
        return;
    }
    if ((q.msg_perm.mode & 0777) != 0640 || q.msg_perm.uid != 65534 || q.msg_perm.gid != 65534 ||
        q.msg_perm.cuid != 0 || q.msg_qbytes != 4000 || q.msg_qnum != 3 ||
        q.msg_lspid != sender || q.msg_lrpid != parent)
        fail("queue Q: mode %o owner %u:%u creator %u qbytes %lu qnum %lu lspid %d lrpid %d "
             "(want sender %d receiver %d)",
             q.msg_perm.mode, q.msg_perm.uid, q.msg_perm.gid, q.msg_perm.cuid,
             (unsigned long)q.msg_qbytes, (unsigned long)q.msg_qnum, (int)q.msg_lspid,
             (int)q.msg_lrpid, (int)sender, (int)parent);
    struct semid_ds sd;
    if (semget(KEY_S, 0, 0) != id_s)
        fail("key %#x names set %d, not %d", KEY_S, semget(KEY_S, 0, 0), id_s);
    if (semctl(id_s, 0, IPC_STAT, &sd) != 0) {
        fail("IPC_STAT S %d: %s", id_s, strerror(errno));
        return;
    }
    if ((sd.sem_perm.mode & 0777) != 0600 || sd.sem_nsems != 3)
        fail("set S: mode %o nsems %lu", sd.sem_perm.mode, (unsigned long)sd.sem_nsems);
    check_sems();
    if (semctl(id_s, 0, GETPID) != child || semctl(id_s, 1, GETPID) != parent ||
        semctl(id_s, 2, GETPID) != parent)
        fail("semaphores last used by %d %d %d, want %d %d %d", semctl(id_s, 0, GETPID),
             semctl(id_s, 1, GETPID), semctl(id_s, 2, GETPID), (int)child, (int)parent,
             (int)parent);
    /* Type 1 by its type, then the others in their order; all sent again as they were. */
    struct msg m;
    const int order[3] = {1, 0, 2};
    for (int i = 0; i < 3; i++) {
        int k = order[i];
        memset(&m, 0, sizeof m);
        ssize_t n = msgrcv(id_q, &m, sizeof m.text - 1, i == 0 ? 1 : 0, IPC_NOWAIT);
        if (n < 0) {
            fail("msgrcv %d: %s", i, strerror(errno));
            return;
        }
        if (m.mtype != TYPES[k] || (size_t)n != strlen(TEXTS[k]) || strcmp(m.text, TEXTS[k]) != 0)
            fail("message %d: type %ld '%s', want type %ld '%s'", i, m.mtype, m.text, TYPES[k],
                 TEXTS[k]);
    }
    for (int k = 0; k < 3; k++)
        send_msg(TYPES[k], TEXTS[k]);
    sender = parent;
}

static long page;
static int id_a, id_b;
static char *a, *a_ro, *b;

static void pattern(char *buf, int n)
{
    for (long i = 0; i < page; i++)
        buf[i] = (char)('a' + (i * 7 + n) % 26);
}

static void check_segments(int attaches)
{
    struct shmid_ds ds;
    if (shmget(KEY_A, 0, 0) != id_a)
        fail("key %#x names segment %d, not %d", KEY_A, shmget(KEY_A, 0, 0), id_a);
    if (shmctl(id_a, IPC_STAT, &ds) != 0) {
        fail("IPC_STAT A %d: %s", id_a, strerror(errno));
        return;
    }
    if (ds.shm_perm.__key != KEY_A || (ds.shm_perm.mode & 0777) != 0640 ||
        ds.shm_segsz != (size_t)(3 * page + 100) || ds.shm_perm.uid != 65534 ||
        ds.shm_perm.gid != 65534 || ds.shm_perm.cuid != 0 || ds.shm_perm.cgid != 0 ||
        (ds.shm_perm.mode & SHM_DEST))
        fail("segment A: key %#x mode %o size %zu owner %u:%u creator %u:%u",
             ds.shm_perm.__key, ds.shm_perm.mode, ds.shm_segsz, ds.shm_perm.uid,
             ds.shm_perm.gid, ds.shm_perm.cuid, ds.shm_perm.cgid);
    if (attaches && ds.shm_nattch != (shmatt_t)attaches)
        fail("segment A is attached %lu times, want %d", (unsigned long)ds.shm_nattch, attaches);
    if (shmctl(id_b, IPC_STAT, &ds) != 0) {
        fail("IPC_STAT B %d: %s", id_b, strerror(errno));
        return;
    }
    if (!(ds.shm_perm.mode & SHM_DEST) || ds.shm_segsz != (size_t)page)
        fail("segment B: mode %o size %zu (want SHM_DEST, one page)", ds.shm_perm.mode,
             ds.shm_segsz);
    if (attaches && ds.shm_nattch != 2)
        fail("segment B is attached %lu times, want 2", (unsigned long)ds.shm_nattch);
    if (strcmp(b, "being removed") != 0)
        fail("segment B lost its content");
    if (mprotect(a_ro, (size_t)page, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
        fail("the read-only attachment of A could be made writable");
    if (memcmp(a, a_ro, (size_t)(3 * page)) != 0)
        fail("the two attachments of A differ");
}

static void check_parent(void)
{
    char want[65536];
    for (int p = 0; p < 3; p += 2) {
        pattern(want, p);
        if (memcmp(a + p * page, want, (size_t)page) != 0)
            fail("page %d of segment A changed", p);
    }
    check_segments(4);
    static unsigned token;
    token++;
    volatile uint64_t *word = (volatile uint64_t *)(a + page);
    word[0] = 1000 + token;
    int waited = 0;
    while (word[1] != 1000 + token && waited++ < 5000)
        sleep_ms(1);
    if (word[1] != 1000 + token)
        fail("the child did not echo %u through segment A", 1000 + token);
    int status;
    if (waitpid(child, &status, WNOHANG) != 0)
        fail("the child %d has ended", (int)child);
}

/* A verify request: the shared memory, then the queue and the semaphores. */
static void check_all(void)
{
    check_parent();
    check_queue_and_set(getpid());
}

/* An exit request: the IPC objects go with the victim. */
static void remove_all(void)
{
    shmctl(id_a, IPC_RMID, NULL);
    msgctl(id_q, IPC_RMID, NULL);
    semctl(id_s, 0, IPC_RMID);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    KEY_A = (key_t)(0x43520000 | (getpid() & 0xffff));
    KEY_Q = (key_t)(0x43510000 | (getpid() & 0xffff));
    KEY_S = (key_t)(0x43530000 | (getpid() & 0xffff));
    char buf[65536];

    id_a = shmget(KEY_A, (size_t)(3 * page + 100), IPC_CREAT | IPC_EXCL | 0640);
    if (id_a < 0)
        die("shmget A: %s", strerror(errno));
    a = shmat(id_a, NULL, 0);
    a_ro = shmat(id_a, NULL, SHM_RDONLY);
    if (a == (void *)-1 || a_ro == (void *)-1)
        die("shmat A: %s", strerror(errno));
    for (int p = 0; p < 3; p += 2) {
        pattern(buf, p);
        memcpy(a + p * page, buf, (size_t)page);
    }
    struct shmid_ds ds;
    if (shmctl(id_a, IPC_STAT, &ds) != 0)
        die("IPC_STAT: %s", strerror(errno));
    ds.shm_perm.uid = 65534;
    ds.shm_perm.gid = 65534;
    if (shmctl(id_a, IPC_SET, &ds) != 0)
        die("IPC_SET: %s", strerror(errno));

    id_b = shmget(IPC_PRIVATE, (size_t)page, IPC_CREAT | 0600);
    if (id_b < 0)
        die("shmget B: %s", strerror(errno));
    b = shmat(id_b, NULL, 0);
    if (b == (void *)-1)
        die("shmat B: %s", strerror(errno));
    strcpy(b, "being removed");
    if (shmctl(id_b, IPC_RMID, NULL) != 0)
        die("IPC_RMID B: %s", strerror(errno));

    id_q = msgget(KEY_Q, IPC_CREAT | IPC_EXCL | 0640);
    id_s = semget(KEY_S, 3, IPC_CREAT | IPC_EXCL | 0600);
    if (id_q < 0 || id_s < 0)
        die("msgget/semget: %s", strerror(errno));
    struct msqid_ds qd;
    if (msgctl(id_q, IPC_STAT, &qd) != 0)
        die("IPC_STAT Q: %s", strerror(errno));
    qd.msg_perm.uid = 65534;
    qd.msg_perm.gid = 65534;
    qd.msg_qbytes = 4000;
    if (msgctl(id_q, IPC_SET, &qd) != 0)
        die("IPC_SET Q: %s", strerror(errno));

    child = fork_dying_child();
    if (child == 0) {
        for (int k = 0; k < 3; k++)
            send_msg(TYPES[k], TEXTS[k]);
        send_msg(9, "taken by the parent");
        struct sembuf up = {.sem_num = 0, .sem_op = 5};
        if (semop(id_s, &up, 1) != 0)
            die("semop child: %s", strerror(errno));
        volatile uint64_t *word = (volatile uint64_t *)(a + page);
        for (unsigned long n = 0;; n++) {
            word[1] = word[0];
            if (n % 100 == 0) {
                check_segments(0);
                /* Once the parent asked for an echo, it has made its semaphore operations. */
                if (word[0] != 0)
                    check_sems();
                child_exit_on_failure();
            }
            sleep_ms(1);
        }
    }

    /* The child's messages and semaphore, then the parent's turn. */
    int waited = 0;
    while (semctl(id_s, 0, GETVAL) != 5 && waited++ < 10000)
        sleep_ms(1);
    struct msg m;
    if (msgrcv(id_q, &m, sizeof m.text, 9, IPC_NOWAIT) < 0)
        die("msgrcv type 9: %s", strerror(errno));
    struct sembuf ups[2] = {{.sem_num = 1, .sem_op = 7}, {.sem_num = 2, .sem_op = 11}};
    if (semop(id_s, ups, 2) != 0)
        die("semop parent: %s", strerror(errno));
    sender = child;

    char info[256];
    snprintf(info, sizeof info, "child %d\nA %d\nB %d\nkey %d\nQ %d\nS %d\nqkey %d\nskey %d\n",
             (int)child, id_a, id_b, (int)KEY_A, id_q, id_s, (int)KEY_Q, (int)KEY_S);
    ctl_write_file(argv[1], "info", info);

    ctl_loop((struct ctl_loop){.log_fd = log_open(argv[2]),
                              .period_ms = 20,
                              .verify = check_all,
                              .child = child,
                              .cleanup = remove_all});
}

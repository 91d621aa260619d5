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
 * CTL/info: "child PID\nA ID\nB ID\nkey KEY\n".
 *
 * usage: ipc CTL_DIR LOG_FILE
 */
#include "victim.h"

#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/wait.h>

/* Per victim, so that tests can run at once. */
static key_t KEY_A;

static long page;
static int id_a, id_b;
static char *a, *a_ro, *b;
static pid_t child;

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

static void remove_segment_a(void)
{
    shmctl(id_a, IPC_RMID, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        die("usage: %s CTL_DIR LOG_FILE", argv[0]);
    ctl_init(argv[1]);
    page = sysconf(_SC_PAGESIZE);
    KEY_A = (key_t)(0x43520000 | (getpid() & 0xffff));
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

    child = fork_dying_child();
    if (child == 0) {
        volatile uint64_t *word = (volatile uint64_t *)(a + page);
        for (unsigned long n = 0;; n++) {
            word[1] = word[0];
            if (n % 100 == 0) {
                check_segments(0);
                child_exit_on_failure();
            }
            sleep_ms(1);
        }
    }

    char info[128];
    snprintf(info, sizeof info, "child %d\nA %d\nB %d\nkey %d\n", (int)child, id_a, id_b,
             (int)KEY_A);
    ctl_write_file(argv[1], "info", info);

    ctl_loop((struct ctl_loop){.log_fd = log_open(argv[2]),
                              .period_ms = 20,
                              .verify = check_parent,
                              .child = child,
                              .cleanup = remove_segment_a});
}

import java.io.FileOutputStream;
import java.io.IOException;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;

/**
 * The crest JVM test victim (one file, no dependencies).
 *
 * <p>Mode {@code full} (the default) runs what a busy service does: a fixed thread pool fed by a
 * dispatcher, a scheduled executor ticking every millisecond, a producer/consumer pair on an
 * ArrayBlockingQueue whose sequence numbers are checked in order, JIT-hot arithmetic checked
 * against values computed at start, 64 MiB of live long[]/byte[] arrays (large humongous ones and
 * thousands of small ones the GC moves) filled from a known generator, and a thread churning
 * garbage while it checks the objects it keeps alive for a while. Mode {@code threads N} starts N
 * threads that sleep or park and count, and little else. Mode {@code garbage LIVE CHURN} fills
 * LIVE MiB of long[] chunks from the generator, allocates and drops CHURN MiB of garbage, and
 * then only logs and answers (the live chunks are checked at every verify). Mode {@code server}
 * runs the loopback servers of {@link Servers} (HTTP on IPv4 and IPv6, NIO echo, UDP echo, a
 * WatchService) and writes their ports to {@code CTL_DIR/ports}.
 *
 * <p>In both modes a logger appends {@code pid=<pid> n=<counter>} to LOG_FILE (opened in append
 * mode) every ~20 ms, and the main thread polls CTL_DIR every few milliseconds:
 *
 * <ul>
 *   <li>{@code verify-request}: removed, then everything is checked (the pid the kernel reports,
 *       every worker made progress since the previous verify, the workers' own checks, the
 *       arrays, the JIT results; then System.gc() and the arrays again). The answer goes to
 *       {@code verify-result} through a temporary file and an atomic rename: {@code ok <pid>
 *       <counter>} or {@code FAIL <what>}.
 *   <li>{@code exit-request}: System.exit(the code in the file).
 * </ul>
 *
 * <p>A shutdown hook writes {@code shutdown-hook-ran} ({@code pid <pid> n <counter>}). Every
 * thread the victim starts is named {@code cv-...} (the JVM sets the native thread name from it,
 * so a test can follow the threads in /proc/PID/task).
 *
 * <p>usage: java Victim CTL_DIR LOG_FILE [full | threads N | garbage LIVE_MIB CHURN_MIB | server]
 */
public final class Victim {
    static final long START_PID = ProcessHandle.current().pid();
    static final long PROGRESS_WAIT_MS = 10_000;

    static Path ctl;
    static final AtomicLong logCounter = new AtomicLong();
    static final AtomicReference<String> violation = new AtomicReference<>();

    /** A progress counter of one worker, checked at every verify. */
    static final class Counter {
        final String name;
        final AtomicLong value = new AtomicLong();
        long lastVerified;

        Counter(String name) {
            this.name = name;
        }
    }

    static final List<Counter> counters = new CopyOnWriteArrayList<>();

    static Counter counter(String name) {
        Counter c = new Counter(name);
        counters.add(c);
        return c;
    }

    /** Records the first violation a worker finds; later ones are usually consequences. */
    static void violation(String what) {
        if (violation.compareAndSet(null, what)) {
            System.err.println("violation: " + what);
        }
    }

    static Thread start(String name, Runnable body) {
        Thread t = new Thread(body, name);
        t.setDaemon(true);
        t.start();
        return t;
    }

    static void sleepMs(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            violation(Thread.currentThread().getName() + " was interrupted");
        }
    }

    /** xorshift64*: deterministic data that does not compress. */
    static long next(long s) {
        s ^= s >>> 12;
        s ^= s << 25;
        s ^= s >>> 27;
        return s;
    }

    static long out(long s) {
        return s * 0x2545F4914F6CDD1DL;
    }

    static long seed(long salt) {
        long s = 0x5eedL ^ (salt * 0x9E3779B97F4A7C15L);
        return s == 0 ? 0x1234567 : s;
    }

    // ------------------------------------------------------------------------------------------
    // Live arrays: 4 x 8 MiB long[] + 16384 x 1 KiB long[] + 16 x 1 MiB byte[] = 64 MiB
    // ------------------------------------------------------------------------------------------

    static long[][] bigLongs;
    static long[][] smallLongs;
    static byte[][] bytes;
    static long liveChecksum;

    static void fillArrays() {
        bigLongs = new long[4][1 << 20];
        smallLongs = new long[16384][128];
        bytes = new byte[16][1 << 20];
        for (int a = 0; a < bigLongs.length; a++) {
            long s = seed(100 + a);
            for (int i = 0; i < bigLongs[a].length; i++) {
                s = next(s);
                bigLongs[a][i] = out(s);
            }
        }
        long s = seed(200);
        for (long[] arr : smallLongs) {
            for (int i = 0; i < arr.length; i++) {
                s = next(s);
                arr[i] = out(s);
            }
        }
        for (int a = 0; a < bytes.length; a++) {
            long b = seed(300 + a);
            for (int i = 0; i < bytes[a].length; i++) {
                b = next(b);
                bytes[a][i] = (byte) (out(b) >>> 56);
            }
        }
        liveChecksum = arraysChecksum();
    }

    static long arraysChecksum() {
        long sum = 0;
        for (long[] arr : bigLongs) {
            for (long v : arr) {
                sum = sum * 31 + v;
            }
        }
        for (long[] arr : smallLongs) {
            for (long v : arr) {
                sum = sum * 31 + v;
            }
        }
        for (byte[] arr : bytes) {
            for (byte v : arr) {
                sum = sum * 31 + v;
            }
        }
        return sum;
    }

    /** Compares every element with the generator; returns the first difference, or null. */
    static String checkArrays() {
        for (int a = 0; a < bigLongs.length; a++) {
            long s = seed(100 + a);
            for (int i = 0; i < bigLongs[a].length; i++) {
                s = next(s);
                if (bigLongs[a][i] != out(s)) {
                    return "bigLongs[" + a + "][" + i + "] is " + bigLongs[a][i] + ", want " + out(s);
                }
            }
        }
        long s = seed(200);
        for (int k = 0; k < smallLongs.length; k++) {
            long[] arr = smallLongs[k];
            for (int i = 0; i < arr.length; i++) {
                s = next(s);
                if (arr[i] != out(s)) {
                    return "smallLongs[" + k + "][" + i + "] is " + arr[i] + ", want " + out(s);
                }
            }
        }
        for (int a = 0; a < bytes.length; a++) {
            long b = seed(300 + a);
            for (int i = 0; i < bytes[a].length; i++) {
                b = next(b);
                if (bytes[a][i] != (byte) (out(b) >>> 56)) {
                    return "bytes[" + a + "][" + i + "] is " + bytes[a][i];
                }
            }
        }
        long sum = arraysChecksum();
        if (sum != liveChecksum) {
            return "live array checksum is " + sum + ", was " + liveChecksum + " at start";
        }
        return null;
    }

    // ------------------------------------------------------------------------------------------
    // JIT-hot arithmetic
    // ------------------------------------------------------------------------------------------

    static final int HOT_KEYS = 64;
    static final long[] HOT_REF = new long[HOT_KEYS];

    static long hot(long k) {
        long x = k * 0x9E3779B97F4A7C15L + 1;
        long acc = 0;
        for (int i = 0; i < 5000; i++) {
            x = x * 6364136223846793005L + 1442695040888963407L;
            x ^= x >>> 29;
            acc += x * (i | 1);
            acc = Long.rotateLeft(acc, 7) ^ (acc >>> 3);
        }
        return acc;
    }

    static void jitLoop(Counter progress) {
        for (long round = 0; ; round++) {
            for (int j = 0; j < 200; j++) {
                int k = (int) ((round * 200 + j) % HOT_KEYS);
                long r = hot(k);
                if (r != HOT_REF[k]) {
                    violation("JIT-compiled hot(" + k + ") = " + r + ", the interpreter said "
                            + HOT_REF[k]);
                }
            }
            progress.value.incrementAndGet();
            sleepMs(2);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Thread pool, scheduled executor, producer/consumer, churn
    // ------------------------------------------------------------------------------------------

    static final AtomicLong scheduledTicks = new AtomicLong();
    static long lastTicks;
    static final AtomicLong consumed = new AtomicLong();
    static final AtomicLong gcEvictions = new AtomicLong();

    static ThreadFactory namedFactory(String prefix) {
        AtomicInteger n = new AtomicInteger();
        return r -> {
            String name = prefix + n.incrementAndGet();
            Counter c = counter(name);
            Thread t = new Thread(() -> {
                POOL_COUNTER.set(c);
                r.run();
            }, name);
            t.setDaemon(true);
            return t;
        };
    }

    static final ThreadLocal<Counter> POOL_COUNTER = new ThreadLocal<>();

    static long poolWork(long x) {
        long acc = x;
        for (int i = 0; i < 2000; i++) {
            acc = acc * 0x5851F42D4C957F2DL + i;
            acc ^= acc >>> 31;
        }
        return acc;
    }

    static void startPool() {
        ThreadPoolExecutor pool =
                (ThreadPoolExecutor) Executors.newFixedThreadPool(4, namedFactory("cv-pool-"));
        pool.prestartAllCoreThreads();
        Counter dispatcher = counter("cv-dispatch");
        start("cv-dispatch", () -> {
            long base = 0;
            List<Future<Long>> futures = new ArrayList<>();
            for (;;) {
                futures.clear();
                for (int i = 0; i < 16; i++) {
                    long x = base + i;
                    futures.add(pool.submit(() -> {
                        POOL_COUNTER.get().value.incrementAndGet();
                        return poolWork(x);
                    }));
                }
                for (int i = 0; i < 16; i++) {
                    try {
                        long got = futures.get(i).get();
                        if (got != poolWork(base + i)) {
                            violation("pool task " + (base + i) + " returned " + got);
                        }
                    } catch (Exception e) {
                        violation("pool task " + (base + i) + ": " + e);
                    }
                }
                base += 16;
                dispatcher.value.incrementAndGet();
                sleepMs(2);
            }
        });
    }

    static void startScheduler() {
        Counter c = counter("cv-sched");
        ScheduledExecutorService sched = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "cv-sched");
            t.setDaemon(true);
            return t;
        });
        sched.scheduleAtFixedRate(() -> {
            scheduledTicks.incrementAndGet();
            c.value.incrementAndGet();
        }, 1, 1, TimeUnit.MILLISECONDS);
    }

    static void startQueue() {
        ArrayBlockingQueue<Long> queue = new ArrayBlockingQueue<>(64);
        Counter producer = counter("cv-producer");
        Counter consumer = counter("cv-consumer");
        start("cv-producer", () -> {
            for (long seq = 0; ; seq++) {
                try {
                    queue.put(seq);
                } catch (InterruptedException e) {
                    violation("producer interrupted");
                }
                producer.value.incrementAndGet();
                if (seq % 256 == 255) {
                    sleepMs(1);
                }
            }
        });
        start("cv-consumer", () -> {
            long want = 0;
            for (long i = 0; ; i++) {
                Long got;
                try {
                    // Alternate blocking takes with timed polls (a timed park on the queue's
                    // condition).
                    got = (i % 2 == 0) ? queue.take() : queue.poll(5, TimeUnit.MILLISECONDS);
                } catch (InterruptedException e) {
                    violation("consumer interrupted");
                    continue;
                }
                if (got == null) {
                    continue;
                }
                if (got != want) {
                    violation("queue delivered " + got + ", want " + want);
                    want = got;
                }
                want++;
                consumed.set(want);
                consumer.value.incrementAndGet();
            }
        });
    }

    static void startChurn() {
        Counter c = counter("cv-churn");
        start("cv-churn", () -> {
            // A ring of objects that live for a while: they survive young collections and get
            // copied by the GC, then are checked and dropped.
            long[][] ring = new long[512][];
            long seq = 0;
            for (;;) {
                for (int i = 0; i < 16; i++) {
                    int slot = (int) (seq % ring.length);
                    long[] old = ring[slot];
                    if (old != null) {
                        long oseq = old[0];
                        for (int j = 1; j < old.length; j++) {
                            if (old[j] != oseq * 31 + j) {
                                violation("churn object " + oseq + " word " + j + " is " + old[j]);
                                break;
                            }
                        }
                        gcEvictions.incrementAndGet();
                    }
                    long[] fresh = new long[16 + (int) (seq % 240)];
                    fresh[0] = seq;
                    for (int j = 1; j < fresh.length; j++) {
                        fresh[j] = seq * 31 + j;
                    }
                    ring[slot] = fresh;
                    seq++;
                    // Short-lived garbage: a few KiB that die at once.
                    byte[] garbage = new byte[1024 + (int) (seq % 3072)];
                    garbage[garbage.length - 1] = (byte) seq;
                    StringBuilder sb = new StringBuilder();
                    sb.append(seq).append(':').append(garbage[garbage.length - 1]);
                    if (sb.length() == 0) {
                        violation("empty string builder");
                    }
                }
                c.value.incrementAndGet();
                sleepMs(1);
            }
        });
    }

    // ------------------------------------------------------------------------------------------
    // Many threads
    // ------------------------------------------------------------------------------------------

    static final List<Thread> manyThreads = new ArrayList<>();

    static void startManyThreads(int n) {
        for (int i = 0; i < n; i++) {
            Counter c = counter("cv-t-" + i);
            final int id = i;
            manyThreads.add(start("cv-t-" + i, () -> {
                for (long k = 0; ; k++) {
                    c.value.incrementAndGet();
                    if ((k + id) % 2 == 0) {
                        sleepMs(50 + id % 100);
                    } else {
                        LockSupport.parkNanos((50 + id % 100) * 1_000_000L);
                    }
                }
            }));
        }
    }

    // ------------------------------------------------------------------------------------------
    // Mode garbage: LIVE MiB of live arrays kept after churning through CHURN MiB of garbage
    // ------------------------------------------------------------------------------------------

    /** 128 KiB long[] chunks (below G1's humongous threshold, so the collector moves them). */
    static final int LIVE_CHUNK_LONGS = 16 * 1024;
    static long[][] liveChunks;

    static void fillLiveChunks(int liveMib) {
        liveChunks = new long[liveMib * 8][];
        for (int k = 0; k < liveChunks.length; k++) {
            long[] arr = new long[LIVE_CHUNK_LONGS];
            long s = seed(400 + k);
            for (int i = 0; i < arr.length; i++) {
                s = next(s);
                arr[i] = out(s);
            }
            liveChunks[k] = arr;
        }
    }

    static String checkLiveChunks() {
        for (int k = 0; k < liveChunks.length; k++) {
            long s = seed(400 + k);
            long[] arr = liveChunks[k];
            for (int i = 0; i < arr.length; i++) {
                s = next(s);
                if (arr[i] != out(s)) {
                    return "liveChunks[" + k + "][" + i + "] is " + arr[i] + ", want " + out(s);
                }
            }
        }
        return null;
    }

    /**
     * Allocates churnMib of 64 KiB arrays with non-zero content, keeping the last 64 MiB of them
     * reachable for a while (so some survive young collections), then drops them all.
     */
    static long churnOnce(int churnMib) {
        byte[][] window = new byte[1024][];
        long sum = 0;
        for (int n = 0; n < churnMib * 16; n++) {
            byte[] junk = new byte[64 * 1024];
            for (int i = 0; i < junk.length; i += 512) {
                junk[i] = (byte) (n + i);
            }
            window[n % window.length] = junk;
            sum += junk[n % junk.length];
        }
        return sum;
    }

    // ------------------------------------------------------------------------------------------
    // Logging, control, verification
    // ------------------------------------------------------------------------------------------

    static void startLogger(Path log) throws IOException {
        FileOutputStream out = new FileOutputStream(log.toFile(), true);
        Counter c = counter("cv-logger");
        start("cv-logger", () -> {
            for (;;) {
                sleepMs(20);
                long n = logCounter.incrementAndGet();
                byte[] line = ("pid=" + START_PID + " n=" + n + "\n").getBytes(StandardCharsets.UTF_8);
                try {
                    out.write(line); // one write(2): a line is whole or absent
                } catch (IOException e) {
                    violation("log write: " + e);
                }
                c.value.incrementAndGet();
            }
        });
    }

    /** The pid the kernel reports now (/proc/self), not the one the JDK cached at start. */
    static long kernelPid() throws IOException {
        return Long.parseLong(Files.readSymbolicLink(Paths.get("/proc/self")).toString());
    }

    static long gcCount() {
        long n = 0;
        for (GarbageCollectorMXBean gc : ManagementFactory.getGarbageCollectorMXBeans()) {
            n += Math.max(0, gc.getCollectionCount());
        }
        return n;
    }

    static String verify(boolean full) throws Exception {
        long pid = kernelPid();
        if (pid != START_PID) {
            return "the kernel says pid " + pid + ", started as " + START_PID;
        }
        long deadline = System.nanoTime() + PROGRESS_WAIT_MS * 1_000_000L;
        for (Counter c : counters) {
            while (c.value.get() <= c.lastVerified) {
                if (System.nanoTime() > deadline) {
                    return c.name + " made no progress in " + PROGRESS_WAIT_MS + " ms (at "
                            + c.value.get() + ")";
                }
                Thread.sleep(1);
            }
        }
        if (full) {
            while (scheduledTicks.get() <= lastTicks) {
                if (System.nanoTime() > deadline) {
                    return "the scheduled executor did not tick (at " + scheduledTicks.get() + ")";
                }
                Thread.sleep(1);
            }
        }
        String v = violation.get();
        if (v != null) {
            return v;
        }
        for (Thread t : manyThreads) {
            if (!t.isAlive()) {
                return "thread " + t.getName() + " is no longer alive";
            }
        }
        if (full) {
            String bad = checkArrays();
            if (bad != null) {
                return bad;
            }
            for (int k = 0; k < HOT_KEYS; k++) {
                long r = hot(k);
                if (r != HOT_REF[k]) {
                    return "hot(" + k + ") = " + r + " now, " + HOT_REF[k] + " at start";
                }
            }
        }
        if (liveChunks != null) {
            String bad = checkLiveChunks();
            if (bad != null) {
                return bad;
            }
        }
        long gcBefore = gcCount();
        System.gc();
        long gcAfter = gcCount();
        if (gcAfter <= gcBefore) {
            return "System.gc() ran no collection (" + gcBefore + " -> " + gcAfter + ")";
        }
        if (full) {
            String bad = checkArrays();
            if (bad != null) {
                return "after System.gc(): " + bad;
            }
        }
        if (liveChunks != null) {
            String bad = checkLiveChunks();
            if (bad != null) {
                return "after System.gc(): " + bad;
            }
        }
        for (Counter c : counters) {
            c.lastVerified = c.value.get();
        }
        lastTicks = scheduledTicks.get();
        return null;
    }

    static void writeAtomically(Path target, String text) throws IOException {
        Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
        Files.write(tmp, text.getBytes(StandardCharsets.UTF_8));
        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    }

    static void control(boolean full) throws Exception {
        Path request = ctl.resolve("verify-request");
        Path result = ctl.resolve("verify-result");
        Path exit = ctl.resolve("exit-request");
        for (;;) {
            Thread.sleep(3);
            if (Files.exists(request)) {
                Files.deleteIfExists(request);
                String bad;
                try {
                    bad = verify(full);
                } catch (Exception e) {
                    bad = "verification threw " + e;
                }
                String line = bad == null
                        ? "ok " + START_PID + " " + logCounter.get() + "\n"
                        : "FAIL " + bad + "\n";
                if (bad != null) {
                    System.err.print(line);
                }
                writeAtomically(result, line);
            }
            if (Files.exists(exit)) {
                String text = new String(Files.readAllBytes(exit), StandardCharsets.UTF_8).trim();
                if (!text.isEmpty()) {
                    Files.deleteIfExists(exit);
                    System.exit(Integer.parseInt(text));
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: java Victim CTL_DIR LOG_FILE [full | threads N | garbage LIVE_MIB CHURN_MIB | server]");
            System.exit(2);
        }
        ctl = Paths.get(args[0]);
        Path log = Paths.get(args[1]);
        boolean full = args.length < 3 || args[2].equals("full");
        int nThreads = 0;
        int liveMib = 0;
        int churnMib = 0;
        boolean server = false;
        if (!full) {
            if (args[2].equals("server")) {
                server = true;
            } else if (args[2].equals("threads") && args.length >= 4) {
                nThreads = Integer.parseInt(args[3]);
            } else if (args[2].equals("garbage") && args.length >= 5) {
                liveMib = Integer.parseInt(args[3]);
                churnMib = Integer.parseInt(args[4]);
            } else {
                System.err.println("unknown mode " + String.join(" ", args));
                System.exit(2);
            }
        }

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                writeAtomically(ctl.resolve("shutdown-hook-ran"),
                        "pid " + START_PID + " n " + logCounter.get() + "\n");
            } catch (IOException e) {
                System.err.println("shutdown hook: " + e);
            }
        }, "cv-shutdown-hook"));

        if (full) {
            for (int k = 0; k < HOT_KEYS; k++) {
                HOT_REF[k] = hot(k); // computed cold (interpreted, then C1): the reference for C2
            }
            fillArrays();
            startPool();
            startScheduler();
            startQueue();
            Counter jit = counter("cv-jit");
            start("cv-jit", () -> jitLoop(jit));
            startChurn();
        } else if (server) {
            Servers.start(ctl);
        } else if (liveMib > 0) {
            fillLiveChunks(liveMib);
            churnOnce(churnMib);
        } else {
            startManyThreads(nThreads);
        }
        // Check the freshly built state once, so a broken victim fails before any dump.
        String bad = verify(full);
        if (bad != null) {
            System.err.println("self-check at start failed: " + bad);
            System.exit(111);
        }
        startLogger(log);
        control(full);
    }
}

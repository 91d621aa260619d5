import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The crest demo application: a small service that keeps 48 MiB of live data, a scheduled
 * ticker and a worker pool busy, and logs a line every 10 ms. `tests/demo.sh` checkpoints it
 * with crest and restores it; the restored JVM carries on where it was.
 *
 * usage: java Demo LOG_FILE CHECK_FILE
 * When CHECK_FILE appears it re-checks its live data and answers in CHECK_FILE.result.
 */
public class Demo {
    static final int ARRAYS = 48;
    static final long[][] live = new long[ARRAYS][];
    static long expected;

    static long fill() {
        long sum = 0, x = 0x9e3779b97f4a7c15L;
        for (int i = 0; i < ARRAYS; i++) {
            live[i] = new long[128 * 1024]; // 1 MiB each
            for (int j = 0; j < live[i].length; j++) {
                x ^= x << 13; x ^= x >>> 7; x ^= x << 17;
                live[i][j] = x;
                sum += x * (j + 1);
            }
        }
        return sum;
    }

    static long checksum() {
        long sum = 0;
        for (long[] a : live) for (int j = 0; j < a.length; j++) sum += a[j] * (j + 1);
        return sum;
    }

    public static void main(String[] args) throws Exception {
        FileOutputStream log = new FileOutputStream(args[0], true);
        java.io.File check = new java.io.File(args[1]);
        expected = fill();
        long pid = ProcessHandle.current().pid();
        AtomicLong ticks = new AtomicLong();
        AtomicLong work = new AtomicLong();
        ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor();
        ticker.scheduleAtFixedRate(ticks::incrementAndGet, 1, 1, TimeUnit.MILLISECONDS);
        var pool = Executors.newFixedThreadPool(4);
        for (int w = 0; w < 4; w++) {
            pool.submit(() -> {
                while (true) {
                    long s = 0;
                    for (int i = 0; i < 100_000; i++) s += i * 31L ^ (s >>> 3);
                    work.addAndGet(s == 42 ? 2 : 1);
                    Thread.sleep(1);
                }
            });
        }
        for (long n = 0; ; n++) {
            String line = "pid=" + pid + " n=" + n + " ticks=" + ticks.get() + " work=" + work.get() + "\n";
            log.write(line.getBytes(StandardCharsets.UTF_8));
            if (check.exists()) {
                check.delete();
                String result = checksum() == expected ? "ok pid=" + pid + " n=" + n : "FAIL live data changed";
                try (FileOutputStream out = new FileOutputStream(args[1] + ".result")) {
                    out.write((result + "\n").getBytes(StandardCharsets.UTF_8));
                }
            }
            Thread.sleep(10);
        }
    }
}

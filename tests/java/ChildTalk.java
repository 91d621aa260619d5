import java.io.BufferedReader;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

/**
 * A JVM with a child process it talks to through pipes (issue #9): it starts {@code cat} with
 * ProcessBuilder and, every 5 ms, writes a numbered line to the child's stdin and reads it back
 * from the child's stdout. Each round trip that comes back intact is logged as
 * {@code pid=<pid> n=<round>} to LOG_FILE; anything else goes to stderr and ends the JVM with
 * status 3, so a broken pipe or a lost child shows as a gap or a death.
 *
 * <p>On {@code CTL_DIR/verify-request} it checks the child is alive and writes
 * {@code ok <pid> <round> <child pid>} to {@code CTL_DIR/verify-result} (temporary file +
 * rename).
 *
 * <p>usage: java ChildTalk CTL_DIR LOG_FILE
 */
public class ChildTalk {
    public static void main(String[] args) throws Exception {
        Path ctl = Paths.get(args[0]);
        long pid = ProcessHandle.current().pid();
        Process child = new ProcessBuilder("cat").redirectError(ProcessBuilder.Redirect.DISCARD).start();
        Writer toChild = new OutputStreamWriter(child.getOutputStream(), StandardCharsets.UTF_8);
        BufferedReader fromChild =
                new BufferedReader(new InputStreamReader(child.getInputStream(), StandardCharsets.UTF_8));
        try (FileOutputStream log = new FileOutputStream(args[1], true)) {
            for (long n = 1; ; n++) {
                String line = "round " + n;
                toChild.write(line + "\n");
                toChild.flush();
                String back = fromChild.readLine();
                if (!line.equals(back)) {
                    System.err.println("round " + n + ": the child answered " + back);
                    System.exit(3);
                }
                log.write(("pid=" + pid + " n=" + n + "\n").getBytes(StandardCharsets.UTF_8));
                Path request = ctl.resolve("verify-request");
                if (Files.deleteIfExists(request)) {
                    String result = child.isAlive()
                            ? "ok " + pid + " " + n + " " + child.pid() + "\n"
                            : "FAIL the child " + child.pid() + " is gone\n";
                    Path tmp = ctl.resolve("verify-result.tmp");
                    Files.write(tmp, result.getBytes(StandardCharsets.UTF_8));
                    Files.move(tmp, ctl.resolve("verify-result"),
                            java.nio.file.StandardCopyOption.ATOMIC_MOVE);
                }
                Thread.sleep(5);
            }
        }
    }
}

//! The workload: a Java command line is recognised (its java binary and JDK version, for the
//! JDK's own fast-start methods), and the bundled workloads are built at run time: the demo JVM
//! (`tests/java/Demo.java`, 48 MiB of live data) or the same server with N MiB of live data,
//! compiled with the JDK's javac into a jar (the JDK's archives keep only classes from jars),
//! serving HTTP on a free 127.0.0.1 port, probed by its first HTTP 200 on /hello.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::BenchError;

/// The bundled application's source, carried in the binary.
const DEMO_JAVA: &str = include_str!("../../tests/java/Demo.java");

/// The JDK a Java workload runs on.
#[derive(Debug, Clone)]
pub struct Jdk {
    pub java: PathBuf,
    /// Feature release: 17, 21, 25 ...
    pub major: u32,
    /// `java -version`'s first line.
    pub version: String,
}

/// Finds `name` on PATH (or returns it when it has a slash).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The JDK of a command line whose program is `java` (by name), or None.
pub fn detect_java(argv: &[String]) -> Option<Jdk> {
    let prog = argv.first()?;
    if Path::new(prog).file_name()? != "java" {
        return None;
    }
    let java = which(prog)?;
    jdk_of(&java).ok()
}

/// Asks `java -version` for its release.
pub fn jdk_of(java: &Path) -> Result<Jdk, BenchError> {
    let out = Command::new(java)
        .arg("-version")
        .output()
        .map_err(|e| BenchError::Setup(format!("cannot run {} -version: {e}", java.display())))?;
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let version = text.lines().next().unwrap_or_default().to_string();
    let quoted = version.split('"').nth(1).ok_or_else(|| {
        BenchError::Setup(format!("{} -version says {version:?}", java.display()))
    })?;
    let major = parse_major(quoted)
        .ok_or_else(|| BenchError::Setup(format!("cannot read the JDK release in {version:?}")))?;
    Ok(Jdk {
        java: java.to_path_buf(),
        major,
        version,
    })
}

/// "17.0.15" -> 17, "1.8.0_392" -> 8, "25" -> 25, "25-ea" -> 25.
fn parse_major(v: &str) -> Option<u32> {
    let mut parts = v.split(['.', '-', '_', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// Inserts JVM options right after the java program of a command line.
pub fn with_jvm_options(argv: &[String], opts: &[String]) -> Vec<String> {
    let mut out = vec![argv[0].clone()];
    out.extend(opts.iter().cloned());
    out.extend(argv[1..].iter().cloned());
    out
}

/// A bundled workload, ready to run.
pub struct Bundled {
    pub argv: Vec<String>,
    pub url: String,
    /// The log file the application appends to (restored to its dump-time size before each
    /// restore).
    pub log: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Setup(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("cannot find a free port: {e}")))
}

/// The JDK for a bundled workload: --java, else JAVA_HOME/bin/java, else java on PATH.
pub fn bundled_java(given: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(j) = given {
        return Ok(j.to_path_buf());
    }
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let j = Path::new(&home).join("bin/java");
        if j.is_file() {
            return Ok(j);
        }
    }
    which("java").ok_or_else(|| {
        BenchError::Setup(
            "the bundled workloads need a JDK: no java on PATH and no JAVA_HOME (give --java \
             PATH or a command after --)"
                .into(),
        )
    })
}

/// Compiles the demo into `work`/demo.jar and returns the command line of a server with
/// `live_mib` MiB of live data.
pub fn build(java: &Path, live_mib: u32, work: &Path) -> Result<Bundled, BenchError> {
    let bin = java.parent().unwrap_or(Path::new("."));
    let javac = bin.join("javac");
    let jar = bin.join("jar");
    for tool in [&javac, &jar] {
        if !tool.is_file() {
            return Err(BenchError::Setup(format!(
                "the bundled workloads are compiled at run time and need a JDK's {} (not a JRE)",
                tool.display()
            )));
        }
    }
    let src = work.join("src");
    let classes = work.join("classes");
    std::fs::create_dir_all(&src)
        .and_then(|_| std::fs::create_dir_all(&classes))
        .and_then(|_| std::fs::write(src.join("Demo.java"), DEMO_JAVA))
        .map_err(|e| {
            BenchError::Setup(format!(
                "cannot write the demo source into {}: {e}",
                src.display()
            ))
        })?;
    let jar_file = work.join("demo.jar");
    let steps: [(PathBuf, Vec<String>); 2] = [
        (
            javac.clone(),
            vec![
                "-d".into(),
                classes.display().to_string(),
                src.join("Demo.java").display().to_string(),
            ],
        ),
        (
            jar.clone(),
            vec![
                "cf".into(),
                jar_file.display().to_string(),
                "-C".into(),
                classes.display().to_string(),
                ".".into(),
            ],
        ),
    ];
    for (tool, args) in steps {
        let out = Command::new(&tool)
            .args(&args)
            .output()
            .map_err(|e| BenchError::Setup(format!("cannot run {}: {e}", tool.display())))?;
        if !out.status.success() {
            return Err(BenchError::Setup(format!(
                "{} {} failed: {}",
                tool.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let port = free_port()?;
    // The live data sits in 1 MiB arrays (humongous objects in G1, two regions each).
    let heap = live_mib as u64 * 3 + 256;
    let log = work.join("demo.log");
    let argv = vec![
        java.display().to_string(),
        format!("-Xmx{heap}m"),
        format!("-Ddemo.live.mib={live_mib}"),
        format!("-Ddemo.port={port}"),
        "-cp".into(),
        jar_file.display().to_string(),
        "Demo".into(),
        log.display().to_string(),
        work.join("demo.port").display().to_string(),
    ];
    Ok(Bundled {
        argv,
        url: format!("http://127.0.0.1:{port}/hello"),
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jdk_releases() {
        assert_eq!(parse_major("17.0.15"), Some(17));
        assert_eq!(parse_major("1.8.0_392"), Some(8));
        assert_eq!(parse_major("25"), Some(25));
        assert_eq!(parse_major("25-ea"), Some(25));
        assert_eq!(parse_major("x"), None);
    }

    #[test]
    fn jvm_options_go_after_the_program() {
        let argv: Vec<String> = ["java", "-cp", "a.jar", "Main"].map(String::from).into();
        assert_eq!(
            with_jvm_options(&argv, &["-Xshare:on".into()]),
            ["java", "-Xshare:on", "-cp", "a.jar", "Main"]
        );
    }
}

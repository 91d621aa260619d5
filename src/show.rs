//! `crest show`: an image for people ([`render_text`]) and for programs ([`render_json`]).
//!
//! Both views read the validated [`Image`] only. Register summaries decode the layout the
//! image records (`user_regs_struct` order for x86_64, `user_pt_regs` for aarch64), which is a
//! property of the image's data, not of the machine `crest show` runs on.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::images::{
    ArchRegs, FileKind, GcHintStats, Image, ProcessImage, ThreadImage, Vma, VmaBacking, PROT_EXEC,
    PROT_READ, PROT_WRITE,
};

/// Names of the x86_64 `user_regs_struct` fields, in NT_PRSTATUS order.
const X86_64_GPR_NAMES: [&str; 27] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs",
    "gs",
];
/// The x86_64 registers worth a glance: where the thread is, its stack, its syscall state, TLS.
const X86_64_SUMMARY: [&str; 5] = ["rip", "rsp", "rax", "orig_rax", "fs_base"];
/// Indices in arm64 `user_pt_regs` (x0-x30, sp, pc, pstate) of the summary registers.
const AARCH64_SUMMARY: [(&str, usize); 4] = [("pc", 32), ("sp", 31), ("x0", 0), ("x8", 8)];

/// The image as readable text for a terminal.
pub fn render_text(image: &Image) -> String {
    let mut out = String::new();
    let inv = &image.inventory;
    let _ = writeln!(out, "crest image {}", image.dir.display());
    let _ = writeln!(
        out,
        "  arch {}, page size {}, kernel {}, written by crest {}",
        inv.arch.name(),
        inv.page_size,
        inv.kernel_release,
        inv.crest_version
    );
    let _ = writeln!(out, "  created {}", format_unix_ms(inv.created_unix_ms));
    let _ = writeln!(
        out,
        "  clocks at the dump: monotonic {:.3} s, boot time {:.3} s (a restore with --clocks \
         carry-on continues from them)",
        inv.clocks.monotonic_ns as f64 / 1e9,
        inv.clocks.boottime_ns as f64 / 1e9
    );
    let _ = writeln!(out, "  root pid {}", inv.root_pid);
    render_tree(&mut out, &inv.tree);
    if let Some(job) = &inv.shell_job {
        render_shell_job(&mut out, job);
    }
    for p in &image.processes {
        out.push('\n');
        render_process(&mut out, image, p);
    }
    out.push('\n');
    render_totals(&mut out, image);
    out.push_str(&crate::prefetch::show_text(image));
    out
}

/// The image as pretty JSON: the inventory and every process record as stored, except that
/// raw register bytes are replaced by a summary, hashes are hex, and each VMA carries the
/// number of pages stored in it.
pub fn render_json(image: &Image) -> Result<String, serde_json::Error> {
    let mut inventory = serde_json::to_value(&image.inventory)?;
    if let Some(files) = inventory.get_mut("files").and_then(Value::as_array_mut) {
        for (value, entry) in files.iter_mut().zip(&image.inventory.files) {
            value["blake3"] = Value::String(hex(&entry.blake3));
        }
    }
    let mut processes = Vec::with_capacity(image.processes.len());
    for p in &image.processes {
        let mut value = serde_json::to_value(p)?;
        if let Some(threads) = value.get_mut("threads").and_then(Value::as_array_mut) {
            for (tv, t) in threads.iter_mut().zip(&p.threads) {
                tv["regs"] = regs_json(t);
            }
        }
        if let Some(vmas) = value.get_mut("vmas").and_then(Value::as_array_mut) {
            for (vv, pages) in vmas.iter_mut().zip(pages_per_vma(p)) {
                vv["pages_stored"] = json!(pages);
            }
        }
        value["vdso_blake3"] = match &p.vdso_blake3 {
            Some(h) => Value::String(hex(h)),
            None => Value::Null,
        };
        value["exe_path"] = json!(file_path(p, p.exe_file));
        value["cwd_path"] = json!(file_path(p, p.cwd_file));
        if let Some(root) = p.root_file {
            value["root_path"] = json!(file_path(p, root));
        }
        processes.push(value);
    }
    serde_json::to_string_pretty(&json!({
        "dir": image.dir.to_string_lossy(),
        "inventory": inventory,
        "processes": processes,
        "working_set": crate::prefetch::show_json(image),
    }))
}

fn render_process(out: &mut String, image: &Image, p: &ProcessImage) {
    let _ = writeln!(out, "process {} ({}), parent {}", p.pid, p.comm, p.ppid);
    let _ = writeln!(out, "  exe    {}", file_path(p, p.exe_file));
    let _ = writeln!(out, "  cwd    {}", file_path(p, p.cwd_file));
    if let Some(root) = p.root_file {
        let _ = writeln!(out, "  root   {}", file_path(p, root));
    }
    let _ = writeln!(out, "  umask  {:04o}", p.umask);
    let _ = writeln!(
        out,
        "  uid    {}  gid {}  groups {:?}",
        join_ids(&p.creds.uid),
        join_ids(&p.creds.gid),
        p.creds.groups
    );
    let c = &p.creds;
    let _ = writeln!(
        out,
        "  caps   inheritable {:#x}, permitted {:#x}, effective {:#x}, bounding {:#x}, ambient \
         {:#x}; securebits {:#x}",
        c.cap_inheritable,
        c.cap_permitted,
        c.cap_effective,
        c.cap_bounding,
        c.cap_ambient,
        c.securebits
    );
    let _ = writeln!(
        out,
        "  signals ignored {:#x}, caught {:#x}",
        p.sig_ignored, p.sig_caught
    );
    render_task(out, &p.task);

    let _ = writeln!(out, "  threads ({}):", p.threads.len());
    for t in &p.threads {
        let name = if t.state.name.is_empty() {
            String::new()
        } else {
            format!(" {:?}", t.state.name)
        };
        let _ = writeln!(out, "    tid {}{name}: {}", t.tid, regs_text(t));
        let rseq = match &t.rseq {
            Some(r) => format!(
                "rseq at {:#x} ({} bytes, signature {:#x})",
                r.abi_pointer, r.abi_size, r.signature
            ),
            None => "no rseq".to_string(),
        };
        let _ = writeln!(out, "      sigmask {:#x}, {rseq}", t.sigmask);
        render_thread_state(out, &t.state);
    }

    let pages = pages_per_vma(p);
    let stored: u64 = pages.iter().sum();
    let _ = writeln!(
        out,
        "  memory ({} areas, {} pages stored in {}):",
        p.vmas.len(),
        stored,
        p.pages_file
    );
    let _ = writeln!(
        out,
        "    {:<29}  {:>9}  {:<4}  {:>7}  {:<24} NAME",
        "ADDRESS", "SIZE", "PROT", "PAGES", "BACKING"
    );
    for (v, n) in p.vmas.iter().zip(&pages) {
        let _ = writeln!(
            out,
            "    {:#014x}-{:#014x}  {:>9}  {}  {:>7}  {:<24} {}",
            v.start,
            v.end,
            human_bytes(v.end - v.start),
            prot_text(v),
            n,
            backing_text(p, v),
            v.name
        );
    }

    let _ = writeln!(out, "  file descriptors ({}):", p.fds.len());
    let _ = writeln!(out, "    {:>4}  {:<20} {:>12}  PATH", "FD", "FLAGS", "POS");
    let mut sharers: HashMap<u32, Vec<i32>> = HashMap::new();
    for fd in &p.fds {
        sharers.entry(fd.description).or_default().push(fd.fd);
    }
    let mut fds: Vec<_> = p.fds.iter().collect();
    fds.sort_by_key(|f| f.fd);
    for fd in fds {
        let Some(desc) = p.open_files.get(fd.description as usize) else {
            continue;
        };
        let others: Vec<String> = sharers
            .get(&fd.description)
            .into_iter()
            .flatten()
            .filter(|&&o| o != fd.fd)
            .map(|o| o.to_string())
            .collect();
        let mut flags = open_flags_text(desc.flags);
        if fd.cloexec {
            flags.push_str(",cloexec");
        }
        let shared = if others.is_empty() {
            String::new()
        } else {
            format!("  (shares its open file with fd {})", others.join(", "))
        };
        let _ = writeln!(
            out,
            "    {:>4}  {:<20} {:>12}  {}{}",
            fd.fd,
            flags,
            desc.pos,
            file_text(p, desc.file),
            shared
        );
    }

    let locks: Vec<String> = p
        .fds
        .iter()
        .flat_map(|fd| {
            // Listed once, under the description's lowest fd.
            let lowest = p
                .fds
                .iter()
                .filter(|f| f.description == fd.description)
                .all(|f| f.fd >= fd.fd);
            p.open_files
                .get(fd.description as usize)
                .filter(|_| lowest)
                .into_iter()
                .flat_map(|d| &d.locks)
                .map(|l| format!("fd {}: {}", fd.fd, crate::files::locks::describe(l)))
        })
        .chain(p.posix_locks.iter().map(|l| {
            format!(
                "fd {}: {}",
                l.fd,
                crate::files::locks::describe_posix(l.ty, &l.range)
            )
        }))
        .chain(p.mapping_locks.iter().map(|l| {
            format!(
                "mapping of {}: {}",
                file_text(p, l.file),
                crate::files::locks::describe(&l.lock)
            )
        }))
        .collect();
    if !locks.is_empty() {
        let _ = writeln!(out, "  file locks ({}):", locks.len());
        for l in locks {
            let _ = writeln!(out, "    {l}");
        }
    }

    if !p.rlimits.is_empty() {
        let limits: Vec<String> = p
            .rlimits
            .iter()
            .map(|r| {
                format!(
                    "{} {}/{}",
                    rlimit_name(r.resource),
                    limit_text(r.soft),
                    limit_text(r.hard)
                )
            })
            .collect();
        let _ = writeln!(out, "  rlimits (soft/hard): {}", limits.join(", "));
    }
    let mm = &p.mm;
    let _ = writeln!(
        out,
        "  mm: code {:#x}-{:#x}, data {:#x}-{:#x}, brk {:#x}-{:#x}, stack {:#x}",
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack
    );
    let _ = writeln!(
        out,
        "      args {:#x}-{:#x}, env {:#x}-{:#x}, auxv {} entries",
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        mm.auxv.len() / 2
    );
    if let Some(entry) = image.file_entry(&p.pages_file) {
        let _ = writeln!(
            out,
            "  page file {}: {}",
            entry.name,
            human_bytes(entry.size)
        );
    }
}

/// Names of signals 1..=31 (the same numbers on x86_64 and arm64).
const SIGNAL_NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// `SIGUSR1`, or `SIG36` for a real-time signal (glibc's SIGRTMIN is 34, the kernel's 32).
fn signal_name(sig: i64) -> String {
    match usize::try_from(sig) {
        Ok(n @ 1..=31) => SIGNAL_NAMES[n - 1].to_string(),
        _ => format!("SIG{sig}"),
    }
}

/// The signals of a mask (bit n-1 for signal n), by name.
fn mask_text(mask: u64) -> String {
    if mask == 0 {
        return "none".into();
    }
    (1..=64)
        .filter(|n| mask & (1u64 << (n - 1)) != 0)
        .map(signal_name)
        .collect::<Vec<_>>()
        .join(",")
}

/// SA_* flags (include/uapi/asm-generic/signal-defs.h and the arch signal.h).
const SA_FLAGS: [(u64, &str); 10] = [
    (0x1, "SA_NOCLDSTOP"),
    (0x2, "SA_NOCLDWAIT"),
    (0x4, "SA_SIGINFO"),
    (0x400, "SA_UNSUPPORTED"),
    (0x800, "SA_EXPOSE_TAGBITS"),
    (0x0400_0000, "SA_RESTORER"),
    (0x0800_0000, "SA_ONSTACK"),
    (0x1000_0000, "SA_RESTART"),
    (0x4000_0000, "SA_NODEFER"),
    (0x8000_0000, "SA_RESETHAND"),
];

fn sa_flags_text(flags: u64) -> String {
    let mut names: Vec<String> = SA_FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known: u64 = SA_FLAGS.iter().map(|(bit, _)| bit).sum();
    if flags & !known != 0 {
        names.push(format!("{:#x}", flags & !known));
    }
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

/// One pending siginfo: signal, si_code and, for signals sent by a process (si_code <= 0),
/// the sender and the value.
fn siginfo_text(info: &[u8]) -> String {
    let i32_at = |o: usize| {
        info.get(o..o + 4)
            .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    let signo = i32_at(0);
    let code = i32_at(8);
    let code_text = match code {
        0 => "SI_USER".to_string(),
        0x80 => "SI_KERNEL".to_string(),
        -1 => "SI_QUEUE".to_string(),
        -2 => "SI_TIMER".to_string(),
        -6 => "SI_TKILL".to_string(),
        c => format!("si_code {c}"),
    };
    let mut text = format!("{} ({code_text}", signal_name(signo.into()));
    if code <= 0 && code != -2 {
        let _ = write!(text, " from pid {}", i32_at(16));
    }
    if code == -1 || code == -2 {
        let value = info
            .get(24..32)
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
        let _ = write!(text, ", value {value:#x}");
    }
    text.push(')');
    text
}

fn pending_text(queue: &[Vec<u8>]) -> String {
    if queue.is_empty() {
        return "none".into();
    }
    queue
        .iter()
        .map(|i| siginfo_text(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration in microseconds as "5.000 ms".
fn us_text(us: u64) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

fn clock_name(clock: i32) -> String {
    match clock {
        0 => "CLOCK_REALTIME".into(),
        1 => "CLOCK_MONOTONIC".into(),
        2 => "CLOCK_PROCESS_CPUTIME_ID".into(),
        3 => "CLOCK_THREAD_CPUTIME_ID".into(),
        7 => "CLOCK_BOOTTIME".into(),
        8 => "CLOCK_REALTIME_ALARM".into(),
        9 => "CLOCK_BOOTTIME_ALARM".into(),
        11 => "CLOCK_TAI".into(),
        c if c < 0 => format!("CPU clock {c}"),
        c => format!("clock {c}"),
    }
}

/// What the parasite collected for the whole process.
fn render_task(out: &mut String, t: &crate::images::TaskState) {
    if t.sigactions.is_empty() {
        let _ = writeln!(out, "  signal handlers: not recorded");
    } else {
        let set: Vec<(usize, &crate::images::SigAction)> = t
            .sigactions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.handler != 0)
            .collect();
        let _ = writeln!(out, "  signal handlers ({} not SIG_DFL):", set.len());
        for (i, a) in set {
            let sig = i as i64 + 1;
            let what = if a.handler == 1 {
                "SIG_IGN".to_string()
            } else {
                format!("handler {:#x}", a.handler)
            };
            let mut line = format!(
                "    {:<10} {what}, flags {}",
                signal_name(sig),
                sa_flags_text(a.flags)
            );
            if a.flags & 0x0400_0000 != 0 {
                let _ = write!(line, ", restorer {:#x}", a.restorer);
            }
            let _ = write!(line, ", mask {}", mask_text(a.mask));
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "  pending (process-wide): {}",
        pending_text(&t.shared_pending)
    );
    const ITIMER_NAMES: [&str; 3] = ["real", "virtual", "prof"];
    let itimers: Vec<String> = t
        .itimers
        .iter()
        .zip(ITIMER_NAMES)
        .filter(|(it, _)| it.value_us != 0 || it.interval_us != 0)
        .map(|(it, name)| {
            format!(
                "{name} next in {}, every {}",
                us_text(it.value_us),
                us_text(it.interval_us)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  interval timers: {}",
        if t.itimers.is_empty() {
            "not recorded".to_string()
        } else if itimers.is_empty() {
            "none armed".to_string()
        } else {
            itimers.join("; ")
        }
    );
    let _ = writeln!(out, "  POSIX timers ({}):", t.posix_timers.len());
    for pt in &t.posix_timers {
        let notify = match pt.notify {
            1 => "no notification".to_string(),
            n if n & 4 != 0 => format!(
                "{} (value {:#x}) to thread {}",
                signal_name(pt.signo.into()),
                pt.sigev_value,
                pt.notify_tid
            ),
            _ => format!(
                "{} (value {:#x})",
                signal_name(pt.signo.into()),
                pt.sigev_value
            ),
        };
        let _ = writeln!(
            out,
            "    id {}: {}, {notify}, next in {}, every {}, overrun {}",
            pt.id,
            clock_name(pt.clock),
            us_text(pt.value_ns / 1000),
            us_text(pt.interval_ns / 1000),
            pt.overrun
        );
    }
    let mut flags = vec![
        format!("personality {:#x}", t.personality),
        format!(
            "pdeath signal {}",
            if t.pdeath_signal == 0 {
                "none".to_string()
            } else {
                signal_name(t.pdeath_signal.into())
            }
        ),
        format!("dumpable {}", t.dumpable),
    ];
    if t.no_new_privs {
        flags.push("no_new_privs".into());
    }
    if t.child_subreaper {
        flags.push("child subreaper".into());
    }
    if t.group_stop != 0 {
        flags.push(format!("stopped by {}", signal_name(t.group_stop.into())));
    }
    let _ = writeln!(out, "  prctl: {}", flags.join(", "));
    let st = &t.settings;
    let loginuid = if st.loginuid == crate::images::LOGINUID_UNSET {
        "unset".to_string()
    } else {
        st.loginuid.to_string()
    };
    let _ = writeln!(
        out,
        "  settings: oom_score_adj {}, loginuid {loginuid}, thp_disable {:#x}, membarrier \
         {:#x}, tsc {}, mce_kill {}, speculation {:#x}/{:#x}/{:#x}",
        st.oom_score_adj,
        st.thp_disable,
        st.membarrier,
        st.tsc,
        st.mce_kill,
        st.speculation[0],
        st.speculation[1],
        st.speculation[2]
    );
}

/// What the parasite and PTRACE_PEEKSIGINFO collected for one thread.
fn render_thread_state(out: &mut String, s: &crate::images::ThreadState) {
    let alt = match &s.altstack {
        Some(a) => format!(
            "altstack {:#x}-{:#x} ({}, flags {:#x})",
            a.sp,
            a.sp.wrapping_add(a.size),
            human_bytes(a.size),
            a.flags
        ),
        None => "no altstack".to_string(),
    };
    let _ = writeln!(
        out,
        "      {alt}, clear_child_tid {:#x}, robust list {:#x} ({} bytes)",
        s.clear_child_tid, s.robust_list, s.robust_list_len
    );
    let _ = writeln!(out, "      pending: {}", pending_text(&s.pending));
    if let Some(sc) = &s.sched {
        let cpus: Vec<String> = (0..sc.affinity.len() * 64)
            .filter(|&c| sc.affinity[c / 64] & (1 << (c % 64)) != 0)
            .map(|c| c.to_string())
            .collect();
        let _ = writeln!(
            out,
            "      sched: policy {}, nice {}, priority {}, CPUs {}, timer slack {} ns",
            sc.policy,
            sc.nice,
            sc.priority,
            cpus.join(","),
            sc.timerslack_ns
        );
    }
}

fn render_totals(out: &mut String, image: &Image) {
    let s = &image.inventory.stats;
    let ps = image.inventory.page_size;
    let _ = writeln!(out, "totals");
    let _ = writeln!(out, "  pages scanned     {:>10}", s.pages_scanned);
    let _ = writeln!(
        out,
        "  pages absent      {:>10}  (neither present nor swapped)",
        s.pages_absent
    );
    let _ = writeln!(
        out,
        "  pages present     {:>10}  (in RAM or swapped)",
        s.pages_present
    );
    let _ = writeln!(
        out,
        "  pages file-backed {:>10}  (unchanged file pages, not stored)",
        s.pages_file_backed
    );
    let _ = writeln!(
        out,
        "  pages zero        {:>10}  (all zero, not stored)",
        s.pages_zero
    );
    let _ = writeln!(
        out,
        "  pages written     {:>10}  ({})",
        s.pages_written,
        human_bytes(s.pages_written.saturating_mul(ps))
    );
    let _ = writeln!(
        out,
        "  bytes written     {:>10}  ({})",
        s.bytes_written,
        human_bytes(s.bytes_written)
    );
    let _ = writeln!(out, "  rss at dump       {:>10}", human_bytes(s.rss_bytes));
    let _ = writeln!(out, "  gc hint           {}", gc_hint_text(&s.gc_hint));
    let _ = writeln!(out, "  frozen for        {:>10}", micros_text(s.frozen_us));
    if !s.phases_us.is_empty() {
        let _ = writeln!(out, "  phases:");
        for (name, us) in &s.phases_us {
            let _ = writeln!(out, "    {:<16} {:>10}", name, micros_text(*us));
        }
    }
}

/// One line on what the GC hint did.
pub fn gc_hint_text(hint: &GcHintStats) -> String {
    match hint {
        GcHintStats::NotAJvm => "none (not a HotSpot JVM)".into(),
        GcHintStats::Off => "off (--no-gc-hint)".into(),
        GcHintStats::Skipped { reason } => format!("skipped: {reason}"),
        GcHintStats::Done(d) => {
            let mut text = format!(
                "done in {} (attach protocol v{}): heap committed {} -> {}, used {} -> {}; rss {} \
                 before",
                micros_text(d.elapsed_us),
                d.protocol_version,
                human_bytes(d.heap_committed_before),
                human_bytes(d.heap_committed_after),
                human_bytes(d.heap_used_before),
                human_bytes(d.heap_used_after),
                human_bytes(d.rss_before_bytes)
            );
            if d.native_trim.is_some() {
                text += ", native heap trimmed";
            }
            text
        }
    }
}

/// Pages stored in each VMA, in VMA order. Runs lie inside one VMA (checked by the reader).
fn pages_per_vma(p: &ProcessImage) -> Vec<u64> {
    let mut pages = vec![0u64; p.vmas.len()];
    for r in &p.page_runs {
        let idx = p.vmas.partition_point(|v| v.start <= r.vaddr);
        if let Some(slot) = idx.checked_sub(1).and_then(|k| pages.get_mut(k)) {
            *slot = slot.saturating_add(r.npages);
        }
    }
    pages
}

fn regs_text(t: &ThreadImage) -> String {
    match &t.regs {
        ArchRegs::X86_64 { gpr, xstate } => {
            let mut parts: Vec<String> = X86_64_SUMMARY
                .iter()
                .filter_map(|name| {
                    let i = X86_64_GPR_NAMES.iter().position(|n| n == name)?;
                    gpr.get(i).map(|v| format!("{name} {v:#x}"))
                })
                .collect();
            parts.push(format!("xstate {} bytes", xstate.len()));
            parts.join(", ")
        }
        ArchRegs::Aarch64 { gpr, fpsimd, tls } => {
            let mut parts: Vec<String> = AARCH64_SUMMARY
                .iter()
                .filter_map(|(name, i)| gpr.get(*i).map(|v| format!("{name} {v:#x}")))
                .collect();
            parts.push(format!("tls {tls:#x}"));
            parts.push(format!("fpsimd {} bytes", fpsimd.len()));
            parts.join(", ")
        }
    }
}

fn regs_json(t: &ThreadImage) -> Value {
    let mut m = Map::new();
    match &t.regs {
        ArchRegs::X86_64 { gpr, xstate } => {
            m.insert("arch".into(), json!("x86_64"));
            for (name, v) in X86_64_GPR_NAMES.iter().zip(gpr) {
                m.insert((*name).into(), json!(format!("{v:#x}")));
            }
            m.insert("xstate_bytes".into(), json!(xstate.len()));
        }
        ArchRegs::Aarch64 { gpr, fpsimd, tls } => {
            m.insert("arch".into(), json!("aarch64"));
            for (i, v) in gpr.iter().enumerate() {
                let name = match i {
                    31 => "sp".to_string(),
                    32 => "pc".to_string(),
                    33 => "pstate".to_string(),
                    _ => format!("x{i}"),
                };
                m.insert(name, json!(format!("{v:#x}")));
            }
            m.insert("tls".into(), json!(format!("{tls:#x}")));
            m.insert("fpsimd_bytes".into(), json!(fpsimd.len()));
        }
    }
    Value::Object(m)
}

fn prot_text(v: &Vma) -> String {
    let bit = |b: u32, c: char| if v.prot & b != 0 { c } else { '-' };
    format!(
        "{}{}{}{}",
        bit(PROT_READ, 'r'),
        bit(PROT_WRITE, 'w'),
        bit(PROT_EXEC, 'x'),
        if v.shared { 's' } else { 'p' }
    )
}

/// One line per task of the tree: pid, parent, group, session, and a zombie's exit.
fn render_tree(out: &mut String, tree: &[crate::images::TreeTask]) {
    if tree.len() <= 1 {
        return;
    }
    let _ = writeln!(out, "  tree of {} tasks:", tree.len());
    for t in tree {
        let state = match &t.state {
            crate::images::TreeTaskState::Alive => String::new(),
            crate::images::TreeTaskState::Zombie { wait_status, comm } => {
                format!(", zombie {comm:?} with wait status {wait_status:#x}")
            }
        };
        let _ = writeln!(
            out,
            "    pid {} parent {} group {} session {}{state}",
            t.pid, t.ppid, t.pgid, t.sid
        );
    }
}

/// A shell job: which terminal, whose controlling terminal, which group was in the foreground.
fn render_shell_job(out: &mut String, job: &crate::images::ShellJob) {
    let ctty = match job.ctty_session {
        Some(sid) => format!("controlling terminal of session {sid}"),
        None => "no process's controlling terminal".into(),
    };
    let fg = match job.foreground {
        Some(pgid) => format!(", foreground group {pgid}"),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "  shell job: attached to terminal {}:{} ({ctty}{fg}); restore with --shell-job",
        libc::major(job.rdev),
        libc::minor(job.rdev)
    );
}

fn backing_text(p: &ProcessImage, v: &Vma) -> String {
    match &v.backing {
        VmaBacking::Anonymous => "anonymous".into(),
        VmaBacking::File { file, offset } => {
            let path = file_path(p, *file);
            // The name column repeats the path when it is the mapped file; keep the column short.
            let shown = if path == v.name {
                "file".to_string()
            } else {
                format!("file {path}")
            };
            format!("{shown} @{offset:#x}")
        }
        VmaBacking::Vdso => "vdso".into(),
        VmaBacking::Vvar => "vvar".into(),
        VmaBacking::SharedAnonymous {
            object,
            size,
            offset,
        } => format!("shared memory {object} ({size:#x} bytes) @{offset:#x}"),
        VmaBacking::SysvShm { id } => format!("SysV segment {id}"),
        VmaBacking::AioRing(r) => format!(
            "AIO ring of {} events, head {} tail {}",
            r.nr, r.head, r.tail
        ),
    }
}

fn file_path(p: &ProcessImage, idx: u32) -> String {
    p.files
        .get(idx as usize)
        .map(|f| f.path.clone())
        .unwrap_or_else(|| format!("<file {idx}>"))
}

fn file_text(p: &ProcessImage, idx: u32) -> String {
    match p.files.get(idx as usize) {
        Some(f) => match f.kind {
            FileKind::Regular => f.path.clone(),
            FileKind::Symlink => format!("{} (the symbolic link itself, O_PATH)", f.path),
            FileKind::DeletedSymlink { ref target, .. } => format!(
                "{} (deleted symbolic link to {target}, held itself, O_PATH)",
                f.path
            ),
            FileKind::DeletedDevice { rdev, uid, gid } => format!(
                "{} (deleted character device {}:{}, owner {uid}:{gid})",
                f.path,
                libc::major(rdev),
                libc::minor(rdev)
            ),
            FileKind::Directory => format!("{} (directory)", f.path),
            FileKind::CharDevice { rdev } => format!(
                "{} (char device {}:{})",
                f.path,
                libc::major(rdev),
                libc::minor(rdev)
            ),
            FileKind::ContentInImage => format!("{} (content in the image)", f.path),
            FileKind::UnixSocket(ref s) => unix_socket_text(&f.path, s),
            FileKind::Tcp(ref t) => tcp_socket_text(t),
            FileKind::Udp(ref u) => crate::files::sockopts::udp_text(u),
            FileKind::Packet(ref p) => crate::files::sockopts::packet_text(p),
            FileKind::Netlink(ref n) => crate::files::sockopts::netlink_text(n),
            FileKind::Pipe(crate::images::Pipe::Internal { size, ref buffered }) => format!(
                "pipe:[{}] ({size}-byte pipe, {} buffered bytes)",
                f.ino,
                buffered.len()
            ),
            FileKind::Pipe(crate::images::Pipe::External) => {
                format!("pipe:[{}] (shared with another process)", f.ino)
            }
            FileKind::Fifo(crate::images::Pipe::Internal { size, ref buffered }) => format!(
                "{} (FIFO, {size}-byte pipe, {} buffered bytes)",
                f.path,
                buffered.len()
            ),
            FileKind::Fifo(crate::images::Pipe::External) => {
                format!("{} (FIFO, also open outside the tree)", f.path)
            }
            FileKind::DeletedFifo {
                pipe: crate::images::Pipe::Internal { size, ref buffered },
                uid,
                gid,
            } => format!(
                "{} (deleted FIFO, owner {uid}:{gid}, {size}-byte pipe, {} buffered bytes)",
                f.path,
                buffered.len()
            ),
            FileKind::DeletedFifo { .. } => format!("{} (deleted FIFO)", f.path),
            FileKind::Epoll(ref ep) => {
                let targets: Vec<String> = ep
                    .targets
                    .iter()
                    .map(|t| {
                        format!(
                            "fd {} (description {}) events {:#x} data {:#x}",
                            t.fd, t.description, t.events, t.data
                        )
                    })
                    .collect();
                format!("epoll: {}", targets.join("; "))
            }
            FileKind::Inotify(ref ino) => {
                let watches: Vec<String> = ino
                    .watches
                    .iter()
                    .map(|w| format!("wd {} {} mask {:#x}", w.wd, w.path, w.mask))
                    .collect();
                format!("inotify: {}", watches.join("; "))
            }
            FileKind::Pidfd { pid: -1 } => "pidfd of a process that has exited".to_string(),
            FileKind::Pidfd { pid } => format!("pidfd of process {pid}"),
            FileKind::Event(ref ev) => match *ev {
                crate::images::EventFd::Counter { count, semaphore } => format!(
                    "eventfd, count {count}{}",
                    if semaphore { ", semaphore" } else { "" }
                ),
                crate::images::EventFd::Signals { mask } => format!("signalfd for {mask:#x}"),
                crate::images::EventFd::Timer {
                    clock,
                    ticks,
                    value_ns,
                    interval_ns,
                    ..
                } => format!(
                    "timerfd on clock {clock}, next in {value_ns} ns, every {interval_ns} ns, \
                     {ticks} unread"
                ),
            },
            FileKind::ShellTerminal { rdev } => format!(
                "{} (the shell's terminal, {}:{}; crest's own terminal at restore)",
                f.path,
                libc::major(rdev),
                libc::minor(rdev)
            ),
            FileKind::Ghost(ref g) => format!(
                "{} (deleted; {} of {} bytes, mode {:o}, owner {}:{}, recreated with its content)",
                f.path,
                if f.mode & libc::S_IFMT == libc::S_IFDIR {
                    "directory"
                } else {
                    "file"
                },
                f.size,
                f.mode & 0o7777,
                g.uid,
                g.gid
            ),
            FileKind::Memfd { ref name, seals } => format!(
                "memfd {name:?} of {} bytes, seals {seals:#x} (recreated with its content)",
                f.size
            ),
            FileKind::TreeProc { pid } => format!(
                "{} (a /proc file of process {pid} of the tree, opened again by its holder)",
                f.path
            ),
            FileKind::Namespace { ref ns } => {
                format!(
                    "the process's own {ns} namespace (opened again as crest's {})",
                    f.path
                )
            }
            FileKind::Mqueue(ref q) => format!(
                "POSIX message queue /{}{} (mode {:o}, owner {}:{}, {} of at most {} messages \
                 of up to {} bytes)",
                q.name,
                if q.unlinked { " (unlinked)" } else { "" },
                f.mode & 0o7777,
                q.uid,
                q.gid,
                q.messages.len(),
                q.maxmsg,
                q.msgsize
            ),
        },
        None => format!("<file {idx}>"),
    }
}

/// "tcp socket listening on 127.0.0.1:8080 (backlog 50)", "tcp connection 127.0.0.1:8080 ->
/// 127.0.0.1:41000, 3 bytes to send, 5 unread (locked by crest-7-1700000000000)".
fn tcp_socket_text(t: &crate::images::TcpSocket) -> String {
    use crate::images::TcpState;
    let v = if t.family == libc::AF_INET6 as u32 {
        "tcp6"
    } else {
        "tcp"
    };
    let opts: Vec<String> = t
        .options
        .iter()
        .map(|o| crate::net::opts::name(o.level, o.name))
        .collect();
    let opts = if opts.is_empty() {
        String::new()
    } else {
        format!(", options {}", opts.join(" "))
    };
    match &t.state {
        TcpState::Unbound => format!("{v} socket, unbound{opts}"),
        TcpState::Bound { local } => format!("{v} socket bound to {local}{opts}"),
        TcpState::Listening { local, backlog } => {
            format!("{v} socket listening on {local} (backlog {backlog}){opts}")
        }
        TcpState::Connecting { local, remote, .. } => {
            format!("{v} socket connecting {local} -> {remote} (SYN sent){opts}")
        }
        TcpState::Closed {
            local,
            remote,
            recv_queue,
        } => format!(
            "{v} socket closed after a connection {local} -> {remote}, {} bytes unread{opts}",
            recv_queue.len()
        ),
        TcpState::Established(c) => format!(
            "{v} connection {} -> {}{}, {} bytes to send ({} not sent yet), {} unread (locked by \
            {}){opts}",
            c.local,
            c.remote,
            if c.phase == crate::images::TcpPhase::Established {
                String::new()
            } else {
                format!(" in {}", c.phase.name())
            },
            c.send_queue.len(),
            c.unsent,
            c.recv_queue.len(),
            c.network_lock
        ),
    }
}

/// "unix stream socket listening on /tmp/x (backlog 5)", "unix stream socket, peer closed".
fn unix_socket_text(path: &str, s: &crate::images::UnixSocket) -> String {
    use crate::images::{UnixName, UnixSocketState};
    let ty = match s.sock_type as i32 {
        libc::SOCK_STREAM => "stream".to_string(),
        libc::SOCK_DGRAM => "datagram".to_string(),
        libc::SOCK_SEQPACKET => "seqpacket".to_string(),
        other => format!("type-{other}"),
    };
    let name = match &s.name {
        UnixName::Unnamed => String::new(),
        UnixName::Path { bound, removed, .. } => format!(
            " {} {path}{}{}",
            if matches!(s.state, UnixSocketState::Listening { .. }) {
                "listening on"
            } else {
                "bound to"
            },
            if bound != path {
                format!(" (bound as {bound})")
            } else {
                String::new()
            },
            if *removed { " (removed)" } else { "" }
        ),
        UnixName::Abstract { .. } => format!(
            " {} {}",
            if matches!(s.state, UnixSocketState::Listening { .. }) {
                "listening on"
            } else {
                "bound to"
            },
            crate::dump::sockdiag::name_text(&s.name.raw())
        ),
    };
    let mut text = format!("unix {ty} socket{name}");
    match &s.state {
        UnixSocketState::Unconnected if s.name == UnixName::Unnamed => text += ", unconnected",
        UnixSocketState::Unconnected => {}
        UnixSocketState::PeerClosed => text += ", peer closed",
        UnixSocketState::Connected { peer } => {
            text += &format!(", connected to socket {peer} of the tree")
        }
        UnixSocketState::Queued { listener } => {
            text += &format!(", waiting in the accept queue of socket {listener}")
        }
        UnixSocketState::External { peer_name } => {
            text += &format!(
                ", connected to {} outside the tree",
                crate::dump::sockdiag::name_text(peer_name)
            )
        }
        UnixSocketState::Listening { backlog, pending } => {
            text += &format!(" (backlog {backlog})");
            if !pending.is_empty() {
                text += &format!(", {} connection(s) waiting", pending.len());
            }
        }
    }
    let bytes: usize = s.queue.iter().map(|m| m.data.len()).sum();
    if bytes > 0 {
        text += &match s.sock_type as i32 {
            libc::SOCK_STREAM => format!(", {bytes} unread bytes"),
            _ => format!(", {} unread messages ({bytes} bytes)", s.queue.len()),
        };
    }
    let carried: usize = s.queue.iter().map(|m| m.fds.len()).sum();
    if carried > 0 {
        let ids: Vec<String> = s
            .queue
            .iter()
            .flat_map(|m| m.fds.iter().map(|id| id.to_string()))
            .collect();
        text += &format!(
            ", carrying {carried} file(s) (descriptions {})",
            ids.join(", ")
        );
    }
    if s.queue.iter().any(|m| m.creds.is_some()) {
        text += ", with the senders' credentials";
    }
    if s.shutdown != 0 {
        text += &format!(
            ", shut down for {}",
            match s.shutdown {
                1 => "reading",
                2 => "writing",
                _ => "reading and writing",
            }
        );
    }
    if s.passcred {
        text += ", SO_PASSCRED";
    }
    if let Some(c) = s.peer_creds {
        text += &format!(
            ", peer credentials pid {} uid {} gid {}",
            c.pid, c.uid, c.gid
        );
    }
    text
}

/// Access mode and the status flags worth knowing, from fdinfo's `flags` (octal O_* bits).
fn open_flags_text(flags: u32) -> String {
    let flags = flags as i32;
    let mut parts = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "r",
        libc::O_WRONLY => "w",
        libc::O_RDWR => "rw",
        _ => "?",
    }
    .to_string()];
    for (bit, name) in [
        (libc::O_APPEND, "append"),
        (libc::O_NONBLOCK, "nonblock"),
        (libc::O_DIRECTORY, "directory"),
        (libc::O_DIRECT, "direct"),
        (libc::O_SYNC, "sync"),
        (libc::O_NOATIME, "noatime"),
    ] {
        if flags & bit == bit {
            parts.push(name.to_string());
        }
    }
    parts.join(",")
}

fn rlimit_name(resource: u32) -> String {
    const NAMES: [&str; 16] = [
        "CPU",
        "FSIZE",
        "DATA",
        "STACK",
        "CORE",
        "RSS",
        "NPROC",
        "NOFILE",
        "MEMLOCK",
        "AS",
        "LOCKS",
        "SIGPENDING",
        "MSGQUEUE",
        "NICE",
        "RTPRIO",
        "RTTIME",
    ];
    NAMES
        .get(resource as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("#{resource}"))
}

fn limit_text(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

fn join_ids(ids: &[u32; 4]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut whole = n;
    while whole >= 1024 && unit < UNITS.len() - 1 {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    let value = n as f64 / (1u64 << (10 * unit)) as f64;
    if n.is_multiple_of(1u64 << (10 * unit)) {
        format!("{whole} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn micros_text(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} us")
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` from Unix milliseconds (proleptic Gregorian calendar).
pub(crate) fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm, public domain).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::*;

    /// A raw siginfo: signal, si_code, sender pid and value.
    fn siginfo(signo: i32, code: i32, pid: i32, value: u64) -> Vec<u8> {
        let mut v = vec![0u8; 128];
        v[0..4].copy_from_slice(&signo.to_ne_bytes());
        v[8..12].copy_from_slice(&code.to_ne_bytes());
        v[16..20].copy_from_slice(&pid.to_ne_bytes());
        v[24..32].copy_from_slice(&value.to_ne_bytes());
        v
    }

    /// Writes a real image of a made-up process through the image writer and opens it.
    fn sample_image(dir: &std::path::Path) -> Image {
        let ps = host_page_size();
        let pid = 777;
        let regs = match Arch::host() {
            Arch::X86_64 => {
                let mut gpr = vec![0u64; 27];
                gpr[16] = 0x401000; // rip
                gpr[19] = 0x7ffd_0000_7f00; // rsp
                gpr[10] = (-4i64) as u64; // rax: -EINTR
                gpr[15] = 35; // orig_rax: nanosleep
                gpr[21] = 0x7f00_0000_0740; // fs_base
                ArchRegs::X86_64 {
                    gpr,
                    xstate: vec![0; 2696],
                }
            }
            Arch::Aarch64 => {
                let mut gpr = vec![0u64; 34];
                gpr[32] = 0x401000;
                gpr[31] = 0x7ffd_0000_7f00;
                ArchRegs::Aarch64 {
                    gpr,
                    fpsimd: vec![0; 528],
                    tls: 0x7f00_0000_0740,
                }
            }
        };
        let ident = |path: &str, kind| FileIdentity {
            path: path.into(),
            kind,
            dev: 1,
            ino: 2,
            size: 3,
            mtime_sec: 4,
            mtime_nsec: 5,
            mode: 0o644,
        };
        let vma = |start: u64, pages: u64, prot, shared, backing, name: &str| Vma {
            start,
            end: start + pages * ps,
            prot,
            shared,
            backing,
            flags: VmaFlags::default(),
            name: name.into(),
            guard_ranges: Vec::new(),
        };
        let p = ProcessImage {
            pid,
            ppid: 1,
            comm: "sleeper".into(),
            creds: Creds {
                uid: [1000; 4],
                gid: [1000; 4],
                groups: vec![],
                cap_permitted: 0x400,
                cap_effective: 0x400,
                cap_bounding: 0x1ff_ffff_ffff,
                securebits: 0x10,
                ..Creds::default()
            },
            exe_file: 0,
            threads: vec![ThreadImage {
                tid: pid,
                sigmask: 0,
                regs,
                rseq: None,
                state: ThreadState {
                    name: "sleeper".into(),
                    altstack: Some(AltStack {
                        sp: 0x7f00_0010_0000,
                        flags: 0,
                        size: 0x4000,
                    }),
                    pending: vec![siginfo(21, -6, pid, 0)],
                    clear_child_tid: 0x7f00_0000_0a10,
                    robust_list: 0x7f00_0000_0a20,
                    robust_list_len: 24,
                    sched: Some(crate::images::ThreadSched {
                        nice: 7,
                        affinity: vec![2],
                        ..Default::default()
                    }),
                },
            }],
            mm: MmFields {
                start_code: 0x400000,
                end_code: 0x401000 + ps,
                start_data: 0x402000,
                end_data: 0x402000 + ps,
                start_brk: 0x500000,
                brk: 0x500000 + ps,
                start_stack: 0x7ffd_0000_7000,
                arg_start: 0x7ffd_0000_7100,
                arg_end: 0x7ffd_0000_7200,
                env_start: 0x7ffd_0000_7200,
                env_end: 0x7ffd_0000_7300,
                auxv: vec![6, ps, 0, 0],
            },
            vmas: vec![
                vma(
                    0x400000,
                    2,
                    PROT_READ | PROT_EXEC,
                    false,
                    VmaBacking::File { file: 0, offset: 0 },
                    "/opt/sleeper",
                ),
                vma(
                    0x7f00_0000_0000,
                    4,
                    PROT_READ | PROT_WRITE,
                    true,
                    VmaBacking::Anonymous,
                    "",
                ),
                vma(
                    0x7ffd_0000_0000,
                    8,
                    PROT_READ | PROT_WRITE,
                    false,
                    VmaBacking::Anonymous,
                    "[stack]",
                ),
                vma(
                    0x7ffe_0000_0000,
                    2,
                    PROT_READ | PROT_EXEC,
                    false,
                    VmaBacking::Vdso,
                    "[vdso]",
                ),
            ],
            page_runs: vec![
                PageRun {
                    vaddr: 0x7f00_0000_0000,
                    npages: 1,
                    file_offset: 0,
                },
                PageRun {
                    vaddr: 0x7f00_0000_0000 + 2 * ps,
                    npages: 2,
                    file_offset: ps,
                },
                PageRun {
                    vaddr: 0x7ffd_0000_0000 + 7 * ps,
                    npages: 1,
                    file_offset: 3 * ps,
                },
            ],
            pages_file: pages_file_name(pid),
            files: vec![
                ident("/opt/sleeper", FileKind::Regular),
                ident("/srv", FileKind::Directory),
                ident("/srv/sleeper.log", FileKind::Regular),
                ident(
                    "/dev/null",
                    FileKind::CharDevice {
                        rdev: libc::makedev(1, 3),
                    },
                ),
            ],
            open_files: vec![
                OpenFileDescription {
                    id: 0,
                    file: 3,
                    flags: libc::O_RDONLY as u32,
                    pos: 0,
                    locks: vec![],
                    owner: None,
                },
                OpenFileDescription {
                    id: 1,
                    file: 2,
                    flags: (libc::O_WRONLY | libc::O_APPEND) as u32,
                    pos: 4096,
                    locks: vec![DescriptionLock::Flock(LockType::Write)],
                    owner: None,
                },
            ],
            fds: vec![
                Fd {
                    fd: 0,
                    description: 0,
                    cloexec: false,
                },
                Fd {
                    fd: 1,
                    description: 1,
                    cloexec: false,
                },
                Fd {
                    fd: 2,
                    description: 1,
                    cloexec: false,
                },
            ],
            cwd_file: 1,
            root_file: None,
            umask: 0o027,
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 1024,
                hard: u64::MAX,
            }],
            sig_ignored: 0,
            sig_caught: 0,
            vdso_blake3: Some([0xab; 32]),
            task: TaskState {
                sigactions: (1..=64u64)
                    .map(|sig| match sig {
                        10 => SigAction {
                            handler: 0x401234,
                            flags: 0x1c00_0004,
                            restorer: 0x401500,
                            mask: (1 << 11) | (1 << 14),
                        },
                        1 => SigAction {
                            handler: 1,
                            ..Default::default()
                        },
                        _ => SigAction::default(),
                    })
                    .collect(),
                itimers: vec![
                    ITimer {
                        interval_us: 5000,
                        value_us: 1250,
                    },
                    ITimer::default(),
                    ITimer::default(),
                ],
                posix_timers: vec![PosixTimer {
                    id: 0,
                    clock: 1,
                    notify: 0,
                    signo: 36,
                    sigev_value: 0xfeed,
                    notify_tid: 0,
                    value_ns: 3_000_000,
                    interval_ns: 7_000_000,
                    overrun: 2,
                }],
                shared_pending: vec![siginfo(12, -1, 4242, 0xabcdef)],
                personality: 0x0040_0000,
                pdeath_signal: 9,
                dumpable: 1,
                no_new_privs: true,
                child_subreaper: true,
                group_stop: 19,
                settings: crate::images::ProcessSettings {
                    oom_score_adj: 500,
                    thp_disable: 1,
                    ..Default::default()
                },
            },
            posix_locks: vec![PosixLock {
                fd: 1,
                ty: LockType::Write,
                range: LockRange { start: 100, len: 0 },
            }],
            mapping_locks: vec![MappingLock {
                file: 0,
                lock: DescriptionLock::Flock(LockType::Read),
            }],
            memfd_runs: vec![],
            sysv_shm: vec![],
            sysv_ipc: Default::default(),
            fd_table_of: None,
            code_ids: vec![],
            ghost_runs: vec![],
        };
        let mut w = ImageWriter::create(dir).expect("create image");
        let mut pf = w.page_file(&p.pages_file).expect("page file");
        for i in 0..4u8 {
            pf.write_all(&vec![i + 1; ps as usize]).expect("write page");
        }
        w.finish_page_file(pf).expect("finish page file");
        w.write_process(&p).expect("write process");
        w.commit(Inventory {
            arch: Arch::host(),
            page_size: ps,
            kernel_release: "6.18.0-test".into(),
            crest_version: "0.1.0".into(),
            created_unix_ms: 1_700_000_000_123,
            root_pid: pid,
            files: vec![],
            tree: crate::images::TreeTask::lone(pid),
            shell_job: None,
            machine_ttys: Vec::new(),
            caller_sid: -1,
            clocks: TreeClocks {
                monotonic_ns: 1_234_567_890_123,
                boottime_ns: 1_334_567_890_123,
            },
            stats: DumpStats {
                pages_scanned: 16,
                pages_absent: 9,
                pages_present: 7,
                pages_file_backed: 1,
                pages_zero: 2,
                pages_written: 4,
                bytes_written: 4 * ps,
                rss_bytes: 7 * ps,
                gc_hint: GcHintStats::Skipped {
                    reason: "process 42 runs with -XX:+DisableAttachMechanism".into(),
                },
                phases_us: vec![("freeze".into(), 250), ("write".into(), 4100)],
                frozen_us: 5000,
            },
        })
        .expect("commit");
        open_image(dir).expect("open image")
    }

    #[test]
    fn text_shows_every_section() {
        let tmp = tempfile::tempdir().unwrap();
        let image = sample_image(&tmp.path().join("img"));
        let text = render_text(&image);
        for needle in [
            "arch ",
            "kernel 6.18.0-test",
            "crest 0.1.0",
            "created 2023-11-14 22:13:20.123 UTC",
            "clocks at the dump: monotonic 1234.568 s, boot time 1334.568 s",
            "root pid 777",
            "process 777 (sleeper)",
            "exe    /opt/sleeper",
            "cwd    /srv",
            "umask  0027",
            "/srv/sleeper.log",
            "w,append",
            "(shares its open file with fd 2)",
            "(shares its open file with fd 1)",
            "/dev/null (char device 1:3)",
            "rw-s",
            "r-xp",
            "[stack]",
            "[vdso]",
            "4 pages stored",
            "NOFILE 1024/unlimited",
            "pages scanned             16",
            "pages zero                 2",
            "pages written              4",
            "freeze",
            "5.00 ms",
            "signal handlers (2 not SIG_DFL):",
            "SIGHUP     SIG_IGN, flags 0, mask none",
            "SIGUSR1    handler 0x401234, flags SA_SIGINFO|SA_RESTORER|SA_ONSTACK|SA_RESTART, \
             restorer 0x401500, mask SIGUSR2,SIGTERM",
            "pending (process-wide): SIGUSR2 (SI_QUEUE from pid 4242, value 0xabcdef)",
            "interval timers: real next in 1.250 ms, every 5.000 ms",
            "id 0: CLOCK_MONOTONIC, SIG36 (value 0xfeed), next in 3.000 ms, every 7.000 ms, \
             overrun 2",
            "prctl: personality 0x400000, pdeath signal SIGKILL, dumpable 1, no_new_privs, \
             child subreaper",
            "altstack 0x7f0000100000-0x7f0000104000 (16 KiB, flags 0x0), clear_child_tid \
             0x7f0000000a10, robust list 0x7f0000000a20 (24 bytes)",
            "pending: SIGTTIN (SI_TKILL from pid 777)",
            "settings: oom_score_adj 500, loginuid unset, thp_disable 0x1",
            "sched: policy 0, nice 7, priority 0, CPUs 1, timer slack 50000 ns",
            "file locks (3):",
            "mapping of /opt/sleeper: shared flock lock",
            "fd 1: exclusive flock lock",
            "fd 1: POSIX write lock on bytes 100 to the end of the file",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        match Arch::host() {
            Arch::X86_64 => {
                assert!(text.contains("rip 0x401000, rsp 0x7ffd00007f00, rax 0xfffffffffffffffc, orig_rax 0x23, fs_base 0x7f0000000740"), "{text}");
                assert!(text.contains("xstate 2696 bytes"), "{text}");
            }
            Arch::Aarch64 => assert!(text.contains("pc 0x401000, sp 0x7ffd00007f00"), "{text}"),
        }
        // The shared anonymous VMA holds three of the four stored pages.
        let line = text.lines().find(|l| l.contains("rw-s")).unwrap();
        assert!(line.split_whitespace().any(|w| w == "3"), "{line}");
    }

    #[test]
    fn json_parses_back_and_summarises_registers() {
        let tmp = tempfile::tempdir().unwrap();
        let image = sample_image(&tmp.path().join("img"));
        let text = render_json(&image).unwrap();
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["inventory"]["root_pid"], 777);
        assert_eq!(v["inventory"]["stats"]["pages_written"], 4);
        assert_eq!(v["inventory"]["files"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["inventory"]["files"][0]["blake3"].as_str().unwrap().len(),
            64
        );
        let p = &v["processes"][0];
        assert_eq!(p["pid"], 777);
        assert_eq!(p["exe_path"], "/opt/sleeper");
        assert_eq!(p["cwd_path"], "/srv");
        assert_eq!(p["page_runs"].as_array().unwrap().len(), 3);
        assert_eq!(p["vmas"][1]["pages_stored"], 3);
        assert_eq!(p["vmas"][2]["pages_stored"], 1);
        assert_eq!(p["fds"].as_array().unwrap().len(), 3);
        assert_eq!(p["vdso_blake3"], "ab".repeat(32));
        let regs = &p["threads"][0]["regs"];
        match Arch::host() {
            Arch::X86_64 => {
                assert_eq!(regs["rip"], "0x401000");
                assert_eq!(regs["xstate_bytes"], 2696);
                // No raw register arrays.
                assert!(regs.get("xstate").is_none() && regs.get("gpr").is_none());
            }
            Arch::Aarch64 => assert_eq!(regs["pc"], "0x401000"),
        }
        assert!(!text.contains("\"X86_64\": {"), "raw regs leaked");
    }

    #[test]
    fn every_thread_is_shown_with_its_name_and_own_state() {
        let tmp = tempfile::tempdir().unwrap();
        let mut image = sample_image(&tmp.path().join("img"));
        let p = &mut image.processes[0];
        p.threads[0].state.name = "sleeper".into();
        for (i, name) in ["GC Thread#0", "pool:1"].into_iter().enumerate() {
            let mut t = p.threads[0].clone();
            t.tid = p.pid + 1 + i as i32;
            t.state.name = name.into();
            t.state.clear_child_tid = 0x7000 + i as u64;
            p.threads.push(t);
        }
        let text = render_text(&image);
        assert!(text.contains("threads (3):"), "{text}");
        assert!(text.contains("tid 777 \"sleeper\": "), "{text}");
        assert!(text.contains("tid 778 \"GC Thread#0\": "), "{text}");
        assert!(text.contains("tid 779 \"pool:1\": "), "{text}");
        assert!(text.contains("clear_child_tid 0x7001"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&image).unwrap()).unwrap();
        let threads = json["processes"][0]["threads"].as_array().unwrap();
        assert_eq!(threads.len(), 3);
        assert_eq!(threads[2]["state"]["name"], "pool:1");
        assert!(threads[2]["regs"].is_object(), "{}", threads[2]["regs"]);
    }

    #[test]
    fn sockets_and_content_files_say_what_they_are() {
        use crate::images::{UnixMessage, UnixName, UnixSocket, UnixSocketState};
        let stream = |name, state| UnixSocket {
            sock_type: libc::SOCK_STREAM as u32,
            state,
            name,
            queue: Vec::new(),
            shutdown: 0,
            passcred: false,
            sndbuf: 0,
            rcvbuf: 0,
            options: Vec::new(),
            peer_creds: None,
        };
        assert_eq!(
            unix_socket_text(
                "/tmp/.java_pid7",
                &stream(
                    UnixName::Path {
                        bound: "/tmp/.java_pid7".into(),
                        uid: 0,
                        gid: 0,
                        dir: String::new(),
                        removed: false
                    },
                    UnixSocketState::Listening {
                        backlog: 5,
                        pending: vec![]
                    }
                )
            ),
            "unix stream socket listening on /tmp/.java_pid7 (backlog 5)"
        );
        let mut closed = stream(UnixName::Unnamed, UnixSocketState::PeerClosed);
        closed.queue.push(UnixMessage {
            from: vec![],
            data: vec![1, 2, 3],
            fds: vec![],
            creds: None,
        });
        closed.shutdown = 3;
        assert_eq!(
            unix_socket_text("", &closed),
            "unix stream socket, peer closed, 3 unread bytes, shut down for reading and writing"
        );
        closed.queue.push(UnixMessage {
            from: vec![],
            data: vec![4],
            fds: vec![7, 9],
            creds: Some(crate::images::MessageCreds {
                pid: 5,
                uid: 0,
                gid: 0,
            }),
        });
        assert_eq!(
            unix_socket_text("", &closed),
            "unix stream socket, peer closed, 4 unread bytes, carrying 2 file(s) (descriptions \
             7, 9), with the senders' credentials, shut down for reading and writing"
        );
        let mut dgram = stream(
            UnixName::Abstract {
                name: b"log".to_vec(),
            },
            UnixSocketState::Unconnected,
        );
        dgram.sock_type = libc::SOCK_DGRAM as u32;
        dgram.passcred = true;
        assert_eq!(
            unix_socket_text("", &dgram),
            "unix datagram socket bound to @log, SO_PASSCRED"
        );
        let tmp = tempfile::tempdir().unwrap();
        let mut image = sample_image(&tmp.path().join("img"));
        let p = &mut image.processes[0];
        p.files[2].kind = FileKind::ContentInImage;
        assert!(file_text(p, 2).ends_with("(content in the image)"));
        p.files[2].kind = FileKind::Pipe(crate::images::Pipe::Internal {
            size: 65536,
            buffered: vec![7; 10],
        });
        p.files[2].ino = 42;
        assert_eq!(
            file_text(p, 2),
            "pipe:[42] (65536-byte pipe, 10 buffered bytes)"
        );
        p.files[2].kind = FileKind::Pipe(crate::images::Pipe::External);
        assert_eq!(file_text(p, 2), "pipe:[42] (shared with another process)");
    }

    #[test]
    fn dates_and_sizes_read_well() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            format_unix_ms(951_782_400_000),
            "2000-02-29 00:00:00.000 UTC"
        );
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(micros_text(1_500_000), "1.50 s");
    }
}

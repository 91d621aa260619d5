//! The page server: one thread of `crest restore` that serves the restored processes' page
//! faults and copies in the rest of their memory in the background, until every page is in.
//!
//! One epoll set over every process's userfaultfd. Each event is handled as it comes:
//! - PAGEFAULT: the faulting page and its stored neighbours (up to [`FAULT_BATCH`] bytes of one
//!   stored run, from [`FAULT_BEFORE`] below the page on) are read from the page file and
//!   placed with one UFFDIO_COPY, which wakes the thread; a page the image does not store
//!   (absent or all zero at dump time) gets UFFDIO_ZEROPAGE.
//! - FORK: the child's new userfaultfd gets a copy of the parent's map of pages still to copy
//!   (the kernel copied what was present already), and the watchdog a copy of the fd.
//! - REMAP: the pieces move with the memory. UNMAP / REMOVE (munmap, MADV_DONTNEED): the
//!   pieces are dropped, so the server never copies into memory the program gave up.
//!
//! Between events, a background pass copies [`BACKGROUND_CHUNK`] bytes at a time from the
//! lowest address up. The kernel's answers EAGAIN (the memory map is changing: read the
//! events first, then retry), EEXIST (a page is already there) and ENOENT (the range is no
//! longer registered: it was unmapped) are normal races; ESRCH means the process is gone.
//! The server ends when no process has pages left to copy (or none is alive).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::pagemap::PageMap;
use super::plan::Piece;
use super::uffd::{self, Msg};
use super::watchdog::Watchdog;
use super::{LazyError, LazyProcess, LazyStats};

/// Most bytes one fault brings in.
pub const FAULT_BATCH: u64 = 64 << 10;
/// How far below the faulting page a fault's batch starts (programs also walk down).
pub const FAULT_BEFORE: u64 = 16 << 10;
/// Bytes per background copy: large enough to be cheap per byte, small enough that a fault
/// arriving meanwhile waits little.
pub const BACKGROUND_CHUNK: u64 = 1 << 20;
/// For tests: while the file this variable names does not exist, the background pass waits
/// and only faults bring pages in, so a test can change the memory map of a process whose
/// pages are certainly not all in yet.
pub const HOLD_ENV: &str = "CREST_LAZY_TEST_HOLD";

struct Proc {
    /// The restored process's pid; None for a child forked during the load (the fork event
    /// does not say which).
    pid: Option<i32>,
    /// The pid of the restored process it descends from, for messages.
    origin: i32,
    uffd: OwnedFd,
    pages: Arc<File>,
    map: PageMap,
    /// Pages whose fault came while the memory map was changing (EAGAIN): served again after
    /// the next events are read.
    retry: Vec<u64>,
    gone: bool,
    /// Working-set ranges still to prefetch, in address order (`(start, end)`).
    prefetch: std::collections::VecDeque<(u64, u64)>,
    /// While recording: the stored pages whose faults were served.
    touched: Vec<u64>,
}

impl Proc {
    fn name(&self) -> String {
        match self.pid {
            Some(pid) => format!("pid {pid}"),
            None => format!("a child forked by the tree of pid {}", self.origin),
        }
    }
}

struct Server {
    procs: Vec<Proc>,
    epoll: OwnedFd,
    watchdog: Watchdog,
    page: u64,
    buf: Vec<u8>,
    stats: LazyStats,
    next_background: usize,
    /// [`HOLD_ENV`]'s file, until it exists.
    hold: Option<std::path::PathBuf>,
    /// Set when the restore is over (see [`super::Handle`]).
    may_end: Arc<AtomicBool>,
    /// Set once every restorer has registered its lazy memory ([`super::Handle::registered`]).
    /// Until then a range may not be registered yet: no background pass, and a copy the kernel
    /// refuses as unregistered (ENOENT) is put back rather than given up, or a later fault on
    /// those pages would get a zero page instead of their content.
    registered: Arc<AtomicBool>,
    /// `--record-working-set`: the window, and when it began (the moment the server saw every
    /// memory registered). While it lasts, faults are served one page at a time and recorded,
    /// and the background pass waits.
    record: Option<std::time::Duration>,
    window_start: Option<Instant>,
    /// When the first prefetch copy began.
    prefetch_start: Option<Instant>,
    /// Told once every working set is in; dropped with the server.
    prefetch_done: Option<std::sync::mpsc::Sender<()>>,
}

/// Runs the server on the current thread until every page is in; `restore_start` is when the
/// restore began (the statistics count from there).
pub fn run(
    procs: Vec<LazyProcess>,
    watchdog: Watchdog,
    restore_start: Instant,
    may_end: Arc<AtomicBool>,
    registered: Arc<AtomicBool>,
    record: Option<std::time::Duration>,
    prefetch_done: std::sync::mpsc::Sender<()>,
) -> Result<LazyStats, LazyError> {
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(LazyError::Os {
            what: "creating the page server's epoll set".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut s = Server {
        procs: Vec::with_capacity(procs.len()),
        // SAFETY: a new descriptor we own.
        epoll: unsafe { OwnedFd::from_raw_fd(ep) },
        watchdog,
        page: crate::arch::page_size(),
        buf: vec![0u8; BACKGROUND_CHUNK as usize],
        stats: LazyStats::default(),
        next_background: 0,
        hold: std::env::var_os(HOLD_ENV).map(Into::into),
        may_end,
        registered,
        record,
        window_start: None,
        prefetch_start: None,
        prefetch_done: Some(prefetch_done),
    };
    for p in procs {
        s.stats.lazy_bytes += p.pieces.iter().map(|x| x.len).sum::<u64>();
        s.add(Proc {
            pid: Some(p.pid),
            origin: p.pid,
            uffd: p.uffd,
            pages: Arc::new(p.pages),
            map: PageMap::new(&p.pieces),
            retry: Vec::new(),
            gone: false,
            prefetch: p.prefetch.into_iter().collect(),
            touched: Vec::new(),
        })?;
    }
    let result = s.serve();
    // Whatever happened, nobody waits for the prefetch any longer.
    drop(s.prefetch_done.take());
    let all_in_us = restore_start.elapsed().as_micros() as u64;
    let result = result.and_then(|()| s.idle_until_the_restore_is_over());
    let Server {
        procs,
        watchdog,
        mut stats,
        ..
    } = s;
    if record.is_some() {
        stats.recorded = procs
            .iter()
            .filter_map(|p| Some((p.pid?, p.touched.clone())))
            .collect();
    }
    match result {
        Ok(()) => {
            // The watchdog lets go first: with its copies still open, a fault after ours
            // close would wait for ever.
            watchdog.done();
            drop(procs);
            stats.all_in_us = all_in_us;
            Ok(stats)
        }
        Err(e) => {
            crate::warn!("the lazy page server failed ({e}); killing the restored tree");
            watchdog.kill_tree();
            drop(procs);
            Err(e)
        }
    }
}

impl Server {
    fn add(&mut self, p: Proc) -> Result<(), LazyError> {
        let index = self.procs.len();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        // SAFETY: adding a descriptor we own to our epoll set.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                p.uffd.as_raw_fd(),
                &mut ev,
            )
        };
        if r != 0 {
            return Err(LazyError::Os {
                what: format!("watching the userfaultfd of {}", p.name()),
                source: std::io::Error::last_os_error(),
            });
        }
        self.procs.push(p);
        Ok(())
    }

    fn work_left(&self) -> bool {
        self.procs
            .iter()
            .any(|p| !p.gone && (!p.map.is_empty() || !p.retry.is_empty()))
    }

    /// Every page is in, but the restore still waits for its tasks: keep answering events
    /// (faults on pages the image does not store, forks) until it is over.
    fn idle_until_the_restore_is_over(&mut self) -> Result<(), LazyError> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        let mut msgs = Vec::new();
        while !self.may_end.load(Ordering::Acquire) {
            // SAFETY: epoll_wait writes at most `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    2,
                )
            };
            for ev in &events[..n.max(0) as usize] {
                let i = ev.u64 as usize;
                msgs.clear();
                if uffd::read_msgs(self.procs[i].uffd.as_raw_fd(), &mut msgs).is_ok() {
                    for m in msgs.drain(..) {
                        self.handle(i, m)?;
                    }
                }
            }
            self.retry_faults()?;
        }
        // A fork meanwhile gave a child a copy of pages still to copy (none: every map was
        // empty), so nothing is left.
        self.serve()
    }

    fn serve(&mut self) -> Result<(), LazyError> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        let mut msgs = Vec::new();
        while self.work_left() {
            if self.hold.as_ref().is_some_and(|p| p.exists()) {
                self.hold = None;
            }
            // Never block while there is background work (there is as long as there is any
            // work), unless a test holds the background pass or the restorers are still
            // registering their memory.
            let registered = self.registered.load(Ordering::Acquire);
            if registered && self.window_start.is_none() {
                self.window_start = Some(Instant::now());
            }
            let recording = self.recording();
            let prefetching =
                registered && !recording && self.procs.iter().any(|p| !p.prefetch.is_empty());
            let timeout = if prefetching {
                0
            } else if self.hold.is_some() {
                5
            } else if !registered || recording {
                1
            } else {
                0
            };
            // SAFETY: epoll_wait writes at most `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(LazyError::Os {
                    what: "waiting for page faults (epoll_wait)".into(),
                    source: e,
                });
            }
            for ev in &events[..n as usize] {
                let i = ev.u64 as usize;
                msgs.clear();
                if let Err(e) = uffd::read_msgs(self.procs[i].uffd.as_raw_fd(), &mut msgs) {
                    return Err(LazyError::Os {
                        what: format!("reading the userfaultfd of {}", self.procs[i].name()),
                        source: e,
                    });
                }
                for m in msgs.drain(..) {
                    self.handle(i, m)?;
                }
            }
            self.retry_faults()?;
            // The working set first (even while a test holds the background pass: the tree
            // is released only once it is in), then the rest.
            if registered && !recording && !self.prefetch()? && self.hold.is_none() {
                self.background()?;
            }
            if registered && self.procs.iter().all(|p| p.prefetch.is_empty()) {
                // Every working set is in (or there was none): the tree may go.
                if let Some(tx) = self.prefetch_done.take() {
                    let _ = tx.send(());
                }
            }
        }
        Ok(())
    }

    /// Whether the recording window is open: from the start (before every memory is
    /// registered, the restorers' own faults count too) until `record` after registration.
    fn recording(&self) -> bool {
        match (self.record, self.window_start) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(w), Some(t)) => t.elapsed() < w,
        }
    }

    /// Copies the next stretch (at most [`BACKGROUND_CHUNK`] bytes) of the working set of the
    /// next process that has one left; false when no process has any.
    fn prefetch(&mut self) -> Result<bool, LazyError> {
        let n = self.procs.len();
        for k in 0..n {
            let i = (self.next_background + k) % n;
            let p = &mut self.procs[i];
            if p.gone {
                p.prefetch.clear();
                continue;
            }
            let Some((start, end)) = p.prefetch.pop_front() else {
                continue;
            };
            self.next_background = (i + 1) % n;
            self.prefetch_start.get_or_insert_with(Instant::now);
            let stop = end.min(start + BACKGROUND_CHUNK);
            if stop < end {
                p.prefetch.push_front((stop, end));
            }
            // Pieces that follow each other in memory and in the file are one copy.
            let mut pieces: Vec<Piece> = Vec::new();
            for x in p.map.take_range(start, stop) {
                match pieces.last_mut() {
                    Some(l)
                        if l.vaddr + l.len == x.vaddr && l.file_offset + l.len == x.file_offset =>
                    {
                        l.len += x.len
                    }
                    _ => pieces.push(x),
                }
            }
            for piece in pieces {
                let (placed, _) = self.copy(i, piece)?;
                self.stats.prefetched_bytes += placed;
            }
            if self.procs.iter().all(|p| p.prefetch.is_empty()) {
                self.stats.prefetch_us = self
                    .prefetch_start
                    .map_or(0, |t| t.elapsed().as_micros() as u64);
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn handle(&mut self, i: usize, m: Msg) -> Result<(), LazyError> {
        match m {
            Msg::PageFault { address } => {
                self.stats.faults += 1;
                self.fault(i, address & !(self.page - 1))
            }
            Msg::Fork { ufd } => {
                // SAFETY: the kernel installed this new descriptor in crest for the message.
                let child_fd = unsafe { OwnedFd::from_raw_fd(ufd as RawFd) };
                self.stats.forks += 1;
                self.watchdog.hold(child_fd.as_raw_fd())?;
                let parent = &self.procs[i];
                let child = Proc {
                    pid: None,
                    origin: parent.origin,
                    uffd: child_fd,
                    pages: parent.pages.clone(),
                    map: parent.map.clone(),
                    retry: Vec::new(),
                    gone: false,
                    prefetch: parent.prefetch.clone(),
                    touched: Vec::new(),
                };
                self.add(child)
            }
            Msg::Remap { from, to, len } => {
                self.procs[i].map.remap(from, to, len);
                Ok(())
            }
            Msg::Remove { start, end } | Msg::Unmap { start, end } => {
                let dropped: u64 = self.procs[i]
                    .map
                    .take_range(start, end)
                    .iter()
                    .map(|p| p.len)
                    .sum();
                self.stats.dropped_bytes += dropped;
                Ok(())
            }
            Msg::Other(_) => Ok(()),
        }
    }

    fn fault(&mut self, i: usize, page: u64) -> Result<(), LazyError> {
        let ps = self.page;
        // While recording, one page per fault: each page the program touches faults.
        let recording = self.recording();
        let (before, batch) = if recording {
            (0, ps)
        } else {
            (FAULT_BEFORE, FAULT_BATCH)
        };
        match self.procs[i].map.take_around(page, ps, before, batch) {
            Some(piece) => {
                if recording {
                    self.procs[i].touched.push(page);
                }
                let (placed, reached) = self.copy(i, piece)?;
                self.stats.fault_bytes += placed;
                if page >= piece.vaddr + reached && !self.procs[i].gone {
                    // The kernel asked to retry (EAGAIN) before reaching the page, which went
                    // back into the map: serve the fault once the pending events are read.
                    self.procs[i].retry.push(page);
                }
                Ok(())
            }
            None => {
                let p = &mut self.procs[i];
                match uffd::zeropage(p.uffd.as_raw_fd(), page, ps) {
                    Ok(()) => self.stats.zero_pages += 1,
                    // Already there (another thread's fault was served, or a COPY won):
                    // make sure the faulting thread does not sleep on.
                    Err(libc::EEXIST) => uffd::wake(p.uffd.as_raw_fd(), page, ps),
                    Err(libc::ENOENT) => {}
                    Err(libc::EAGAIN) => p.retry.push(page),
                    Err(libc::ESRCH) => p.gone = true,
                    Err(e) => {
                        return Err(LazyError::Uffd {
                            what: "UFFDIO_ZEROPAGE".into(),
                            who: p.name(),
                            addr: page,
                            source: std::io::Error::from_raw_os_error(e),
                        })
                    }
                }
                Ok(())
            }
        }
    }

    fn retry_faults(&mut self) -> Result<(), LazyError> {
        for i in 0..self.procs.len() {
            if self.procs[i].retry.is_empty() {
                continue;
            }
            let pages = std::mem::take(&mut self.procs[i].retry);
            for page in pages {
                if self.procs[i].gone {
                    break;
                }
                self.fault(i, page)?;
            }
        }
        Ok(())
    }

    fn background(&mut self) -> Result<(), LazyError> {
        let n = self.procs.len();
        for k in 0..n {
            let i = (self.next_background + k) % n;
            if self.procs[i].gone {
                continue;
            }
            if let Some(piece) = self.procs[i].map.take_next(BACKGROUND_CHUNK) {
                self.next_background = (i + 1) % n;
                let (placed, _) = self.copy(i, piece)?;
                self.stats.background_bytes += placed;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Copies `piece` (taken out of process `i`'s map) into the process; returns the bytes
    /// placed and how far from the piece's start the copy got. What the kernel asks to retry
    /// goes back into the map; what it says is already there or no longer registered is
    /// dropped.
    fn copy(&mut self, i: usize, piece: Piece) -> Result<(u64, u64), LazyError> {
        let ps = self.page;
        let len = piece.len as usize;
        let buf = &mut self.buf[..len];
        let p = &mut self.procs[i];
        p.pages
            .read_exact_at(buf, piece.file_offset)
            .map_err(|e| LazyError::Os {
                what: format!(
                    "reading {len} bytes at offset {} of the page file of {}",
                    piece.file_offset,
                    p.name()
                ),
                source: e,
            })?;
        let mut done = 0u64;
        let mut placed = 0u64;
        while done < piece.len {
            let dst = piece.vaddr + done;
            match uffd::copy(p.uffd.as_raw_fd(), dst, &buf[done as usize..]) {
                Ok(n) => {
                    done += n;
                    placed += n;
                }
                // Retry later (an event is pending), or not registered yet (the restorer is
                // still mapping): the rest goes back into the map.
                Err((e, n))
                    if e == libc::EAGAIN
                        || (e == libc::ENOENT && !self.registered.load(Ordering::Acquire)) =>
                {
                    placed += n;
                    done += n;
                    p.map.put_back(Piece {
                        vaddr: piece.vaddr + done,
                        len: piece.len - done,
                        file_offset: piece.file_offset + done,
                    });
                    return Ok((placed, done));
                }
                Err((libc::EEXIST | libc::ENOENT, n)) => {
                    // Skip the page the kernel stopped at; go on after it, one page at a time
                    // until past the trouble.
                    placed += n;
                    done += n + ps;
                }
                Err((libc::ESRCH, _)) => {
                    p.gone = true;
                    return Ok((placed, piece.len));
                }
                Err((e, _)) => {
                    return Err(LazyError::Uffd {
                        what: "UFFDIO_COPY".into(),
                        who: p.name(),
                        addr: dst,
                        source: std::io::Error::from_raw_os_error(e),
                    })
                }
            }
        }
        Ok((placed, piece.len))
    }
}

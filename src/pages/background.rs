//! A page sink that hashes and writes on its own thread.
//!
//! Reading the target's memory (process_vm_readv, the zero test) and storing it (BLAKE3,
//! write(2), fsync) take comparable time, so doing them on two threads overlaps them. The queue
//! between the two decides what the target pays for: with a short queue the capture waits for
//! the disk; with a queue large enough to hold the whole capture (what `dump -R` uses), the
//! capture ends as soon as the memory is read, the target runs on, and the writing finishes
//! afterwards.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::images::ImageError;

use super::PageSink;

/// Written buffers kept for reuse: enough to keep a short queue busy without hoarding memory.
const SPARE_BUFFERS: usize = 4;

/// What the writer thread hands back: the sink, and how the writing went.
type Outcome<S> = (S, Result<(), ImageError>);

/// Sends whole buffers to a thread that writes them into `S`, in order.
pub struct BackgroundWriter<S: PageSink + Send + 'static> {
    queue: Option<SyncSender<Vec<u8>>>,
    spares: Receiver<Vec<u8>>,
    /// Buffers made ready in advance (see [`prefaulted_buffers`]), used before any other.
    ready: Vec<Vec<u8>>,
    /// Set while the writer thread waits for [`BackgroundWriter::start`].
    gate: Option<SyncSender<()>>,
    thread: Option<JoinHandle<Outcome<S>>>,
    /// Bytes handed over so far, written or still queued.
    offset: u64,
}

impl<S: PageSink + Send + 'static> BackgroundWriter<S> {
    /// Starts the writer thread; at most `queued_buffers` buffers wait for it before
    /// [`PageSink::write_buffer`] blocks. With `held`, the thread writes nothing until
    /// [`BackgroundWriter::start`] (or `finish`): reading the target then has the machine's
    /// memory bandwidth to itself.
    pub fn spawn(mut sink: S, queued_buffers: usize, held: bool) -> std::io::Result<Self> {
        let offset = sink.offset();
        let (queue, jobs) = mpsc::sync_channel::<Vec<u8>>(queued_buffers.max(1));
        let (give_back, spares) = mpsc::sync_channel::<Vec<u8>>(SPARE_BUFFERS);
        let (gate, opened) = mpsc::sync_channel::<()>(1);
        let gate = if held {
            Some(gate)
        } else {
            drop(gate);
            None
        };
        let thread = std::thread::Builder::new()
            .name("crest-pages".into())
            .spawn(move || {
                // Returns once start() sends or the writer side goes away.
                let _ = opened.recv();
                for buf in jobs {
                    if let Err(e) = sink.write_all(&buf) {
                        return (sink, Err(e));
                    }
                    // When enough spares wait already (or nobody reuses them any more), this
                    // one is freed instead.
                    let _ = give_back.try_send(buf);
                }
                (sink, Ok(()))
            })?;
        Ok(BackgroundWriter {
            queue: Some(queue),
            spares,
            ready: Vec::new(),
            gate,
            thread: Some(thread),
            offset,
        })
    }

    /// Hands over buffers to read into before any new one is allocated.
    pub fn with_buffers(mut self, buffers: Vec<Vec<u8>>) -> Self {
        self.ready = buffers;
        self
    }

    /// Lets a held writer thread begin writing.
    pub fn start(&mut self) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.send(());
        }
    }

    /// Waits until everything handed over is written; returns the sink and the first error
    /// the writer met (the sink comes back either way, so the caller can look inside it).
    pub fn finish(mut self) -> Outcome<S> {
        self.start();
        self.ready = Vec::new();
        self.queue = None;
        let thread = self.thread.take().expect("joined only here");
        match thread.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<S: PageSink + Send + 'static> PageSink for BackgroundWriter<S> {
    fn offset(&self) -> u64 {
        self.offset
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let mut buf = self.buffer(bytes.len());
        buf.copy_from_slice(bytes);
        self.write_buffer(buf)
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let reused = match self.ready.pop() {
            Some(buf) => Ok(buf),
            None => self.spares.try_recv(),
        };
        match reused {
            Ok(mut buf) if buf.capacity() >= len => {
                // Only bytes past the old length get filled; the caller overwrites them all.
                buf.resize(len, 0);
                buf
            }
            _ => vec![0; len],
        }
    }

    fn write_buffer(&mut self, buf: Vec<u8>) -> Result<(), ImageError> {
        let len = buf.len() as u64;
        let queue = self.queue.as_ref().expect("only finish() drops the queue");
        queue.send(buf).map_err(|_| ImageError::Write {
            dir: PathBuf::new(),
            what: "the page writer thread stopped (its own error says why)".into(),
        })?;
        self.offset += len;
        Ok(())
    }
}

/// Buffers of `buffer_len` bytes, `total` bytes in all, each of whose pages the kernel has
/// already given memory to. Reading into fresh memory makes the kernel find and clear a page
/// at every first touch, which would otherwise happen while the target is stopped; doing it
/// before the freeze moves that cost out of the stopped time.
pub fn prefaulted_buffers(total: u64, buffer_len: usize) -> Vec<Vec<u8>> {
    let count = total.div_ceil(buffer_len as u64) as usize;
    (0..count)
        .map(|_| {
            let mut buf = vec![0u8; buffer_len];
            prefault(&mut buf);
            buf
        })
        .collect()
}

/// Backs `buf` with memory now: with transparent huge pages where the kernel allows them
/// (fewer faults, fewer TLB misses while copying), populated in one madvise call
/// (MADV_POPULATE_WRITE, Linux 5.14); on older kernels by writing to every page.
fn prefault(buf: &mut [u8]) {
    let page = crate::arch::page_size() as usize;
    let start = buf.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) / page * page;
    if end > first {
        let (addr, len) = (first as *mut libc::c_void, end - first);
        // SAFETY: [first, end) lies inside `buf`, which we own; both advices only change how
        // the kernel backs these pages (their content stays zero), never what they hold.
        let populated = unsafe {
            libc::madvise(addr, len, libc::MADV_HUGEPAGE);
            libc::madvise(addr, len, libc::MADV_POPULATE_WRITE) == 0
        };
        if populated {
            return;
        }
    }
    // Zero-filled memory is left to the kernel's lazy zero pages, so write something else.
    buf.fill(0xa5);
}

impl<S: PageSink + Send + 'static> Drop for BackgroundWriter<S> {
    fn drop(&mut self) {
        // Dropped without finish(): stop the thread and wait, so no write outlives the dump.
        self.start();
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects bytes; fails the write that would take it past `fail_after` bytes.
    struct Collect {
        bytes: Vec<u8>,
        fail_after: usize,
    }

    impl PageSink for Collect {
        fn offset(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
            if self.bytes.len() + bytes.len() > self.fail_after {
                return Err(ImageError::Write {
                    dir: PathBuf::new(),
                    what: "disk full".into(),
                });
            }
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn writes_every_buffer_in_order_and_reuses_written_ones() {
        let sink = Collect {
            bytes: Vec::new(),
            fail_after: usize::MAX,
        };
        let mut w = BackgroundWriter::spawn(sink, 2, false)
            .unwrap()
            .with_buffers(prefaulted_buffers(300, 100));
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let mut buf = w.buffer(100 + i as usize);
            assert_eq!(buf.len(), 100 + i as usize);
            buf.fill(i);
            expected.extend_from_slice(&buf);
            w.write_buffer(buf).unwrap();
        }
        w.write_all(b"tail").unwrap();
        expected.extend_from_slice(b"tail");
        assert_eq!(w.offset(), expected.len() as u64);
        let (sink, result) = w.finish();
        result.unwrap();
        assert_eq!(sink.bytes, expected);
    }

    #[test]
    fn a_write_error_stops_the_queue_and_comes_back_from_finish() {
        let sink = Collect {
            bytes: Vec::new(),
            fail_after: 1000,
        };
        let mut w = BackgroundWriter::spawn(sink, 1, false).unwrap();
        let mut refused = false;
        for _ in 0..100 {
            let buf = w.buffer(300);
            if w.write_buffer(buf).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the queue kept accepting after the writer failed");
        let (sink, result) = w.finish();
        assert!(result.unwrap_err().to_string().contains("disk full"));
        assert_eq!(sink.bytes.len(), 900);
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;

    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl PageSink for Shared {
        fn offset(&self) -> u64 {
            0
        }
        fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn a_held_writer_writes_nothing_until_started() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w = BackgroundWriter::spawn(Shared(seen.clone()), 8, true).unwrap();
        for i in 0..4u8 {
            w.write_buffer(vec![i; 10]).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(seen.lock().unwrap().is_empty(), "wrote before start()");
        w.start();
        let (_, result) = w.finish();
        result.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 40);
    }
}

//! Appending stored pages to the page file while building the [`PageRun`] table.

use crate::images::{ImageError, PageFileWriter, PageRun};

/// Where page bytes go: the image's page file, a background writer in front of it, or a
/// buffer in tests.
pub trait PageSink {
    /// Bytes written so far (the offset the next byte lands at).
    fn offset(&self) -> u64;
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError>;

    /// A buffer of `len` bytes to read the next batch of pages into; a sink that keeps the
    /// buffers it was given may hand one back instead of allocating.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    /// Writes a whole buffer; a sink that can take ownership avoids copying it.
    fn write_buffer(&mut self, buf: Vec<u8>) -> Result<(), ImageError> {
        self.write_all(&buf)
    }
}

impl PageSink for PageFileWriter {
    fn offset(&self) -> u64 {
        PageFileWriter::offset(self)
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        PageFileWriter::write_all(self, bytes)
    }
}

/// Writes pages and records them as runs of consecutive addresses; a run never crosses a
/// [`RunWriter::end_area`] call, so each run stays inside one VMA.
pub struct RunWriter<'a, S: PageSink> {
    sink: &'a mut S,
    page_size: u64,
    runs: Vec<PageRun>,
    current: Option<PageRun>,
    pages: u64,
}

impl<'a, S: PageSink> RunWriter<'a, S> {
    pub fn new(sink: &'a mut S, page_size: u64) -> Self {
        RunWriter {
            sink,
            page_size,
            runs: Vec::new(),
            current: None,
            pages: 0,
        }
    }

    /// A buffer of `len` bytes from the sink, to read a batch into and give to
    /// [`RunWriter::push_buffer`].
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        self.sink.buffer(len)
    }

    /// Stores `data`: the pages of `stretches` (address, page count), back to back.
    pub fn push_buffer(
        &mut self,
        stretches: &[(u64, u64)],
        data: Vec<u8>,
    ) -> Result<(), ImageError> {
        let mut offset = self.sink.offset();
        let mut total = 0u64;
        for &(vaddr, npages) in stretches {
            self.record(vaddr, npages, offset);
            offset += npages * self.page_size;
            total += npages;
        }
        debug_assert_eq!(total * self.page_size, data.len() as u64);
        if data.is_empty() {
            return Ok(());
        }
        self.sink.write_buffer(data)
    }

    /// Notes that `npages` pages from `vaddr` are stored at `offset` of the page file.
    fn record(&mut self, vaddr: u64, npages: u64, offset: u64) {
        if npages == 0 {
            return;
        }
        match &mut self.current {
            Some(run)
                if run.vaddr + run.npages * self.page_size == vaddr
                    && run.file_offset + run.npages * self.page_size == offset =>
            {
                run.npages += npages
            }
            _ => {
                self.end_area();
                self.current = Some(PageRun {
                    vaddr,
                    npages,
                    file_offset: offset,
                });
            }
        }
        self.pages += npages;
    }

    /// Closes the current run (call at the end of each memory area).
    pub fn end_area(&mut self) {
        if let Some(run) = self.current.take() {
            self.runs.push(run);
        }
    }

    /// Pages written so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The runs, in the order written (ascending addresses when areas are fed in order).
    pub fn finish(mut self) -> Vec<PageRun> {
        self.end_area();
        self.runs
    }
}

/// A sink that counts what it writes into a [`Progress`] (the bar of writing the image).
pub struct Counted<S> {
    inner: S,
    progress: crate::progress::Progress,
}

impl<S: PageSink> Counted<S> {
    pub fn new(inner: S, progress: crate::progress::Progress) -> Counted<S> {
        Counted { inner, progress }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: PageSink> PageSink for Counted<S> {
    fn offset(&self) -> u64 {
        self.inner.offset()
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.inner.write_all(bytes)?;
        self.progress.advance(bytes.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf(Vec<u8>);
    impl PageSink for Buf {
        fn offset(&self) -> u64 {
            self.0.len() as u64
        }
        fn write_all(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn consecutive_pages_form_one_run_and_areas_split_runs() {
        let mut buf = Buf(Vec::new());
        let mut w = RunWriter::new(&mut buf, 16);
        w.push_buffer(&[(0x100, 2)], vec![1; 32]).unwrap();
        // A gap in addresses starts a new run, inside one buffer too.
        w.push_buffer(&[(0x120, 1), (0x200, 1)], [[2; 16], [3; 16]].concat())
            .unwrap();
        w.end_area();
        // Adjacent address, but a new area: a new run.
        w.push_buffer(&[(0x210, 1)], vec![4; 16]).unwrap();
        assert_eq!(w.pages(), 5);
        let runs = w.finish();
        assert_eq!(
            runs,
            vec![
                PageRun {
                    vaddr: 0x100,
                    npages: 3,
                    file_offset: 0
                },
                PageRun {
                    vaddr: 0x200,
                    npages: 1,
                    file_offset: 48
                },
                PageRun {
                    vaddr: 0x210,
                    npages: 1,
                    file_offset: 64
                },
            ]
        );
        assert_eq!(buf.0.len(), 80);
        assert_eq!(&buf.0[32..48], &[2; 16]);
        assert_eq!(&buf.0[64..80], &[4; 16]);
    }
}

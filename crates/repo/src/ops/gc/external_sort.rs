//! Sorted sets of fixed-size records that do not fit in memory.
//!
//! Garbage collection must compare "every chunk id referenced by an index" with "every
//! chunk object stored" for repositories of 10^8 chunks and more, where a hash set of
//! 32-byte digests alone would take several GiB. Records are collected in a bounded
//! buffer; a full buffer is sorted, deduplicated and written to a run file in a
//! temporary directory; [`RunWriter::finish`] merges the runs (in several passes when
//! there are more than [`MAX_FAN_IN`]) into one sorted, duplicate-free stream. Memory is
//! the buffer plus one read buffer per run being merged, whatever the input size.
//!
//! Records compare as byte strings, so a record that starts with a chunk id sorts by
//! chunk id.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Runs merged at once; more runs are first merged in groups of this size.
pub(crate) const MAX_FAN_IN: usize = 64;
/// Read buffer per run being merged.
const READ_BUFFER: usize = 64 * 1024;

/// Collects records into sorted run files.
pub(crate) struct RunWriter<const N: usize> {
    dir: PathBuf,
    name: &'static str,
    buffer: Vec<[u8; N]>,
    capacity: usize,
    runs: Vec<PathBuf>,
    next_run: usize,
    pushed: u64,
}

impl<const N: usize> RunWriter<N> {
    /// A writer whose buffer holds at most `memory_bytes` of records (at least 2),
    /// writing runs named `NAME-K.run` into `dir`.
    pub(crate) fn new(dir: &Path, name: &'static str, memory_bytes: usize) -> Self {
        let capacity = (memory_bytes / N).max(2);
        Self {
            dir: dir.to_path_buf(),
            name,
            buffer: Vec::with_capacity(capacity.min(1 << 16)),
            capacity,
            runs: Vec::new(),
            next_run: 0,
            pushed: 0,
        }
    }

    /// Adds one record; writes a run when the buffer is full.
    pub(crate) fn push(&mut self, record: [u8; N]) -> io::Result<()> {
        self.buffer.push(record);
        self.pushed += 1;
        if self.buffer.len() >= self.capacity {
            self.flush()?;
        }
        Ok(())
    }

    /// Records pushed so far, duplicates included.
    pub(crate) fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Run files written so far (for tests and reports), counting the one
    /// [`Self::finish`] will write for what is still buffered.
    pub(crate) fn runs_written(&self) -> usize {
        self.next_run + usize::from(!self.buffer.is_empty())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.buffer.sort_unstable();
        self.buffer.dedup();
        let path = self.new_run_path();
        let mut out = BufWriter::with_capacity(READ_BUFFER, File::create(&path)?);
        for record in &self.buffer {
            out.write_all(record)?;
        }
        out.into_inner().map_err(|error| error.into_error())?;
        self.buffer.clear();
        self.runs.push(path);
        Ok(())
    }

    fn new_run_path(&mut self) -> PathBuf {
        let path = self
            .dir
            .join(format!("{}-{}.run", self.name, self.next_run));
        self.next_run += 1;
        path
    }

    /// Writes what is buffered, frees the buffer and returns the merged stream.
    pub(crate) fn finish(mut self) -> io::Result<Merged<N>> {
        self.flush()?;
        self.buffer = Vec::new();
        while self.runs.len() > MAX_FAN_IN {
            let group: Vec<PathBuf> = self.runs.drain(..MAX_FAN_IN).collect();
            let path = self.new_run_path();
            let mut out = BufWriter::with_capacity(READ_BUFFER, File::create(&path)?);
            for record in Merged::<N>::open(&group)? {
                out.write_all(&record?)?;
            }
            out.into_inner().map_err(|error| error.into_error())?;
            for used in group {
                std::fs::remove_file(used)?;
            }
            self.runs.push(path);
        }
        Merged::open(&self.runs)
    }
}

/// The sorted, duplicate-free union of run files.
pub(crate) struct Merged<const N: usize> {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<([u8; N], usize)>>,
    last: Option<[u8; N]>,
}

impl<const N: usize> Merged<N> {
    fn open(runs: &[PathBuf]) -> io::Result<Self> {
        let mut merged = Self {
            readers: Vec::with_capacity(runs.len()),
            heap: BinaryHeap::with_capacity(runs.len()),
            last: None,
        };
        for (position, path) in runs.iter().enumerate() {
            merged
                .readers
                .push(BufReader::with_capacity(READ_BUFFER, File::open(path)?));
            merged.refill(position)?;
        }
        Ok(merged)
    }

    /// Reads the next record of run `position` into the heap, if it has one.
    fn refill(&mut self, position: usize) -> io::Result<()> {
        let mut record = [0u8; N];
        match self.readers[position].read_exact(&mut record) {
            Ok(()) => {
                self.heap.push(Reverse((record, position)));
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn next_record(&mut self) -> io::Result<Option<[u8; N]>> {
        while let Some(Reverse((record, position))) = self.heap.pop() {
            self.refill(position)?;
            if self.last == Some(record) {
                continue;
            }
            self.last = Some(record);
            return Ok(Some(record));
        }
        Ok(None)
    }
}

impl<const N: usize> Iterator for Merged<N> {
    type Item = io::Result<[u8; N]>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: u32) -> [u8; 4] {
        value.to_be_bytes()
    }

    fn pseudo_random(count: usize, modulo: u32) -> Vec<u32> {
        let mut state = 0x2545_f491_u32;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state % modulo
            })
            .collect()
    }

    #[test]
    fn merges_many_small_runs_into_one_sorted_unique_stream() {
        let dir = tempfile::tempdir().unwrap();
        // 16-byte buffer: four records per run, so 5000 values make 1250 runs and the
        // merge needs intermediate passes.
        let mut writer = RunWriter::<4>::new(dir.path(), "test", 16);
        let values = pseudo_random(5000, 3000);
        for value in &values {
            writer.push(record(*value)).unwrap();
        }
        assert!(
            writer.runs_written() > MAX_FAN_IN * 2,
            "forces several passes"
        );
        let merged: Vec<u32> = writer
            .finish()
            .unwrap()
            .map(|r| u32::from_be_bytes(r.unwrap()))
            .collect();
        let mut expected = values.clone();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(merged, expected);
    }

    #[test]
    fn an_empty_writer_yields_nothing_and_one_run_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RunWriter::<4>::new(dir.path(), "empty", 1024);
        assert_eq!(writer.finish().unwrap().count(), 0);
        let mut writer = RunWriter::<4>::new(dir.path(), "one", 1024);
        for value in [5, 1, 5, 3] {
            writer.push(record(value)).unwrap();
        }
        let merged: Vec<u32> = writer
            .finish()
            .unwrap()
            .map(|r| u32::from_be_bytes(r.unwrap()))
            .collect();
        assert_eq!(merged, vec![1, 3, 5]);
    }
}

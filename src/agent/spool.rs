//! A job's output waiting to be sent: in memory up to a bound, then appended to a file and
//! read back in order once memory has drained. Records keep their number (from 0), so a batch
//! sent again after a lost answer is stored once by the server.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::protocol::LogRecord;

/// Bytes of output held in memory per job before it spills to disk.
pub const MEMORY_BOUND: usize = 8 * 1024 * 1024;

/// One job's unsent output.
#[derive(Debug)]
pub struct Spool {
    /// Unsent records in memory, the oldest first.
    mem: VecDeque<LogRecord>,
    mem_bytes: usize,
    bound: usize,
    /// The number of `mem[0]` (records before it were acknowledged).
    first: u64,
    /// The spill file (records after those in memory), while it holds any.
    path: PathBuf,
    spill: Option<Spill>,
}

#[derive(Debug)]
struct Spill {
    writer: File,
    reader: BufReader<File>,
    /// Records in it not read back yet.
    unread: u64,
}

impl Spool {
    /// An empty spool that spills to `path` beyond `bound` bytes.
    #[must_use]
    pub fn new(path: PathBuf, bound: usize) -> Self {
        Self {
            mem: VecDeque::new(),
            mem_bytes: 0,
            bound,
            first: 0,
            path,
            spill: None,
        }
    }

    /// Adds a record (to the file when memory is full or the file already holds records).
    pub fn push(&mut self, rec: LogRecord) {
        let spilling = self.spill.as_ref().is_some_and(|s| s.unread > 0);
        if !spilling && self.mem_bytes + rec.message.len() <= self.bound {
            self.mem_bytes += rec.message.len();
            self.mem.push_back(rec);
            return;
        }
        if self.spill.is_none() {
            match self.open_spill() {
                Ok(s) => self.spill = Some(s),
                Err(e) => {
                    // No disk either: keep it in memory rather than lose it.
                    tracing::error!(path = %self.path.display(), error = %e, "cannot spill output");
                    self.mem_bytes += rec.message.len();
                    self.mem.push_back(rec);
                    return;
                }
            }
        }
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let mut line = serde_json::to_vec(&rec).unwrap_or_default();
        line.push(b'\n');
        if spill.writer.write_all(&line).is_ok() {
            spill.unread += 1;
        }
    }

    fn open_spill(&self) -> std::io::Result<Spill> {
        let writer = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.path)?;
        let reader = BufReader::new(File::open(&self.path)?);
        Ok(Spill {
            writer,
            reader,
            unread: 0,
        })
    }

    /// Up to `max` unsent records from the oldest (and at most about `max_bytes` of text,
    /// at least one record), with the number of the first.
    pub fn peek(&mut self, max: usize, max_bytes: usize) -> (u64, Vec<LogRecord>) {
        if self.mem.len() < max {
            self.refill(max - self.mem.len());
        }
        let mut bytes = 0;
        let batch = self
            .mem
            .iter()
            .take(max)
            .take_while(|r| {
                let first = bytes == 0;
                bytes += r.message.len() + 32;
                first || bytes <= max_bytes
            })
            .cloned()
            .collect();
        (self.first, batch)
    }

    /// Reads up to `n` spilled records back into memory (only once memory holds nothing
    /// newer, which it never does: spilled records all come after those in memory).
    fn refill(&mut self, n: usize) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let mut line = String::new();
        let mut read = 0;
        while read < n && spill.unread > 0 {
            line.clear();
            match spill.reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            spill.unread -= 1;
            read += 1;
            if let Ok(rec) = serde_json::from_str::<LogRecord>(&line) {
                self.mem_bytes += rec.message.len();
                self.mem.push_back(rec);
            }
        }
        if spill.unread == 0 {
            // Drained: start the file over.
            let _ = spill.writer.set_len(0);
            let _ = spill.writer.seek(SeekFrom::Start(0));
            let _ = spill.reader.seek(SeekFrom::Start(0));
        }
    }

    /// The server stored the `n` oldest records.
    pub fn ack(&mut self, n: usize) {
        for rec in self.mem.drain(..n.min(self.mem.len())) {
            self.mem_bytes -= rec.message.len();
            self.first += 1;
        }
    }

    /// Whether nothing is left to send.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.spill.as_ref().is_none_or(|s| s.unread == 0)
    }

    /// Records not yet acknowledged.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.spill.as_ref().map_or(0, |s| s.unread)
    }

    /// Bytes held in memory.
    #[must_use]
    pub fn memory(&self) -> usize {
        self.mem_bytes
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.spill.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> LogRecord {
        LogRecord {
            time: i64::try_from(i).unwrap(),
            message: format!("line {i:04}"),
        }
    }

    #[test]
    fn spills_beyond_the_bound_and_keeps_the_order() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 10 records of 9 bytes in memory.
        let mut s = Spool::new(dir.path().join("spill"), 90);
        for i in 0..100 {
            s.push(rec(i));
        }
        assert!(s.memory() <= 90);
        assert!(dir.path().join("spill").exists());
        let mut got = Vec::new();
        while !s.is_empty() {
            let (first, batch) = s.peek(7, 1 << 20);
            assert_eq!(first, got.len() as u64);
            // A batch peeked again (its answer lost) is the same batch.
            assert_eq!(s.peek(7, 1 << 20).1.len(), batch.len());
            got.extend(batch.iter().map(|r| r.message.clone()));
            s.ack(batch.len());
            // New output keeps coming while the old drains.
            if got.len() == 49 {
                s.push(rec(100));
            }
        }
        let want: Vec<String> = (0..=100).map(|i| rec(i).message).collect();
        assert_eq!(got, want);
        drop(s);
        assert!(!dir.path().join("spill").exists());
    }
}

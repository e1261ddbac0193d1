//! A task's output sink: lines from the server and the app, in one ordered channel, stored in
//! batched durable transactions (many lines per commit) and published after they are durable.
//! A per-task cap in lines and bytes ends with one marker line saying what was dropped.
//!
//! Lines the store refuses (a full disk) are counted, never retried out of order: once the
//! store takes writes again, one marker line says how many were lost, and the task cannot end
//! `success` (see [`Sink::lost`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::Inner;
use super::process::{Chunk, Line};
use crate::clock::now_us;
use crate::model::{OutputLine, Task};

/// Chunks (one pipe read's lines each, at most 64 KiB of text) buffered between the readers
/// and the writer; a full buffer slows the reader (and so the app's pipe) instead of growing
/// memory.
const CHANNEL: usize = 16;
/// Most lines per commit. While one batch commits the next one gathers, so under a flood a
/// batch holds what arrived during the previous commit, up to this.
const BATCH: usize = 32_768;

/// The output sink of one task run.
pub(super) struct Sink {
    tx: mpsc::Sender<Chunk>,
    writer: tokio::task::JoinHandle<()>,
    /// Lines the store refused so far.
    lost: Arc<AtomicU64>,
    /// How the task's commands are confined.
    jail: super::sandbox::TaskJail,
}

impl Sink {
    /// Starts the writer for `task`, appending after line `first`.
    pub(super) fn start(inner: Arc<Inner>, task: Task, first: u64) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let lost = Arc::new(AtomicU64::new(0));
        let jail = super::sandbox::TaskJail::new(&inner, &task);
        let writer = tokio::spawn(pump(inner, task, rx, first, Arc::clone(&lost)));
        Self {
            tx,
            writer,
            lost,
            jail,
        }
    }

    /// The task's sandbox, for the commands it runs.
    pub(super) fn jail(&self) -> &super::sandbox::TaskJail {
        &self.jail
    }

    /// A counter of the lines the store refused (read it after [`Sink::finish`]).
    pub(super) fn lost(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.lost)
    }

    /// A sender for a reader of the app's output.
    pub(super) fn sender(&self) -> mpsc::Sender<Chunk> {
        self.tx.clone()
    }

    /// Adds a server line (`Started: 7`, `Cloning ...`).
    pub(super) async fn line(&self, text: impl Into<String>) {
        let line = Line {
            time_us: now_us(),
            text: text.into(),
        };
        let _ = self.tx.send(vec![line]).await;
    }

    /// Waits until every line sent so far (by anyone holding a sender) is stored.
    pub(super) async fn finish(self) {
        drop(self.tx);
        let _ = self.writer.await;
    }
}

/// The per-task cap: it counts every stored line of the task, including those before this
/// run began.
struct Cap {
    max_lines: u64,
    max_bytes: u64,
    lines: u64,
    bytes: u64,
    /// Lines over the cap, dropped.
    dropped: u64,
}

impl Cap {
    /// Moves the lines of `chunk` the cap allows into `keep`; counts the others.
    fn admit(&mut self, chunk: Chunk, keep: &mut Vec<OutputLine>) {
        for l in chunk {
            let len = l.text.len() as u64;
            if self.lines < self.max_lines && self.bytes + len <= self.max_bytes {
                self.lines += 1;
                self.bytes += len;
                keep.push(OutputLine {
                    time_us: l.time_us,
                    text: l.text,
                });
            } else {
                self.dropped += 1;
            }
        }
    }
}

/// Gathers lines into batches and stores them one batch at a time, in order; the next batch
/// gathers while one commits.
async fn pump(
    inner: Arc<Inner>,
    task: Task,
    mut rx: mpsc::Receiver<Chunk>,
    first: u64,
    lost: Arc<AtomicU64>,
) {
    let mut cap = Cap {
        max_lines: inner.settings.output_max_lines,
        max_bytes: inner.settings.output_max_bytes,
        lines: first,
        bytes: 0,
        dropped: 0,
    };
    let task = Arc::new(task);
    let mut next = first;
    let mut pending: Vec<OutputLine> = Vec::new();
    // The batch being stored: its length and the store's answer (how many it stored).
    let mut inflight: Option<(u64, tokio::task::JoinHandle<u64>)> = None;
    let mut open = true;
    loop {
        if inflight.is_none() && !pending.is_empty() {
            // Its line numbers follow what the previous batch really stored.
            let batch = std::mem::take(&mut pending);
            let n = batch.len() as u64;
            let store = store(Arc::clone(&inner), Arc::clone(&task), next, batch);
            inflight = Some((n, tokio::spawn(store)));
        }
        let Some((n, handle)) = inflight.as_mut() else {
            if !open {
                break;
            }
            match rx.recv().await {
                Some(chunk) => cap.admit(chunk, &mut pending),
                None => open = false,
            }
            continue;
        };
        tokio::select! {
            chunk = rx.recv(), if open && pending.len() < BATCH => match chunk {
                Some(chunk) => cap.admit(chunk, &mut pending),
                None => open = false,
            },
            stored = handle => {
                let stored = stored.unwrap_or(0);
                next += stored;
                lost.fetch_add(*n - stored, Ordering::SeqCst);
                inflight = None;
            }
        }
    }
    let mut markers = Vec::new();
    let (max_lines, max_bytes, dropped) = (cap.max_lines, cap.max_bytes, cap.dropped);
    if dropped > 0 {
        markers.push(format!(
            "output truncated: {dropped} more lines were dropped (limits: {max_lines} lines, \
             {max_bytes} bytes per task)"
        ));
    }
    let refused = lost.load(Ordering::SeqCst);
    if refused > 0 {
        markers.push(format!(
            "output lost: {refused} lines could not be stored (the server's disk was full)"
        ));
    }
    for text in markers {
        // A marker must not be lost in turn: wait for the store to take writes again.
        loop {
            let marker = OutputLine {
                time_us: now_us(),
                text: text.clone(),
            };
            let stored = store(Arc::clone(&inner), Arc::clone(&task), next, vec![marker]).await;
            if stored == 1 {
                next += 1;
                break;
            }
            inner.storage_back().await;
        }
    }
}

/// Stores lines durably, then publishes them; returns how many were stored (all or none).
async fn store(inner: Arc<Inner>, task: Arc<Task>, first: u64, lines: Vec<OutputLine>) -> u64 {
    let n = lines.len() as u64;
    let lines: Arc<[OutputLine]> = Arc::from(lines);
    match inner
        .store
        .append_output_async(task.id, first, Arc::clone(&lines))
        .await
    {
        Ok(()) => {
            inner
                .stats
                .output_lines
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            inner.publish_lines(&task, first, lines);
            n
        }
        Err(e) if e.is_storage() => {
            tracing::warn!(task = task.id, lines = n, error = %e, "task output refused");
            0
        }
        Err(e) => {
            tracing::error!(task = task.id, error = %e, "storing task output failed");
            0
        }
    }
}

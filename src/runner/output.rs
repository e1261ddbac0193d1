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
use super::process::Line;
use crate::clock::now_us;
use crate::model::{OutputLine, Task};

/// Lines buffered between the readers and the writer; a full buffer slows the reader (and so
/// the app's pipe) instead of growing memory.
const CHANNEL: usize = 8192;
/// Most lines per commit.
const BATCH: usize = 8192;

/// The output sink of one task run.
pub(super) struct Sink {
    tx: mpsc::Sender<Line>,
    writer: tokio::task::JoinHandle<()>,
    /// Lines the store refused so far.
    lost: Arc<AtomicU64>,
}

impl Sink {
    /// Starts the writer for `task`, appending after line `first`.
    pub(super) fn start(inner: Arc<Inner>, task: Task, first: u64) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let lost = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(pump(inner, task, rx, first, Arc::clone(&lost)));
        Self { tx, writer, lost }
    }

    /// A counter of the lines the store refused (read it after [`Sink::finish`]).
    pub(super) fn lost(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.lost)
    }

    /// A sender for a reader of the app's output.
    pub(super) fn sender(&self) -> mpsc::Sender<Line> {
        self.tx.clone()
    }

    /// Adds a server line (`Started: 7`, `Cloning ...`).
    pub(super) async fn line(&self, text: impl Into<String>) {
        let _ = self
            .tx
            .send(Line {
                time_us: now_us(),
                text: text.into(),
            })
            .await;
    }

    /// Waits until every line sent so far (by anyone holding a sender) is stored.
    pub(super) async fn finish(self) {
        drop(self.tx);
        let _ = self.writer.await;
    }
}

async fn pump(
    inner: Arc<Inner>,
    task: Task,
    mut rx: mpsc::Receiver<Line>,
    first: u64,
    lost: Arc<AtomicU64>,
) {
    let max_lines = inner.settings.output_max_lines;
    let max_bytes = inner.settings.output_max_bytes;
    // The cap counts every stored line of the task, including those before this run began.
    let (mut next, mut lines, mut bytes, mut dropped) = (first, first, 0u64, 0u64);
    let mut batch = Vec::with_capacity(64);
    while let Some(line) = rx.recv().await {
        batch.push(line);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let mut keep = Vec::with_capacity(batch.len());
        for l in batch.drain(..) {
            let len = l.text.len() as u64;
            if lines < max_lines && bytes + len <= max_bytes {
                lines += 1;
                bytes += len;
                keep.push(OutputLine {
                    time_us: l.time_us,
                    text: l.text,
                });
            } else {
                dropped += 1;
            }
        }
        if !keep.is_empty() {
            let n = keep.len() as u64;
            let stored = store(&inner, &task, next, keep).await;
            next += stored;
            lost.fetch_add(n - stored, Ordering::SeqCst);
        }
    }
    let mut markers = Vec::new();
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
            if store(&inner, &task, next, vec![marker]).await == 1 {
                next += 1;
                break;
            }
            inner.storage_back().await;
        }
    }
}

/// Stores lines durably, then publishes them; returns how many were stored (all or none).
async fn store(inner: &Arc<Inner>, task: &Task, first: u64, lines: Vec<OutputLine>) -> u64 {
    let n = lines.len() as u64;
    let lines: Arc<[OutputLine]> = Arc::from(lines);
    let (store, id, batch) = (inner.store.clone(), task.id, Arc::clone(&lines));
    let stored = tokio::task::spawn_blocking(move || store.append_output(id, first, &batch)).await;
    match stored {
        Ok(Ok(())) => {
            inner
                .stats
                .output_lines
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            inner.publish_lines(task, first, lines);
            n
        }
        Ok(Err(e)) if e.is_storage() => {
            tracing::warn!(task = task.id, lines = n, error = %e, "task output refused");
            0
        }
        Ok(Err(e)) => {
            tracing::error!(task = task.id, error = %e, "storing task output failed");
            0
        }
        Err(e) => {
            tracing::error!(task = task.id, error = %e, "storing task output failed");
            0
        }
    }
}

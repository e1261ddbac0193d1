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
    /// Turns `true` once every sender is gone (the last line has been taken).
    closed: tokio::sync::watch::Receiver<bool>,
    /// Lines stored so far by this run (moves while a backlog is being stored).
    stored: Arc<AtomicU64>,
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
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let stored = Arc::new(AtomicU64::new(0));
        let progress = Progress {
            closed: closed_tx,
            stored: Arc::clone(&stored),
        };
        let jail = super::sandbox::TaskJail::new(&inner, &task);
        let writer = tokio::spawn(pump(inner, task, rx, first, Arc::clone(&lost), progress));
        Self {
            tx,
            writer,
            closed,
            stored,
            lost,
            jail,
        }
    }

    /// A counter of the lines the store refused (read it after [`Sink::finish_within`]).
    pub(super) fn lost(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.lost)
    }

    /// Adds a server line (`Started: 7`, `Cloning ...`).
    pub(super) async fn line(&self, text: impl Into<String>) {
        let line = Line {
            time_us: now_us(),
            text: text.into(),
        };
        let _ = self.tx.send(vec![line]).await;
    }

    /// Waits for every other sender to go, then until every line sent is stored, for as
    /// long as storing makes progress within each `wait`: a reader whose pipe a grandchild
    /// holds open silently, or a full disk, gets `wait`; a reader held back only by the
    /// storing of a backlog (a slow machine) gets the time the backlog takes, up to
    /// [`MAX_OPEN_WAITS`] `wait`s while senders are still open (a grandchild that writes
    /// forever). `false` when it gave up: the rest is stored in the background.
    pub(super) async fn finish_within(self, wait: std::time::Duration) -> bool {
        drop(self.tx);
        let mut closed = self.closed;
        // An error means the writer has ended, so nothing is open either.
        let gone = async move {
            let _ = closed.wait_for(|c| *c).await;
        };
        let open_until = tokio::time::Instant::now() + wait * MAX_OPEN_WAITS;
        if !while_storing(gone, wait, &self.stored, Some(open_until)).await {
            return false;
        }
        while_storing(self.writer, wait, &self.stored, None).await
    }
}

impl Sink {
    /// Awaits `done` (the app's pipes closed) the way [`Sink::finish_within`] waits for its
    /// senders: as long as storing makes progress within each `wait`, so that on a slow
    /// machine the line saying how the app ended still comes after all of its output.
    pub(super) async fn drained(&self, done: impl std::future::Future, wait: std::time::Duration) {
        let until = tokio::time::Instant::now() + wait * MAX_OPEN_WAITS;
        while_storing(done, wait, &self.stored, Some(until)).await;
    }
}

impl super::launch::Log for Sink {
    fn sender(&self) -> mpsc::Sender<Chunk> {
        self.tx.clone()
    }

    async fn note(&self, text: String) {
        self.line(text).await;
    }

    fn command(&self, program: &str, workspace: &std::path::Path) -> tokio::process::Command {
        self.jail.command(program, workspace)
    }
}

/// How many `wait`s [`Sink::finish_within`] gives senders that keep sending after the app.
const MAX_OPEN_WAITS: u32 = 12;

/// Awaits `done` while `stored` moves within each `wait` (and before `until`); whether it
/// completed.
async fn while_storing(
    done: impl std::future::Future,
    wait: std::time::Duration,
    stored: &AtomicU64,
    until: Option<tokio::time::Instant>,
) -> bool {
    tokio::pin!(done);
    let mut seen = stored.load(Ordering::SeqCst);
    loop {
        if tokio::time::timeout(wait, &mut done).await.is_ok() {
            return true;
        }
        let now = stored.load(Ordering::SeqCst);
        if now == seen || until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return false;
        }
        seen = now;
    }
}

/// What the writer tells [`Sink::finish_within`]: that the senders are gone, and how many
/// lines it has stored.
struct Progress {
    closed: tokio::sync::watch::Sender<bool>,
    stored: Arc<AtomicU64>,
}

/// The per-task cap: it counts every stored line of the task, including those before this
/// run began. Remote runners' output goes through the same cap.
#[derive(Debug)]
pub(super) struct Cap {
    max_lines: u64,
    max_bytes: u64,
    lines: u64,
    bytes: u64,
    /// Lines over the cap, dropped.
    dropped: u64,
}

impl Cap {
    /// The cap of `inner`'s settings for a run whose first line is line `first`.
    pub(super) fn new(inner: &Inner, first: u64) -> Self {
        Self::with_limits(
            inner.settings.output_max_lines,
            inner.settings.output_max_bytes,
            first,
        )
    }

    /// A cap of `max_lines` lines and `max_bytes` bytes, `first` lines stored already.
    pub(super) fn with_limits(max_lines: u64, max_bytes: u64, first: u64) -> Self {
        Self {
            max_lines,
            max_bytes,
            lines: first,
            bytes: 0,
            dropped: 0,
        }
    }

    /// Moves the lines (time, text) the cap allows into `keep`; counts the others.
    pub(super) fn admit(
        &mut self,
        lines: impl IntoIterator<Item = (i64, String)>,
        keep: &mut Vec<OutputLine>,
    ) {
        for (time_us, text) in lines {
            let len = text.len() as u64;
            if self.lines < self.max_lines && self.bytes + len <= self.max_bytes {
                self.lines += 1;
                self.bytes += len;
                keep.push(OutputLine { time_us, text });
            } else {
                self.dropped += 1;
            }
        }
    }

    /// The line saying what the cap dropped, if it dropped anything.
    pub(super) fn marker(&self) -> Option<String> {
        let (max_lines, max_bytes, dropped) = (self.max_lines, self.max_bytes, self.dropped);
        (dropped > 0).then(|| {
            format!(
                "output truncated: {dropped} more lines were dropped (limits: {max_lines} lines, \
                 {max_bytes} bytes per task)"
            )
        })
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
    progress: Progress,
) {
    let mut cap = Cap::new(&inner, first);
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
            if let Some(chunk) = rx.recv().await {
                cap.admit(chunk.into_iter().map(|l| (l.time_us, l.text)), &mut pending);
            } else {
                open = false;
                progress.closed.send_replace(true);
            }
            continue;
        };
        tokio::select! {
            chunk = rx.recv(), if open && pending.len() < BATCH => {
                if let Some(chunk) = chunk {
                    cap.admit(chunk.into_iter().map(|l| (l.time_us, l.text)), &mut pending);
                } else {
                    open = false;
                    progress.closed.send_replace(true);
                }
            }
            stored = handle => {
                let stored = stored.unwrap_or(0);
                next += stored;
                progress.stored.fetch_add(stored, Ordering::SeqCst);
                lost.fetch_add(*n - stored, Ordering::SeqCst);
                inflight = None;
            }
        }
    }
    let mut markers: Vec<String> = cap.marker().into_iter().collect();
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

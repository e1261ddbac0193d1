//! Child processes of tasks: spawning into their own process group with stdout and stderr on
//! one pipe (so lines keep the order in which they were written), reading that pipe into
//! bounded lines, and signalling or finding whole process groups.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_us;

/// Longest stored line; a longer one is split rather than buffered without bound.
pub const MAX_LINE: usize = 16 * 1024;

/// A line read from a child, stamped when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    /// Unix microseconds.
    pub time_us: i64,
    /// Text without the newline (invalid UTF-8 replaced).
    pub text: String,
}

/// Lines read together from the pipe, sent as one message (one channel operation per read,
/// not per line: a task flooding its output costs a wake-up per pipe read).
pub type Chunk = Vec<Line>;

/// Spawns `cmd` in a new process group with empty stdin and both output streams on one pipe,
/// whose lines are sent to `lines` (in chunks, see [`Chunk`]) by a reader thread until every
/// holder of the pipe is gone. The receiver resolves once the reader has sent its last line.
///
/// # Errors
/// When the pipe cannot be made or the program cannot start.
pub fn spawn(
    mut cmd: Command,
    lines: mpsc::Sender<Chunk>,
) -> std::io::Result<(Child, oneshot::Receiver<()>)> {
    let (reader, writer) = std::io::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer))
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    // `cmd` (and with it our copies of the write end) is dropped here, so EOF comes when the
    // child and everything it started have closed the pipe.
    drop(cmd);
    let (done, output_done) = oneshot::channel();
    std::thread::Builder::new()
        .name("forge-task-output".into())
        .spawn(move || {
            read_lines(reader, &lines);
            let _ = done.send(());
        })?;
    Ok((child, output_done))
}

/// Splits a byte stream into lines (`\n`, with a trailing `\r` removed), cutting lines longer
/// than [`MAX_LINE`], and sends the lines of each read as one chunk; stops when the stream
/// ends or the receiver is gone.
fn read_lines(mut reader: impl Read, lines: &mpsc::Sender<Chunk>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut current: Vec<u8> = Vec::new();
    let mut chunk: Chunk = Vec::new();
    let emit = |chunk: &mut Chunk, bytes: &[u8], time_us: i64| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        chunk.push(Line {
            time_us,
            // Valid UTF-8 (nearly every line) is checked by the fast validator alone;
            // only a line that fails it is walked again to replace the bad bytes.
            text: match std::str::from_utf8(bytes) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(bytes).into_owned(),
            },
        });
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // One read's lines arrived together: one time stamp.
        let time_us = now_us();
        let mut rest = &buf[..n];
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if current.is_empty() {
                emit(&mut chunk, &rest[..pos], time_us);
            } else {
                current.extend_from_slice(&rest[..pos]);
                emit(&mut chunk, &current, time_us);
                current.clear();
            }
            rest = &rest[pos + 1..];
        }
        current.extend_from_slice(rest);
        while current.len() >= MAX_LINE {
            let tail = current.split_off(MAX_LINE);
            emit(&mut chunk, &current, time_us);
            current = tail;
        }
        if !chunk.is_empty() {
            let capacity = chunk.len();
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(capacity));
            if lines.blocking_send(full).is_err() {
                return;
            }
        }
    }
    if !current.is_empty() {
        emit(&mut chunk, &current, now_us());
        let _ = lines.blocking_send(chunk);
    }
}

/// Sends `signal` to process group `pgid`; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Kills process group `.0` when dropped (a no-op once the group is gone).
#[derive(Debug)]
pub struct GroupGuard(pub i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

/// Whether any process of group `pgid` still exists.
#[must_use]
pub fn group_alive(pgid: i32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Kills what is left of task `task_id`'s process group `pgid` after a crash, but only when a
/// member of that group still carries the task's `FORGE_TASK_ID` marker in its environment: a
/// recorded group id may since have been reused by an unrelated process.
#[must_use]
pub fn kill_leftover_group(pgid: i32, task_id: u64) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    let marker = format!("FORGE_TASK_ID={task_id}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    let ours = entries.flatten().any(|entry| {
        let path = entry.path();
        process_group_of(&path) == Some(pgid)
            && std::fs::read(path.join("environ"))
                .is_ok_and(|env| env.windows(marker.len()).any(|w| w == marker.as_bytes()))
    });
    if ours {
        signal_group(pgid, Signal::SIGKILL);
    }
    ours
}

/// The process group of the process whose `/proc` entry is `proc_dir`.
fn process_group_of(proc_dir: &Path) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8]) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(1024);
        read_lines(input, &tx);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            out.extend(chunk.into_iter().map(|l| l.text));
        }
        out
    }

    #[test]
    fn splits_lines_and_cuts_long_ones() {
        assert_eq!(collect(b"a\nb\r\n\nlast"), ["a", "b", "", "last"]);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let lines = collect(&long);
        assert_eq!(
            lines.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 5]
        );
        assert_eq!(collect(b"\xff\n"), ["\u{fffd}"]);
    }

    #[test]
    fn own_process_group() {
        assert_eq!(
            process_group_of(Path::new("/proc/self")),
            Some(nix::unistd::getpgrp().as_raw())
        );
    }
}

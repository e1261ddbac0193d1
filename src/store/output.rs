//! Task output, stored in chunks of consecutive lines.
//!
//! A row of `task_output_chunks` is keyed `(task id, number of its first line)` and holds an
//! encoded `Vec<OutputLine>` of 1 to [`CHUNK_LINES`] lines; a task's chunks follow each other
//! without gaps or overlap (the next chunk's key is this one's plus its length), from line 0.
//! One appended batch becomes one or more chunks: a flood of lines costs one B-tree insert per
//! chunk instead of one per line (per-row inserts were 81 % of the writer's time storing a
//! 1 M-line flood), and a line is found by the chunk at or before its number.
//!
//! Appends always continue a task's output at its end (the runners hold the next line number
//! under a lock and advance it only once a batch is stored), so chunks never overlap.

use redb::{ReadableTable, Table, WriteTransaction};

use super::tables::OUTPUT_CHUNK;
use super::{Result, codec};
use crate::model::{OutputLine, TaskId};

/// Most lines in one chunk: small enough that reading a line from the middle of a task's
/// output decodes little, large enough that a flood's per-row cost vanishes.
pub const CHUNK_LINES: usize = 256;
/// A chunk closes once its text reaches this many bytes (one longer line is a chunk alone).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Splits `lines` into chunks of at most [`CHUNK_LINES`] lines and, past the first line,
/// [`CHUNK_BYTES`] bytes of text.
pub fn chunks(lines: &[OutputLine]) -> impl Iterator<Item = &[OutputLine]> {
    let mut rest = lines;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < CHUNK_LINES && (n == 0 || bytes < CHUNK_BYTES) {
            bytes += rest[n].text.len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Decodes one stored chunk.
///
/// # Errors
/// [`Error::Codec`](super::Error) when the bytes are not a chunk; an empty chunk is not one.
pub fn decode_chunk(bytes: &[u8]) -> Result<Vec<OutputLine>> {
    let lines: Vec<OutputLine> = codec::decode(bytes)?;
    if lines.is_empty() {
        return Err(codec::CodecError::new("an empty output chunk").into());
    }
    Ok(lines)
}

/// Writes `lines` as task `id`'s lines `first..` into `table`, one row per chunk.
///
/// # Errors
/// Storage failures only.
pub fn insert_chunks(
    table: &mut Table<(TaskId, u64), &[u8]>,
    id: TaskId,
    first: u64,
    lines: &[OutputLine],
) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut at = first;
    for chunk in chunks(lines) {
        codec::encode_into(&chunk, &mut buf);
        table.insert((id, at), buf.as_slice())?;
        at += chunk.len() as u64;
    }
    Ok(())
}

/// Appends output lines `first..` of task `id`.
///
/// # Errors
/// Storage failures only.
pub fn append(tx: &WriteTransaction, id: TaskId, first: u64, lines: &[OutputLine]) -> Result<()> {
    insert_chunks(&mut tx.open_table(OUTPUT_CHUNK)?, id, first, lines)
}

/// Lines `offset..offset+limit` of task `id`, with their numbers, from `table`.
///
/// # Errors
/// Storage failures, or a chunk that does not decode.
pub fn read(
    table: &impl ReadableTable<(TaskId, u64), &'static [u8]>,
    id: TaskId,
    offset: u64,
    limit: usize,
) -> Result<Vec<(u64, OutputLine)>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    // The chunk holding `offset` starts at or before it.
    let start = table
        .range((id, 0)..=(id, offset))?
        .next_back()
        .transpose()?
        .map_or(offset, |(k, _)| k.value().1);
    for row in table.range((id, start)..=(id, u64::MAX))? {
        let (k, v) = row?;
        let first = k.value().1;
        for (n, line) in (first..).zip(decode_chunk(v.value())?) {
            if n < offset {
                continue;
            }
            out.push((n, line));
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// How many lines task `id` has in `table`: its last chunk's first line plus its length.
///
/// # Errors
/// Storage failures, or a last chunk that does not decode.
pub fn len(table: &impl ReadableTable<(TaskId, u64), &'static [u8]>, id: TaskId) -> Result<u64> {
    let Some((k, v)) = table
        .range((id, 0)..=(id, u64::MAX))?
        .next_back()
        .transpose()?
    else {
        return Ok(0);
    };
    Ok(k.value().1 + decode_chunk(v.value())?.len() as u64)
}

/// Deletes every output row of task `id`.
///
/// # Errors
/// Storage failures only.
pub fn delete(table: &mut Table<(TaskId, u64), &[u8]>, id: TaskId) -> Result<()> {
    table.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize, len: usize) -> Vec<OutputLine> {
        (0..n)
            .map(|i| OutputLine {
                time_us: i64::try_from(i).unwrap_or(i64::MAX),
                text: format!("{i}{}", "x".repeat(len)),
            })
            .collect()
    }

    #[test]
    fn chunks_cover_every_line_in_order_within_both_limits() {
        for (n, len) in [
            (0, 1),
            (1, 1),
            (255, 10),
            (256, 10),
            (257, 10),
            (1000, 3),
            (10, 20_000),
        ] {
            let all = lines(n, len);
            let parts: Vec<&[OutputLine]> = chunks(&all).collect();
            assert_eq!(parts.concat(), all, "{n} lines of {len}");
            for p in &parts {
                assert!(!p.is_empty() && p.len() <= CHUNK_LINES);
                let bytes: usize = p[..p.len() - 1].iter().map(|l| l.text.len()).sum();
                assert!(bytes < CHUNK_BYTES, "{n} lines of {len}");
            }
        }
        // One line longer than the byte limit is a chunk of its own.
        let huge = lines(3, CHUNK_BYTES * 2);
        assert_eq!(chunks(&huge).count(), 3);
    }

    #[test]
    fn reads_any_window_across_chunks_and_counts_lines() {
        let (_dir, store) = crate::store::test_support::temp_store();
        let all = lines(700, 4);
        // Three appends: 300 (two chunks), 1, then 399 (two chunks).
        store.append_output(9, 0, &all[..300]).expect("append");
        store.append_output(9, 300, &all[300..301]).expect("append");
        store.append_output(9, 301, &all[301..]).expect("append");
        store.append_output(10, 0, &all[..2]).expect("append");
        assert_eq!(store.output_len(9).expect("len"), 700);
        assert_eq!(store.output_len(10).expect("len"), 2);
        assert_eq!(store.output_len(11).expect("len"), 0);
        for (offset, limit) in [
            (0, 1),
            (0, 700),
            (255, 3),
            (256, 1),
            (299, 2),
            (300, 1),
            (650, 100),
            (699, 5),
            (700, 5),
            (5000, 1),
            (10, 0),
        ] {
            let got = store.output(9, offset, limit).expect("read");
            let want: Vec<(u64, OutputLine)> = (0u64..)
                .zip(all.iter().cloned())
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .take(limit)
                .collect();
            assert_eq!(got, want, "offset {offset} limit {limit}");
        }
    }
}

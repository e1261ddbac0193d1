//! Online backups (Forge's own endpoint).

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::http::Req;
use crate::http::body;
use crate::http::error::ApiError;
use crate::http::handler::HandlerResult;

/// Bytes per chunk of the streamed file.
const CHUNK: usize = 256 * 1024;

/// `GET /api/backup` (system administrators): a consistent snapshot of the whole database as a
/// redb file, `application/octet-stream` with a timestamped file name and its exact length;
/// `503` + `Retry-After` while another backup (API or scheduled) is in progress.
/// Side effects: a temporary file the size of the database in the database's directory, with
/// no name (its space returns to the disk when the download ends, however it ends). Writes go
/// on meanwhile; the file holds what was committed when the request arrived.
pub async fn download(req: Req) -> HandlerResult {
    let user = req.user()?.username.clone();
    // Held until the file is sent (or the client leaves): one temp copy on disk at a time.
    let Some(permit) = req.app.backups.try_enter() else {
        let mut res = body::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "another backup is being taken; try again shortly"}),
        );
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("10"));
        return Ok(res);
    };
    let store = req.app.services.store().clone();
    let dir = crate::backup::temp_dir(&req.app.config.db);
    let name = crate::backup::file_name(time::OffsetDateTime::now_utc());
    let started = Instant::now();
    let taken =
        tokio::task::spawn_blocking(move || store.snapshot_temp(&dir, &AtomicBool::new(false)))
            .await
            .map_err(|e| ApiError::internal(&e))?;
    let (mut file, snapshot) = match taken {
        Ok(taken) => taken,
        Err(e) if e.is_disk_full() => {
            tracing::warn!(error = %e, "backup failed: the disk is full");
            return Ok(body::json(
                StatusCode::INSUFFICIENT_STORAGE,
                &serde_json::json!({
                    "error": "not enough disk space to take the backup (it needs about the size of the database)"
                }),
            ));
        }
        Err(e) => return Err(ApiError::internal(&format!("backup failed: {e}"))),
    };
    tracing::info!(
        %user, bytes = snapshot.bytes, rows = snapshot.rows, elapsed = ?started.elapsed(),
        "backup taken; sending it"
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let mut permit = Some(permit);
        let mut read = 0u64;
        loop {
            let mut chunk = vec![0; CHUNK];
            match file.read(&mut chunk) {
                Ok(0) => {
                    tracing::debug!(bytes = snapshot.bytes, "backup sent");
                    return;
                }
                Ok(n) => {
                    chunk.truncate(n);
                    read += n as u64;
                    if read >= snapshot.bytes {
                        // The next backup may start before the client has the last bytes: one
                        // that asks right after this download ends is never refused.
                        permit.take();
                    }
                    // The client went away: dropping the file frees its space.
                    if tx.blocking_send(Bytes::from(chunk)).is_err() {
                        tracing::warn!("the client left before the whole backup was sent");
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The body ends short of its Content-Length: the client sees a failed download.
                    tracing::error!(error = %e, "reading the backup file failed");
                    return;
                }
            }
        }
    });
    let mut res = Response::new(body::stream(rx));
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(snapshot.bytes));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

//! The accept loop: one hyper HTTP/1 connection per client, graceful shutdown, and the
//! background loops owned by the server's lifetime.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::http;

/// How long open connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle sessions are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets open
/// connections finish (bounded by a drain timeout) and ends the runner: running tasks get the
/// shutdown grace, then are stopped and recorded; waiting tasks stay queued.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let sweeper = tokio::spawn(sweep_sessions(Arc::clone(&app)));
    let backups = crate::backup::Scheduler::start(&app);
    let schedules = crate::scheduler::Scheduler::start(&app);
    let pruner = tokio::spawn(crate::retention::run(
        Arc::new(crate::retention::Retention::new(
            app.services.store().clone(),
            crate::retention::Policy::of(&app.config),
            app.config.clock.clone(),
        )),
        app.runner.subscribe(),
        Duration::from_secs(app.config.prune_interval_secs),
    ));
    // Connections watch `closing`; each holds a clone of `open`, so `drained` ends when the
    // last one has finished. (hyper-util's GracefulShutdown cannot watch upgradeable
    // connections, which /api/ws needs.)
    let (closing, closing_rx) = watch::channel(false);
    let (open, mut drained) = mpsc::channel::<()>(1);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(app.config.header_timeout_secs))
        // Go writes `Set-Cookie`, hyper `set-cookie`: clients that copy headers into a plain
        // dict (generated Python clients) look the names up as Go writes them.
        .title_case_headers(true)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let service = service_fn(move |req| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(http::handle(app, req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
                let (mut closing, open) = (closing_rx.clone(), open.clone());
                tokio::spawn(async move {
                    let _open = open;
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        () = async { let _ = closing.wait_for(|c| *c).await; } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    sweeper.abort();
    let _ = sweeper.await;
    if let Some(backups) = backups {
        backups.stop().await;
    }
    pruner.abort();
    let _ = pruner.await;
    schedules.stop().await;
    closing.send_replace(true);
    drop(open);
    let connections = async {
        tokio::select! {
            _ = drained.recv() => {}
            () = tokio::time::sleep(DRAIN_TIMEOUT) => {
                tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
            }
        }
    };
    // Requests in flight and running tasks finish side by side; waiting tasks stay queued.
    let grace = Duration::from_secs(app.config.shutdown_grace_secs);
    tokio::join!(connections, app.runner.shutdown(grace));
}

async fn sweep_sessions(app: Arc<App>) {
    // The first sweep waits a period: start-up reads no more than it must.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    loop {
        tick.tick().await;
        match app.services.sweep_sessions().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired idle sessions"),
            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
        }
    }
}

//! Prometheus metrics.

use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use crate::http::body;
use crate::http::handler::{HandlerResult, Req};

/// `GET|HEAD /api/metrics`: every counter in Prometheus text format (0.0.4), for an admin
/// or a scraper with the metrics token. No side effects (it reads the database file's size).
pub async fn scrape(req: Req) -> HandlerResult {
    let text = crate::metrics::scrape::render(&req.app);
    let mut res = body::status(StatusCode::OK);
    *res.body_mut() = body::full(text);
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(res)
}

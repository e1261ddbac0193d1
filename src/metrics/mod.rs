//! Prometheus metrics, written by hand: the exposition format is a few lines of text, and the
//! `prometheus` crate would bring protobuf along.
//!
//! This module holds the building blocks only ([`Histogram`], the request counters [`Http`],
//! the text writer [`Text`]) and depends on nothing else in Forge, so that every layer can keep
//! its own counters where the work happens (the store's writer, the runner, the login
//! service) without depending on a registry. [`scrape`] reads them all at scrape time.
//!
//! Hot paths only do relaxed atomic additions: no lock, no allocation, no map lookup. Request
//! counters are indexed by the route's position in the route table (a fixed set, known at
//! start), never by the raw path.

pub mod scrape;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A Prometheus histogram over fixed integer bounds (in a unit of the caller's choice, e.g.
/// microseconds), rendered in a base unit by dividing by `scale`.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending, in units (`+Inf` is implied).
    bounds: &'static [u64],
    /// Units per rendered unit (1 000 000 for microseconds rendered as seconds).
    scale: f64,
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, in units.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending), rendered divided by `scale`.
    #[must_use]
    pub fn new(bounds: &'static [u64], scale: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Self {
            bounds,
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` units: two relaxed atomic additions.
    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Latency buckets in microseconds: 0.5 ms to 10 s.
pub const LATENCY_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Microseconds in `d`, saturating.
#[must_use]
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The five status classes, `1xx` to `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Requests of one route: by status class, and their latency.
#[derive(Debug)]
struct RouteStats {
    by_class: [AtomicU64; 5],
    latency: Histogram,
}

/// HTTP request counters, one slot per route of the route table plus one for the web pages
/// and one for requests no route matched.
#[derive(Debug)]
pub struct Http {
    /// `(method, route template)` per slot, for rendering.
    labels: Vec<(String, &'static str)>,
    slots: Box<[RouteStats]>,
}

/// The route label of requests answered with the web page (any `GET` outside `/api`).
pub const PAGE_ROUTE: &str = "(page)";
/// The route label of requests no route matched (404, 405).
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

impl Http {
    /// Counters for `routes` (`(method, template)` in route-table order), the page and
    /// unmatched requests.
    #[must_use]
    pub fn new(routes: impl IntoIterator<Item = (String, &'static str)>) -> Self {
        let mut labels: Vec<_> = routes.into_iter().collect();
        labels.push(("GET".into(), PAGE_ROUTE));
        labels.push(("other".into(), UNMATCHED_ROUTE));
        let slots = labels
            .iter()
            .map(|_| RouteStats {
                by_class: Default::default(),
                latency: Histogram::new(LATENCY_US, 1e6),
            })
            .collect();
        Self { labels, slots }
    }

    /// The slot of the web page.
    #[must_use]
    pub fn page_slot(&self) -> usize {
        self.slots.len() - 2
    }

    /// The slot of unmatched requests.
    #[must_use]
    pub fn unmatched_slot(&self) -> usize {
        self.slots.len() - 1
    }

    /// The route label (template) of `slot`.
    #[must_use]
    pub fn route(&self, slot: usize) -> &'static str {
        self.labels.get(slot).map_or(UNMATCHED_ROUTE, |l| l.1)
    }

    /// Counts one request of route `slot` answered `status` after `elapsed`: three relaxed
    /// atomic additions. A slot out of range counts as unmatched.
    pub fn record(&self, slot: usize, status: u16, elapsed: Duration) {
        let counters = self
            .slots
            .get(slot)
            .unwrap_or_else(|| &self.slots[self.slots.len() - 1]);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        counters.by_class[class].fetch_add(1, Ordering::Relaxed);
        counters.latency.observe(micros(elapsed));
    }

    /// Writes `forge_http_requests_total` and `forge_http_request_duration_seconds` (routes
    /// never requested are left out).
    pub fn render(&self, out: &mut Text) {
        out.family(
            "forge_http_requests_total",
            "counter",
            "HTTP requests by route template, method and status class.",
        );
        for ((method, route), stats) in self.labels.iter().zip(&self.slots) {
            for (class, n) in CLASSES.iter().zip(&stats.by_class) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.sample(
                        "forge_http_requests_total",
                        &[("route", route), ("method", method), ("status", class)],
                        n,
                    );
                }
            }
        }
        out.family(
            "forge_http_request_duration_seconds",
            "histogram",
            "Time from the request's arrival to its response's headers, by route template.",
        );
        for ((method, route), stats) in self.labels.iter().zip(&self.slots) {
            if stats.latency.count() > 0 {
                out.histogram(
                    "forge_http_request_duration_seconds",
                    &[("route", route), ("method", method)],
                    &stats.latency,
                );
            }
        }
    }
}

/// A Prometheus text exposition (format 0.0.4) being written.
#[derive(Debug, Default)]
pub struct Text(String);

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Text {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.0, " {value}");
    }

    /// A whole family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The `_bucket` (cumulative, `le`), `_sum` and `_count` lines of `h`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |&b| number(b, h.scale));
            let _ = write!(self.0, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.0, " {cumulative}");
        }
        let _ = write!(self.0, "{name}_sum");
        self.labels(labels, None);
        let sum = h.sum.load(Ordering::Relaxed);
        let _ = writeln!(self.0, " {}", number(sum, h.scale));
        let _ = write!(self.0, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.0, " {cumulative}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.0.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{k}=\"{}\"", escape(v, true));
        }
        self.0.push('}');
    }

    /// The text written.
    #[must_use]
    pub fn finish(self) -> String {
        self.0
    }
}

/// `units / scale` as a plain decimal number.
#[allow(clippy::cast_precision_loss)] // counts and sums far below 2^52 in practice
fn number(units: u64, scale: f64) -> String {
    let v = units as f64 / scale;
    format!("{v}")
}

/// Escapes `\` and newlines (and `"` in label values), as the format asks.
fn escape(s: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '\n', '"']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_le_inclusive() {
        let h = Histogram::new(&[10, 100], 1.0);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let mut t = Text::default();
        t.histogram("x", &[("a", "b")], &h);
        assert_eq!(
            t.finish(),
            "x_bucket{a=\"b\",le=\"10\"} 2\nx_bucket{a=\"b\",le=\"100\"} 4\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 6\nx_sum{a=\"b\"} 5222\nx_count{a=\"b\"} 6\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut t = Text::default();
        t.family("m", "gauge", "a \\ b\nc \"q\"");
        t.sample("m", &[("l", "x\"y\\z\nw")], 1);
        assert_eq!(
            t.finish(),
            "# HELP m a \\\\ b\\nc \"q\"\n# TYPE m gauge\nm{l=\"x\\\"y\\\\z\\nw\"} 1\n"
        );
    }

    #[test]
    fn requests_by_slot_and_class() {
        let http = Http::new([("GET".to_owned(), "/api/ping")]);
        http.record(0, 200, Duration::from_micros(700));
        http.record(0, 404, Duration::from_millis(3));
        http.record(99, 405, Duration::ZERO);
        http.record(http.page_slot(), 200, Duration::ZERO);
        let mut t = Text::default();
        http.render(&mut t);
        let text = t.finish();
        for line in [
            "forge_http_requests_total{route=\"/api/ping\",method=\"GET\",status=\"2xx\"} 1",
            "forge_http_requests_total{route=\"/api/ping\",method=\"GET\",status=\"4xx\"} 1",
            "forge_http_requests_total{route=\"(unmatched)\",method=\"other\",status=\"4xx\"} 1",
            "forge_http_requests_total{route=\"(page)\",method=\"GET\",status=\"2xx\"} 1",
            "forge_http_request_duration_seconds_bucket{route=\"/api/ping\",method=\"GET\",le=\"0.001\"} 1",
            "forge_http_request_duration_seconds_count{route=\"/api/ping\",method=\"GET\"} 2",
            "forge_http_request_duration_seconds_sum{route=\"/api/ping\",method=\"GET\"} 0.0037",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}

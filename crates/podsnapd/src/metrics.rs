//! Prometheus metrics (`podsnap_` prefix, base units) and the `/metrics` HTTP endpoint.
//! The exposition format is prometheus-client's; nothing here writes it by hand.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

use crate::error::DaemonError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpOutcome {
    operation: String,
    outcome: String,
    error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpPhase {
    operation: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
    runsc_version: String,
}

fn seconds_histogram() -> Histogram {
    // 10 ms .. ~20 min
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    operations: Family<OpOutcome, Counter>,
    operation_duration: Family<Op, Histogram, fn() -> Histogram>,
    phase_duration: Family<OpPhase, Histogram, fn() -> Histogram>,
    bytes: Family<Direction, Counter>,
    objects_written: Counter,
    refusals: Family<Reason, Counter>,
    in_flight: Family<Op, Gauge>,
    store_duration: Family<Method, Histogram, fn() -> Histogram>,
    store_errors: Family<Method, Counter>,
    build_info: Family<Build, Gauge>,
    cache: CacheMetrics,
}

/// The page cache's metrics (`podsnap_cache_*`), fed by the store's cache events.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    hits: Counter,
    misses: Counter,
    corrupt: Counter,
    evictions: Counter,
    write_failures: Counter,
    bytes: Gauge,
}

impl podsnap_store::CacheObserver for CacheMetrics {
    fn event(&self, ev: podsnap_store::CacheEvent) {
        use podsnap_store::CacheEvent as E;
        match ev {
            E::Hits(n) => {
                self.hits.inc_by(n);
            }
            E::Misses(n) => {
                self.misses.inc_by(n);
            }
            E::Corrupt(n) => {
                self.corrupt.inc_by(n);
            }
            E::Evicted(n) => {
                self.evictions.inc_by(n);
            }
            E::WriteFailed => {
                self.write_failures.inc();
            }
            E::Bytes(n) => {
                self.bytes.set(n as i64);
            }
        }
    }
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and hands it back (the registry keeps a clone, which
/// shares its value).
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// A histogram family whose histograms `new` makes.
fn histograms<L>(new: fn() -> Histogram) -> Family<L, Histogram, fn() -> Histogram>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(new)
}

impl CacheMetrics {
    /// The page cache's metrics, registered.
    fn registered(r: &mut Registry) -> CacheMetrics {
        let c = CacheMetrics::default();
        let metrics: [(&str, &str, &Counter); 5] = [
            ("podsnap_cache_hits", "Pages a restore took from the node's page cache (verified) instead of the store", &c.hits),
            ("podsnap_cache_misses", "Pages a restore had to download because the page cache did not hold them", &c.misses),
            ("podsnap_cache_corrupt_pages", "Pages read from the page cache that failed verification (downloaded instead)", &c.corrupt),
            ("podsnap_cache_evictions", "Page cache segments evicted (least recently used) to stay under the size bound", &c.evictions),
            ("podsnap_cache_write_failures", "Writes to the page cache that failed (e.g. disk full); restores go on without them", &c.write_failures),
        ];
        for (name, help, counter) in metrics {
            r.register(name, help, counter.clone());
        }
        r.register(
            "podsnap_cache_bytes",
            "Bytes the node's page cache holds on disk",
            c.bytes.clone(),
        );
        c
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let r = &mut r;
        Metrics {
            operations: register(r, "podsnap_operations",
                "Checkpoint, restore and prepare-restore operations by outcome and error kind",
                Family::default()),
            operation_duration: register(r, "podsnap_operation_duration_seconds",
                "Duration of whole operations",
                histograms(seconds_histogram)),
            phase_duration: register(r, "podsnap_phase_duration_seconds",
                "Duration of operation phases (runsc_checkpoint, upload, retention, download, runsc_restore)",
                histograms(seconds_histogram)),
            bytes: register(r, "podsnap_bytes",
                "Image bytes read, uploaded, deduplicated and downloaded",
                Family::default()),
            objects_written: register(r, "podsnap_objects_written",
                "Objects written to the store (packs and indexes)",
                Counter::default()),
            refusals: register(r, "podsnap_compatibility_refusals",
                "Restores refused before download because the snapshot cannot run on this node",
                Family::default()),
            in_flight: register(r, "podsnap_jobs_in_flight",
                "Operations running now",
                Family::default()),
            store_duration: register(r, "podsnap_store_request_duration_seconds",
                "Object store request latency by method",
                histograms(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)))),
            store_errors: register(r, "podsnap_store_errors",
                "Object store requests that failed (after the client's retries)",
                Family::default()),
            build_info: register(r, "podsnap_build_info",
                "podsnapd's version and the runsc version it drives",
                Family::default()),
            cache: CacheMetrics::registered(r),
            registry: std::mem::take(r),
        }
    }

    pub fn build_info(&self, runsc_version: &str) {
        self.build_info
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION").into(),
                runsc_version: runsc_version.into(),
            })
            .set(1);
    }

    pub fn operation(&self, op: &str, took: Duration, err: Option<&DaemonError>) {
        let (outcome, kind) = match err {
            None => ("success", ""),
            Some(e) => ("error", e.kind()),
        };
        self.operations
            .get_or_create(&OpOutcome {
                operation: op.into(),
                outcome: outcome.into(),
                error_kind: kind.into(),
            })
            .inc();
        self.operation_duration
            .get_or_create(&Op {
                operation: op.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn phase(&self, op: &str, phase: &str, took: Duration) {
        self.phase_duration
            .get_or_create(&OpPhase {
                operation: op.into(),
                phase: phase.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn bytes(&self, direction: &str, n: u64) {
        self.bytes
            .get_or_create(&Direction {
                direction: direction.into(),
            })
            .inc_by(n);
    }

    pub fn objects_written(&self, n: u64) {
        self.objects_written.inc_by(n);
    }

    pub fn refusal(&self, reason: &str) {
        self.refusals
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn in_flight(&self, op: &str) -> InFlight {
        let g = self
            .in_flight
            .get_or_create(&Op {
                operation: op.into(),
            })
            .clone();
        g.inc();
        InFlight(g)
    }

    pub fn store_request(&self, method: &str, took: Duration, ok: bool) {
        let m = Method {
            method: method.into(),
        };
        self.store_duration
            .get_or_create(&m)
            .observe(took.as_secs_f64());
        if !ok {
            self.store_errors.get_or_create(&m).inc();
        }
    }

    /// The observer that turns the page cache's events into `podsnap_cache_*`.
    pub fn cache_observer(&self) -> Arc<dyn podsnap_store::CacheObserver> {
        Arc::new(self.cache.clone())
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        out
    }
}

/// Binds `addr` for [`serve`]: done before the daemon reports ready, so that a port in use
/// fails the start instead of leaving a daemon without metrics.
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-listen {addr}"))?;
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` (from [`bind`]) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(metrics.encode())))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    Ok::<_, std::convert::Infallible>(resp.expect("static response"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podsnap_testkit::metrics::{Exposition, Kind};

    #[test]
    fn exposition_carries_the_documented_names() {
        let m = Metrics::new();
        m.operation("checkpoint", Duration::from_millis(20), None);
        m.operation(
            "restore",
            Duration::from_millis(5),
            Some(&DaemonError::NotFound("gone".into())),
        );
        m.bytes("uploaded", 40);
        m.bytes("uploaded", 2);
        m.build_info("test");
        let e = Exposition::parse(&m.encode());
        let text = e.text();
        assert_eq!(e.kind("podsnap_operations"), Some(Kind::Counter), "{text}");
        assert_eq!(
            e.counter(
                "podsnap_operations",
                &[
                    ("operation", "checkpoint"),
                    ("outcome", "success"),
                    ("error_kind", "")
                ]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            e.counter(
                "podsnap_operations",
                &[
                    ("operation", "restore"),
                    ("outcome", "error"),
                    ("error_kind", "not_found")
                ]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(e.label_sets("podsnap_operations").len(), 2, "{text}");
        assert_eq!(
            e.counter("podsnap_bytes", &[("direction", "uploaded")]),
            Some(42.0),
            "{text}"
        );
        let h = e
            .histogram(
                "podsnap_operation_duration_seconds",
                &[("operation", "checkpoint")],
            )
            .unwrap_or_else(|| panic!("no checkpoint duration:\n{text}"));
        assert_eq!(h.count, Some(1), "{text}");
        assert!((h.sum.unwrap() - 0.02).abs() < 1e-9, "{text}");
        // 20 ms lands in the 0.02 bucket and every one above it, not in 0.01.
        for b in &h.buckets {
            let want = if b.upper_bound >= 0.02 { 1.0 } else { 0.0 };
            assert_eq!(b.count, want, "le={} in\n{text}", b.upper_bound);
        }
        assert_eq!(
            e.gauge(
                "podsnap_build_info",
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("runsc_version", "test")
                ]
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn in_flight_gauge_follows_the_guard() {
        let m = Metrics::new();
        let g = m.in_flight("restore");
        let e = Exposition::parse(&m.encode());
        assert_eq!(e.kind("podsnap_jobs_in_flight"), Some(Kind::Gauge));
        assert_eq!(
            e.gauge("podsnap_jobs_in_flight", &[("operation", "restore")]),
            Some(1.0),
            "{}",
            e.text()
        );
        drop(g);
        let e = Exposition::parse(&m.encode());
        assert_eq!(
            e.gauge("podsnap_jobs_in_flight", &[("operation", "restore")]),
            Some(0.0),
            "{}",
            e.text()
        );
    }
}

#[cfg(test)]
mod names {
    use super::*;
    use podsnap_testkit::metrics::{Exposition, Kind};

    /// Every metric the monitoring assets may reference (tests/k8s/metric_names.txt) is
    /// registered here with the same type before any operation ran, and has exactly the
    /// listed labels once used.
    #[test]
    fn the_daemon_exports_every_metric_the_dashboard_and_alerts_use() {
        let fresh = Exposition::parse(&Metrics::new().encode());
        let m = Metrics::new();
        m.operation("checkpoint", Duration::from_millis(1), None);
        m.phase("checkpoint", "upload", Duration::from_millis(1));
        m.bytes("read", 1);
        m.objects_written(1);
        m.refusal("cpu_features");
        let _running = m.in_flight("restore");
        m.store_request("get", Duration::from_millis(1), false);
        m.build_info("test");
        {
            use podsnap_store::CacheEvent as E;
            let o = m.cache_observer();
            for ev in [
                E::Hits(1),
                E::Misses(1),
                E::Corrupt(1),
                E::Evicted(1),
                E::WriteFailed,
                E::Bytes(1),
            ] {
                o.event(ev);
            }
        }
        let used = Exposition::parse(&m.encode());
        let list = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/k8s/metric_names.txt"),
        )
        .unwrap();
        let mut checked = 0;
        for line in list
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap();
            let kind = if line.ends_with("histogram") {
                Kind::Histogram
            } else if line.ends_with("gauge") || name.ends_with("_info") {
                Kind::Gauge
            } else {
                Kind::Counter
            };
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert_eq!(
                fresh.kind(family),
                Some(kind),
                "{family} in:\n{}",
                fresh.text()
            );
            let mut labels: Vec<String> = words
                .next()
                .filter(|w| !matches!(*w, "histogram" | "gauge"))
                .map(|w| w.split(',').map(String::from).collect())
                .unwrap_or_default();
            labels.sort_unstable();
            assert_eq!(used.label_names(family), labels, "{family}");
            checked += 1;
        }
        assert_eq!(checked, 16, "metric_names.txt changed: update this test");
    }
}

//! OTLP trace export from the podsnapd binary to an OTLP/gRPC collector running in this test
//! process: a controller's W3C `traceparent` continues into the exported spans, the batch is
//! flushed at graceful shutdown, and a collector that is down costs a warning, not a call.
//! No runsc or root needed (the calls used fail or answer before runsc is involved).

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_testkit::daemon::{Podsnapd, PodsnapdCmd};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// A sampled trace context, as a controller sends it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const MISSING_SNAPSHOT: &str = "20990101T000000Z-00000000";

/// Every export request it receives, in order.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC trace collector on a free 127.0.0.1 port.
struct Collector {
    sink: Sink,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        Collector::serve(None).await
    }

    /// The same collector behind TLS, with the server certificate of `make_pki(pki)`.
    async fn start_tls(pki: &Path) -> Collector {
        Collector::serve(Some(tonic::transport::Identity::from_pem(
            std::fs::read(pki.join("server.pem")).unwrap(),
            std::fs::read(pki.join("server.key")).unwrap(),
        )))
        .await
    }

    async fn serve(tls: Option<tonic::transport::Identity>) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        let mut server = tonic::transport::Server::builder();
        if let Some(identity) = tls {
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("TLS config");
        }
        let task = tokio::spawn(async move {
            server
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("the collector serves");
        });
        Collector { sink, port, task }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn https_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.sink.0.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A podsnapd with a clean OpenTelemetry environment.
struct Daemon(Podsnapd);

impl Daemon {
    /// Starts podsnapd with `args` added, a clean OpenTelemetry environment plus `env`.
    fn start(dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = PodsnapdCmd::new(env!("CARGO_BIN_EXE_podsnapd"), dir, name).store(&format!(
            "file://{}",
            dir.join(format!("{name}-store")).display()
        ));
        for a in args {
            cmd = cmd.arg(a);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || k == "PODSNAPD_OTLP_ENDPOINT" {
                cmd = cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd = cmd.env(*k, *v);
        }
        Daemon(cmd.spawn())
    }

    async fn client(&self) -> PodsnapClient<Channel> {
        podsnap_proto::client::podsnapd(&self.0.sock).await.unwrap()
    }

    fn log_text(&self) -> String {
        self.0.log_text()
    }

    /// SIGTERM, then waits up to `within` for the exit status.
    fn stop(&mut self, within: Duration) -> ExitStatus {
        match self.0.sigterm(within) {
            Some(st) => st,
            None => {
                let log = self.log_text();
                self.0.kill9();
                panic!("podsnapd did not exit within {within:?} of SIGTERM:\n{log}");
            }
        }
    }
}

fn with_traceparent<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    req
}

/// The calls every test makes: a PrepareRestore of a missing snapshot under the caller's
/// trace (a job span below the call span), and a ListJobs without any trace context.
async fn make_calls(c: &mut PodsnapClient<Channel>) {
    let err = c
        .prepare_restore(with_traceparent(pb::PrepareRestoreRequest {
            snapshot_id: MISSING_SNAPSHOT.into(),
            container_id: "otlp-c1".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // A streamed call whose job fails: the error arrives after the handler has returned.
    let mut events = c
        .restore(with_traceparent(pb::RestoreRequest {
            snapshot_id: MISSING_SNAPSHOT.into(),
            bundle: "/nonexistent/bundle".into(),
            container_id: "otlp-c2".into(),
            ..Default::default()
        }))
        .await
        .expect("the restore stream opens")
        .into_inner();
    let mut failed = None;
    while let Some(ev) = events.next().await {
        if let Err(e) = ev {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("the restore of a missing snapshot fails");
    assert_ne!(failed.code(), tonic::Code::Ok, "{failed:?}");
    c.list_jobs(pb::ListJobsRequest {})
        .await
        .expect("ListJobs answers");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn string_attrs(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

/// All exported spans, each with its resource's string attributes.
fn spans(reqs: &[ExportTraceServiceRequest]) -> Vec<(HashMap<String, String>, Span)> {
    let mut out = Vec::new();
    for req in reqs {
        for rs in &req.resource_spans {
            let resource = string_attrs(
                rs.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or_default(),
            );
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((resource.clone(), s.clone()));
                }
            }
        }
    }
    out
}

/// Checks the spans of [`make_calls`] as `node` exported them.
fn check_exported_calls(reqs: &[ExportTraceServiceRequest], node: &str) {
    let all = spans(reqs);
    let names: Vec<&str> = all.iter().map(|(_, s)| s.name.as_str()).collect();

    // The call span: a server span named after the method, child of the caller's span.
    let (resource, call) = all
        .iter()
        .find(|(_, s)| s.name == "podsnap.v1.Podsnap/PrepareRestore")
        .unwrap_or_else(|| panic!("no PrepareRestore call span among {names:?}"));
    assert_eq!(hex(&call.trace_id), TRACE_ID, "{call:?}");
    assert_eq!(hex(&call.parent_span_id), PARENT_SPAN_ID, "{call:?}");
    assert_eq!(call.kind, SpanKind::Server as i32, "{call:?}");
    let attrs = string_attrs(&call.attributes);
    assert_eq!(
        attrs.get("method").map(String::as_str),
        Some("/podsnap.v1.Podsnap/PrepareRestore"),
        "{attrs:?}"
    );
    assert_eq!(
        attrs.get("trace_id").map(String::as_str),
        Some(TRACE_ID),
        "{attrs:?}"
    );
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("podsnapd"),
        "{resource:?}"
    );
    assert_eq!(
        resource.get("host.name").map(String::as_str),
        Some(node),
        "{resource:?}"
    );

    // The job span below it, in the same trace, with the snapshot and container fields.
    let (_, job) = all
        .iter()
        .find(|(_, s)| s.name == "prepare-restore")
        .unwrap_or_else(|| panic!("no prepare-restore span among {names:?}"));
    assert_eq!(hex(&job.trace_id), TRACE_ID, "{job:?}");
    assert_eq!(job.parent_span_id, call.span_id, "{job:?}");
    let attrs = string_attrs(&job.attributes);
    assert_eq!(
        attrs.get("snapshot").map(String::as_str),
        Some(MISSING_SNAPSHOT),
        "{attrs:?}"
    );
    assert_eq!(
        attrs.get("container").map(String::as_str),
        Some("otlp-c1"),
        "{attrs:?}"
    );

    // Failed calls carry an error status with the gRPC code and message; a call that
    // answered does not.
    let error = opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32;
    let status = call.status.clone().unwrap_or_default();
    assert_eq!(status.code, error, "{call:?}");
    assert!(status.message.starts_with("NotFound: "), "{status:?}");
    assert!(status.message.contains(MISSING_SNAPSHOT), "{status:?}");
    let (_, restore) = all
        .iter()
        .find(|(_, s)| s.name == "podsnap.v1.Podsnap/Restore")
        .unwrap_or_else(|| panic!("no Restore call span among {names:?}"));
    assert_eq!(hex(&restore.trace_id), TRACE_ID, "{restore:?}");
    let status = restore.status.clone().unwrap_or_default();
    assert_eq!(status.code, error, "{restore:?}");
    assert!(!status.message.is_empty(), "{status:?}");

    // A call without a traceparent starts a trace of its own.
    let (_, list) = all
        .iter()
        .find(|(_, s)| s.name == "podsnap.v1.Podsnap/ListJobs")
        .unwrap_or_else(|| panic!("no ListJobs call span among {names:?}"));
    assert!(list.parent_span_id.is_empty(), "{list:?}");
    assert_ne!(
        list.status.clone().unwrap_or_default().code,
        error,
        "{list:?}"
    );
    assert_ne!(hex(&list.trace_id), TRACE_ID, "{list:?}");
    assert_eq!(list.trace_id.len(), 16, "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_are_flushed_at_shutdown() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A batch delay far longer than the test: only the flush at shutdown delivers the spans.
    let mut d = Daemon::start(
        dir.path(),
        "otlp-node",
        &[format!("--otlp-endpoint={}", collector.endpoint())],
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let mut c = d.client().await;
    make_calls(&mut c).await;
    drop(c);
    assert!(
        collector.requests().is_empty(),
        "spans were exported before the batch was due"
    );
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    check_exported_calls(&collector.requests(), "otlp-node");
    assert!(
        d.log_text()
            .contains("exporting trace spans over OTLP/gRPC"),
        "{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otel_endpoint_variable_turns_export_on() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = collector.endpoint();
    let mut d = Daemon::start(
        dir.path(),
        "otel-env-node",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    let mut c = d.client().await;
    make_calls(&mut c).await;
    drop(c);
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    check_exported_calls(&collector.requests(), "otel-env-node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_a_warning_not_a_call() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        dir.path(),
        "otlp-down",
        &[format!("--otlp-endpoint=http://127.0.0.1:{port}")],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let mut c = d.client().await;
    // The calls answer as they do without export, again and again while exports fail.
    for _ in 0..3 {
        make_calls(&mut c).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let warning = loop {
        let log = d.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("OTLP trace export failed")) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no export failure was reported:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(warning.contains("WARN"), "{warning}");
    make_calls(&mut c).await;
    drop(c);
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    let log = d.log_text();
    assert_eq!(
        log.matches("OTLP trace export failed").count(),
        1,
        "one warning per outage:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "export failures are logged at warn at most:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_is_verified_against_the_configured_ca() {
    if !podsnap_testkit::pki::require_openssl() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    podsnap_testkit::pki::make_pki(pki.path());
    let collector = Collector::start_tls(pki.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("--otlp-endpoint={}", collector.https_endpoint());

    // Without the CA, the collector's certificate is not trusted: nothing is sent, and the
    // calls and the shutdown are unaffected.
    let mut d = Daemon::start(
        dir.path(),
        "otlp-untrusted",
        std::slice::from_ref(&endpoint),
        &[],
    );
    make_calls(&mut d.client().await).await;
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    assert!(
        collector.requests().is_empty(),
        "spans reached a collector whose certificate is not trusted"
    );

    // With it (the standard OTLP variable), the spans arrive over TLS.
    let ca = pki.path().join("ca.pem").display().to_string();
    let mut d = Daemon::start(
        dir.path(),
        "otlp-tls",
        &[endpoint],
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str())],
    );
    make_calls(&mut d.client().await).await;
    let status = d.stop(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    check_exported_calls(&collector.requests(), "otlp-tls");
}

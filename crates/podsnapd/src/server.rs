//! Listeners: the main gRPC endpoint (Unix socket with configurable mode and group, or TCP
//! with mandatory client-certificate TLS), the plaintext health-only listener, and metrics.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use podsnap_proto::v1::podsnap_server::PodsnapServer;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::info;

use crate::config::{Config, Listen};
use crate::engine::Engine;
use crate::service::Service;

/// Binds the Unix socket: refuses to steal a live daemon's socket, removes a stale one,
/// applies the mode and group before anyone can connect.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running daemon", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Created with no access for others, then opened up to exactly `mode`.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    let gid = match group {
        None => Some(nix::unistd::Gid::from_raw(0)),
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => {
                nix::unistd::Group::from_name(g)
                    .context("looking up --socket-group")?
                    .with_context(|| format!("--socket-group {g:?}: no such group"))?
                    .gid
            }
        }),
    };
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), gid)
            .with_context(|| format!("chown {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}

/// Serves until SIGTERM/SIGINT, then waits (bounded) for in-flight jobs.
pub async fn serve(cfg: Config, engine: Arc<Engine>) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PodsnapServer<Service>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(podsnap_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    if let Some(addr) = cfg.health_listen.clone() {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("--health-listen {addr:?} is not HOST:PORT"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --health-listen {addr}"))?;
        info!(%addr, "serving grpc.health.v1 (plaintext, health only)");
        let router = Server::builder().add_service(health_service.clone());
        spawn_listener(router, listener, std::future::pending(), "health listener");
    }
    if let Some(addr) = cfg.metrics_listen.as_deref() {
        let listener = crate::metrics::bind(addr).await?;
        tokio::spawn(crate::metrics::serve(listener, engine.metrics().clone()));
    }

    let service = PodsnapServer::new(Service::new(engine.clone()))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(64 << 20);
    let exporting = cfg.otlp_endpoint.is_some();
    let mut builder = Server::builder().trace_fn(move |req| grpc_span(req, exporting));
    // One signal stops every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router_shutdown = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    if let Some(addr) = cfg.listen_tls {
        // The controller's listener: the same services, mutual TLS, stopped with the socket.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --listen-tls {addr}"))?;
        let mut tls_server = builder
            .clone()
            .tls_config(server_tls(&cfg)?)
            .context("configuring TLS for --listen-tls")?;
        let router = tls_server
            .add_service(service.clone())
            .add_service(health_service.clone());
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.changed().await;
        };
        info!(%addr, "podsnapd listening (TLS, client certificates required)");
        spawn_listener(router, listener, stopped, "--listen-tls listener");
    }
    match &cfg.listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path, cfg.socket_mode, cfg.socket_group.as_deref())?;
            info!(socket = %path.display(), mode = format!("{:o}", cfg.socket_mode), store = %engine.store().display_url(), "podsnapd listening");
            builder
                .add_service(service)
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), router_shutdown)
                .await
                .context("serving gRPC")?;
            let _ = std::fs::remove_file(path);
        }
        Listen::Tcp(addr) => {
            let tls_config = server_tls(&cfg)?;
            let addr: std::net::SocketAddr = addr.parse().context("--listen")?;
            info!(%addr, "podsnapd listening (TLS, client certificates required)");
            builder
                .tls_config(tls_config)
                .context("configuring TLS")?
                .add_service(service)
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_shutdown(addr, router_shutdown)
                .await
                .context("serving gRPC")?;
        }
    }
    wait_for_jobs(&engine).await;
    Ok(())
}

/// Serves `router` on `listener` in the background until `shutdown` resolves; a failure is
/// logged as `what` failing.
fn spawn_listener(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    what: &'static str,
) {
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
        {
            tracing::error!(error = %e, "{what} failed");
        }
    });
}

/// The TLS of a TCP listener: our certificate, and client certificates required.
fn server_tls(cfg: &Config) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = cfg.tls.as_ref().context("TCP listen without TLS")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
        .client_ca_root(Certificate::from_pem(read(&tls.client_ca)?)))
}

/// The span of one gRPC call. W3C trace context from the caller (a controller's trace) is
/// continued: every span and log line of this call carries its trace id, and (when
/// `exporting`) exported spans are its children.
fn grpc_span(req: &tonic::codegen::http::Request<()>, exporting: bool) -> tracing::Span {
    let method = req.uri().path();
    let span = match req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        Some((trace_id, parent_id)) => tracing::info_span!(
            "grpc",
            method = %method,
            trace_id = %trace_id,
            parent_span_id = %parent_id,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty
        ),
        None => tracing::info_span!(
            "grpc",
            method = %method,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty
        ),
    };
    if exporting {
        crate::telemetry::continue_trace(&span, method, req.headers());
    }
    span
}

/// Lets running jobs finish (60 s at most); what does not finish in time is resumable from
/// the journal.
async fn wait_for_jobs(engine: &Engine) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while engine.jobs().in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if engine.jobs().in_flight() > 0 {
        tracing::warn!(
            jobs = engine.jobs().in_flight(),
            "exiting with jobs in flight; they resume at the next start"
        );
    }
}

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`);
/// `None` for anything malformed or all-zero ids.
pub fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [ver, trace, parent, flags, ..]
            if hex(ver, 2)
                && *ver != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && nonzero(trace)
                && nonzero(parent) =>
        {
            Some((trace.to_ascii_lowercase(), parent.to_ascii_lowercase()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_traceparent;

    #[test]
    fn traceparent_is_parsed_and_malformed_ones_are_ignored() {
        let (t, p) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p, "00f067aa0ba902b7");
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("00-4bf92f3577b34da6-00f067aa0ba902b7-01").is_none());
        assert!(parse_traceparent("garbage").is_none());
    }
}

//! podsnapd's configuration: command-line flags, environment (`PODSNAPD_*`) and an optional
//! TOML file (`--config`), in that order of precedence, over built-in defaults.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

/// Node-level checkpoint/restore daemon for gVisor (runsc) sandboxes.
///
/// podsnapd checkpoints sandboxes into an object store (chunked, compressed, deduplicated)
/// and restores them here or on any node that shares the store. Controllers and podsnapctl
/// talk to it over gRPC on a Unix socket.
///
/// Example: podsnapd --listen unix:///run/podsnap/podsnapd.sock --store s3://bucket/snaps
/// --runsc-root /run/runsc --runsc-flag=--network=none
#[derive(Parser, Debug, Default)]
#[command(name = "podsnapd", version, about, long_about)]
pub struct Args {
    /// TOML config file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "PODSNAPD_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address: unix:///PATH, or HOST:PORT for TCP (TLS with client certs required).
    #[arg(long, env = "PODSNAPD_LISTEN")]
    pub listen: Option<String>,
    /// A second gRPC listener, HOST:PORT over TCP with mutual TLS (--tls-cert, --tls-key,
    /// --tls-client-ca), beside a Unix-socket --listen: the node's wrapper uses the socket and
    /// a cluster controller this one (podsnap-controller dials NODE_IP:PORT).
    #[arg(long, env = "PODSNAPD_LISTEN_TLS")]
    pub listen_tls: Option<String>,
    /// Object store URL: file:///dir, s3://bucket/prefix, gs://bucket/prefix,
    /// az://container/prefix, memory://. Default: a directory store under the state dir.
    #[arg(long, env = "PODSNAPD_STORE")]
    pub store: Option<String>,
    /// runsc --root of the sandboxes this daemon checkpoints and restores by runsc id.
    #[arg(long, env = "PODSNAPD_RUNSC_ROOT")]
    pub runsc_root: Option<PathBuf>,
    /// State directory: the job journal (jobs/), sandbox logs (logs/), prepared restores
    /// (prepared/) and, by default, the work dir (work/).
    #[arg(long, env = "PODSNAPD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The runsc binary to drive.
    #[arg(long, env = "PODSNAPD_RUNSC")]
    pub runsc: Option<PathBuf>,
    /// Extra global runsc flag, as the node's sandboxes use them (repeatable),
    /// e.g. --runsc-flag=--network=none.
    #[arg(long = "runsc-flag", allow_hyphen_values = true)]
    pub runsc_flags: Vec<String>,
    /// containerd's gRPC socket (connected on first use, with retries).
    #[arg(long, env = "PODSNAPD_CONTAINERD_SOCKET")]
    pub containerd_socket: Option<PathBuf>,
    /// Where checkpoint images are written before upload and after download.
    #[arg(long, env = "PODSNAPD_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
    #[arg(long, env = "PODSNAPD_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Plaintext listener serving only grpc.health.v1 (for kubelet probes).
    #[arg(long, env = "PODSNAPD_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// Server certificate (PEM) for a TCP --listen.
    #[arg(long, env = "PODSNAPD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM) for a TCP --listen.
    #[arg(long, env = "PODSNAPD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to, for a TCP --listen.
    #[arg(long, env = "PODSNAPD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Unix socket mode, octal.
    #[arg(long, env = "PODSNAPD_SOCKET_MODE")]
    pub socket_mode: Option<String>,
    /// Unix socket group (name or gid). Default: root.
    #[arg(long, env = "PODSNAPD_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// This node's name, recorded in snapshots. Default: the hostname.
    #[arg(long, env = "PODSNAPD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Log format: text or json. Level from RUST_LOG (default info).
    #[arg(long, env = "PODSNAPD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Uploads in flight per checkpoint (each a ~4 MiB pack object); 0 = the store's
    /// default, 4. Raise it for a high-latency store. Downloads are not affected.
    #[arg(long, env = "PODSNAPD_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// When to read and hash a checkpoint's pages while runsc is still writing them (on runsc
    /// releases known to write them front to back: 20240729): `auto` (the default) when the
    /// sandbox stops after its checkpoint (`--stop`), not when it keeps running, whose freeze
    /// the overlap lengthens (docs/benchmarks.md: about 5% at the median, more often in the
    /// slow mode); `always` (faster incremental `--resume` checkpoints); `never` (upload
    /// after runsc, as on every other release).
    #[arg(long, env = "PODSNAPD_UPLOAD_WHILE_CHECKPOINTING")]
    pub upload_while_checkpointing: Option<UploadWhileCheckpointing>,
    /// How a standalone restore reads its image: `auto` (the default) serves it lazily
    /// through a FUSE mount (`runsc restore --background` starts once the small files are
    /// verified; pages are fetched and verified as runsc reads them) where the runsc release
    /// and the node allow it, and pulls it whole first elsewhere; `always` fails a restore
    /// that cannot be lazy; `never` always pulls first.
    #[arg(long, env = "PODSNAPD_LAZY_RESTORE")]
    pub lazy_restore: Option<LazyRestore>,
    /// Timeout for one runsc checkpoint or restore, e.g. 10m.
    #[arg(long, env = "PODSNAPD_RUNSC_TIMEOUT")]
    pub runsc_timeout: Option<String>,
    /// Directory of group keys for encryption at rest (e.g. a mounted Kubernetes Secret):
    /// a file `default` and/or `group.<encoded group>` files (`podsnapctl keygen` writes
    /// them), each 32 bytes raw or 64 hex digits. Snapshots of a group with a key are sealed
    /// with AES-256-GCM; restoring them needs the same key. Read at start.
    #[arg(long, env = "PODSNAPD_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
    /// Uploads and downloads (whole snapshots) that run at once; more jobs wait for a slot
    /// (phase message "waiting for a transfer slot"). Each takes up to ~100 MiB of memory
    /// and a few dozen file descriptors. Default 2.
    #[arg(long, env = "PODSNAPD_MAX_TRANSFERS")]
    pub max_transfers: Option<usize>,
    /// Export trace spans to this OpenTelemetry collector (OTLP/gRPC), e.g.
    /// http://127.0.0.1:4317. Off by default.
    ///
    /// Every gRPC call and every job is a span; a caller's W3C traceparent makes them part of
    /// the caller's trace. Spans are batched, sent in the background and flushed at shutdown;
    /// an unreachable collector is logged as a warning and never fails a call. https:// checks
    /// the collector's certificate against the system's CA roots, plus the PEM CA file named
    /// by OTEL_EXPORTER_OTLP_CERTIFICATE (or ..._TRACES_CERTIFICATE) if set. When neither this flag,
    /// PODSNAPD_OTLP_ENDPOINT nor the config file sets it, the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT is used if set; an empty value turns export off. Without an
    /// endpoint no OpenTelemetry code runs at all.
    #[arg(long, env = "PODSNAPD_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTEL_EXPORTER_OTLP_ENDPOINT, the lowest-precedence source of `otlp_endpoint`.
    #[arg(skip = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The node-local page cache: verified pages kept by digest so that a restore downloads
    /// only what this node has not seen (see docs/cache.md). Default: <state-dir>/cache.
    #[arg(long, env = "PODSNAPD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The page cache's size bound, in bytes or with a unit (512MiB, 10GiB, 1T); least
    /// recently used pages go beyond it. 0 turns the cache off. Default 10GiB.
    #[arg(long, env = "PODSNAPD_CACHE_MAX_BYTES", value_name = "SIZE")]
    pub cache_max_bytes: Option<String>,
}

/// The config file: the same keys as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub listen_tls: Option<String>,
    pub store: Option<String>,
    pub runsc_root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub runsc: Option<PathBuf>,
    #[serde(default)]
    pub runsc_flags: Vec<String>,
    pub containerd_socket: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub health_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub node_name: Option<String>,
    pub log_format: Option<String>,
    pub concurrency: Option<usize>,
    pub upload_while_checkpointing: Option<UploadWhileCheckpointing>,
    pub lazy_restore: Option<LazyRestore>,
    pub runsc_timeout: Option<String>,
    pub key_dir: Option<PathBuf>,
    pub max_transfers: Option<usize>,
    pub otlp_endpoint: Option<String>,
    pub cache_dir: Option<PathBuf>,
    /// A number of bytes, or a string with a unit ("10GiB").
    pub cache_max_bytes: Option<toml::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Listen,
    /// The extra mutual-TLS TCP listener (`--listen-tls`).
    pub listen_tls: Option<std::net::SocketAddr>,
    pub store: String,
    pub runsc_root: PathBuf,
    pub state_dir: PathBuf,
    pub runsc: PathBuf,
    pub runsc_flags: Vec<String>,
    pub containerd_socket: PathBuf,
    pub work_dir: PathBuf,
    pub metrics_listen: Option<String>,
    pub health_listen: Option<String>,
    pub tls: Option<TlsFiles>,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    pub node_name: String,
    pub log_format: LogFormat,
    pub concurrency: usize,
    /// When to follow runsc's page file with the upload, where the release allows it.
    pub upload_while_checkpointing: UploadWhileCheckpointing,
    /// Whether standalone restores serve their image lazily (`--lazy-restore`).
    pub lazy_restore: LazyRestore,
    pub runsc_timeout: std::time::Duration,
    pub key_dir: Option<PathBuf>,
    pub max_transfers: usize,
    /// OTLP/gRPC collector for trace export; `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// The node-local page cache's directory (`--cache-dir`, default `<state-dir>/cache`).
    pub cache_dir: PathBuf,
    /// The page cache's size bound in bytes; 0 turns the cache off.
    pub cache_max_bytes: u64,
}

/// When a checkpoint's upload runs while runsc writes the image (`--upload-while-checkpointing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UploadWhileCheckpointing {
    /// When the sandbox stops after its checkpoint; after runsc when it keeps running.
    #[default]
    Auto,
    /// Whenever the runsc release allows it.
    Always,
    /// Never: the upload starts once runsc has finished.
    Never,
}

impl UploadWhileCheckpointing {
    /// Whether to upload while runsc writes, for a checkpoint that leaves the sandbox
    /// running (`keeps_running`) or not.
    pub fn applies(self, keeps_running: bool) -> bool {
        match self {
            UploadWhileCheckpointing::Auto => !keeps_running,
            UploadWhileCheckpointing::Always => true,
            UploadWhileCheckpointing::Never => false,
        }
    }
}

/// Whether a standalone restore serves its image lazily (`--lazy-restore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LazyRestore {
    /// Where the runsc release and the node allow it; a full pull first elsewhere.
    #[default]
    Auto,
    /// Always; a restore that cannot be lazy fails, saying why.
    Always,
    /// Never: the image is pulled and verified whole before runsc restores.
    Never,
}

/// The page cache's default bound: 10 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 10 << 30;

pub const DEFAULT_SOCKET: &str = "/run/podsnap/podsnapd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podsnap";

impl Config {
    pub fn load(args: Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    pub fn merge(args: Args, file: FileConfig) -> anyhow::Result<Config> {
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let listen = parse_listen(
            &args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}")),
        )?;
        let store = match args.store.or(file.store) {
            Some(s) => s,
            None => format!("file://{}", state_dir.join("store").display()),
        };
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            _ => bail!("--tls-cert, --tls-key and --tls-client-ca go together"),
        };
        let listen_tls = match args.listen_tls.or(file.listen_tls) {
            Some(addr) => {
                let parsed: std::net::SocketAddr = addr
                    .parse()
                    .with_context(|| format!("--listen-tls {addr:?}: expected HOST:PORT"))?;
                if tls.is_none() {
                    bail!("--listen-tls requires --tls-cert, --tls-key and --tls-client-ca (client certificates are mandatory)");
                }
                if matches!(listen, Listen::Tcp(_)) {
                    bail!(
                        "--listen-tls goes beside a Unix-socket --listen; --listen is already TCP"
                    );
                }
                Some(parsed)
            }
            None => None,
        };
        if matches!(listen, Listen::Tcp(_)) && tls.is_none() {
            bail!("a TCP --listen requires --tls-cert, --tls-key and --tls-client-ca (client certificates are mandatory)");
        }
        let mode_text = args
            .socket_mode
            .or(file.socket_mode)
            .unwrap_or_else(|| "0660".into());
        let socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| format!("--socket-mode {mode_text:?} is not an octal mode"))?;
        let log_format = match args
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("--log-format {other:?}: expected text or json"),
        };
        let runsc_timeout = match args.runsc_timeout.or(file.runsc_timeout) {
            Some(t) => parse_duration(&t).with_context(|| format!("--runsc-timeout {t:?}"))?,
            None => std::time::Duration::from_secs(600),
        };
        let otlp_endpoint = match args
            .otlp_endpoint
            .or(file.otlp_endpoint)
            .or(args.otel_exporter_otlp_endpoint)
            .filter(|e| !e.trim().is_empty())
        {
            Some(e) => Some(parse_otlp_endpoint(&e)?),
            None => None,
        };
        let mut runsc_flags = file.runsc_flags;
        runsc_flags.extend(args.runsc_flags);
        for f in &runsc_flags {
            if !f.starts_with("--") && !f.starts_with('-') {
                bail!("--runsc-flag {f:?}: expected a flag such as --network=none");
            }
        }
        let node_name = args
            .node_name
            .or(file.node_name)
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
            })
            .unwrap_or_else(|| "localhost".into());
        Ok(Config {
            work_dir: args
                .work_dir
                .or(file.work_dir)
                .unwrap_or_else(|| state_dir.join("work")),
            listen,
            listen_tls,
            store,
            runsc_root: args
                .runsc_root
                .or(file.runsc_root)
                .unwrap_or_else(|| PathBuf::from("/var/run/runsc")),
            runsc: args
                .runsc
                .or(file.runsc)
                .unwrap_or_else(|| PathBuf::from("runsc")),
            runsc_flags,
            containerd_socket: args
                .containerd_socket
                .or(file.containerd_socket)
                .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock")),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            health_listen: args.health_listen.or(file.health_listen),
            tls,
            socket_mode,
            socket_group: args.socket_group.or(file.socket_group),
            node_name,
            log_format,
            concurrency: args.concurrency.or(file.concurrency).unwrap_or(0),
            upload_while_checkpointing: args
                .upload_while_checkpointing
                .or(file.upload_while_checkpointing)
                .unwrap_or_default(),
            lazy_restore: args.lazy_restore.or(file.lazy_restore).unwrap_or_default(),
            runsc_timeout,
            key_dir: args.key_dir.or(file.key_dir),
            max_transfers: match args.max_transfers.or(file.max_transfers).unwrap_or(2) {
                0 => anyhow::bail!("max_transfers must be at least 1"),
                n => n,
            },
            otlp_endpoint,
            cache_dir: args
                .cache_dir
                .or(file.cache_dir)
                .unwrap_or_else(|| state_dir.join("cache")),
            cache_max_bytes: match (args.cache_max_bytes, file.cache_max_bytes) {
                (Some(s), _) => {
                    parse_size(&s).with_context(|| format!("--cache-max-bytes {s:?}"))?
                }
                (None, Some(toml::Value::Integer(n))) if n >= 0 => n as u64,
                (None, Some(toml::Value::String(s))) => {
                    parse_size(&s).with_context(|| format!("cache_max_bytes {s:?}"))?
                }
                (None, Some(v)) => bail!("cache_max_bytes {v}: expected a size such as 10GiB"),
                (None, None) => DEFAULT_CACHE_MAX_BYTES,
            },
            state_dir,
        })
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub fn prepared_dir(&self) -> PathBuf {
        self.state_dir.join("prepared")
    }
}

pub fn parse_listen(s: &str) -> anyhow::Result<Listen> {
    if let Some(path) = s.strip_prefix("unix://") {
        if path.is_empty() || !Path::new(path).is_absolute() {
            bail!("listen address {s:?}: expected unix:///absolute/path");
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if s.starts_with('/') {
        return Ok(Listen::Unix(PathBuf::from(s)));
    }
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(Listen::Tcp(s.to_string()));
    }
    bail!("listen address {s:?}: expected unix:///PATH or HOST:PORT")
}

/// Checks an OTLP/gRPC collector address: `http://HOST:PORT` or `https://HOST:PORT`.
pub fn parse_otlp_endpoint(s: &str) -> anyhow::Result<String> {
    let s = s.trim();
    let uri: tonic::transport::Uri = s
        .parse()
        .with_context(|| format!("--otlp-endpoint {s:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(a)) if !a.host().is_empty() => Ok(s.to_string()),
        _ => bail!("--otlp-endpoint {s:?}: expected http://HOST:PORT or https://HOST:PORT"),
    }
}

/// Parses a size: bytes, or a number with K/M/G/T (powers of 1024; `KiB`, `KB`, `k` alike).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let i = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(i);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => bail!("{s:?}: unknown unit {other:?} (K, M, G, T)"),
    };
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("{s:?} is too large"))
}

/// Parses `90s`, `10m`, `1h`, `250ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{s:?}: unknown unit {unit:?} (ms, s, m, h)"),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let args = Args {
            store: Some("memory://".into()),
            state_dir: Some("/tmp/s".into()),
            ..Default::default()
        };
        let file = FileConfig {
            store: Some("file:///ignored".into()),
            runsc_root: Some("/run/r".into()),
            runsc_flags: vec!["--network=none".into()],
            ..Default::default()
        };
        let c = Config::merge(args, file).unwrap();
        assert_eq!(c.store, "memory://");
        assert_eq!(c.runsc_root, PathBuf::from("/run/r"));
        assert_eq!(c.work_dir, PathBuf::from("/tmp/s/work"));
        assert_eq!(c.listen, Listen::Unix(DEFAULT_SOCKET.into()));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.runsc_flags, vec!["--network=none".to_string()]);
    }

    #[test]
    fn listen_tls_goes_beside_a_socket_and_needs_client_certificates() {
        let tls = || Args {
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            tls_client_ca: Some("/ca.pem".into()),
            listen_tls: Some("127.0.0.1:9443".into()),
            ..Default::default()
        };
        let c = Config::merge(tls(), FileConfig::default()).unwrap();
        assert_eq!(c.listen, Listen::Unix(DEFAULT_SOCKET.into()));
        assert_eq!(c.listen_tls, Some("127.0.0.1:9443".parse().unwrap()));
        let e = Config::merge(
            Args {
                listen_tls: Some("127.0.0.1:9443".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--tls-client-ca"), "{e:#}");
        let e = Config::merge(
            Args {
                listen: Some("127.0.0.1:7000".into()),
                ..tls()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("already TCP"), "{e:#}");
        let e = Config::merge(
            Args {
                listen_tls: Some("nonsense".into()),
                ..tls()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("HOST:PORT"), "{e:#}");
    }

    #[test]
    fn default_store_is_a_directory_under_the_state_dir() {
        let args = Args {
            state_dir: Some("/tmp/st".into()),
            ..Default::default()
        };
        let c = Config::merge(args, FileConfig::default()).unwrap();
        assert_eq!(c.store, "file:///tmp/st/store");
    }

    #[test]
    fn uploading_while_runsc_writes_defaults_to_stopping_checkpoints_only() {
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.upload_while_checkpointing, UploadWhileCheckpointing::Auto);
        assert!(c.upload_while_checkpointing.applies(false));
        assert!(!c.upload_while_checkpointing.applies(true));
        let file =
            || -> FileConfig { toml::from_str("upload_while_checkpointing = \"never\"").unwrap() };
        let c = Config::merge(Args::default(), file()).unwrap();
        assert!(!c.upload_while_checkpointing.applies(false));
        let args = Args {
            upload_while_checkpointing: Some(UploadWhileCheckpointing::Always),
            ..Default::default()
        };
        let c = Config::merge(args, file()).unwrap();
        assert!(c.upload_while_checkpointing.applies(true));
        assert!(toml::from_str::<FileConfig>("upload_while_checkpointing = true").is_err());
    }

    #[test]
    fn tcp_listen_without_tls_is_refused() {
        let args = Args {
            listen: Some("127.0.0.1:7000".into()),
            ..Default::default()
        };
        let err = Config::merge(args, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("requires --tls-cert"), "{err}");
    }

    #[test]
    fn bad_socket_mode_and_listen_are_refused() {
        let args = Args {
            socket_mode: Some("999".into()),
            ..Default::default()
        };
        assert!(Config::merge(args, FileConfig::default()).is_err());
        assert!(parse_listen("unix://relative").is_err());
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn otlp_endpoint_is_off_by_default_and_comes_from_flag_file_or_otel_env() {
        assert_eq!(
            Config::merge(Args::default(), FileConfig::default())
                .unwrap()
                .otlp_endpoint,
            None
        );
        let file = || FileConfig {
            otlp_endpoint: Some("http://file:4317".into()),
            ..Default::default()
        };
        let otel = || Some("http://otel-env:4317".to_string());
        let flag = Args {
            otlp_endpoint: Some("http://flag:4317".into()),
            otel_exporter_otlp_endpoint: otel(),
            ..Default::default()
        };
        assert_eq!(
            Config::merge(flag, file())
                .unwrap()
                .otlp_endpoint
                .as_deref(),
            Some("http://flag:4317")
        );
        let env_only = || Args {
            otel_exporter_otlp_endpoint: otel(),
            ..Default::default()
        };
        assert_eq!(
            Config::merge(env_only(), file())
                .unwrap()
                .otlp_endpoint
                .as_deref(),
            Some("http://file:4317")
        );
        assert_eq!(
            Config::merge(env_only(), FileConfig::default())
                .unwrap()
                .otlp_endpoint
                .as_deref(),
            Some("http://otel-env:4317")
        );
        let file: FileConfig =
            toml::from_str("otlp_endpoint = \"https://c.example:4317\"").unwrap();
        assert_eq!(
            Config::merge(Args::default(), file)
                .unwrap()
                .otlp_endpoint
                .as_deref(),
            Some("https://c.example:4317")
        );
    }

    #[test]
    fn otlp_endpoints_without_a_scheme_or_host_are_refused() {
        for bad in ["127.0.0.1:4317", "grpc://c:4317", "http://", "not a url"] {
            let args = Args {
                otlp_endpoint: Some(bad.into()),
                ..Default::default()
            };
            let err = Config::merge(args, FileConfig::default()).unwrap_err();
            assert!(err.to_string().contains("--otlp-endpoint"), "{bad}: {err}");
        }
        let blank = Args {
            otlp_endpoint: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            Config::merge(blank, FileConfig::default())
                .unwrap()
                .otlp_endpoint,
            None
        );
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("stroe = \"x\"").is_err());
    }
}

//! podsnapd's configuration: command-line flags, environment (`PODSNAPD_*`) and an optional
//! TOML file (`--config`), in that order of precedence, over built-in defaults.
//!
//! Each option is defined once, as a field of [`Args`]: its flag and environment variable
//! (clap) and its config-file key (serde, the same struct read from TOML). [`Args::over`]
//! merges the flags over the file generically, and [`Config::merge`] resolves the result
//! against the defaults (the `DEFAULT_*` constants) into a checked [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Node-level checkpoint/restore daemon for gVisor (runsc) sandboxes.
///
/// podsnapd checkpoints sandboxes into an object store (chunked, compressed, deduplicated)
/// and restores them here or on any node that shares the store. Controllers and podsnapctl
/// talk to it over gRPC on a Unix socket.
///
/// Example: podsnapd --listen unix:///run/podsnap/podsnapd.sock --store s3://bucket/snaps
/// --runsc-root /run/runsc --runsc-flag=--network=none
#[derive(Parser, Debug, Default, Serialize, Deserialize)]
#[command(name = "podsnapd", version, about, long_about)]
#[serde(default, deny_unknown_fields)]
pub struct Args {
    /// TOML config file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "PODSNAPD_CONFIG")]
    #[serde(skip)]
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
    /// e.g. --runsc-flag=--network=none. In the config file, `runsc_flags` (a list, to which
    /// the flags add).
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
    /// How a checkpoint stores the pages it uploads: `auto` (the default) raw on a file://
    /// store, where zstd would cost about as much CPU as the rest of the push while the
    /// checkpoint races to be durable (the first snapshot then takes about 1.6x the space:
    /// docs/benchmarks.md), and zstd on object stores, where the smaller upload wins;
    /// `zstd` always (less disk, slower checkpoints); `none` never. Every page is verified
    /// by its sha256 either way, and restores read both.
    #[arg(long, env = "PODSNAPD_CHECKPOINT_COMPRESSION")]
    pub checkpoint_compression: Option<CheckpointCompression>,
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
    #[serde(skip)]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The node-local page cache: verified pages kept by digest so that a restore downloads
    /// only what this node has not seen (see docs/cache.md). Default: <state-dir>/cache.
    #[arg(long, env = "PODSNAPD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The page cache's size bound, in bytes or with a unit (512MiB, 10GiB, 1T); least
    /// recently used pages go beyond it. 0 turns the cache off. Default 10GiB. In the config
    /// file, a number of bytes or a string with a unit ("10GiB").
    #[arg(long, env = "PODSNAPD_CACHE_MAX_BYTES", value_name = "SIZE")]
    #[serde(deserialize_with = "size_text")]
    pub cache_max_bytes: Option<String>,
}

/// The config file: the same struct as the flags, read from TOML (its keys are the fields'
/// names; `config` itself and the OpenTelemetry environment are not keys).
pub type FileConfig = Args;

/// A config file's size: a number of bytes, or a string with a unit.
fn size_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(i64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) if n >= 0 => Ok(Some(n.to_string())),
        Some(Size::Bytes(n)) => Err(serde::de::Error::custom(format!(
            "cache_max_bytes {n}: expected a size such as 10GiB"
        ))),
        Some(Size::Text(s)) => Ok(Some(s)),
    }
}

impl Args {
    /// These options over `file`'s: each one set here wins, the others come from the file;
    /// `runsc_flags` add to the file's. Generic over the fields: both sides as maps of their
    /// serde names, the unset (null) ones of this side left out.
    pub fn over(self, file: FileConfig) -> anyhow::Result<Args> {
        let mut runsc_flags = file.runsc_flags.clone();
        runsc_flags.extend(self.runsc_flags.iter().cloned());
        let (config, otel) = (
            self.config.clone(),
            self.otel_exporter_otlp_endpoint.clone(),
        );
        let as_map = |a: &Args| match serde_json::to_value(a) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(other) => bail!("options as {other}: expected a map"),
            Err(e) => Err(e).context("merging the options"),
        };
        let mut merged = as_map(&file)?;
        for (key, value) in as_map(&self)? {
            if !value.is_null() {
                merged.insert(key, value);
            }
        }
        let mut out: Args = serde_json::from_value(serde_json::Value::Object(merged))
            .context("merging the options")?;
        out.runsc_flags = runsc_flags;
        out.config = config;
        out.otel_exporter_otlp_endpoint = otel;
        Ok(out)
    }
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
    /// How checkpoints store their pages (`--checkpoint-compression`).
    pub checkpoint_compression: CheckpointCompression,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// How a checkpoint stores its new pages (`--checkpoint-compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointCompression {
    /// Raw on a file:// store, zstd on an object store.
    #[default]
    Auto,
    /// zstd wherever it saves at least 5%.
    Zstd,
    /// Raw pages.
    None,
}

impl CheckpointCompression {
    /// The store's push option for it.
    pub fn push_option(self) -> podsnap_store::Compression {
        match self {
            CheckpointCompression::Auto => podsnap_store::Compression::RawWhenLocal,
            CheckpointCompression::Zstd => podsnap_store::Compression::Zstd,
            CheckpointCompression::None => podsnap_store::Compression::Raw,
        }
    }
}

/// Whether a standalone restore serves its image lazily (`--lazy-restore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
pub const DEFAULT_RUNSC_ROOT: &str = "/var/run/runsc";
pub const DEFAULT_RUNSC: &str = "runsc";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_SOCKET_MODE: &str = "0660";
pub const DEFAULT_LOG_FORMAT: &str = "text";
pub const DEFAULT_RUNSC_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_TRANSFERS: usize = 2;

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

    /// The flags (`args`) over the config file's options, resolved against the defaults.
    pub fn merge(args: Args, file: FileConfig) -> anyhow::Result<Config> {
        let o = args.over(file)?;
        let state_dir = o
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let listeners = Listeners::resolve(
            o.listen,
            o.listen_tls,
            o.tls_cert,
            o.tls_key,
            o.tls_client_ca,
        )?;
        for f in &o.runsc_flags {
            if !f.starts_with("--") && !f.starts_with('-') {
                bail!("--runsc-flag {f:?}: expected a flag such as --network=none");
            }
        }
        Ok(Config {
            listen: listeners.listen,
            listen_tls: listeners.listen_tls,
            tls: listeners.tls,
            store: o
                .store
                .unwrap_or_else(|| format!("file://{}", state_dir.join("store").display())),
            work_dir: o.work_dir.unwrap_or_else(|| state_dir.join("work")),
            runsc_root: o
                .runsc_root
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNSC_ROOT)),
            runsc: o.runsc.unwrap_or_else(|| PathBuf::from(DEFAULT_RUNSC)),
            runsc_flags: o.runsc_flags,
            containerd_socket: o
                .containerd_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_SOCKET)),
            metrics_listen: o.metrics_listen,
            health_listen: o.health_listen,
            socket_mode: socket_mode(o.socket_mode.as_deref().unwrap_or(DEFAULT_SOCKET_MODE))?,
            socket_group: o.socket_group,
            node_name: o.node_name.unwrap_or_else(hostname),
            log_format: match o.log_format.as_deref().unwrap_or(DEFAULT_LOG_FORMAT) {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("--log-format {other:?}: expected text or json"),
            },
            concurrency: o.concurrency.unwrap_or(0),
            upload_while_checkpointing: o.upload_while_checkpointing.unwrap_or_default(),
            checkpoint_compression: o.checkpoint_compression.unwrap_or_default(),
            lazy_restore: o.lazy_restore.unwrap_or_default(),
            runsc_timeout: match o.runsc_timeout {
                Some(t) => parse_duration(&t).with_context(|| format!("--runsc-timeout {t:?}"))?,
                None => DEFAULT_RUNSC_TIMEOUT,
            },
            key_dir: o.key_dir,
            max_transfers: match o.max_transfers.unwrap_or(DEFAULT_MAX_TRANSFERS) {
                0 => anyhow::bail!("max_transfers must be at least 1"),
                n => n,
            },
            otlp_endpoint: match o
                .otlp_endpoint
                .or(o.otel_exporter_otlp_endpoint)
                .filter(|e| !e.trim().is_empty())
            {
                Some(e) => Some(parse_otlp_endpoint(&e)?),
                None => None,
            },
            cache_dir: o.cache_dir.unwrap_or_else(|| state_dir.join("cache")),
            cache_max_bytes: match o.cache_max_bytes {
                Some(s) => parse_size(&s).with_context(|| format!("--cache-max-bytes {s:?}"))?,
                None => DEFAULT_CACHE_MAX_BYTES,
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

/// The gRPC listeners and their TLS files, checked together.
struct Listeners {
    listen: Listen,
    listen_tls: Option<std::net::SocketAddr>,
    tls: Option<TlsFiles>,
}

impl Listeners {
    fn resolve(
        listen: Option<String>,
        listen_tls: Option<String>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> anyhow::Result<Listeners> {
        let listen = parse_listen(&listen.unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}")))?;
        let tls = match (cert, key, client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            _ => bail!("--tls-cert, --tls-key and --tls-client-ca go together"),
        };
        let listen_tls = match listen_tls {
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
        Ok(Listeners {
            listen,
            listen_tls,
            tls,
        })
    }
}

/// `--socket-mode`: octal, at most 0777.
fn socket_mode(text: &str) -> anyhow::Result<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("--socket-mode {text:?} is not an octal mode"))
}

/// This host's name (the default node name), or `localhost`.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
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
    fn checkpoint_compression_defaults_to_auto_and_is_read_from_file_and_flag() {
        use podsnap_store::Compression;
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(
            c.checkpoint_compression.push_option(),
            Compression::RawWhenLocal
        );
        let file =
            || -> FileConfig { toml::from_str("checkpoint_compression = \"zstd\"").unwrap() };
        let c = Config::merge(Args::default(), file()).unwrap();
        assert_eq!(c.checkpoint_compression.push_option(), Compression::Zstd);
        let args = Args {
            checkpoint_compression: Some(CheckpointCompression::None),
            ..Args::default()
        };
        let c = Config::merge(args, file()).unwrap();
        assert_eq!(c.checkpoint_compression.push_option(), Compression::Raw);
        assert!(toml::from_str::<FileConfig>("checkpoint_compression = \"lz4\"").is_err());
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
        // Not options of the file: the file itself, and OpenTelemetry's own variable.
        assert!(toml::from_str::<FileConfig>("config = \"/x.toml\"").is_err());
        assert!(
            toml::from_str::<FileConfig>("otel_exporter_otlp_endpoint = \"http://c:1\"").is_err()
        );
    }

    #[test]
    fn every_flag_is_a_config_key_and_the_file_fills_what_flags_leave() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "unix:///run/p.sock"
            store = "memory://"
            runsc_root = "/r"
            state_dir = "/s"
            runsc = "/bin/runsc"
            runsc_flags = ["--network=none"]
            containerd_socket = "/c.sock"
            work_dir = "/w"
            metrics_listen = "127.0.0.1:9090"
            health_listen = "127.0.0.1:9091"
            socket_mode = "0600"
            socket_group = "podsnap"
            node_name = "n1"
            log_format = "json"
            concurrency = 8
            upload_while_checkpointing = "always"
            lazy_restore = "never"
            runsc_timeout = "5m"
            key_dir = "/k"
            max_transfers = 3
            otlp_endpoint = "http://c:4317"
            cache_dir = "/cache"
            cache_max_bytes = "1GiB"
            "#,
        )
        .unwrap();
        let args = Args {
            runsc_flags: vec!["--debug".into()],
            node_name: Some("flag".into()),
            ..Default::default()
        };
        let c = Config::merge(args, file).unwrap();
        assert_eq!(c.listen, Listen::Unix("/run/p.sock".into()));
        assert_eq!(c.runsc_root, PathBuf::from("/r"));
        assert_eq!(c.runsc, PathBuf::from("/bin/runsc"));
        assert_eq!(c.runsc_flags, ["--network=none", "--debug"]);
        assert_eq!(c.work_dir, PathBuf::from("/w"));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.node_name, "flag");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.lazy_restore, LazyRestore::Never);
        assert_eq!(c.runsc_timeout, Duration::from_secs(300));
        assert_eq!(c.max_transfers, 3);
        assert_eq!(c.cache_dir, PathBuf::from("/cache"));
        assert_eq!(c.cache_max_bytes, 1 << 30);
    }

    #[test]
    fn defaults_hold_when_nothing_is_set() {
        let c = Config::merge(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.store, "file:///var/lib/podsnap/store");
        assert_eq!(c.runsc_root, PathBuf::from("/var/run/runsc"));
        assert_eq!(c.runsc, PathBuf::from("runsc"));
        assert_eq!(
            c.containerd_socket,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(c.cache_dir, PathBuf::from("/var/lib/podsnap/cache"));
        assert_eq!(c.cache_max_bytes, 10 << 30);
        assert_eq!(c.runsc_timeout, Duration::from_secs(600));
        assert_eq!((c.max_transfers, c.concurrency), (2, 0));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.lazy_restore, LazyRestore::Auto);
    }

    #[test]
    fn a_config_file_size_is_bytes_or_text_and_never_negative() {
        let size = |text: &str| {
            let file: FileConfig = toml::from_str(text)?;
            Config::merge(Args::default(), file).map(|c| c.cache_max_bytes)
        };
        assert_eq!(size("cache_max_bytes = 4096").unwrap(), 4096);
        assert_eq!(size("cache_max_bytes = \"2MiB\"").unwrap(), 2 << 20);
        assert_eq!(size("cache_max_bytes = 0").unwrap(), 0);
        assert!(size("cache_max_bytes = -1").is_err());
        assert!(size("cache_max_bytes = \"lots\"").is_err());
        assert!(size("cache_max_bytes = true").is_err());
    }

    #[test]
    fn the_shipped_config_files_parse() {
        let configmap = include_str!("../../../daemonset/configmap.yaml");
        let start = configmap.find("podsnapd.toml: |").unwrap();
        let end = configmap.find("podsnap.toml: |").unwrap();
        let embedded: String = configmap[start..end]
            .lines()
            .skip(1)
            .map(|l| l.trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        for text in [include_str!("../../../systemd/podsnapd.toml"), &embedded] {
            let file: FileConfig = toml::from_str(text).unwrap();
            Config::merge(Args::default(), file).unwrap();
        }
    }
}

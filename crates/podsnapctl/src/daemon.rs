//! Commands that talk to podsnapd over its Unix socket.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::progress::Reporter;

#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    /// runsc container id under the daemon's runsc root, or a containerd container id with
    /// --containerd-namespace.
    #[arg(required_unless_present = "pod")]
    pub id: Option<String>,
    /// The containerd namespace of ID (makes ID a containerd container).
    #[arg(long, value_name = "NS")]
    pub containerd_namespace: Option<String>,
    /// A Kubernetes pod, found through containerd's CRI labels: the whole sandbox (pause and
    /// every app container) becomes one snapshot. Needs podsnapd --containerd-socket.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with_all = ["id", "containerd_namespace"], value_parser = parse_pod)]
    pub pod: Option<(String, String)>,
    /// Label recorded on the snapshot (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Label keys whose values form the snapshot's group (default: the target's id).
    #[arg(long, value_name = "K1,K2", value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// Keep at most N snapshots in the group (0: keep all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep: u32,
    /// Keep the sandbox running after the checkpoint (the default).
    #[arg(long, conflicts_with = "stop")]
    pub resume: bool,
    /// Leave the sandbox stopped after the checkpoint.
    #[arg(long)]
    pub stop: bool,
    /// Deduplicate against this snapshot (default: the group's newest).
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Print the snapshot as JSON instead of its id.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id.
    pub snapshot: String,
    /// OCI bundle directory (with config.json) for the restored sandbox.
    #[arg(long, value_name = "DIR")]
    pub bundle: PathBuf,
    /// Container id of the restored sandbox.
    #[arg(long, value_name = "NEW_ID")]
    pub id: String,
    /// File for the restored sandbox's stdout/stderr (default: under the daemon's state dir).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// For a snapshot of several containers: each non-root container's new id and bundle,
    /// matched by its name in the snapshot (`inspect` lists them). Each bundle's
    /// io.kubernetes.cri.sandbox-id annotation must name NEW_ID. Its output goes to --log.
    #[arg(long = "container", value_name = "NAME=ID:DIR", value_parser = parse_container)]
    pub containers: Vec<(String, String, PathBuf)>,
    /// A lazy restore returns once the sandbox runs, while its remaining pages still arrive
    /// (`podsnapctl jobs` shows them). With this, wait until every page is local, and fail
    /// (exit 1, the reason on stderr) if a page could not be fetched or verified: the
    /// sandbox has been stopped then.
    #[arg(long)]
    pub wait_for_pages: bool,
}

fn parse_pod(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

fn parse_container(s: &str) -> Result<(String, String, PathBuf), String> {
    let bad = || format!("{s:?} is not NAME=NEW_ID:BUNDLE_DIR");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (id, dir) = rest.split_once(':').ok_or_else(bad)?;
    if name.is_empty() || id.is_empty() || dir.is_empty() {
        return Err(bad());
    }
    Ok((name.to_string(), id.to_string(), PathBuf::from(dir)))
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only snapshots of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only snapshots with this label (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct PrefetchArgs {
    /// Snapshot id.
    pub snapshot: String,
    /// Print one JSON object (snapshot_id, bytes_downloaded, bytes_fetched, bytes_cached).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    pub snapshot: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub snapshot: String,
}

#[derive(clap::Args, Debug)]
pub struct CompatArgs {
    pub snapshot: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// Connects to podsnapd's Unix socket (`PATH` or `unix://PATH`).
pub async fn connect(socket: &str) -> anyhow::Result<PodsnapClient<Channel>> {
    let path = podsnap_proto::client::socket_path(socket);
    let channel = podsnap_proto::client::connect_unix(&path)
        .await
        .with_context(|| {
            format!(
                "cannot connect to podsnapd at {} (is it running?)",
                path.display()
            )
        })?;
    Ok(PodsnapClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(16 << 20))
}

/// The one place a failed call to podsnapd becomes podsnapctl's error line.
///
/// A status that carries a source was made on this side from a transport error: the
/// connection to podsnapd broke under the call (the daemon died or was restarted). For the
/// calls that run as a daemon job, the line says what becomes of that job and where to see
/// it, instead of the transport's wording alone ("h2 protocol error: error reading a body
/// from connection").
fn status_err(op: &str, s: tonic::Status) -> anyhow::Error {
    let Some(cause) = std::error::Error::source(&s) else {
        return anyhow::anyhow!("{op} failed: {} ({:?})", s.message(), s.code());
    };
    let lost = podsnap_proto::client::error_chain(cause);
    match job_after_restart(op) {
        Some(fate) => anyhow::anyhow!(
            "{op} failed: podsnapd went away mid-{op} (connection lost: {lost}); when podsnapd \
             restarts it {fate}: see `podsnapctl jobs`"
        ),
        None => anyhow::anyhow!("{op} failed: podsnapd went away (connection lost: {lost})"),
    }
}

/// What a restarted podsnapd does with the job of a call it died under (its crash
/// recovery); `None` for calls that run no job.
fn job_after_restart(op: &str) -> Option<&'static str> {
    match op {
        "checkpoint" | "restore" => Some("finishes the job or rolls it back"),
        "prefetch" => Some("marks the job failed (run the prefetch again)"),
        _ => None,
    }
}

fn phase_name(p: i32) -> &'static str {
    pb::Phase::try_from(p)
        .map(|p| match p {
            pb::Phase::Unspecified => "",
            pb::Phase::Queued => "queued",
            pb::Phase::Resolving => "resolving",
            pb::Phase::Checkpointing => "checkpointing",
            pb::Phase::Uploading => "uploading",
            pb::Phase::Committing => "committing",
            pb::Phase::Retention => "retention",
            pb::Phase::Resuming => "resuming",
            pb::Phase::Checking => "checking",
            pb::Phase::Downloading => "downloading",
            pb::Phase::Restoring => "restoring",
            pb::Phase::Done => "done",
            pb::Phase::Failed => "failed",
        })
        .unwrap_or("?")
}

/// Daemon job progress events into a [`Reporter`].
fn show(view: &Reporter, p: &pb::Progress) {
    view.update(phase_name(p.phase), p.bytes_done, p.bytes_total);
}

pub fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    let src = s.source.clone().unwrap_or_default();
    json!({
        "id": s.id,
        "created_at": s.created_at,
        "labels": s.labels,
        "group": s.group,
        "parent": s.parent,
        "format_version": s.format_version,
        "source": {
            "node_name": src.node_name,
            "runsc_version": src.runsc_version,
            "platform": src.platform,
            "rootfs_overlay": src.rootfs_overlay,
            "extra": src.extra,
            "cpu": src.cpu.map(|c| json!({
                "vendor": c.vendor, "family": c.family, "model": c.model,
                "stepping": c.stepping, "cache_line_size": c.cache_line_size,
                "features": c.features,
            })),
        },
        "files": s.files.iter().map(|f| json!({"name": f.name, "size": f.size})).collect::<Vec<_>>(),
        "logical_bytes": s.logical_bytes,
        "uploaded_bytes": s.uploaded_bytes,
        "runsc_metadata": s.runsc_metadata,
    })
}

pub async fn checkpoint(socket: &str, a: CheckpointArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let id = a.id.clone().unwrap_or_default();
    let target = match (&a.pod, &a.containerd_namespace) {
        (Some((namespace, name)), _) => pb::target::Kind::Pod(pb::PodTarget {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        (None, Some(ns)) => pb::target::Kind::Containerd(pb::ContainerdTarget {
            namespace: ns.clone(),
            container_id: id,
        }),
        (None, None) => pb::target::Kind::RunscId(id),
    };
    let req = pb::CheckpointRequest {
        target: Some(pb::Target { kind: Some(target) }),
        labels: a.labels.into_iter().collect::<HashMap<_, _>>(),
        group_by: a.group_by,
        keep: a.keep,
        post_checkpoint: if a.stop {
            pb::PostCheckpoint::Stop
        } else {
            pb::PostCheckpoint::Resume
        } as i32,
        parent: a.parent.unwrap_or_default(),
    };
    let mut stream = client
        .checkpoint(req)
        .await
        .map_err(|s| status_err("checkpoint", s))?
        .into_inner();
    let view = Reporter::new("checkpoint");
    let mut snapshot = None;
    loop {
        match stream.message().await {
            Ok(Some(ev)) => match ev.event {
                Some(pb::checkpoint_event::Event::Progress(p)) => show(&view, &p),
                Some(pb::checkpoint_event::Event::Snapshot(s)) => snapshot = Some(s),
                None => {}
            },
            Ok(None) => break,
            Err(s) => {
                view.finish();
                return Err(status_err("checkpoint", s));
            }
        }
    }
    view.finish();
    let s = snapshot.context("the daemon closed the stream without a snapshot")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&snapshot_json(&s))?);
    } else {
        println!("{}", s.id);
    }
    Ok(0)
}

pub async fn restore(socket: &str, a: RestoreArgs) -> anyhow::Result<i32> {
    let bundle = std::fs::canonicalize(&a.bundle)
        .with_context(|| format!("bundle {}", a.bundle.display()))?;
    let log = match a.log {
        Some(l) if l.is_relative() => Some(std::env::current_dir()?.join(l)),
        other => other,
    };
    let mut client = connect(socket).await?;
    let mut stream = client
        .restore(pb::RestoreRequest {
            snapshot_id: a.snapshot,
            bundle: bundle.display().to_string(),
            container_id: a.id,
            log_path: log.map(|l| l.display().to_string()).unwrap_or_default(),
            containers: a
                .containers
                .into_iter()
                .map(|(name, id, dir)| {
                    let bundle = std::fs::canonicalize(&dir)
                        .with_context(|| format!("bundle {} of container {name}", dir.display()))?;
                    Ok(pb::ContainerBundle {
                        name,
                        container_id: id,
                        bundle: bundle.display().to_string(),
                        log_path: String::new(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            wait_for_pages: a.wait_for_pages,
        })
        .await
        .map_err(|s| status_err("restore", s))?
        .into_inner();
    let view = Reporter::new("restore");
    let mut restored = None;
    loop {
        match stream.message().await {
            Ok(Some(ev)) => match ev.event {
                Some(pb::restore_event::Event::Progress(p)) => show(&view, &p),
                Some(pb::restore_event::Event::Restored(r)) => {
                    if r.lazy && a.wait_for_pages {
                        eprintln!(
                            "{} runs; waiting for the rest of its pages (job {})",
                            r.container_id, r.job_id
                        );
                    }
                    restored = Some(r)
                }
                None => {}
            },
            Ok(None) => break,
            Err(s) if restored.is_some() => {
                view.finish();
                anyhow::bail!("restore failed after the sandbox started: {}", s.message());
            }
            Err(s) => {
                view.finish();
                return Err(status_err("restore", s));
            }
        }
    }
    view.finish();
    let r = restored.context("the daemon closed the stream without a result")?;
    eprintln!(
        "restored {} from {} (pid {}, output in {})",
        r.container_id, r.snapshot_id, r.pid, r.log_path
    );
    if r.lazy && !a.wait_for_pages {
        eprintln!(
            "its pages are still arriving (lazy restore): `podsnapctl jobs` shows job {}",
            r.job_id
        );
    }
    println!("{}", r.container_id);
    Ok(0)
}

pub async fn prefetch(socket: &str, a: PrefetchArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let mut stream = client
        .prefetch(pb::PrefetchRequest {
            snapshot_id: a.snapshot,
        })
        .await
        .map_err(|s| status_err("prefetch", s))?
        .into_inner();
    let view = Reporter::new("prefetch");
    let mut done = None;
    loop {
        match stream.message().await {
            Ok(Some(ev)) => match ev.event {
                Some(pb::prefetch_event::Event::Progress(p)) => show(&view, &p),
                Some(pb::prefetch_event::Event::Prefetched(r)) => done = Some(r),
                None => {}
            },
            Ok(None) => break,
            Err(s) => {
                view.finish();
                return Err(status_err("prefetch", s));
            }
        }
    }
    view.finish();
    let r = done.context("the daemon closed the stream without a result")?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "snapshot_id": r.snapshot_id,
                "bytes_downloaded": r.bytes_downloaded,
                "bytes_fetched": r.bytes_fetched,
                "bytes_cached": r.bytes_cached,
            }))?
        );
    } else {
        println!(
            "{}: fetched {} ({} downloaded), {} already cached",
            r.snapshot_id,
            human(r.bytes_fetched),
            human(r.bytes_downloaded),
            human(r.bytes_cached)
        );
    }
    Ok(0)
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub async fn list(socket: &str, a: ListArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let resp = client
        .list_snapshots(pb::ListSnapshotsRequest {
            group: a.group.unwrap_or_default(),
            labels: a.labels.into_iter().collect(),
        })
        .await
        .map_err(|s| status_err("list", s))?
        .into_inner();
    if a.json {
        let v: Vec<_> = resp.snapshots.iter().map(snapshot_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:<28} {:<22} {:<24} {:>10} {:>10}  NODE",
        "ID", "CREATED", "GROUP", "SIZE", "UPLOADED"
    );
    for s in &resp.snapshots {
        println!(
            "{:<28} {:<22} {:<24} {:>10} {:>10}  {}",
            s.id,
            s.created_at,
            s.group,
            human(s.logical_bytes),
            human(s.uploaded_bytes),
            s.source
                .as_ref()
                .map(|n| n.node_name.as_str())
                .unwrap_or("")
        );
    }
    Ok(0)
}

pub async fn inspect(socket: &str, a: InspectArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let s = client
        .get_snapshot(pb::GetSnapshotRequest {
            snapshot_id: a.snapshot,
        })
        .await
        .map_err(|s| status_err("inspect", s))?
        .into_inner();
    // Human and JSON views carry the same facts; JSON is the complete one.
    let v = snapshot_json(&s);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let src = s.source.clone().unwrap_or_default();
        println!("id:            {}", s.id);
        println!("created:       {}", s.created_at);
        println!("group:         {}", s.group);
        println!(
            "parent:        {}",
            if s.parent.is_empty() { "-" } else { &s.parent }
        );
        println!("format:        {}", s.format_version);
        println!(
            "node:          {} (runsc {}, platform {})",
            src.node_name, src.runsc_version, src.platform
        );
        println!(
            "rootfs:        {}",
            if src.rootfs_overlay.is_empty() {
                "writes stayed on the source node (no overlay)".to_string()
            } else {
                format!(
                    "overlay {} (writes travel with the snapshot)",
                    src.rootfs_overlay
                )
            }
        );
        if let Some(c) = &src.cpu {
            println!(
                "cpu:           {} family {} model {}, cache line {}, {} features",
                c.vendor,
                c.family,
                c.model,
                c.cache_line_size,
                c.features.len()
            );
        }
        let mut labels: Vec<_> = s.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            println!("label:         {k}={v}");
        }
        for f in &s.files {
            println!("file:          {} ({})", f.name, human(f.size));
        }
        println!(
            "size:          {} (uploaded {})",
            human(s.logical_bytes),
            human(s.uploaded_bytes)
        );
    }
    Ok(0)
}

pub async fn delete(socket: &str, a: DeleteArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    client
        .delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: a.snapshot.clone(),
        })
        .await
        .map_err(|s| status_err("delete", s))?;
    eprintln!("deleted {}", a.snapshot);
    Ok(0)
}

pub async fn compat(socket: &str, a: CompatArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let c = client
        .check_compatibility(pb::CheckCompatibilityRequest {
            snapshot_id: a.snapshot.clone(),
        })
        .await
        .map_err(|s| status_err("compat", s))?
        .into_inner();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "compatible": c.compatible,
                "missing_features": c.missing_features,
                "snapshot_cache_line_size": c.snapshot_cache_line_size,
                "node_cache_line_size": c.node_cache_line_size,
                "problems": c.problems,
                "warnings": c.warnings,
            }))?
        );
    } else {
        for w in &c.warnings {
            eprintln!("warning: {w}");
        }
        if c.compatible {
            println!("{} is compatible with this node", a.snapshot);
        } else {
            eprintln!(
                "{} cannot restore on this node: {}",
                a.snapshot,
                c.problems.join("; ")
            );
        }
    }
    Ok(if c.compatible { 0 } else { 1 })
}

pub async fn node_info(socket: &str, a: JsonArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let n = client
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .map_err(|s| status_err("node-info", s))?
        .into_inner();
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map_err(|s| status_err("node-info", s))?
        .into_inner()
        .jobs;
    let runsc = n.runsc.clone().unwrap_or_default();
    let cpu = n.cpu.clone().unwrap_or_default();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "node_name": n.node_name,
                "podsnap_version": n.podsnap_version,
                "store_url": n.store_url,
                "state_dir": n.state_dir,
                "jobs_in_flight": n.jobs_in_flight,
                "cache": {"dir": n.cache_dir, "max_bytes": n.cache_max_bytes, "bytes": n.cache_bytes,
                          "snapshots": n.cached_snapshots},
                "runsc": {"path": runsc.path, "version": runsc.version, "platform": runsc.platform,
                          "root": runsc.root, "capabilities": runsc.capabilities},
                "shims": n.shims.iter().map(|s| json!({"runtime": s.runtime, "binary": s.binary,
                          "root": s.root, "config_path": s.config_path, "namespace": s.namespace,
                          "containers": s.containers})).collect::<Vec<_>>(),
                "cpu": {"vendor": cpu.vendor, "family": cpu.family, "model": cpu.model,
                        "stepping": cpu.stepping, "cache_line_size": cpu.cache_line_size,
                        "features": cpu.features},
            }))?
        );
        return Ok(0);
    }
    println!("node:        {}", n.node_name);
    println!("podsnapd:    {}", n.podsnap_version);
    println!("store:       {}", n.store_url);
    println!("state dir:   {}", n.state_dir);
    if n.runsc.is_some() {
        println!(
            "runsc:       {} ({}) root {} platform {}",
            runsc.version, runsc.path, runsc.root, runsc.platform
        );
        println!(
            "runsc caps:  {}",
            if runsc.capabilities.is_empty() {
                "-".to_string()
            } else {
                runsc.capabilities.join(", ")
            }
        );
    } else {
        println!("runsc:       unavailable");
    }
    for s in &n.shims {
        println!(
            "shim:        {} runsc {} root {} ({} containers in {})",
            s.runtime,
            if s.binary.is_empty() { "-" } else { &s.binary },
            s.root,
            s.containers,
            s.namespace
        );
    }
    println!(
        "cpu:         {} family {} model {} stepping {}, cache line {}, {} features",
        cpu.vendor,
        cpu.family,
        cpu.model,
        cpu.stepping,
        cpu.cache_line_size,
        cpu.features.len()
    );
    if n.cache_max_bytes > 0 {
        println!(
            "page cache:  {} of {} in {}",
            human(n.cache_bytes),
            human(n.cache_max_bytes),
            n.cache_dir
        );
        if !n.cached_snapshots.is_empty() {
            println!("  holds:     {}", n.cached_snapshots.join(", "));
        }
    } else {
        println!("page cache:  off");
    }
    println!("jobs:        {} in flight", n.jobs_in_flight);
    print_jobs(&jobs);
    Ok(0)
}

fn print_jobs(jobs: &[pb::Job]) {
    for j in jobs {
        let progress = if j.bytes_total > 0 {
            format!("{}/{}", human(j.bytes_done), human(j.bytes_total))
        } else {
            String::new()
        };
        println!(
            "  {} {:<16} {:<14} {:<24} {:<28} {} {}",
            j.id,
            j.kind,
            phase_name(j.phase),
            j.target,
            j.snapshot_id,
            progress,
            j.error
        );
    }
}

pub async fn jobs(socket: &str, a: JsonArgs) -> anyhow::Result<i32> {
    let mut client = connect(socket).await?;
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map_err(|s| status_err("jobs", s))?
        .into_inner()
        .jobs;
    if a.json {
        let v: Vec<_> = jobs
            .iter()
            .map(|j| {
                json!({"id": j.id, "kind": j.kind, "target": j.target, "snapshot_id": j.snapshot_id,
                       "phase": phase_name(j.phase), "bytes_done": j.bytes_done, "bytes_total": j.bytes_total,
                       "started_at": j.started_at, "finished_at": j.finished_at, "error": j.error})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if jobs.is_empty() {
        println!("no jobs");
    } else {
        print_jobs(&jobs);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tonic makes of a connection that breaks under a call: a status whose source is
    /// the transport's error.
    fn connection_lost() -> tonic::Status {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection reset");
        tonic::Status::from_error(Box::new(io))
    }

    #[test]
    fn a_daemon_gone_mid_job_says_what_becomes_of_the_job() {
        for op in ["checkpoint", "restore"] {
            let e = status_err(op, connection_lost()).to_string();
            assert!(
                e.starts_with(&format!("{op} failed: podsnapd went away mid-{op}")),
                "{e}"
            );
            assert!(e.contains("connection reset"), "{e}");
            assert!(e.contains("finishes the job or rolls it back"), "{e}");
            assert!(e.contains("podsnapctl jobs"), "{e}");
        }
        let e = status_err("prefetch", connection_lost()).to_string();
        assert!(e.contains("marks the job failed"), "{e}");
        let e = status_err("list", connection_lost()).to_string();
        assert!(e.starts_with("list failed: podsnapd went away"), "{e}");
        assert!(!e.contains("jobs"), "{e}");
    }

    #[test]
    fn the_daemons_own_refusal_is_shown_as_it_is() {
        let e = status_err("restore", tonic::Status::not_found("snapshot s1 not found"));
        assert_eq!(
            e.to_string(),
            "restore failed: snapshot s1 not found (NotFound)"
        );
    }
}

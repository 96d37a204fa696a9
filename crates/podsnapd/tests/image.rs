//! The DaemonSet's image (`make image`: target/oci/podsnap.tar) in a real containerd: imported
//! with `ctr images import`, run the way daemonset/daemonset.yaml runs it (its command and
//! arguments, privileged, host PID and network namespaces, the socket directory, state
//! directory, runsc root, cgroup hierarchy and the host's runsc bind-mounted), podsnapd inside
//! answers gRPC health on the socket the host sees and checkpoints a runsc sandbox that runs on
//! the host.
//!
//! Needs root, runsc, containerd and the image: `make test` builds it first (`make image`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podsnap_testkit::containerd::Containerd;
use podsnap_testkit::runsc::{unique_id, wait_for_count, CounterSandbox};
use podsnap_testkit::{require, require_that, workspace_path, Need};

const NS: &str = "podsnap-image";

/// The podsnapctl built beside this test's podsnapd.
fn podsnapctl() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_podsnapd")).with_file_name("podsnapctl")
}

fn host_runsc() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("runsc"))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .expect("runsc on PATH")
}

fn bind(src: &Path, dst: &str, mode: &str) -> String {
    format!(
        "type=bind,src={},dst={dst},options=rbind:{mode}",
        src.display()
    )
}

/// Removes the container when the test ends, passing or not.
struct Running<'a> {
    containerd: &'a Containerd,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self
            .containerd
            .ctr(NS, &["task", "kill", "-s", "TERM", &self.id]);
        std::thread::sleep(Duration::from_millis(500));
        self.containerd.remove(NS, &self.id);
        let _ = self.containerd.ctr(NS, &["images", "rm", "--sync"]);
    }
}

async fn health_of(sock: &Path) -> Result<i32, String> {
    let channel = podsnap_proto::client::connect_unix(sock.to_path_buf())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "podsnap.v1.Podsnap".into(),
        })
        .await
        .map_err(|s| format!("health: {s}"))?;
    Ok(r.into_inner().status)
}

fn ctl(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(podsnapctl())
        .arg("--socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("podsnapctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The host side of the DaemonSet's hostPath volumes, in one temporary directory.
struct HostDirs {
    dir: tempfile::TempDir,
    run_dir: PathBuf,
    state: PathBuf,
    runsc_root: PathBuf,
    config_dir: PathBuf,
}

impl HostDirs {
    /// The directories, and daemonset/configmap.yaml's podsnapd.toml with this test's runsc
    /// root, a file store in the state dir and the standalone sandbox's `--network=none`.
    fn new() -> HostDirs {
        let dir = tempfile::Builder::new()
            .prefix("podsnap-image")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let h = HostDirs {
            run_dir: d.join("run-podsnap"),
            state: d.join("state"),
            runsc_root: d.join("runsc-root"),
            config_dir: d.join("config"),
            dir,
        };
        for p in [&h.run_dir, &h.state, &h.runsc_root, &h.config_dir] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(
            h.config_dir.join("podsnapd.toml"),
            format!(
                r#"listen = "unix:///run/podsnap/podsnapd.sock"
store = "file:///var/lib/podsnap/store"
runsc_root = "{root}"
state_dir = "/var/lib/podsnap"
runsc = "/usr/bin/runsc"
runsc_flags = ["--network=none"]
work_dir = "/var/lib/podsnap/work"
"#,
                root = h.runsc_root.display()
            ),
        )
        .unwrap();
        h
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("podsnapd.sock")
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("podsnapd.log")).unwrap_or_default()
    }
}

/// Imports the image archive into containerd and checks it is there by its name.
fn import_image(containerd: &Containerd, archive: &Path, image: &str) {
    let archive_arg = archive.display().to_string();
    containerd
        .ctr(NS, &["images", "import", &archive_arg])
        .expect("ctr images import");
    let images = containerd.ctr(NS, &["images", "ls", "-q"]).unwrap();
    assert!(
        images.lines().any(|l| l.trim() == image),
        "imported images {images:?} lack {image}"
    );
}

/// Runs the image as daemonset/daemonset.yaml does (privileged, host PID and network, its
/// hostPath mounts, its command and args); returns the container's id.
fn run_daemonset_container(containerd: &Containerd, image: &str, h: &HostDirs) -> String {
    let container = unique_id("podsnapd");
    let runc_root = containerd.runc_root().display().to_string();
    let log_uri = format!("file://{}", h.dir.path().join("podsnapd.log").display());
    let root_in = h.runsc_root.display().to_string();
    // hostPID: the PID namespace this test (and the sandbox) runs in. (/proc/1 may belong to
    // another user namespace, as in a container that runs the tests.)
    let host_pid = format!("pid:/proc/{}/ns/pid", std::process::id());
    let mounts = [
        bind(&h.config_dir, "/etc/podsnapd", "ro"),
        bind(&h.run_dir, "/run/podsnap", "rw"),
        bind(&h.state, "/var/lib/podsnap", "rw"),
        bind(&h.runsc_root, &root_in, "rw"),
        bind(&host_runsc(), "/usr/bin/runsc", "ro"),
        bind(Path::new("/sys/fs/cgroup"), "/sys/fs/cgroup", "rw"),
    ];
    let mut args: Vec<&str> = vec![
        "run",
        "-d",
        "--privileged",
        "--net-host",
        "--with-ns",
        &host_pid,
        "--runc-root",
        &runc_root,
        "--log-uri",
        &log_uri,
        "--env",
        "PODSNAPD_NODE_NAME=image-node",
        "--env",
        "RUST_LOG=info",
    ];
    for m in &mounts {
        args.extend(["--mount", m]);
    }
    // The DaemonSet's command and args.
    args.extend([
        image,
        &container,
        "/usr/local/bin/podsnapd",
        "--config",
        "/etc/podsnapd/podsnapd.toml",
    ]);
    containerd.ctr(NS, &args).expect("ctr run");
    container
}

/// gRPC health on the socket, from the host: podsnapd in the container serves (60 s at most),
/// and node-info names the node and this version.
async fn assert_daemon_serves(h: &HostDirs) {
    let sock = h.socket();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match health_of(&sock).await {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "podsnapd in the container never answered health ({e}); its log:\n{}",
                    h.daemon_log()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let (ok, out, err) = ctl(&sock, &["node-info", "--json"]);
    assert!(ok, "node-info: {err}\n{}", h.daemon_log());
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["node_name"], "image-node");
    assert_eq!(info["podsnap_version"], env!("CARGO_PKG_VERSION"));
}

/// The controller's Deployment runs the same image: its binary is there and runs.
fn assert_controller_runs_in(containerd: &Containerd, container: &str) {
    let out = containerd
        .ctr(
            NS,
            &[
                "task",
                "exec",
                "--exec-id",
                "controller-crds",
                container,
                "/usr/local/bin/podsnap-controller",
                "crds",
            ],
        )
        .expect("podsnap-controller runs in the image");
    assert!(
        out.contains("podsnapshotmanualtriggers.podsnapshot.gke.io"),
        "podsnap-controller crds printed: {out}"
    );
}

/// The host's sandbox `id`, checkpointed by the podsnapd in the container: the snapshot
/// records its label and node, and its manifest lands in the state dir the host mounted.
fn assert_checkpoints_host_sandbox(h: &HostDirs, id: &str) {
    let sock = h.socket();
    let (ok, out, err) = ctl(&sock, &["checkpoint", id, "--stop", "--label", "via=image"]);
    assert!(ok, "checkpoint: {err}\npodsnapd log:\n{}", h.daemon_log());
    let snapshot = out.lines().last().unwrap_or_default().trim().to_string();
    assert!(!snapshot.is_empty(), "no snapshot id in {out:?}");
    let (ok, out, err) = ctl(&sock, &["inspect", "--json", &snapshot]);
    assert!(ok, "inspect: {err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["labels"]["via"], "image");
    assert_eq!(s["source"]["node_name"], "image-node");
    assert!(s["logical_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    let found = walk(&h.state.join("store")).into_iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains(&snapshot))
    });
    assert!(found, "no file naming {snapshot} in the host's state dir");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonset_image_runs_podsnapd_that_answers_health_and_checkpoints_a_host_sandbox() {
    let name = "daemonset_image_runs_podsnapd_that_answers_health_and_checkpoints_a_host_sandbox";
    if !require(name, &[Need::Root, Need::Runsc, Need::Containerd]) {
        return;
    }
    let archive = workspace_path("target/oci/podsnap.tar");
    let unbuilt =
        (!archive.is_file()).then(|| format!("{} missing (make image)", archive.display()));
    if !require_that(name, unbuilt) {
        return;
    }
    let image = format!("podsnap:{}", env!("CARGO_PKG_VERSION"));
    let containerd = Containerd::start().expect("containerd starts");
    import_image(&containerd, &archive, &image);
    let h = HostDirs::new();

    // A counter sandbox on the host, under the runsc root the container sees at the same path.
    let id = unique_id("image-counter");
    let log = h.dir.path().join("counter.log");
    let sandbox = CounterSandbox::start(&h.runsc_root, &id, &log, &[]).expect("sandbox starts");
    wait_for_count(&log, 2, Duration::from_secs(30)).expect("counter counts");

    let container = run_daemonset_container(&containerd, &image, &h);
    let _running = Running {
        containerd: &containerd,
        id: container.clone(),
    };
    assert_daemon_serves(&h).await;
    assert_controller_runs_in(&containerd, &container);
    assert_checkpoints_host_sandbox(&h, &id);
    drop(sandbox);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

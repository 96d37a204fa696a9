//! The podsnapctl contracts that outside checks rely on (see the design notes): output shapes,
//! exit codes, the snapshot id as stdout's last line. Daemon commands run against the real
//! podsnapd binary (built next to podsnapctl by `cargo build --workspace --bins`) and real
//! runsc; those tests are gated by `podsnap_testkit::require`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use podsnap_testkit::daemon::PodsnapdCmd;
use podsnap_testkit::runsc::{unique_id, wait_for_count, CounterSandbox};
use podsnap_testkit::{require, Need};

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_podsnapctl"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("podsnapctl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_teaches_every_command() {
    let o = run(ctl().arg("--help"));
    assert!(o.status.success());
    let h = stdout(&o);
    for c in [
        "checkpoint",
        "restore",
        "list",
        "inspect",
        "delete",
        "compat",
        "node-info",
        "jobs",
        "image",
        "cpu-features",
        "cpu-check",
        "keygen",
    ] {
        assert!(h.contains(c), "--help lacks {c}:\n{h}");
    }
    let o = run(ctl().args(["checkpoint", "--help"]));
    let h = stdout(&o);
    for f in [
        "--label",
        "--group-by",
        "--keep",
        "--resume",
        "--stop",
        "--containerd-namespace",
    ] {
        assert!(h.contains(f), "checkpoint --help lacks {f}:\n{h}");
    }
}

#[test]
fn cpu_features_json_has_the_documented_shape_and_checks_against_this_host() {
    let o = run(ctl().args(["cpu-features", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "vendor",
        "family",
        "model",
        "stepping",
        "cache_line_size",
        "features",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    let features: Vec<String> = serde_json::from_value(v["features"].clone()).unwrap();
    assert!(features.contains(&"fpu".to_string()));

    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("mine.json");
    std::fs::write(&mine, &o.stdout).unwrap();
    let o = run(ctl().arg("cpu-check").arg(&mine));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // A set with a feature this host lacks is refused, naming it.
    let lacking = podsnap_cpu::features::FEATURES
        .iter()
        .map(|f| f.name)
        .find(|n| !features.iter().any(|f| f == n))
        .unwrap();
    let mut more = v.clone();
    more["features"]
        .as_array_mut()
        .unwrap()
        .push(lacking.into());
    let theirs = dir.path().join("theirs.json");
    std::fs::write(&theirs, serde_json::to_vec(&more).unwrap()).unwrap();
    let o = run(ctl().arg("cpu-check").arg(&theirs));
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains(lacking), "{}", stderr(&o));

    // The common set of the two is this host's set, as an annotation value.
    let o = run(ctl()
        .args(["cpu-features", "--intersect"])
        .arg(&mine)
        .arg(&theirs));
    assert!(o.status.success(), "{}", stderr(&o));
    let value = stdout(&o).trim().to_string();
    let mut got: Vec<&str> = value.split(',').collect();
    got.sort();
    let mut want: Vec<&str> = features.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_missing_daemon_is_one_clear_line_and_a_nonzero_exit() {
    let o = run(ctl().args(["--socket", "/nonexistent/podsnapd.sock", "list"]));
    assert_ne!(o.status.code(), Some(0));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("cannot connect to podsnapd at /nonexistent/podsnapd.sock"),
        "{e}"
    );
}

#[test]
fn image_push_prints_the_id_last_and_pull_restores_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("img");
    std::fs::create_dir_all(&src).unwrap();
    let mut data = vec![0u8; 3 << 20];
    for (i, b) in data.iter_mut().enumerate().skip(1 << 20) {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(src.join("pages.img"), &data).unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let o = run(ctl()
        .args(["image", "push"])
        .arg(&src)
        .args(["--store", &store, "--label", "app=x"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).lines().last().unwrap().trim().to_string();
    assert!(!id.is_empty());

    let o = run(ctl()
        .args(["image", "push"])
        .arg(&src)
        .args(["--store", &store, "--parent", &id, "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bytes_read"].as_u64(), Some(data.len() as u64), "{v}");
    // Nothing changed since the parent: almost nothing is uploaded.
    assert!(v["bytes_uploaded"].as_u64().unwrap() < 64 << 10, "{v}");

    let out = dir.path().join("out");
    let o = run(ctl()
        .args(["image", "pull", &id])
        .arg(&out)
        .args(["--store", &store]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("pages.img")).unwrap(), data);

    // A pull of an unknown snapshot fails and leaves nothing behind.
    let out2 = dir.path().join("out2");
    let o = run(ctl()
        .args(["image", "pull", "20990101T000000Z-00000000"])
        .arg(&out2)
        .args(["--store", &store]));
    assert_ne!(o.status.code(), Some(0));
    assert!(!out2.exists());
}

#[test]
fn keygen_then_encrypted_image_push_needs_the_key_to_pull() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = run(ctl()
        .arg("keygen")
        .arg(&keys)
        .args(["--group", "app=x", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let path = PathBuf::from(v["path"].as_str().unwrap());
    assert_eq!(path, keys.join("group.app_3dx"));
    let key_id = v["key_id"].as_str().unwrap().to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!stdout(&o).contains(std::fs::read_to_string(&path).unwrap().trim()));
    // Never overwritten.
    let o = run(ctl().arg("keygen").arg(&keys).args(["--group", "app=x"]));
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("never replaced"), "{}", stderr(&o));

    let src = dir.path().join("img");
    std::fs::create_dir_all(&src).unwrap();
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(src.join("pages.img"), &data).unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let o = run(ctl()
        .args(["image", "push"])
        .arg(&src)
        .args(["--store", &store, "--group", "app=x", "--key-dir"])
        .arg(&keys));
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).lines().last().unwrap().trim().to_string();
    let o = run(ctl().args(["image", "inspect", &id, "--store", &store]));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["encryption"]["key_id"], key_id.as_str());

    let out = dir.path().join("out");
    let o = run(ctl()
        .args(["image", "pull", &id])
        .arg(&out)
        .args(["--store", &store]));
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("no key for group app=x"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = run(ctl()
        .args(["image", "pull", &id])
        .arg(&out)
        .args(["--store", &store, "--key-dir"])
        .arg(&keys));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("pages.img")).unwrap(), data);
}

fn podsnapd_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_podsnapctl")).with_file_name("podsnapd");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

#[test]
fn daemon_commands_checkpoint_list_inspect_compat_restore_delete() {
    if !require(
        "daemon_commands_checkpoint_list_inspect_compat_restore_delete",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = PodsnapdCmd::new(podsnapd_bin(), dir.path(), "d").spawn();
    let root = daemon.root.clone();
    let s = daemon.sock.display().to_string();
    let id = unique_id("cli");
    let log = dir.path().join("c.log");
    let sb = CounterSandbox::start(&root, &id, &log, &[]).unwrap();
    wait_for_count(&log, 1, Duration::from_secs(30)).unwrap();

    let o = run(ctl().args([
        "--socket",
        &s,
        "checkpoint",
        &id,
        "--label",
        "app=cli",
        "--group-by",
        "app",
        "--keep",
        "1",
        "--stop",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    // Progress goes to stderr (plain lines, not a terminal): stdout is exactly the id.
    let snap = stdout(&o).lines().last().unwrap().trim().to_string();
    assert_eq!(stdout(&o).trim(), snap);
    assert!(
        stderr(&o).lines().any(|l| l.starts_with("checkpoint: ")),
        "no plain progress lines: {}",
        stderr(&o)
    );

    let o = run(ctl().args(["--socket", &s, "list"]));
    assert!(stdout(&o).contains(&snap), "{}", stdout(&o));
    let o = run(ctl().args(["--socket", &s, "list", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().any(|s| s["id"] == snap), "{v}");
    let o = run(ctl().args(["--socket", &s, "jobs", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "checkpoint"),
        "{v}"
    );
    let o = run(ctl().args(["--socket", &s, "inspect", &snap, "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["group"], "app=cli");
    assert_eq!(v["labels"]["app"], "cli");
    assert!(v["source"]["cpu"]["features"].as_array().unwrap().len() > 10);
    let o = run(ctl().args(["--socket", &s, "compat", &snap]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(ctl().args(["--socket", &s, "node-info", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let release = podsnap_testkit::runsc::Release::System
        .release_date()
        .unwrap();
    assert!(
        v["runsc"]["version"]
            .as_str()
            .unwrap()
            .contains(&release.to_string()),
        "{v}"
    );
    let o = run(ctl().args(["--socket", &s, "jobs"]));
    assert!(stdout(&o).contains("checkpoint"), "{}", stdout(&o));

    let new_id = unique_id("clir");
    let rlog = dir.path().join("r.log");
    let o = run(ctl()
        .args(["--socket", &s, "restore", &snap, "--bundle"])
        .arg(sb.bundle.path())
        .args(["--id", &new_id, "--log"])
        .arg(&rlog));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for_count(&rlog, 1, Duration::from_secs(30)).unwrap();
    podsnap_testkit::runsc::RunscCmd::new(&root).force_delete(&new_id);

    let o = run(ctl().args(["--socket", &s, "delete", &snap]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(ctl().args(["--socket", &s, "inspect", &snap]));
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    drop(daemon);
    drop(sb);
}

/// podsnapd killed while `podsnapctl checkpoint` streams its progress: podsnapctl says that
/// the daemon went away, what a restarted daemon does with the job and where to see it (not
/// the transport's "h2 protocol error"); a restarted podsnapd then finishes that job.
#[test]
fn a_daemon_killed_mid_checkpoint_is_explained_and_the_job_finishes_after_restart() {
    use std::io::BufRead;
    if !require(
        "a_daemon_killed_mid_checkpoint_is_explained",
        &[Need::Root, Need::Runsc],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = PodsnapdCmd::new(podsnapd_bin(), dir.path(), "d").spawn();
    let root = daemon.root.clone();
    let s = daemon.sock.display().to_string();
    let id = unique_id("clik");
    let log = dir.path().join("c.log");
    let sb = CounterSandbox::start(&root, &id, &log, &[]).unwrap();
    wait_for_count(&log, 1, Duration::from_secs(30)).unwrap();

    let mut ctl = ctl()
        .args([
            "--socket",
            &s,
            "--progress",
            "plain",
            "checkpoint",
            &id,
            "--stop",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The phase line comes before runsc checkpoint runs (which takes a second or more):
    // the call is mid-stream when the daemon dies.
    let mut lines = std::io::BufReader::new(ctl.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let checkpointing = line.starts_with("checkpoint: checkpointing");
        seen.push(line);
        if checkpointing {
            break;
        }
    }
    daemon.kill9();
    seen.extend(lines.map(|l| l.unwrap()));
    let out = ctl.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{seen:?}");
    assert!(out.stdout.is_empty(), "no snapshot id: {out:?}");
    let last = seen.last().cloned().unwrap_or_default();
    eprintln!("podsnapctl's last line: {last}");
    assert!(
        last.starts_with("podsnapctl: checkpoint failed: podsnapd went away mid-checkpoint"),
        "{seen:?}"
    );
    assert!(
        last.contains("finishes the job or rolls it back: see `podsnapctl jobs`"),
        "{last}"
    );
    assert!(
        !last.contains("h2 protocol error: error reading a body"),
        "{last}"
    );

    // What the message promises: the restarted daemon finishes the job, listed by `jobs`.
    let daemon = PodsnapdCmd::new(podsnapd_bin(), dir.path(), "d").spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let job = loop {
        let o = run(ctl_socket(&s).args(["jobs", "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let job = v.as_array().and_then(|jobs| {
            jobs.iter()
                .find(|j| j["kind"] == "checkpoint" && j["finished_at"] != "")
                .cloned()
        });
        if let Some(job) = job {
            break job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finished checkpoint job: {v} {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job["phase"], "done", "{job}");
    assert_eq!(job["error"], "", "{job}");
    drop(daemon);
    drop(sb);
}

fn ctl_socket(socket: &str) -> Command {
    let mut c = ctl();
    c.args(["--socket", socket]);
    c
}

/// The subcommand paths of every listing command (each must take `--json`).
const LISTING_COMMANDS: &[&[&str]] = &[
    &["list"],
    &["jobs"],
    &["node-info"],
    &["inspect"],
    &["compat"],
    &["image", "ls"],
    &["cpu-features"],
];

#[test]
fn every_listing_command_takes_json() {
    for cmd in LISTING_COMMANDS {
        let o = run(ctl().args(*cmd).arg("--help"));
        assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("--json"), "{cmd:?} --help lacks --json");
    }
    // Offline, so it runs everywhere: `image ls --json` is a JSON array of the manifests.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("img");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("pages.img"), vec![7u8; 64 << 10]).unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let o = run(ctl().args(["image", "ls", "--json", "--store", &store]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!([]));
    let o = run(ctl()
        .args(["image", "push"])
        .arg(&src)
        .args(["--store", &store]));
    let id = stdout(&o).lines().last().unwrap().trim().to_string();
    let o = run(ctl().args(["image", "ls", "--json", "--store", &store]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef podsnapctl"),
        ("fish", "complete -c podsnapctl"),
    ] {
        let o = run(ctl().args(["completions", shell]));
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for word in ["checkpoint", "restore", "node-info", "--group-by", "push"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    // The bash script is valid bash, and completing `podsnapctl chec` offers `checkpoint`.
    let o = run(ctl().args(["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("podsnapctl.bash");
    std::fs::write(&file, &o.stdout).unwrap();
    let probe = format!(
        r#"source {}; COMP_WORDS=(podsnapctl chec); COMP_CWORD=1; COMP_LINE="podsnapctl chec"; COMP_POINT=15; _podsnapctl podsnapctl chec podsnapctl; printf '%s\n' "${{COMPREPLY[@]}}""#,
        file.display()
    );
    let o = run(Command::new("bash").args(["--norc", "-c", &probe]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "checkpoint");
    // An unknown shell is refused.
    let o = run(ctl().args(["completions", "tcsh"]));
    assert_ne!(o.status.code(), Some(0));
}

#[test]
fn man_pages_are_written_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let o = run(ctl().arg("man").arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    for page in [
        "podsnapctl.1",
        "podsnapctl-checkpoint.1",
        "podsnapctl-restore.1",
        "podsnapctl-image.1",
        "podsnapctl-image-push.1",
        "podsnapctl-completions.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is not roff"
        );
    }
    let top = std::fs::read_to_string(out.join("podsnapctl.1")).unwrap();
    assert!(
        top.contains("checkpoint") && top.contains("\\-\\-socket"),
        "{top}"
    );
    // The generator itself is hidden: no page and no mention in --help.
    assert!(!out.join("podsnapctl-man.1").exists());
    let o = run(ctl().arg("--help"));
    assert!(!stdout(&o)
        .lines()
        .any(|l| l.trim_start().starts_with("man ")));
}

fn push_dir(dir: &Path) -> (PathBuf, String) {
    let src = dir.join("img");
    std::fs::create_dir_all(&src).unwrap();
    let data: Vec<u8> = (0..(6usize << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("pages.img"), data).unwrap();
    (src, format!("file://{}", dir.join("store").display()))
}

#[test]
fn image_push_prints_plain_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (src, store) = push_dir(dir.path());
    let o = run(ctl()
        .args(["image", "push"])
        .arg(&src)
        .args(["--store", &store]));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let progress: Vec<&str> = err.lines().filter(|l| l.starts_with("push: ")).collect();
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("push: uploading ") && l.contains(" of 6.0 MiB")),
        "{err}"
    );
    assert!(
        progress.iter().any(|l| l.starts_with("push: committing")),
        "{err}"
    );
    // Lines, not a redrawn bar.
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(
        !stdout(&o).contains("push: "),
        "progress never goes to stdout"
    );

    // --progress none: no progress at all.
    let o = run(ctl()
        .args(["--progress", "none", "image", "push"])
        .arg(&src)
        .args(["--store", &store]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("push: "), "{}", stderr(&o));
}

#[test]
fn image_push_draws_a_progress_bar_in_a_terminal() {
    // `script` gives podsnapctl a pseudo-terminal for stdin, stdout and stderr.
    let missing = Command::new("script")
        .arg("--version")
        .output()
        .is_err()
        .then(|| "script(1) not installed (Debian package bsdutils)".to_string());
    if !podsnap_testkit::require_that("image_push_draws_a_progress_bar_in_a_terminal", missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, store) = push_dir(dir.path());
    let cmd = format!(
        "{} image push {} --store {}",
        env!("CARGO_BIN_EXE_podsnapctl"),
        src.display(),
        store
    );
    let o = run(Command::new("script").args(["-qefc", &cmd, "/dev/null"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let tty = stdout(&o);
    // The bar redraws in place (carriage returns / escape sequences) and has a bar; no plain
    // progress lines.
    assert!(tty.contains('\r') || tty.contains('\x1b'), "{tty:?}");
    assert!(!tty.contains("push: uploading"), "{tty:?}");
}

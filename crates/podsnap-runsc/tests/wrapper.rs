//! The built podsnap-runsc binary against an argv-echo "runsc" and a fake podsnapd (an
//! in-test tonic server that implements only PrepareRestore: the layer above the wrapper;
//! the real daemon is exercised end to end elsewhere).

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::fake_daemon::serve;

const WRAPPER: &str = env!("CARGO_BIN_EXE_podsnap-runsc");

/// A scratch setup: an echo runsc recording each call's argv (NUL-separated) and pid, a
/// config file, a marker dir, a bundle.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(config_extra: &str) -> Setup {
        let s = Setup {
            dir: tempfile::tempdir().unwrap(),
        };
        let d = s.dir.path();
        // The fake runsc: `restore --help` prints the flags of the release it imitates; every
        // other call appends "<pid>\n<argv NUL-separated>\n--\n" to calls and echoes argv.
        let script = format!(
            r#"#!/bin/sh
if [ "$1" = restore ] && [ "$2" = --help ]; then
  cat "{help}" >&2 2>/dev/null; exit 128
fi
{{ echo "$$"; for a in "$@"; do printf '%s\0' "$a"; done; printf '\n--\n'; }} >> "{calls}"
printf '%s\n' "$@"
[ -n "$ECHO_STDERR" ] && printf '%s\n' "$ECHO_STDERR" >&2
case "$ECHO_FORCE_OK $*" in 1*--force*) exit 0;; esac
exit "${{ECHO_EXIT:-0}}"
"#,
            help = d.join("restore-help").display(),
            calls = d.join("calls").display()
        );
        std::fs::write(d.join("echo-runsc"), script).unwrap();
        std::fs::set_permissions(d.join("echo-runsc"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(d.join("restore-help"), "  -detach\n  -image-path string\n").unwrap();
        std::fs::write(
            d.join("podsnap.toml"),
            format!(
                "runsc = \"{}\"\nsocket = \"{}\"\nmarker_dir = \"{}\"\n{config_extra}",
                d.join("echo-runsc").display(),
                d.join("podsnapd.sock").display(),
                d.join("markers").display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("bundle")).unwrap();
        s.write_spec(None);
        std::fs::create_dir_all(d.join("image")).unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn p(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn write_spec(&self, restore_from: Option<&str>) {
        let mut spec = serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/sh"]}});
        if let Some(s) = restore_from {
            spec["annotations"] = serde_json::json!({"podsnap.dev/restore-from": s});
        }
        std::fs::write(self.path("bundle/config.json"), spec.to_string()).unwrap();
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut c = Command::new(WRAPPER);
        c.args(args)
            .env_remove("PODSNAP_RUNSC")
            .env_remove("PODSNAP_SOCKET")
            .env_remove("PODSNAP_MARKER_DIR")
            .env("PODSNAP_CONFIG", self.path("podsnap.toml"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[OsString]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The calls the echo runsc saw: (pid, argv).
    fn calls(&self) -> Vec<(u32, Vec<OsString>)> {
        let bytes = std::fs::read(self.path("calls")).unwrap_or_default();
        let mut out = Vec::new();
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n').unwrap();
            let pid: u32 = std::str::from_utf8(&rest[..nl]).unwrap().parse().unwrap();
            rest = &rest[nl + 1..];
            let end = find(rest, b"\n--\n").unwrap();
            let argv = rest[..end].split(|&b| b == 0).collect::<Vec<_>>();
            let argv = argv[..argv.len() - 1]
                .iter()
                .map(|a| OsStr::from_bytes(a).to_os_string())
                .collect();
            out.push((pid, argv));
            rest = &rest[end + 4..];
        }
        out
    }

    fn last_call(&self) -> Vec<OsString> {
        self.calls().pop().expect("runsc was called").1
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn argv(s: &str) -> Vec<OsString> {
    s.split_whitespace().map(OsString::from).collect()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn pass_through_is_byte_identical_and_adds_no_process() {
    let s = Setup::new("");
    let weird = OsString::from(OsStr::from_bytes(b"caf\xc3\xa9 \xff\xfe"));
    let cases: Vec<Vec<OsString>> = vec![
        argv("--root /r --log /l.json --log-format json state c1"),
        argv("--version"),
        vec![],
        vec![
            "exec".into(),
            "--".into(),
            "".into(),
            " spaced  arg ".into(),
            weird,
            "c1".into(),
        ],
        argv("--root /r start c1"),
        // `run` and `restore` are not `create`: never rewritten.
        argv("--root /r run --bundle /nonexistent c1"),
    ];
    for args in &cases {
        let child = s.command(args).stdout(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let (runsc_pid, seen) = s.calls().pop().unwrap();
        assert_eq!(&seen, args);
        // exec, not spawn: the "runsc" ran in the wrapper's own process.
        assert_eq!(runsc_pid, pid, "{args:?}");
    }
}

#[test]
fn kill_and_delete_run_as_children_with_runscs_output_and_status() {
    let s = Setup::new("");
    for args in [
        argv("--root=/r --systemd-cgroup kill c1 9"),
        argv("--root /r kill --all c1 9"),
        argv("--root /r delete --force c1"),
    ] {
        let out = s.command(&args).env("ECHO_EXIT", "5").output().unwrap();
        assert_eq!(out.status.code(), Some(5), "{args:?}");
        let (_, seen) = s.calls().pop().unwrap();
        assert_eq!(seen, args);
        let echoed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        let want: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(echoed, want);
    }
}

#[test]
fn kill_of_a_gone_sandbox_says_container_not_running() {
    let s = Setup::new("");
    let gone =
        "signaling container \"c1\": connecting to control server at PID 42: connection refused";
    let out = s
        .command(&argv("--root /r kill --all c1 9"))
        .env("ECHO_EXIT", "128")
        .env("ECHO_STDERR", gone)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128));
    let err = String::from_utf8_lossy(&out.stderr);
    // The shim maps "container not running" to not-found; runsc's own line stays.
    assert!(err.contains(gone), "{err}");
    assert!(err.contains("container not running"), "{err}");
    // Any other failure is left as runsc said it.
    let out = s
        .command(&argv("--root /r kill c1 9"))
        .env("ECHO_EXIT", "128")
        .env("ECHO_STDERR", "permission denied")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn delete_refused_without_force_is_retried_with_force() {
    let s = Setup::new("");
    let out = s
        .command(&argv("--root /r delete c1"))
        .env("ECHO_EXIT", "128")
        .env(
            "ECHO_STDERR",
            "cannot delete container that is not stopped without --force flag",
        )
        .env("ECHO_FORCE_OK", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let calls: Vec<Vec<OsString>> = s.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(
        calls,
        vec![
            argv("--root /r delete c1"),
            argv("--root /r delete --force c1")
        ]
    );
}

#[test]
fn exit_status_stdout_and_env_pass_through() {
    let s = Setup::new("");
    let out = s
        .command(&argv("--root /r state c1"))
        .env("ECHO_EXIT", "7")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "--root\n/r\nstate\nc1\n"
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn non_create_calls_never_touch_the_socket_or_the_bundle() {
    let s = Setup::new("");
    // A listening socket: any connection attempt would be queued and seen by accept().
    let listener = std::os::unix::net::UnixListener::bind(s.path("podsnapd.sock")).unwrap();
    listener.set_nonblocking(true).unwrap();
    s.write_spec(Some("snap-1"));
    let b = s.p("bundle");
    for args in [
        "--root /r start c1".to_string(),
        "--root /r state c1".to_string(),
        "--root /r delete c1".to_string(),
        format!("--root /r run --bundle {b} c1"),
        format!("--root /r restore --image-path /i --bundle {b} c1"),
        "--root /r exec c1 /bin/true".to_string(),
    ] {
        let out = s.run(&argv(&args));
        assert!(out.status.success(), "{args}: {out:?}");
        assert_eq!(s.last_call(), argv(&args));
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the wrapper connected to the daemon socket: {other:?}"),
    }
    // The bundle was not read either: make it unreadable garbage and nothing changes.
    std::fs::write(s.path("bundle/config.json"), b"\xff not json").unwrap();
    let out = s.run(&argv(&format!("--root /r run --bundle {b} c1")));
    assert!(out.status.success());
}

#[test]
fn create_without_annotation_passes_through_without_the_daemon() {
    let s = Setup::new("");
    // No daemon at all on the socket path.
    let args = argv(&format!(
        "--root /r --log /tmp/x.json --log-format json create --bundle {} --pid-file /p c1",
        s.p("bundle")
    ));
    let out = s.run(&args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(s.last_call(), args);
}

#[test]
fn annotated_create_becomes_restore_and_start_is_answered() {
    let s = Setup::new("restore_mode = \"replace-create\"\n");
    let seen = serve(&s.path("podsnapd.sock"), "snap-1", &s.path("image"));
    s.write_spec(Some("snap-1"));
    let (b, img, log) = (s.p("bundle"), s.p("image"), s.p("log.json"));
    let globals = format!("--root /run/r --log {log} --log-format json");
    let create = argv(&format!(
        "{globals} create --bundle {b} --pid-file {b}/init.pid --console-socket /tmp/cs.sock c1"
    ));
    let out = s.run(&create);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        s.last_call(),
        argv(&format!(
            "{globals} restore --image-path {img} --detach --bundle {b} --pid-file {b}/init.pid --console-socket /tmp/cs.sock c1"
        ))
    );
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].snapshot_id, "snap-1");
    assert_eq!(reqs[0].container_id, "c1");

    // start: answered by the wrapper, runsc not called.
    let n = s.calls().len();
    let out = s.run(&argv(&format!("{globals} start c1")));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(s.calls().len(), n);
    // Another root's container of the same id is not affected.
    let out = s.run(&argv("--root /run/other start c1"));
    assert!(out.status.success());
    assert_eq!(s.calls().len(), n + 1);

    // delete clears the marker: a later start goes to runsc.
    let out = s.run(&argv(&format!("{globals} delete --force c1")));
    assert!(out.status.success());
    assert_eq!(s.last_call(), argv(&format!("{globals} delete --force c1")));
    s.run(&argv(&format!("{globals} start c1")));
    assert_eq!(s.last_call(), argv(&format!("{globals} start c1")));
}

#[test]
fn create_with_runsc_flags_and_flag_equals_forms() {
    let s = Setup::new("restore_mode = \"replace-create\"\nrunsc_flags = [\"--network=none\"]\n");
    serve(&s.path("podsnapd.sock"), "snap-1", &s.path("image"));
    s.write_spec(Some("snap-1"));
    let (b, img) = (s.p("bundle"), s.p("image"));
    let out = s.run(&argv(&format!(
        "--root=/r --systemd-cgroup create --bundle={b} c2"
    )));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        s.last_call(),
        argv(&format!(
            "--network=none --root=/r --systemd-cgroup restore --image-path {img} --detach --bundle={b} c2"
        ))
    );
    // Pass-through calls get the flags too.
    s.run(&argv("--root=/r state c2"));
    assert_eq!(s.last_call(), argv("--network=none --root=/r state c2"));
}

#[test]
fn refused_restore_fails_the_create_with_the_daemons_reason() {
    let s = Setup::new("restore_mode = \"replace-create\"\n");
    serve(&s.path("podsnapd.sock"), "snap-1", &s.path("image"));
    for (snapshot, reason) in [
        (
            "snap-missing",
            "snapshot snap-missing not found in the store (NOT_FOUND)",
        ),
        (
            "snap-incompatible",
            "needs CPU features this node lacks: avx512f, amx_tile (FAILED_PRECONDITION)",
        ),
    ] {
        s.write_spec(Some(snapshot));
        let log = s.path(&format!("{snapshot}.json"));
        let args = argv(&format!(
            "--root /r --log {} --log-format json create --bundle {} c1",
            log.display(),
            s.p("bundle")
        ));
        let out = s.run(&args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!(
                "podsnap-runsc: cannot restore container c1 from snapshot {snapshot}: "
            )),
            "{lines:?}"
        );
        assert!(lines[0].contains(reason), "{lines:?}");
        assert!(s.calls().is_empty(), "runsc must not run");
        // The same line, as runsc's JSON log, for the shim to report.
        let text = std::fs::read_to_string(&log).unwrap();
        let j: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(j["level"], "error");
        assert_eq!(j["msg"], lines[0].as_str());
        // No marker: a start goes to runsc.
        s.run(&argv("--root /r start c1"));
        assert_eq!(s.last_call(), argv("--root /r start c1"));
        std::fs::remove_file(s.path("calls")).unwrap();
    }
}

#[test]
fn daemon_down_fails_the_create_with_one_line() {
    let s = Setup::new("restore_mode = \"replace-create\"\n");
    s.write_spec(Some("snap-1"));
    let out = s.run(&argv(&format!(
        "--root /r create --bundle {} c1",
        s.p("bundle")
    )));
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!(
            "cannot reach podsnapd at {}",
            s.p("podsnapd.sock")
        )),
        "{lines:?}"
    );
    assert!(s.calls().is_empty());
}

#[test]
fn env_overrides_config_for_runsc_and_socket() {
    let s = Setup::new("restore_mode = \"replace-create\"\n");
    // The config names a socket nobody serves; PODSNAP_SOCKET names the served one.
    let served = s.path("other.sock");
    serve(&served, "snap-1", &s.path("image"));
    s.write_spec(Some("snap-1"));
    // A second echo runsc that records into calls2.
    let script = std::fs::read_to_string(s.path("echo-runsc"))
        .unwrap()
        .replace(&s.p("calls"), &s.p("calls2"));
    std::fs::write(s.path("echo-runsc-2"), script).unwrap();
    std::fs::set_permissions(
        s.path("echo-runsc-2"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = s
        .command(&argv(&format!(
            "--root /r create --bundle {} c1",
            s.p("bundle")
        )))
        .env("PODSNAP_SOCKET", format!("unix://{}", served.display()))
        .env("PODSNAP_RUNSC", s.path("echo-runsc-2"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(s.calls().is_empty(), "the config's runsc ran");
    std::fs::rename(s.path("calls2"), s.path("calls")).unwrap();
    assert_eq!(
        s.last_call(),
        argv(&format!(
            "--root /r restore --image-path {} --detach --bundle {} c1",
            s.p("image"),
            s.p("bundle")
        ))
    );
}

#[test]
fn current_runsc_restores_on_start_instead() {
    // restore_mode auto, and a runsc whose restore has --background (current releases).
    let s = Setup::new("");
    std::fs::write(s.path("restore-help"), "  -background\n  -detach\n").unwrap();
    serve(&s.path("podsnapd.sock"), "snap-1", &s.path("image"));
    s.write_spec(Some("snap-1"));
    let (b, img) = (s.p("bundle"), s.p("image"));
    let create = argv(&format!("--root /r create --bundle {b} --pid-file /p c1"));
    let out = s.run(&create);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(s.last_call(), create);
    let out = s.run(&argv("--root /r start c1"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        s.last_call(),
        argv(&format!(
            "--root /r restore --image-path {img} --detach --bundle {b} c1"
        ))
    );
}

#[test]
fn refuses_to_run_itself_as_runsc() {
    let s = Setup::new("");
    let out = s
        .command(&argv("--root /r state c1"))
        .env("PODSNAP_RUNSC", WRAPPER)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("is podsnap-runsc itself"), "{lines:?}");
}

#[test]
fn bad_config_is_one_clear_line() {
    let s = Setup::new("sockett = \"/x\"\n");
    let out = s.run(&argv("--root /r state c1"));
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("podsnap-runsc: invalid config "),
        "{lines:?}"
    );
    assert!(lines[0].contains("sockett"), "{lines:?}");
}

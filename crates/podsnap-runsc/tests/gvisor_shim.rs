//! The built podsnap-runsc in its gVisor-shim mode (`shim = "gvisor"`) against an argv-echo
//! "runsc": every call is exec'd unchanged (same process, no waiter holding the caller's
//! stdout, no pid-file substitution), which is what gVisor's containerd shim needs (it reads
//! most calls' output to EOF). The end-to-end path (containerd 2.4.2, the shim, a pod
//! restored through the CRI with its counter continuing) runs in the cluster suite,
//! tests/cluster, whose default cluster has this mode as the shim's `binary_name`: containerd
//! 2.x and the shim come from the cluster's and gVisor's build caches, which `make test` must
//! not wait for.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const WRAPPER: &str = env!("CARGO_BIN_EXE_podsnap-runsc");

fn setup(dir: &Path) {
    let script = format!(
        "#!/bin/sh\n{{ echo \"$$\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done; printf '\\n'; }} >> \"{}\"\necho out-$1\n",
        dir.join("calls").display()
    );
    std::fs::write(dir.join("echo-runsc"), script).unwrap();
    std::fs::set_permissions(
        dir.join("echo-runsc"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.join("podsnap.toml"),
        format!(
            "runsc = \"{}\"\nsocket = \"{}\"\nmarker_dir = \"{}\"\nshim = \"gvisor\"\n",
            dir.join("echo-runsc").display(),
            dir.join("podsnapd.sock").display(),
            dir.join("markers").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("bundle")).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-id": "sb"
        }
    });
    std::fs::write(dir.join("bundle/config.json"), spec.to_string()).unwrap();
}

/// Runs the wrapper with `args`, its stdout a pipe read to EOF (as the shim does), within a
/// deadline: a helper left holding the pipe would make this time out.
fn run(dir: &Path, args: &[&str]) -> (u32, String) {
    let mut child = Command::new(WRAPPER)
        .args(args)
        .env("PODSNAP_CONFIG", dir.join("podsnap.toml"))
        .env_remove("PODSNAP_RUNSC")
        .env_remove("PODSNAP_SOCKET")
        .env_remove("PODSNAP_SHIM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        let _ = tx.send(s);
    });
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("stdout reached EOF (nothing left holding it)");
    let status = child.wait().unwrap();
    assert!(status.success(), "{args:?}: {status}");
    (pid, out)
}

fn calls(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let text = std::fs::read(dir.join("calls")).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| {
            let argv = c[1]
                .split('\0')
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect();
            (c[0].parse().unwrap(), argv)
        })
        .collect()
}

#[test]
fn every_call_of_an_unannotated_pod_container_is_execd_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let bundle = d.join("bundle").display().to_string();
    let pid_file = d.join("init.pid").display().to_string();
    let root = format!("--root={}", d.join("root").display());
    let cases: Vec<Vec<&str>> = vec![
        vec![
            &root,
            "--log=/dev/null",
            "create",
            "--bundle",
            &bundle,
            "--pid-file",
            &pid_file,
            "c1",
        ],
        vec![&root, "start", "c1"],
        vec![&root, "wait", "c1"],
        vec![&root, "kill", "--all", "c1", "9"],
        vec![&root, "delete", "--force", "c1"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let (pid, out) = run(d, args);
        let got = calls(d);
        assert_eq!(got.len(), i + 1, "one runsc call per call: {got:?}");
        let (runsc_pid, argv) = &got[i];
        assert_eq!(
            *runsc_pid, pid,
            "{args:?}: runsc is the wrapper's own process (exec)"
        );
        assert_eq!(argv, args, "argv unchanged");
        assert_eq!(out, format!("out-{}\n", args[0]), "runsc's own output");
    }
    assert!(
        !Path::new(&pid_file).exists(),
        "no pid file of the wrapper's"
    );
    assert!(
        !d.join("markers").exists()
            || std::fs::read_dir(d.join("markers"))
                .unwrap()
                .next()
                .is_none(),
        "no waiter records or markers"
    );
}

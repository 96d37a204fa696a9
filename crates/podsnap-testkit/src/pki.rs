//! A throwaway PKI for TLS tests, made with the openssl CLI: a CA, a server certificate for
//! 127.0.0.1 and a client certificate, in `ca.pem`/`ca.key`, `server.pem`/`server.key` and
//! `client.pem`/`client.key`.

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether the openssl CLI runs here.
pub fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok()
}

/// For a test that needs openssl: true if it runs here; otherwise (through
/// [`crate::require_that`]) says the test is skipped and returns false, or fails saying why
/// when privileged tests are required (`make test` as root, CI).
pub fn require_openssl() -> bool {
    let missing = (!openssl_available())
        .then(|| "the openssl CLI does not run here (Debian package openssl)".to_string());
    crate::require_that("a TLS test (its throwaway PKI)", missing)
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(st.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA.
pub fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=podsnap-test-ca",
        ],
    );
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

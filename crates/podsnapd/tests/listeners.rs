//! The listeners a deployment relies on: TCP only with TLS and client certificates, and the
//! plaintext health-only listener a kubelet gRPC probe reaches. Certificates are made with
//! the openssl CLI; no runsc is needed (the daemon starts without it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// podsnapd with the test PKI's server certificate, a file store and no runsc, plus `args`.
fn daemon(dir: &std::path::Path, args: &[String]) -> Guard {
    let p = |n: &str| dir.join(n).display().to_string();
    Guard(
        Command::new(env!("CARGO_BIN_EXE_podsnapd"))
            .args(args)
            .arg(format!("--tls-cert={}", p("server.pem")))
            .arg(format!("--tls-key={}", p("server.key")))
            .arg(format!("--tls-client-ca={}", p("ca.pem")))
            .arg(format!("--store=file://{}", p("store")))
            .arg(format!("--state-dir={}", p("state")))
            .arg("--runsc=/nonexistent/runsc")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("d.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn tcp_requires_client_certificates_and_the_health_listener_serves_only_health() {
    if !podsnap_testkit::pki::require_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    podsnap_testkit::pki::make_pki(dir.path());
    let (port, health) = (free_port(), free_port());
    let p = |n: &str| dir.path().join(n).display().to_string();
    let _d = daemon(
        dir.path(),
        &[
            format!("--listen=127.0.0.1:{port}"),
            format!("--health-listen=127.0.0.1:{health}"),
        ],
    );
    wait_port(port);
    wait_port(health);
    let ca = Certificate::from_pem(std::fs::read(p("ca.pem")).unwrap());
    let endpoint = || Channel::from_shared(format!("https://127.0.0.1:{port}")).unwrap();

    // With a client certificate: served.
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("127.0.0.1")
        .identity(Identity::from_pem(
            std::fs::read(p("client.pem")).unwrap(),
            std::fs::read(p("client.key")).unwrap(),
        ));
    let ch = endpoint()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("mTLS connects");
    let info = PodsnapClient::new(ch)
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .expect("node info over mTLS")
        .into_inner();
    assert!(info.store_url.starts_with("file://"), "{info:?}");
    assert!(info.runsc.is_none(), "runsc is missing, so no runsc facts");

    // Without one: refused.
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("127.0.0.1");
    let refused = match endpoint().tls_config(tls).unwrap().connect().await {
        Err(_) => true,
        Ok(ch) => PodsnapClient::new(ch)
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // Plaintext, on the main port: refused.
    let plain = match Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => PodsnapClient::new(ch)
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .is_err(),
    };
    assert!(plain, "plaintext was served on the TLS port");

    // The health listener: plaintext, grpc.health.v1 SERVING, and nothing else.
    let ch = Channel::from_shared(format!("http://127.0.0.1:{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let st = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "podsnap.v1.Podsnap".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let e = PodsnapClient::new(ch)
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
}

#[tokio::test]
async fn listen_tls_serves_the_controller_beside_the_unix_socket() {
    if !podsnap_testkit::pki::require_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    podsnap_testkit::pki::make_pki(dir.path());
    let port = free_port();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let socket = dir.path().join("d.sock");
    let _d = daemon(
        dir.path(),
        &[
            format!("--listen=unix://{}", socket.display()),
            format!("--listen-tls=127.0.0.1:{port}"),
        ],
    );
    wait_port(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The socket, as podsnap-runsc and podsnapctl use it.
    let over_socket = podsnap_proto::client::podsnapd(&socket)
        .await
        .expect("socket connects")
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .expect("node info over the socket")
        .into_inner();
    // The TLS listener, with a client certificate, as podsnap-controller uses it.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(p("ca.pem")).unwrap()))
        .domain_name("127.0.0.1")
        .identity(Identity::from_pem(
            std::fs::read(p("client.pem")).unwrap(),
            std::fs::read(p("client.key")).unwrap(),
        ));
    let ch = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("mTLS connects");
    let over_tls = PodsnapClient::new(ch)
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .expect("node info over --listen-tls")
        .into_inner();
    assert_eq!(over_socket.store_url, over_tls.store_url);
    assert_eq!(over_socket.node_name, over_tls.node_name);
    // And without a client certificate it is refused.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(p("ca.pem")).unwrap()))
        .domain_name("127.0.0.1");
    let refused = match Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => PodsnapClient::new(ch)
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .is_err(),
    };
    assert!(
        refused,
        "--listen-tls served a client without a certificate"
    );
}

/// A `--metrics-listen` address that cannot be bound fails the start, saying which flag,
/// instead of leaving a running daemon without metrics.
#[test]
fn a_metrics_port_in_use_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_podsnapd"))
        .arg(format!("--listen=unix://{}", p("d.sock")))
        .arg(format!("--store=file://{}", p("store")))
        .arg(format!("--state-dir={}", p("state")))
        .arg("--runsc=/nonexistent/runsc")
        .arg(format!("--metrics-listen=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("podsnapd kept running with its metrics port in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("binding --metrics-listen 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        !dir.path().join("d.sock").exists(),
        "the gRPC socket appeared before the metrics listener was bound"
    );
    drop(held);
}

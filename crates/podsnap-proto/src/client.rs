//! The one gRPC connector over a Unix socket (feature `client`), for podsnapd's clients
//! (podsnapctl, podsnap-runsc, tests) and for podsnap-runtime's containerd client.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::v1::podsnap_client::PodsnapClient;

/// An endpoint for [`connect_unix_with`]. Its URI is required by tonic but not used to
/// connect; it gives the `:authority` every request carries, `localhost` (what grpc-go sends
/// over a Unix socket, and what every server accepts).
pub fn unix_endpoint() -> Endpoint {
    Endpoint::from_static("http://localhost")
}

/// The socket path of `unix:///PATH` or `PATH`.
pub fn socket_path(s: &str) -> PathBuf {
    PathBuf::from(s.strip_prefix("unix://").unwrap_or(s))
}

/// Connects `endpoint` (timeouts and limits set by the caller, see [`unix_endpoint`]) to the
/// Unix socket at `path`.
pub async fn connect_unix_with(
    endpoint: Endpoint,
    path: impl Into<PathBuf>,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.into();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Connects to the Unix socket at `path` with tonic's defaults.
pub async fn connect_unix(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    connect_unix_with(unix_endpoint(), path).await
}

/// A client of podsnapd on its Unix socket at `path`.
pub async fn podsnapd(path: &Path) -> Result<PodsnapClient<Channel>, tonic::transport::Error> {
    Ok(PodsnapClient::new(connect_unix(path).await?))
}

/// One line: the error and its sources, `: `-separated, a source whose text the line already
/// holds left out (messages do not repeat their sources, but some libraries' do).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(&'static str, std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn a_chain_is_one_line_without_repeats() {
        let io = || std::io::Error::other("disk\nfull");
        assert_eq!(
            error_chain(&Outer("writing x", io())),
            "writing x: disk full"
        );
        assert_eq!(
            error_chain(&Outer("writing x: disk\nfull", io())),
            "writing x: disk full"
        );
    }

    #[test]
    fn socket_paths_take_the_unix_scheme_or_none() {
        assert_eq!(
            socket_path("unix:///run/p.sock"),
            PathBuf::from("/run/p.sock")
        );
        assert_eq!(socket_path("/run/p.sock"), PathBuf::from("/run/p.sock"));
    }

    #[tokio::test]
    async fn a_missing_socket_fails_with_its_cause_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_unix(dir.path().join("none.sock"))
            .await
            .unwrap_err();
        let line = error_chain(&err);
        assert!(line.contains("No such file or directory"), "{line}");
    }
}

//! A gRPC client of podsnapd over its Unix socket, for tools and tests in Rust.

use std::path::Path;

use hyper_util::rt::TokioIo;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to podsnapd's Unix socket at `path`.
pub async fn connect_unix(path: &Path) -> Result<PodsnapClient<Channel>, tonic::transport::Error> {
    let p = path.to_path_buf();
    let channel = Endpoint::from_static("http://podsnapd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await?;
    Ok(PodsnapClient::new(channel))
}

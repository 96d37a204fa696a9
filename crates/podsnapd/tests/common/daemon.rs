//! A podsnapd binary with its metrics on a free local port, for the process-level tests that
//! read the daemon's own counters.

use podsnap_proto::v1::podsnap_client::PodsnapClient;
use podsnap_testkit::daemon::{Podsnapd, PodsnapdCmd};
use podsnap_testkit::metrics::Exposition;
use tonic::transport::Channel;

/// A running podsnapd (derefs to [`Podsnapd`]) whose `/metrics` can be scraped.
pub struct Daemon {
    p: Podsnapd,
    metrics_port: u16,
}

impl std::ops::Deref for Daemon {
    type Target = Podsnapd;
    fn deref(&self) -> &Podsnapd {
        &self.p
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Podsnapd {
        &mut self.p
    }
}

impl Daemon {
    /// Spawns `cmd` with `--metrics-listen` on a free local port.
    pub fn spawn(cmd: PodsnapdCmd) -> Daemon {
        let metrics_port = podsnap_testkit::moto::free_port().unwrap();
        Daemon {
            p: cmd
                .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
                .spawn(),
            metrics_port,
        }
    }

    pub async fn client(&self) -> PodsnapClient<Channel> {
        podsnap_proto::client::podsnapd(&self.p.sock).await.unwrap()
    }

    /// Scrapes `/metrics` over HTTP and parses the exposition.
    pub fn metrics(&self) -> Exposition {
        Exposition::scrape(self.metrics_port)
    }
}

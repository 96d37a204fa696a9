//! Finding a node's podsnapd and calling it.
//!
//! Endpoint of node N: the Node's annotation `podsnap.dev/podsnapd-endpoint` when set
//! (`https://HOST:PORT`, or `unix:///PATH` for a controller on that node), otherwise
//! `https://<N's InternalIP>:<--podsnapd-port>` (the DaemonSet's `--listen-tls`, host network).
//! Over TCP both sides authenticate: podsnapd's certificate must name `--podsnapd-server-name`
//! (every node's podsnapd may share one certificate) and chain to `--podsnapd-ca`; the
//! controller presents `--podsnapd-cert`, which podsnapd's `--tls-client-ca` must accept.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use podsnap_proto::v1 as pb;
use podsnap_proto::v1::podsnap_client::PodsnapClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::{NodeApi, Started};
use crate::Error;

pub const ENDPOINT_ANNOTATION: &str = "podsnap.dev/podsnapd-endpoint";

/// The controller's side of the mutual TLS, and the defaults of discovery.
#[derive(Clone)]
pub struct NodesConfig {
    pub port: u16,
    pub server_name: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for NodesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodesConfig")
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

pub struct Nodes {
    client: kube::Client,
    cfg: NodesConfig,
}

/// A connected podsnapd, and where it is (for messages).
pub struct NodeClient {
    pub node: String,
    pub endpoint: String,
    pub client: PodsnapClient<Channel>,
    traceparent: String,
}

impl NodeClient {
    /// `req` as a request carrying this reconcile's trace context.
    pub fn request<T>(&self, req: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(req);
        if let Ok(v) = self.traceparent.parse() {
            r.metadata_mut().insert("traceparent", v);
        }
        r
    }

    /// An error of this node's podsnapd, with its status message.
    pub fn error(&self, what: &str, s: &tonic::Status) -> Error {
        Error::Podsnapd {
            node: self.node.clone(),
            endpoint: self.endpoint.clone(),
            message: format!("{what}: {} ({:?})", s.message(), s.code()),
            code: s.code(),
        }
    }
}

/// The endpoint of a node from its annotation or its InternalIP (pure; see the module docs).
pub fn endpoint_of(node: &Node, port: u16) -> Result<String, Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    if let Some(e) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENDPOINT_ANNOTATION))
    {
        if e.starts_with("https://") || e.starts_with("unix:///") {
            return Ok(e.clone());
        }
        return Err(Error::Invalid(format!(
            "node {name}: annotation {ENDPOINT_ANNOTATION}={e:?} is neither https://HOST:PORT nor unix:///PATH"
        )));
    }
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let ip = addrs
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .or_else(|| addrs.iter().find(|a| a.type_ == "ExternalIP"))
        .map(|a| a.address.clone())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "node {name} reports no InternalIP and has no {ENDPOINT_ANNOTATION} annotation"
            ))
        })?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Ok(format!("https://{host}:{port}"))
}

impl Nodes {
    pub fn new(client: kube::Client, cfg: NodesConfig) -> Self {
        Nodes { client, cfg }
    }

    /// Connects to the podsnapd of `node`.
    pub async fn connect(&self, node: &str, traceparent: &str) -> Result<NodeClient, Error> {
        let n = Api::<Node>::all(self.client.clone())
            .get_opt(node)
            .await?
            .ok_or_else(|| Error::NotFound(format!("node {node} does not exist")))?;
        let endpoint = endpoint_of(&n, self.cfg.port)?;
        let fail_with = |code: tonic::Code, message: String| Error::Podsnapd {
            node: node.to_string(),
            endpoint: endpoint.clone(),
            message,
            code,
        };
        let fail = |message: String| fail_with(tonic::Code::Unavailable, message);
        let channel = if let Some(path) = endpoint.strip_prefix("unix://") {
            podsnap_proto::client::connect_unix_with(
                podsnap_proto::client::unix_endpoint().connect_timeout(self.cfg.connect_timeout),
                path,
            )
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot connect: {}",
                    podsnap_proto::client::error_chain(&e)
                ))
            })?
        } else {
            if self.cfg.cert_pem.is_empty() || self.cfg.ca_pem.is_empty() {
                return Err(fail_with(
                    tonic::Code::FailedPrecondition,
                    "no client certificate: start podsnap-controller with --podsnapd-ca, \
                     --podsnapd-cert and --podsnapd-key to reach podsnapd over mutual TLS"
                        .into(),
                ));
            }
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&self.cfg.ca_pem))
                .identity(Identity::from_pem(&self.cfg.cert_pem, &self.cfg.key_pem))
                .domain_name(self.cfg.server_name.clone());
            Endpoint::from_shared(endpoint.clone())
                .map_err(|e| fail_with(tonic::Code::InvalidArgument, format!("bad endpoint: {e}")))?
                .tls_config(tls)
                .map_err(|e| {
                    fail_with(
                        tonic::Code::FailedPrecondition,
                        format!("TLS configuration: {e}"),
                    )
                })?
                .connect_timeout(self.cfg.connect_timeout)
                .connect()
                .await
                .map_err(|e| {
                    fail(format!(
                        "cannot connect (is podsnapd running there with --listen-tls?): {}",
                        podsnap_proto::client::error_chain(&e)
                    ))
                })?
        };
        Ok(NodeClient {
            node: node.to_string(),
            endpoint,
            client: PodsnapClient::new(channel).max_decoding_message_size(64 << 20),
            traceparent: traceparent.to_string(),
        })
    }

    /// Every node's name, the preferred one first (to reach some podsnapd sharing a store).
    pub async fn names(&self, preferred: Option<&str>) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = Api::<Node>::all(self.client.clone())
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        names.sort();
        if let Some(p) = preferred {
            names.retain(|n| n != p);
            names.insert(0, p.to_string());
        }
        Ok(names)
    }
}

#[async_trait::async_trait]
impl NodeApi for Nodes {
    async fn store_url(&self, node: &str, tp: &str) -> Result<String, Error> {
        Ok(self.node_info(node, tp).await?.store_url)
    }

    async fn node_info(&self, node: &str, tp: &str) -> Result<pb::NodeInfo, Error> {
        let nc = self.connect(node, tp).await?;
        let info = nc
            .client
            .clone()
            .get_node_info(nc.request(pb::GetNodeInfoRequest {}))
            .await
            .map_err(|s| nc.error("node info", &s))?;
        Ok(info.into_inner())
    }

    async fn start_checkpoint(
        &self,
        node: &str,
        tp: &str,
        req: pb::CheckpointRequest,
    ) -> Result<Started, Error> {
        let nc = self.connect(node, tp).await?;
        let mut stream = nc
            .client
            .clone()
            .checkpoint(nc.request(req))
            .await
            .map_err(|s| nc.error("checkpoint", &s))?
            .into_inner();
        // podsnapd runs the job in a task of its own: dropping the stream leaves it running.
        while let Some(ev) = stream.next().await {
            match ev.map_err(|s| nc.error("checkpoint", &s))?.event {
                Some(pb::checkpoint_event::Event::Progress(p)) if !p.job_id.is_empty() => {
                    return Ok(Started::Job(p.job_id))
                }
                Some(pb::checkpoint_event::Event::Snapshot(s)) => {
                    return Ok(Started::Done(Box::new(s)))
                }
                _ => {}
            }
        }
        Err(Error::Podsnapd {
            node: node.to_string(),
            endpoint: nc.endpoint.clone(),
            message: "the checkpoint stream ended without a job or a snapshot".into(),
            code: tonic::Code::Unknown,
        })
    }

    async fn jobs(&self, node: &str, tp: &str) -> Result<Vec<pb::Job>, Error> {
        let nc = self.connect(node, tp).await?;
        let r = nc
            .client
            .clone()
            .list_jobs(nc.request(pb::ListJobsRequest {}))
            .await
            .map_err(|s| nc.error("list jobs", &s))?;
        Ok(r.into_inner().jobs)
    }

    async fn snapshot(&self, node: &str, tp: &str, id: &str) -> Result<pb::Snapshot, Error> {
        let nc = self.connect(node, tp).await?;
        let r = nc
            .client
            .clone()
            .get_snapshot(nc.request(pb::GetSnapshotRequest {
                snapshot_id: id.to_string(),
            }))
            .await
            .map_err(|s| nc.error("get snapshot", &s))?;
        Ok(r.into_inner())
    }

    async fn find_snapshots(
        &self,
        node: &str,
        tp: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Snapshot>, Error> {
        let nc = self.connect(node, tp).await?;
        let r = nc
            .client
            .clone()
            .list_snapshots(nc.request(pb::ListSnapshotsRequest {
                group: String::new(),
                labels: labels.into_iter().collect(),
            }))
            .await
            .map_err(|s| nc.error("list snapshots", &s))?;
        Ok(r.into_inner().snapshots)
    }

    async fn delete_snapshot(&self, node: &str, tp: &str, id: &str) -> Result<(), Error> {
        let nc = self.connect(node, tp).await?;
        let r = nc
            .client
            .clone()
            .delete_snapshot(nc.request(pb::DeleteSnapshotRequest {
                snapshot_id: id.to_string(),
            }))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(nc.error("delete", &s)),
        }
    }

    async fn names(&self, preferred: Option<&str>) -> Result<Vec<String>, Error> {
        Nodes::names(self, preferred).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn endpoints_come_from_the_annotation_or_the_internal_ip() {
        let n = node(json!({"metadata": {"name": "n1"}, "status": {"addresses": [
            {"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}]}}));
        assert_eq!(endpoint_of(&n, 9443).unwrap(), "https://10.0.0.5:9443");
        let v6 = node(json!({"metadata": {"name": "n1"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "fd00::5"}]}}));
        assert_eq!(endpoint_of(&v6, 1).unwrap(), "https://[fd00::5]:1");
        let ann = node(
            json!({"metadata": {"name": "n1", "annotations": {ENDPOINT_ANNOTATION: "unix:///run/p.sock"}}}),
        );
        assert_eq!(endpoint_of(&ann, 1).unwrap(), "unix:///run/p.sock");
        let bad = node(
            json!({"metadata": {"name": "n1", "annotations": {ENDPOINT_ANNOTATION: "10.0.0.1:1"}}}),
        );
        assert!(endpoint_of(&bad, 1)
            .unwrap_err()
            .to_string()
            .contains("neither"));
        let none = node(json!({"metadata": {"name": "n1"}}));
        assert!(endpoint_of(&none, 1)
            .unwrap_err()
            .to_string()
            .contains("no InternalIP"));
    }
}

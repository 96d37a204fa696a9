//! The mutating admission webhook's HTTPS server (`POST /mutate-pods`, `GET /healthz`) and
//! its registration as the MutatingWebhookConfiguration `podsnap-controller`.
//!
//! The serving certificate is either given (`--webhook-cert`/`--webhook-key`, with the CA
//! that signed it as `--webhook-ca`) or made at start: a self-signed certificate for the
//! `--webhook-host` names, whose PEM the registration then carries as its `caBundle`. The
//! registration points the API server at `--webhook-url` (a URL it can reach, e.g.
//! `https://127.0.0.1:9444/mutate-pods` for a controller on the API server's host) or at a
//! Service (`--webhook-service NAMESPACE/NAME`). `failurePolicy: Ignore`: a controller that
//! is down delays no pod; such a pod starts fresh (its snapshot stays in the store).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use kube::Api;
use serde_json::json;
use tracing::{info, warn};

use crate::restore::{decide, Decision};
use crate::{Ctx, Error};

pub const CONFIGURATION_NAME: &str = "podsnap-controller";
pub const PATH: &str = "/mutate-pods";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum ClientConfig {
    Url(String),
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

/// The serving certificate and the CA the API server must trust for it (all PEM).
#[derive(Clone)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

/// A self-signed certificate for `hosts` (IP addresses become IP SANs).
pub fn self_signed(hosts: &[String]) -> Result<ServingCert, Error> {
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| Error::Invalid(format!("making the webhook's certificate: {e}")))?;
    let cert_pem = ck.cert.pem();
    Ok(ServingCert {
        ca_pem: cert_pem.clone(),
        cert_pem,
        key_pem: ck.signing_key.serialize_pem(),
    })
}

/// Registers (server-side apply) the MutatingWebhookConfiguration for pod CREATE.
pub async fn register(
    client: &kube::Client,
    target: &ClientConfig,
    ca_pem: &str,
    exclude_namespaces: &[String],
) -> Result<(), Error> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let client_config = match target {
        ClientConfig::Url(u) => json!({"url": u, "caBundle": ca}),
        ClientConfig::Service {
            namespace,
            name,
            port,
        } => {
            json!({"service": {"namespace": namespace, "name": name, "path": PATH, "port": port}, "caBundle": ca})
        }
    };
    let cfg = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME},
        "webhooks": [{
            "name": "pods.podsnap.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "clientConfig": client_config,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": exclude_namespaces}]},
        }]
    });
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            CONFIGURATION_NAME,
            &PatchParams::apply("podsnap-controller").force(),
            &Patch::Apply(&cfg),
        )
        .await?;
    info!(name = CONFIGURATION_NAME, ?target, "webhook registered");
    Ok(())
}

async fn mutate(
    State(ctx): State<Ctx>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed AdmissionReview");
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let resp = AdmissionResponse::from(&req);
    let Some(pod) = req.object.as_ref() else {
        return Json(resp.into_review());
    };
    let ns = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    // gVisor's volume hints first: the restore decision sees the pod as patched.
    let (pod, mut ops) = with_volume_hints(pod);
    let with_ops = |resp: AdmissionResponse, ops: Vec<serde_json::Value>| {
        if ops.is_empty() {
            return resp;
        }
        match serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
            .map_err(|e| e.to_string())
            .and_then(|p| resp.clone().with_patch(p).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => resp.deny(format!("podsnap-controller: building the patch: {e}")),
        }
    };
    let resp = match decide(&ctx, &pod, &ns).await {
        Ok(Decision::Fresh) => with_ops(resp, ops),
        Ok(Decision::Restore {
            snapshot, patch, ..
        }) => {
            info!(namespace = %ns, pod = ?pod.metadata.name.as_ref().or(pod.metadata.generate_name.as_ref()), %snapshot, "pod will restore");
            ops.extend(patch);
            with_ops(resp, ops)
        }
        Ok(Decision::Deny(why)) => resp.deny(why),
        Err(e) => {
            // The pod starts fresh; its snapshots stay in the store.
            warn!(namespace = %ns, error = %e, "cannot decide on a restore; admitting unchanged");
            with_ops(resp, ops)
        }
    };
    Json(resp.into_review())
}

/// gVisor's mount-hint annotations prefix (`dev.gvisor.spec.mount.<volume>.<field>`).
const MOUNT_HINT: &str = "dev.gvisor.spec.mount.";

/// The pod with gVisor's mount hints for its emptyDir volumes, and the JSON patch that adds
/// them. A pod with a `runtimeClassName` gets, for each emptyDir volume without hints,
/// `share=pod`, `options=rw` and `type=tmpfs` (medium `Memory`) or `type=bind` (disk):
/// what GKE's admission controller sets for gVisor pods. gVisor's shim then makes the volume
/// a sandbox-internal tmpfs (a disk emptyDir backed by a file in its host directory), so its
/// contents live in the sandbox and travel with a checkpoint; without hints an emptyDir is a
/// host directory the next pod does not have. Only runtimes whose containerd config lists
/// `dev.gvisor.*` in `pod_annotations` see them.
fn with_volume_hints(pod: &Pod) -> (Pod, Vec<serde_json::Value>) {
    let mut pod = pod.clone();
    let Some(spec) = pod.spec.as_ref() else {
        return (pod, vec![]);
    };
    if spec.runtime_class_name.as_deref().unwrap_or("").is_empty() {
        return (pod, vec![]);
    }
    let existing = pod.metadata.annotations.clone().unwrap_or_default();
    let mut hints = std::collections::BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let Some(dir) = v.empty_dir.as_ref() else {
            continue;
        };
        let prefix = format!("{MOUNT_HINT}{}.", v.name);
        if existing.keys().any(|k| k.starts_with(&prefix)) {
            continue;
        }
        let kind = if dir.medium.as_deref() == Some("Memory") {
            "tmpfs"
        } else {
            "bind"
        };
        hints.insert(format!("{prefix}share"), "pod".to_string());
        hints.insert(format!("{prefix}type"), kind.to_string());
        hints.insert(format!("{prefix}options"), "rw".to_string());
    }
    if hints.is_empty() {
        return (pod, vec![]);
    }
    let ops = if pod.metadata.annotations.is_some() {
        hints
            .iter()
            .map(|(k, v)| {
                json!({"op": "add", "path": format!("/metadata/annotations/{}", crate::model::pointer_segment(k)), "value": v})
            })
            .collect()
    } else {
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": hints})]
    };
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(hints);
    (pod, ops)
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route(PATH, post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ctx)
}

/// Serves the webhook over TLS on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, cert: &ServingCert, ctx: Ctx) -> Result<(), Error> {
    let tls = tls_config(cert)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Invalid(format!("binding the webhook listener {addr}: {e}")))?;
    info!(%addr, "webhook listening (TLS)");
    let app = router(ctx);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "webhook accept");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection");
            }
        });
    }
}

fn tls_config(cert: &ServingCert) -> Result<rustls::ServerConfig, Error> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::Invalid(format!("webhook certificate: {what}: {e}"))
    };
    let certs = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("reading the certificate", &e))?;
    let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .map_err(|e| bad("reading the key", &e))?
        .ok_or_else(|| bad("the key", &"no private key in the PEM"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key", &e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptydir_volumes_of_runtime_class_pods_get_gvisor_mount_hints() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"dev.gvisor.spec.mount.preset.type": "bind"}},
            "spec": {
                "runtimeClassName": "gvisor",
                "containers": [{"name": "app", "image": "busybox"}],
                "volumes": [
                    {"name": "disk", "emptyDir": {}},
                    {"name": "mem", "emptyDir": {"medium": "Memory"}},
                    {"name": "preset", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "c"}}
                ]
            }
        }))
        .unwrap();
        let (patched, ops) = with_volume_hints(&pod);
        let a = patched.metadata.annotations.unwrap();
        assert_eq!(a["dev.gvisor.spec.mount.disk.type"], "bind");
        assert_eq!(a["dev.gvisor.spec.mount.mem.type"], "tmpfs");
        assert_eq!(a["dev.gvisor.spec.mount.mem.share"], "pod");
        assert!(!a.contains_key("dev.gvisor.spec.mount.preset.share"));
        assert!(!a.keys().any(|k| k.contains(".cfg.")));
        assert_eq!(ops.len(), 6);
        assert_eq!(
            ops[0]["path"],
            "/metadata/annotations/dev.gvisor.spec.mount.disk.options"
        );
        // Without annotations: one op adds the map.
        let mut bare = pod.clone();
        bare.metadata.annotations = None;
        let (_, ops) = with_volume_hints(&bare);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0]["value"]["dev.gvisor.spec.mount.preset.type"], "bind");
        // No runtime class: unchanged.
        bare.spec.as_mut().unwrap().runtime_class_name = None;
        assert!(with_volume_hints(&bare).1.is_empty());
    }

    #[test]
    fn a_self_signed_certificate_loads_into_the_server_config() {
        let c = self_signed(&[
            "127.0.0.1".into(),
            "podsnap-controller.podsnap-system.svc".into(),
        ])
        .unwrap();
        assert!(c.cert_pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(c.ca_pem, c.cert_pem);
        tls_config(&c).unwrap();
        let broken = ServingCert {
            key_pem: "nope".into(),
            ..c
        };
        assert!(tls_config(&broken).unwrap_err().to_string().contains("key"));
    }
}

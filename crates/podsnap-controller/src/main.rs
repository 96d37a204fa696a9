//! podsnap-controller: GKE's Pod Snapshot API (`podsnapshot.gke.io/v1`) over podsnapd nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use podsnap_controller::api::KubeCluster;
use podsnap_controller::crd;
use podsnap_controller::nodes::NodesConfig;
use podsnap_controller::webhook::{self, ClientConfig, ServingCert};
use podsnap_controller::{controllers, election, Context, Ctx, Nodes};
use tracing::{error, info, warn};

/// The cluster side of podsnap: serves `podsnapshot.gke.io/v1` (PodSnapshotStorageConfig,
/// PodSnapshotPolicy, PodSnapshotManualTrigger, PodSnapshot) so that GKE's Pod Snapshot
/// clients work on any cluster whose gVisor nodes run podsnapd.
///
/// A manual trigger checkpoints its pod through the podsnapd of the pod's node (mutual TLS,
/// see `run --help`); a pod that a policy selects and whose group has a Ready snapshot comes
/// up restored from it (a mutating admission webhook points it at the snapshot, the node's
/// podsnap-runsc restores it), and gets the condition PodRestored=True.
#[derive(Parser, Debug)]
#[command(name = "podsnap-controller", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller and the webhook.
    ///
    /// Example (a controller on the API server's host, the webhook reached over loopback):
    ///   podsnap-controller run --kubeconfig admin.kubeconfig --install-crds \
    ///     --webhook-url https://127.0.0.1:9444/mutate-pods \
    ///     --podsnapd-ca ca.pem --podsnapd-cert controller.pem --podsnapd-key controller-key.pem
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (kubectl apply -f -).
    Crds,
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    #[arg(long, env = "PODSNAP_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Create or update the CRDs at start (server-side apply) and wait until they are served.
    #[arg(long)]
    install_crds: bool,
    /// podsnapd's --listen-tls port on every node (unless a node's annotation
    /// podsnap.dev/podsnapd-endpoint says otherwise).
    #[arg(long, default_value_t = 9443)]
    podsnapd_port: u16,
    /// The DNS name podsnapd's certificate must carry.
    #[arg(long, default_value = "podsnapd")]
    podsnapd_server_name: String,
    /// CA (PEM) that podsnapd's certificate chains to.
    #[arg(long, env = "PODSNAP_PODSNAPD_CA")]
    podsnapd_ca: Option<PathBuf>,
    /// The controller's client certificate (PEM) for podsnapd's --tls-client-ca.
    #[arg(long, env = "PODSNAP_PODSNAPD_CERT")]
    podsnapd_cert: Option<PathBuf>,
    /// The key of --podsnapd-cert (PEM).
    #[arg(long, env = "PODSNAP_PODSNAPD_KEY")]
    podsnapd_key: Option<PathBuf>,
    /// Where the webhook's HTTPS server listens.
    #[arg(long, default_value = "0.0.0.0:9444")]
    webhook_listen: SocketAddr,
    /// Register the webhook with this URL (what the API server dials), e.g.
    /// https://127.0.0.1:9444/mutate-pods.
    #[arg(long, conflicts_with = "webhook_service")]
    webhook_url: Option<String>,
    /// Register the webhook as this Service, NAMESPACE/NAME[:PORT] (port default 443).
    #[arg(long)]
    webhook_service: Option<String>,
    /// Names for the self-signed serving certificate (repeatable). Default: 127.0.0.1 and,
    /// with --webhook-service, NAME.NAMESPACE.svc.
    #[arg(long = "webhook-host")]
    webhook_hosts: Vec<String>,
    /// Serving certificate (PEM) instead of a self-signed one; with --webhook-key and --webhook-ca.
    #[arg(long, requires_all = ["webhook_key", "webhook_ca"])]
    webhook_cert: Option<PathBuf>,
    #[arg(long)]
    webhook_key: Option<PathBuf>,
    /// The CA (PEM) of --webhook-cert, registered as the webhook's caBundle.
    #[arg(long)]
    webhook_ca: Option<PathBuf>,
    /// Namespaces whose pods the webhook never sees (repeatable). kube-system always.
    #[arg(long = "webhook-exclude-namespace")]
    webhook_exclude: Vec<String>,
    /// Run without leader election (one replica only).
    #[arg(long)]
    no_leader_elect: bool,
    /// Namespace of the leader-election Lease. Default: $POD_NAMESPACE, else podsnap-system.
    #[arg(long)]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "podsnap-controller")]
    lease_name: String,
    /// This replica's identity in the Lease. Default: $POD_NAME, else host name and pid.
    #[arg(long)]
    identity: Option<String>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => print_crds(),
        Command::Run(args) => run(*args).await,
    };
    if let Err(e) = result {
        eprintln!("podsnap-controller: {e:#}");
        std::process::exit(1);
    }
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", crd::crds_yaml().context("serialising the CRDs")?);
    Ok(())
}

fn read(p: &Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    match p {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        None => Ok(Vec::new()),
    }
}

async fn client(args: &RunArgs) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster",
        )?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in crd::crds() {
        let name = c.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("podsnap-controller").force(),
            &Patch::Apply(&c),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = api
                .get(&name)
                .await
                .with_context(|| format!("reading CRD {name}"))?;
            let established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("CRD {name} was not Established within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    info!("CRDs installed");
    Ok(())
}

fn parse_service(s: &str) -> anyhow::Result<ClientConfig> {
    let (ns, rest) = s
        .split_once('/')
        .with_context(|| format!("--webhook-service {s:?}: expected NAMESPACE/NAME[:PORT]"))?;
    let (name, port) = match rest.split_once(':') {
        Some((n, p)) => (
            n,
            p.parse()
                .with_context(|| format!("--webhook-service port {p:?}"))?,
        ),
        None => (rest, 443),
    };
    Ok(ClientConfig::Service {
        namespace: ns.into(),
        name: name.into(),
        port,
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into());
    if format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client(&args).await?;
    if args.install_crds {
        install_crds(&client).await?;
    }
    let ctx = context(&args, &client)?;
    // The webhook: every replica serves it. The reconcilers: only the leader.
    start_webhook(&args, &client, ctx.clone()).await?;
    let elect = elect(&args, &client).await;
    info!("reconciling PodSnapshotManualTriggers, PodSnapshots and restoring pods");
    let hold = async {
        match &elect {
            Some(e) => e.hold().await,
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        stopped = controllers::run_all(client, ctx) => bail!("{stopped} stopped"),
        _ = hold => bail!("lost leadership; exiting so that a follower takes over"),
        _ = tokio::signal::ctrl_c() => { info!("interrupted"); Ok(()) }
    }
}

/// The reconcilers' context: the API server (with kube's Event recorder) and the nodes.
fn context(args: &RunArgs, client: &Client) -> anyhow::Result<Ctx> {
    let nodes = Nodes::new(
        client.clone(),
        NodesConfig {
            port: args.podsnapd_port,
            server_name: args.podsnapd_server_name.clone(),
            ca_pem: read(&args.podsnapd_ca)?,
            cert_pem: read(&args.podsnapd_cert)?,
            key_pem: read(&args.podsnapd_key)?,
            connect_timeout: Duration::from_secs(5),
        },
    );
    let cluster = KubeCluster::new(client.clone(), Some(identity(args)));
    Ok(Context::new(Arc::new(cluster), Arc::new(nodes)))
}

/// Serves the webhook (in a task of its own) and registers it.
async fn start_webhook(args: &RunArgs, client: &Client, ctx: Ctx) -> anyhow::Result<()> {
    let target = match (&args.webhook_url, &args.webhook_service) {
        (Some(u), _) => Some(ClientConfig::Url(u.clone())),
        (None, Some(s)) => Some(parse_service(s)?),
        (None, None) => None,
    };
    let cert = serving_cert(args, target.as_ref())?;
    let mut exclude = vec!["kube-system".to_string()];
    exclude.extend(args.webhook_exclude.iter().cloned());
    {
        let cert = cert.clone();
        let addr = args.webhook_listen;
        tokio::spawn(async move {
            if let Err(e) = webhook::serve(addr, &cert, ctx).await {
                error!(error = %e, "webhook server stopped");
                std::process::exit(1);
            }
        });
    }
    match &target {
        Some(t) => webhook::register(client, t, &cert.ca_pem, &exclude)
            .await
            .context("registering the webhook")?,
        None => warn!("no --webhook-url or --webhook-service: the webhook is not registered, so pods are not restored automatically"),
    }
    Ok(())
}

/// The webhook's certificate: the one given, or a self-signed one for its names.
fn serving_cert(args: &RunArgs, target: Option<&ClientConfig>) -> anyhow::Result<ServingCert> {
    if args.webhook_cert.is_some() {
        let pem = |p: &Option<PathBuf>, flag: &str| {
            String::from_utf8(read(p)?).with_context(|| format!("{flag} is not PEM"))
        };
        return Ok(ServingCert {
            cert_pem: pem(&args.webhook_cert, "--webhook-cert")?,
            key_pem: pem(&args.webhook_key, "--webhook-key")?,
            ca_pem: pem(&args.webhook_ca, "--webhook-ca")?,
        });
    }
    let mut hosts = args.webhook_hosts.clone();
    if hosts.is_empty() {
        hosts.push("127.0.0.1".into());
        if let Some(ClientConfig::Service {
            namespace, name, ..
        }) = target
        {
            hosts.push(format!("{name}.{namespace}.svc"));
        }
    }
    Ok(webhook::self_signed(&hosts)?)
}

/// This replica's identity in the Lease (and on its Events).
fn identity(args: &RunArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()))
}

/// Waits until this replica leads (unless --no-leader-elect); the election to hold.
async fn elect(args: &RunArgs, client: &Client) -> Option<election::Election> {
    if args.no_leader_elect {
        return None;
    }
    let lease_ns = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "podsnap-system".into());
    let identity = identity(args);
    let e = election::Election::new(
        client.clone(),
        &lease_ns,
        &args.lease_name,
        &identity,
        Duration::from_secs(15),
    );
    info!(lease = %format!("{lease_ns}/{}", args.lease_name), %identity, "waiting to lead");
    e.acquire().await;
    Some(e)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "podsnap-controller".into())
}

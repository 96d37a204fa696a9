//! `podsnapctl keygen`: a new group key for encryption at rest, written where podsnapd's
//! `--key-dir` (or a Kubernetes Secret built from the directory) finds it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::Context;
use podsnap_store::{Key, Keyring};

/// Write a new random 32-byte key (64 hex digits, mode 0600) into DIR and print its path and
/// key id. The file is `group.<encoded group>` with --group, else `default` (the key of every
/// group without its own). An existing key file is never overwritten.
///
/// Example (then: kubectl create secret generic podsnap-keys --from-file=/etc/podsnap/keys):
///   podsnapctl keygen /etc/podsnap/keys --group app=shop
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct KeygenArgs {
    /// Key directory (created if missing, mode 0700).
    pub dir: PathBuf,
    /// The group the key is for: the snapshot group podsnapd computes (the values of the
    /// --group-by labels as `k=v,k2=v2`, or the sandbox id). Without it: the default key.
    #[arg(long)]
    pub group: Option<String>,
    /// Print one JSON object (path, key_id, group) instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: KeygenArgs) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&a.dir)
        .with_context(|| format!("cannot create key directory {}", a.dir.display()))?;
    let name = match &a.group {
        Some(g) if g.is_empty() => anyhow::bail!("--group must not be empty"),
        Some(g) => Keyring::file_name(g),
        None => "default".to_string(),
    };
    let path = a.dir.join(&name);
    let secret = Key::generate_secret();
    let key = Key::from_bytes(&secret);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot create key file {} (an existing key is never replaced)",
                path.display()
            )
        })?;
    writeln!(f, "{}", hex::encode(secret))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    if a.json {
        let v = serde_json::json!({"path": path, "key_id": key.id(), "group": a.group});
        println!("{v}");
    } else {
        println!("{}", path.display());
        eprintln!(
            "key id {} for {}",
            key.id(),
            a.group
                .as_deref()
                .map(|g| format!("group {g}"))
                .unwrap_or_else(|| "every group without its own key".into())
        );
    }
    Ok(())
}

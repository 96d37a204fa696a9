//! Opening an [`ObjectStore`] from a store URL.
//!
//! | URL | backend | configuration |
//! |---|---|---|
//! | `memory://` | [`InMemory`] | none (one process, tests) |
//! | `file:///dir` | [`LocalFileSystem`] rooted at `dir` (created if missing) | none |
//! | `s3://bucket/prefix` | Amazon S3 | `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_REGION`, keys, ...) |
//! | `gs://bucket/prefix` | Google Cloud Storage | `GOOGLE_*` variables; an emulator is named by the service-account JSON's `gcs_base_url` (+ `disable_oauth`) and `GOOGLE_ALLOW_HTTP=true` |
//! | `az://container/prefix` | Azure Blob Storage | `AZURE_*` variables |
//!
//! Every cloud client gets bounded retries with exponential backoff and request timeouts.
//! `PODSNAP_STORE_MAX_RETRIES` and `PODSNAP_STORE_TIMEOUT_SECS` override the defaults.
//! Credentials never appear in [`crate::Store::display_url`], in errors or in `Debug`.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::StoreError;

/// What [`open_url`] returns: the object store, the key prefix inside it and a printable URL.
pub(crate) struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: String,
    pub display: String,
    /// The client retries transient failures itself (the HTTP backends).
    pub client_retries: bool,
    /// The directory of a `file://` store.
    pub local_root: Option<std::path::PathBuf>,
}

/// `url` with any user info and query string removed, safe to print and log.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            u.set_fragment(None);
            let s = u.to_string();
            // `memory://` becomes `memory://` again; keep what the user wrote otherwise.
            s
        }
        Err(_) => {
            // Unparseable: keep only the scheme, which cannot carry a secret.
            match url.split_once("://") {
                Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                    format!("{scheme}://<unparseable>")
                }
                _ => "<unparseable url>".to_string(),
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

pub(crate) fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: env_u64("PODSNAP_STORE_MAX_RETRIES").unwrap_or(6) as usize,
        retry_timeout: Duration::from_secs(120),
    }
}

pub(crate) fn client_options() -> ClientOptions {
    let timeout = env_u64("PODSNAP_STORE_TIMEOUT_SECS").unwrap_or(120);
    ClientOptions::new()
        .with_timeout(Duration::from_secs(timeout))
        .with_connect_timeout(Duration::from_secs(10))
        .with_pool_idle_timeout(Duration::from_secs(30))
}

fn clean_prefix(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

impl Opened {
    fn memory(prefix: String, display: String) -> Opened {
        Opened {
            store: Arc::new(InMemory::new()),
            prefix,
            display,
            client_retries: false,
            local_root: None,
        }
    }

    /// An HTTP backend's client (it retries itself), rooted at `url`'s path.
    fn cloud(store: impl ObjectStore, url: &url::Url, display: String) -> Opened {
        Opened {
            store: Arc::new(store),
            prefix: clean_prefix(url.path()),
            display,
            client_retries: true,
            local_root: None,
        }
    }
}

pub(crate) fn open_url(raw: &str) -> Result<Opened, StoreError> {
    let display = redact_url(raw);
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: display.clone(),
        reason: reason.to_string(),
    };
    if raw == "memory://" || raw == "memory:" || raw == "memory:///" {
        return Ok(Opened::memory(String::new(), "memory://".into()));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    let configure = |source| StoreError::Configure {
        url: display.clone(),
        source: Box::new(source),
    };
    // The bucket (or container) a cloud URL names as its host.
    let bucket = |what: &str| {
        url.host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid(&format!("missing {what}")))
    };
    match url.scheme() {
        "memory" => Ok(Opened::memory(clean_prefix(url.path()), display)),
        "file" => open_file(&url, display),
        "s3" | "s3a" => {
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket("bucket")?)
                .with_retry(retry_config())
                .with_client_options(client_options_with_env("AWS_ALLOW_HTTP"))
                .build()
                .map_err(configure)?;
            Ok(Opened::cloud(s3, &url, display))
        }
        "gs" => {
            let gcs = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket("bucket")?)
                .with_retry(retry_config())
                .with_client_options(client_options_with_env("GOOGLE_ALLOW_HTTP"))
                .build()
                .map_err(configure)?;
            Ok(Opened::cloud(gcs, &url, display))
        }
        "az" | "azure" => {
            let az = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket("container")?)
                .with_retry(retry_config())
                .with_client_options(client_options_with_env("AZURE_ALLOW_HTTP"))
                .build()
                .map_err(configure)?;
            Ok(Opened::cloud(az, &url, display))
        }
        other => Err(invalid(&format!(
            "unsupported scheme {other:?} (use file, s3, gs, az or memory)"
        ))),
    }
}

/// A `file:///dir` store: the directory, created if missing.
fn open_file(url: &url::Url, display: String) -> Result<Opened, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: display.clone(),
        reason: reason.to_string(),
    };
    if url
        .host_str()
        .is_some_and(|h| !h.is_empty() && h != "localhost")
    {
        return Err(invalid("file urls take no host: use file:///absolute/dir"));
    }
    let dir = url
        .to_file_path()
        .map_err(|_| invalid("not an absolute local path"))?;
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create store directory", &dir, e))?;
    let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|source| StoreError::Configure {
        url: display.clone(),
        source: Box::new(source),
    })?;
    Ok(Opened {
        store: Arc::new(fs),
        prefix: String::new(),
        display,
        client_retries: false,
        local_root: Some(dir),
    })
}

/// Our client options, with plain HTTP allowed when `var` says so. (`with_client_options`
/// replaces the options that `from_env` parsed, so the emulator switch is re-read here.)
fn client_options_with_env(var: &str) -> ClientOptions {
    let allow = std::env::var(var)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false);
    client_options().with_allow_http(allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_user_info_and_query() {
        let r = redact_url("s3://AKIA:secret@bucket/prefix?token=abc#x");
        assert!(
            !r.contains("secret") && !r.contains("AKIA") && !r.contains("abc"),
            "{r}"
        );
        assert!(r.starts_with("s3://bucket/prefix"), "{r}");
        let r = redact_url("not a url with secret");
        assert!(!r.contains("secret"), "{r}");
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let Err(err) = open_url("ftp://host/x") else {
            panic!("must fail")
        };
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(clean_prefix("/a//b/"), "a/b");
        assert_eq!(clean_prefix("/"), "");
    }
}

//! An Azurite blob server for tests (Microsoft's Azure Storage emulator, npm package
//! `azurite`): `azurite-blob` in memory on a free loopback port, with a container created,
//! killed when the guard drops.
//!
//! object_store's Azure client reaches it in emulator mode (`AZURE_STORAGE_USE_EMULATOR`, the
//! well-known `devstoreaccount1` account, `AZURITE_BLOB_STORAGE_URL`); the container is made
//! by `tests/azurite/create_container.py` (Shared Key signed: Azurite refuses anonymous
//! requests, and object_store has no call that creates containers).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::moto::{free_port, wait_for_port};

/// A running Azurite blob service; killed (and reaped) on drop.
#[derive(Debug)]
pub struct Azurite {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// The container created at start.
    pub container: String,
}

impl Azurite {
    /// Starts Azurite's blob service on a free port and creates `container`.
    pub fn start(container: &str) -> std::io::Result<Azurite> {
        let port = free_port()?;
        // Its working dir and log (it writes nothing else with in-memory persistence).
        let dir = tempfile::Builder::new()
            .prefix("podsnap-azurite")
            .tempdir()?;
        let log = std::fs::File::create(dir.path().join("azurite.log"))?;
        let child = Command::new("azurite-blob")
            .args([
                "--inMemoryPersistence",
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--silent",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut az = Azurite {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            container: container.to_string(),
        };
        // Node takes a few seconds to start it, and more on a loaded machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while wait_for_port(port, Duration::from_millis(200)).is_err() {
            let exited = az.child.try_wait()?;
            if exited.is_some() || std::time::Instant::now() > deadline {
                let _ = az.child.kill();
                return Err(std::io::Error::other(format!(
                    "azurite did not listen on {} ({}); its log: {}",
                    az.endpoint,
                    exited.map_or("still starting after 120s".into(), |s| s.to_string()),
                    az.log()
                )));
            }
        }
        let out = Command::new("python3")
            .arg(crate::workspace_path("tests/azurite/create_container.py"))
            .args(["--endpoint", &az.endpoint, "--container", container])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "azurite: creating container {container}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(az)
    }

    /// What Azurite printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }

    /// Environment for object_store's `MicrosoftAzureBuilder::from_env` to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.endpoint.clone()),
            ("AZURE_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

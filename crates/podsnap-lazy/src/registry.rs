//! One lazy image per snapshot per node, shared by every restore of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use podsnap_store::{HotPages, LazyImage, LazyStatus, SnapshotId, Store};

use crate::{LazyError, PAGES_FILE};

/// How long after an image is opened its readers' first touches are recorded, at least.
const HOT_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Hot pages fetched ahead of the rest at most (1 GiB of pages).
const MAX_HOT_PAGES: usize = 1 << 18;

/// The node's lazy images, by snapshot id. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

#[derive(Debug)]
struct RegistryInner {
    store: Store,
    /// Where the images' local files go (`<dir>/<snapshot>-<rand>`).
    dir: PathBuf,
    images: Mutex<HashMap<String, Entry>>,
    /// Serialises opening, so two restores of one snapshot open it once.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Entry {
    image: LazyImage,
    users: usize,
    go: Arc<tokio::sync::watch::Sender<bool>>,
}

/// One restore's use of a shared image; the image (and its local files) goes with the last
/// lease.
#[derive(Debug)]
pub struct ImageLease {
    registry: Arc<RegistryInner>,
    id: String,
    image: LazyImage,
    go: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ImageLease {
    /// The image.
    pub fn image(&self) -> &LazyImage {
        &self.image
    }

    /// Starts the image's background fill (once per image; later calls do nothing). Until
    /// then only the pages readers ask for are fetched: a restore calls it once runsc has
    /// returned, so that the store's bandwidth goes to what runsc needs to start.
    pub fn start_fill(&self) {
        self.go.send_replace(true);
    }
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut images = self.registry.images.lock().expect("registry lock");
        if let Some(e) = images.get_mut(&self.id) {
            e.users -= 1;
            if e.users == 0 {
                images.remove(&self.id);
            }
        }
    }
}

impl Registry {
    /// A registry whose images keep their local files under `dir`.
    pub fn new(store: Store, dir: impl Into<PathBuf>) -> Registry {
        Registry {
            inner: Arc::new(RegistryInner {
                store,
                dir: dir.into(),
                images: Mutex::new(HashMap::new()),
                opening: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The store the images are read from.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// How many images are open.
    pub fn open_images(&self) -> usize {
        self.inner.images.lock().expect("registry lock").len()
    }

    /// Leases snapshot `id`'s image: the one already open on this node (unless it failed), or
    /// a new one. Every file but `pages.img` is made local (fetched and verified) before this
    /// returns; the background fill (hot pages first) waits for [`ImageLease::start_fill`].
    pub async fn acquire(&self, id: &SnapshotId) -> Result<ImageLease, LazyError> {
        let key = id.to_string();
        let _opening = self.inner.opening.lock().await;
        let existing = {
            let mut images = self.inner.images.lock().expect("registry lock");
            match images.get_mut(&key) {
                Some(e) if !matches!(e.image.status(), LazyStatus::Failed(_)) => {
                    e.users += 1;
                    Some((e.image.clone(), e.go.clone()))
                }
                _ => None,
            }
        };
        let (image, go) = match existing {
            Some(found) => {
                tracing::info!(snapshot = %id, "sharing the lazy image already open on this node");
                found
            }
            None => {
                let dir = self
                    .inner
                    .dir
                    .join(format!("{key}-{:08x}", rand::random::<u32>()));
                let image = self.inner.store.open_lazy(id, &dir).await?;
                let go = Arc::new(tokio::sync::watch::channel(false).0);
                self.start_fill(&image, go.subscribe()).await;
                let mut images = self.inner.images.lock().expect("registry lock");
                images.insert(
                    key.clone(),
                    Entry {
                        image: image.clone(),
                        users: 1,
                        go: go.clone(),
                    },
                );
                (image, go)
            }
        };
        let lease = ImageLease {
            registry: self.inner.clone(),
            id: key,
            image: image.clone(),
            go,
        };
        drop(_opening);
        for (i, f) in image.files().iter().enumerate() {
            if !is_lazy_file(&f.path) {
                image.fetch_file(i).await.map_err(LazyError::Fetch)?;
            }
        }
        Ok(lease)
    }

    /// Prepares the background fill of a new image, which starts once a lease says go
    /// ([`ImageLease::start_fill`]): the group's hot pages first; once complete, the order its
    /// readers touched pages becomes the group's hot pages.
    async fn start_fill(&self, image: &LazyImage, mut go: tokio::sync::watch::Receiver<bool>) {
        let m = image.manifest();
        let group = m.group.clone().filter(|_| m.encryption.is_none());
        let hot = match &group {
            Some(g) => self.inner.store.hot_pages(g).await,
            None => None,
        };
        let first = hot.map(|h| h.pages(MAX_HOT_PAGES)).unwrap_or_default();
        if !first.is_empty() {
            tracing::info!(snapshot = %m.id, pages = first.len(), "fetching the group's hot pages first");
        }
        let (image, store) = (image.clone(), self.inner.store.clone());
        let opened = tokio::time::Instant::now();
        tokio::spawn(async move {
            // Every lease went without saying go: nothing to fill.
            if go.wait_for(|go| *go).await.is_err() {
                return;
            }
            // A failure is the image's status; the daemon watches it.
            if image.fill(&first).await.is_err() {
                return;
            }
            // Reads are recorded until the image is complete and at least for the first
            // seconds (a small image is complete before its sandbox has read much).
            tokio::time::sleep_until(opened + HOT_WINDOW).await;
            image.stop_recording();
            let order = image.access_order();
            if let (Some(g), false) = (group, order.is_empty()) {
                let hot = HotPages::from_order(&g, image.manifest().id.as_str(), &order);
                if let Err(e) = store.put_hot_pages(&hot).await {
                    tracing::warn!(group = %g, error = %e, "cannot store the group's hot pages");
                }
            }
        });
    }
}

/// Whether a file of an image is served before its pages are local.
pub fn is_lazy_file(path: &str) -> bool {
    Path::new(path).file_name().and_then(|n| n.to_str()) == Some(PAGES_FILE)
}

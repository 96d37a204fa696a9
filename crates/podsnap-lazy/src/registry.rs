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
}

/// One restore's use of a shared image; the image (and its local files) goes with the last
/// lease.
#[derive(Debug)]
pub struct ImageLease {
    registry: Arc<RegistryInner>,
    id: String,
    image: LazyImage,
}

impl ImageLease {
    /// The image.
    pub fn image(&self) -> &LazyImage {
        &self.image
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
    /// returns; a new image starts its background fill, hot pages first.
    pub async fn acquire(&self, id: &SnapshotId) -> Result<ImageLease, LazyError> {
        let key = id.to_string();
        let _opening = self.inner.opening.lock().await;
        let existing = {
            let mut images = self.inner.images.lock().expect("registry lock");
            match images.get_mut(&key) {
                Some(e) if !matches!(e.image.status(), LazyStatus::Failed(_)) => {
                    e.users += 1;
                    Some(e.image.clone())
                }
                _ => None,
            }
        };
        let image = match existing {
            Some(image) => {
                tracing::info!(snapshot = %id, "sharing the lazy image already open on this node");
                image
            }
            None => {
                let dir = self
                    .inner
                    .dir
                    .join(format!("{key}-{:08x}", rand::random::<u32>()));
                let image = self.inner.store.open_lazy(id, &dir).await?;
                self.start_fill(&image).await;
                let mut images = self.inner.images.lock().expect("registry lock");
                images.insert(
                    key.clone(),
                    Entry {
                        image: image.clone(),
                        users: 1,
                    },
                );
                image
            }
        };
        let lease = ImageLease {
            registry: self.inner.clone(),
            id: key,
            image: image.clone(),
        };
        drop(_opening);
        for (i, f) in image.files().iter().enumerate() {
            if !is_lazy_file(&f.path) {
                image.fetch_file(i).await.map_err(LazyError::Fetch)?;
            }
        }
        Ok(lease)
    }

    /// Starts the background fill of a new image: the group's hot pages first; once complete,
    /// the order its readers touched pages becomes the group's hot pages.
    async fn start_fill(&self, image: &LazyImage) {
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

//! Bounded allocation against hostile declared sizes: a counting global allocator records the
//! largest single allocation while a pull reads a manifest that lies about sizes.

// A global allocator is an `unsafe impl`; it only forwards to `System`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use podsnap_store::{NoProgress, PushOptions, Store, StoreError};

struct Counting;

static RECORD: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if RECORD.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if RECORD.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A manifest declaring a 1 GiB index (within the format's limit) for a tiny index object
/// whose zstd frame header also claims 1 GiB must not make the pull reserve that much.
#[tokio::test]
async fn declared_index_size_is_not_allocated_up_front() {
    let os: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = Store::from_object_store(os.clone(), "pfx", "memory://alloc");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_file(&src, "pages.img", &mixed_image(9, 300));
    let id = store
        .push(&src, PushOptions::default(), &NoProgress)
        .await
        .unwrap()
        .id;
    let key = ObjPath::from(format!("pfx/manifests/{id}.json"));
    let bytes = os.get(&key).await.unwrap().bytes().await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["files"][0]["index"]["size"] = (1u64 << 30).into();
    v.as_object_mut().unwrap().remove("digest");
    v["digest"] = sha256_hex(&serde_json::to_vec(&v).unwrap()).into();
    os.put(&key, PutPayload::from(serde_json::to_vec(&v).unwrap()))
        .await
        .unwrap();
    // The index object itself lies too: a zstd frame whose header claims 1 GiB of content
    // (the size zstd's bulk API trusts for its buffer), followed by one 10-byte raw block.
    let digest = v["files"][0]["index"]["digest"].as_str().unwrap();
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x80, 0x00];
    frame.extend_from_slice(&(1u32 << 30).to_le_bytes());
    frame.extend_from_slice(&[0x51, 0x00, 0x00]);
    frame.extend_from_slice(b"PSNPIDX1xx");
    os.put(
        &ObjPath::from(format!("pfx/indexes/{digest}")),
        PutPayload::from(frame),
    )
    .await
    .unwrap();

    LARGEST.store(0, Ordering::SeqCst);
    RECORD.store(true, Ordering::SeqCst);
    let err = store
        .pull(&id, &work.path().join("out"), &NoProgress)
        .await
        .unwrap_err();
    RECORD.store(false, Ordering::SeqCst);
    assert!(matches!(err, StoreError::InvalidIndex { .. }), "{err}");
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest < 16 << 20,
        "largest single allocation {largest} bytes for a hostile declared size"
    );
    assert!(!work.path().join("out").exists());
}

//! Hard limits of the format. Everything read from a store is checked against these before
//! it is trusted or allocated.

/// Dedup granularity: one memory page.
pub const PAGE_SIZE: usize = 4096;
/// Largest blob (one zstd frame) before compression: 256 pages.
pub const MAX_BLOB_RAW: usize = 1 << 20;
/// A pack object is sealed once it holds this many stored bytes.
pub const PACK_TARGET: usize = 4 << 20;
/// Largest file a snapshot may contain.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Largest manifest accepted.
pub const MAX_MANIFEST_SIZE: u64 = 64 << 20;
/// Largest uncompressed index accepted (about 128 GiB of non-zero pages per file).
pub const MAX_INDEX_SIZE: u64 = 1 << 30;
/// Most files in one snapshot.
pub const MAX_FILES: usize = 100_000;
/// Longest relative path of a file in a snapshot.
pub const MAX_PATH_LEN: usize = 4096;
/// Most labels, runsc metadata entries or extra facts in a manifest, each.
pub const MAX_MAP_ENTRIES: usize = 4096;
/// Size of the blocks the push pipeline reads (a multiple of [`MAX_BLOB_RAW`]).
pub const READ_BLOCK: usize = 4 << 20;

//! The per-file index: which 4 KiB page of a file lives where, and its sha256.
//!
//! One index object exists per pushed file (`indexes/<sha256 of the uncompressed index>`),
//! zstd-compressed, its digest and uncompressed size recorded in the manifest. Layout of the
//! uncompressed bytes, all integers little-endian:
//!
//! ```text
//! header   magic "PSNPIDX1" | file_size u64 | page_size u32 (=4096)
//!          | n_packs u32 | n_blobs u32 | n_extents u32 | n_digests u32 | reserved u32 (=0)
//! packs    n_packs   x [u8; 32]                      pack object names (sha256, hex in the key)
//! blobs    n_blobs   x { pack u32, offset u64, stored_len u32, raw_len u32, codec u32 }
//! extents  n_extents x { pages u32, blob u32, first_page u32 }   blob = u32::MAX: zero pages
//! digests  n_digests x [u8; 32]                      sha256 of every data page, in file order
//! ```
//!
//! A blob is one zstd frame (codec 1) or raw bytes (codec 0) of up to 1 MiB uncompressed, at
//! `offset..offset+stored_len` inside a pack object; in an encrypted snapshot the same, sealed
//! with AES-256-GCM (codec 2: raw, 3: zstd; `stored_len` includes the 28 bytes of nonce and
//! tag). Its uncompressed bytes are consecutive
//! pages (only the last may be shorter than 4 KiB). An extent maps `pages` consecutive pages
//! of the file to pages `first_page..` of one blob, or to zeros. Extents cover the file in
//! order; the digests follow the data extents' pages in the same order.
//!
//! Decoding treats the bytes as hostile: every count is checked against the buffer length,
//! every reference against its table, every blob against the format's limits, and the extents
//! against the file size, before anything is allocated from a count.

use crate::limits::{MAX_BLOB_RAW, MAX_FILE_SIZE, PAGE_SIZE};

pub const MAGIC: &[u8; 8] = b"PSNPIDX1";
pub const ZERO_BLOB: u32 = u32::MAX;
const HEADER_LEN: usize = 8 + 8 + 4 * 6;
const BLOB_LEN: usize = 24;
const EXTENT_LEN: usize = 12;

/// How a blob's bytes are stored inside its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// Raw bytes sealed with the snapshot's key (see `crypto`).
    SealedRaw = 2,
    /// A zstd frame sealed with the snapshot's key.
    SealedZstd = 3,
}

impl Codec {
    pub fn from_u32(c: u32) -> Option<Codec> {
        Some(match c {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            2 => Codec::SealedRaw,
            3 => Codec::SealedZstd,
            _ => return None,
        })
    }

    pub fn is_sealed(self) -> bool {
        matches!(self, Codec::SealedRaw | Codec::SealedZstd)
    }

    /// The sealed form of a plain codec.
    pub fn sealed(self) -> Codec {
        match self {
            Codec::Raw | Codec::SealedRaw => Codec::SealedRaw,
            Codec::Zstd | Codec::SealedZstd => Codec::SealedZstd,
        }
    }

    /// The codec inside the seal.
    pub fn unsealed(self) -> Codec {
        match self {
            Codec::Raw | Codec::SealedRaw => Codec::Raw,
            Codec::Zstd | Codec::SealedZstd => Codec::Zstd,
        }
    }
}

/// Where one blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobRef {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

impl BlobRef {
    /// Number of pages in the blob (the last may be partial).
    pub fn pages(&self) -> u32 {
        (self.raw_len as u64).div_ceil(PAGE_SIZE as u64) as u32
    }
}

/// A run of consecutive file pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub pages: u32,
    /// Index into [`FileIndex::blobs`], or [`ZERO_BLOB`].
    pub blob: u32,
    pub first_page: u32,
}

impl Extent {
    pub fn is_zero(&self) -> bool {
        self.blob == ZERO_BLOB
    }
}

/// The decoded index of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileIndex {
    pub file_size: u64,
    pub packs: Vec<[u8; 32]>,
    pub blobs: Vec<BlobRef>,
    pub extents: Vec<Extent>,
    pub digests: Vec<[u8; 32]>,
}

/// Number of pages of a file of `size` bytes.
pub fn page_count(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE as u64)
}

/// Length of page `page` of a file of `size` bytes.
pub fn page_len(size: u64, page: u64) -> usize {
    let start = page * PAGE_SIZE as u64;
    (size - start).min(PAGE_SIZE as u64) as usize
}

impl FileIndex {
    /// Appends `pages` pages mapped to `blob` starting at `first_page`, merging with the
    /// previous extent when it continues it.
    pub fn push_extent(&mut self, blob: u32, first_page: u32, pages: u32) {
        if let Some(last) = self.extents.last_mut() {
            let continues = last.blob == blob
                && (blob == ZERO_BLOB || last.first_page + last.pages == first_page)
                && last.pages.checked_add(pages).is_some();
            if continues {
                last.pages += pages;
                return;
            }
        }
        self.extents.push(Extent {
            pages,
            blob,
            first_page: if blob == ZERO_BLOB { 0 } else { first_page },
        });
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER_LEN
            + self.packs.len() * 32
            + self.blobs.len() * BLOB_LEN
            + self.extents.len() * EXTENT_LEN
            + self.digests.len() * 32;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.file_size.to_le_bytes());
        out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        for n in [
            self.packs.len(),
            self.blobs.len(),
            self.extents.len(),
            self.digests.len(),
            0,
        ] {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for p in &self.packs {
            out.extend_from_slice(p);
        }
        for b in &self.blobs {
            out.extend_from_slice(&b.pack.to_le_bytes());
            out.extend_from_slice(&b.offset.to_le_bytes());
            out.extend_from_slice(&b.stored_len.to_le_bytes());
            out.extend_from_slice(&b.raw_len.to_le_bytes());
            out.extend_from_slice(&(b.codec as u32).to_le_bytes());
        }
        for e in &self.extents {
            out.extend_from_slice(&e.pages.to_le_bytes());
            out.extend_from_slice(&e.blob.to_le_bytes());
            out.extend_from_slice(&e.first_page.to_le_bytes());
        }
        for d in &self.digests {
            out.extend_from_slice(d);
        }
        debug_assert_eq!(out.len(), len);
        out
    }

    /// Decodes and fully validates an index. Errors are plain reasons; the caller names the file.
    pub fn decode(buf: &[u8]) -> Result<FileIndex, String> {
        let mut r = Reader { buf, pos: 0 };
        let h = Header::read(&mut r)?;
        if h.encoded_len() != buf.len() as u128 {
            return Err(format!(
                "length {} does not match the header's counts (expected {})",
                buf.len(),
                h.encoded_len()
            ));
        }
        let packs = r.digests(h.n_packs)?;
        let blobs = (0..h.n_blobs)
            .map(|i| r.blob(i, h.n_packs))
            .collect::<Result<Vec<_>, _>>()?;
        let (extents, data_pages) = r.extents(h.n_extents, &blobs, page_count(h.file_size))?;
        if data_pages != h.n_digests as u64 {
            return Err(format!(
                "{} digests for {data_pages} data pages",
                h.n_digests
            ));
        }
        let digests = r.digests(h.n_digests)?;
        Ok(FileIndex {
            file_size: h.file_size,
            packs,
            blobs,
            extents,
            digests,
        })
    }
}

/// An index's fixed header, its limits checked.
struct Header {
    file_size: u64,
    n_packs: usize,
    n_blobs: usize,
    n_extents: usize,
    n_digests: usize,
}

impl Header {
    fn read(r: &mut Reader<'_>) -> Result<Header, String> {
        if r.take(8)? != MAGIC {
            return Err("bad magic (not a podsnap index)".into());
        }
        let file_size = r.u64()?;
        if file_size > MAX_FILE_SIZE {
            return Err(format!("file size {file_size} exceeds the 1 TiB limit"));
        }
        let page_size = r.u32()?;
        if page_size != PAGE_SIZE as u32 {
            return Err(format!("unsupported page size {page_size}"));
        }
        let h = Header {
            file_size,
            n_packs: r.u32()? as usize,
            n_blobs: r.u32()? as usize,
            n_extents: r.u32()? as usize,
            n_digests: r.u32()? as usize,
        };
        if r.u32()? != 0 {
            return Err("reserved header field is not zero".into());
        }
        Ok(h)
    }

    /// The length of the whole index these counts describe (u128: counts are hostile).
    fn encoded_len(&self) -> u128 {
        (HEADER_LEN as u128)
            + self.n_packs as u128 * 32
            + self.n_blobs as u128 * BLOB_LEN as u128
            + self.n_extents as u128 * EXTENT_LEN as u128
            + self.n_digests as u128 * 32
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| "truncated".to_string())?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// `n` sha256 digests (pack names or page digests).
    fn digests(&mut self, n: usize) -> Result<Vec<[u8; 32]>, String> {
        (0..n)
            .map(|_| Ok(self.take(32)?.try_into().expect("32 bytes")))
            .collect()
    }

    /// Blob `i`, checked against the pack table and the format's limits.
    fn blob(&mut self, i: usize, n_packs: usize) -> Result<BlobRef, String> {
        let pack = self.u32()?;
        let offset = self.u64()?;
        let stored_len = self.u32()?;
        let raw_len = self.u32()?;
        let c = self.u32()?;
        let codec = Codec::from_u32(c).ok_or_else(|| format!("blob {i}: unknown codec {c}"))?;
        if pack as usize >= n_packs {
            return Err(format!("blob {i}: pack {pack} out of range"));
        }
        if raw_len == 0 || raw_len as usize > MAX_BLOB_RAW {
            return Err(format!("blob {i}: raw length {raw_len} out of range"));
        }
        let seal = if codec.is_sealed() {
            crate::crypto::SEAL_OVERHEAD as u64
        } else {
            0
        };
        let max_stored = zstd::zstd_safe::compress_bound(raw_len as usize) as u64 + seal;
        if stored_len as u64 <= seal
            || (codec.unsealed() == Codec::Raw && stored_len as u64 != raw_len as u64 + seal)
            || stored_len as u64 > max_stored
        {
            return Err(format!("blob {i}: stored length {stored_len} out of range"));
        }
        if offset.checked_add(stored_len as u64).is_none() {
            return Err(format!("blob {i}: offset overflows"));
        }
        Ok(BlobRef {
            pack,
            offset,
            stored_len,
            raw_len,
            codec,
        })
    }

    /// `n` extents that must cover exactly `total_pages`, each inside its blob; also returns
    /// how many of those pages are data (each has a digest).
    fn extents(
        &mut self,
        n: usize,
        blobs: &[BlobRef],
        total_pages: u64,
    ) -> Result<(Vec<Extent>, u64), String> {
        let mut extents = Vec::with_capacity(n);
        let mut covered: u64 = 0;
        let mut data_pages: u64 = 0;
        for i in 0..n {
            let pages = self.u32()?;
            let blob = self.u32()?;
            let first_page = self.u32()?;
            if pages == 0 {
                return Err(format!("extent {i}: empty"));
            }
            if blob != ZERO_BLOB {
                let b = blobs
                    .get(blob as usize)
                    .ok_or_else(|| format!("extent {i}: blob {blob} out of range"))?;
                if first_page as u64 + pages as u64 > b.pages() as u64 {
                    return Err(format!("extent {i}: pages beyond the end of blob {blob}"));
                }
                data_pages += pages as u64;
            } else if first_page != 0 {
                return Err(format!("extent {i}: zero extent with a page offset"));
            }
            covered += pages as u64;
            if covered > total_pages {
                return Err(format!(
                    "extents cover more than the file's {total_pages} pages"
                ));
            }
            extents.push(Extent {
                pages,
                blob,
                first_page,
            });
        }
        if covered != total_pages {
            return Err(format!(
                "extents cover {covered} of the file's {total_pages} pages"
            ));
        }
        Ok((extents, data_pages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_index() -> impl Strategy<Value = FileIndex> {
        // Build a consistent index from a list of (is_zero, pages) runs.
        (
            prop::collection::vec((any::<bool>(), 1u32..300, 0u32..3), 0..40),
            1usize..4,
            0u64..4096,
        )
            .prop_map(|(runs, n_packs, tail)| {
                let mut idx = FileIndex {
                    packs: (0..n_packs).map(|i| [i as u8; 32]).collect(),
                    ..Default::default()
                };
                let mut pages: u64 = 0;
                for (k, (zero, n, pack)) in runs.into_iter().enumerate() {
                    if zero {
                        idx.push_extent(ZERO_BLOB, 0, n);
                    } else {
                        let blob = idx.blobs.len() as u32;
                        let raw_len = (n + 1).min(256) * PAGE_SIZE as u32;
                        idx.blobs.push(BlobRef {
                            pack: pack % n_packs as u32,
                            offset: k as u64 * 1000,
                            stored_len: raw_len / 2,
                            raw_len,
                            codec: Codec::Zstd,
                        });
                        let n = n.min(raw_len / PAGE_SIZE as u32 - 1);
                        idx.push_extent(blob, 1, n);
                        for p in 0..n {
                            idx.digests.push([(p % 251) as u8; 32]);
                        }
                        pages += n as u64;
                        continue;
                    }
                    pages += n as u64;
                }
                idx.file_size = if pages == 0 {
                    0
                } else {
                    (pages - 1) * PAGE_SIZE as u64 + 1 + tail % PAGE_SIZE as u64
                };
                idx
            })
    }

    proptest! {
        #[test]
        fn index_round_trips(idx in arb_index()) {
            let bytes = idx.encode();
            let back = FileIndex::decode(&bytes).expect("valid index decodes");
            prop_assert_eq!(back, idx);
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = FileIndex::decode(&bytes);
        }

        #[test]
        fn decode_rejects_any_truncation(idx in arb_index(), cut in 1usize..64) {
            let bytes = idx.encode();
            let cut = cut.min(bytes.len());
            prop_assert!(FileIndex::decode(&bytes[..bytes.len() - cut]).is_err());
        }

        #[test]
        fn decode_survives_bit_flips(idx in arb_index(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = idx.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            // Either refused, or decodes to something that still passes validation.
            if let Ok(back) = FileIndex::decode(&bytes) {
                prop_assert_eq!(back.encode(), bytes);
            }
        }
    }

    #[test]
    fn absurd_counts_are_refused_without_allocating() {
        let mut idx = FileIndex::default().encode();
        idx[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // n_packs
        let err = FileIndex::decode(&idx).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn file_size_over_limit_is_refused() {
        let mut idx = FileIndex::default().encode();
        idx[8..16].copy_from_slice(&(MAX_FILE_SIZE + 1).to_le_bytes());
        assert!(FileIndex::decode(&idx).unwrap_err().contains("1 TiB"));
    }
}

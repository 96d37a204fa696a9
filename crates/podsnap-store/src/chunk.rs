//! The CPU-bound steps of the pipeline: zero detection, page hashing, blob compression and
//! bounded decompression. Pure functions over byte slices, run on blocking worker threads.

use std::cell::RefCell;

use sha2::{Digest, Sha256};

use crate::index::Codec;
use crate::limits::PAGE_SIZE;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A blob is stored raw unless zstd saves at least this fraction (1/20 = 5%).
const MIN_GAIN_DIVISOR: usize = 20;
/// zstd level used for every blob.
pub const ZSTD_LEVEL: i32 = 1;

/// True when every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(PAGE_SIZE).all(|c| c == &ZERO_PAGE[..c.len()])
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Classifies every page of `block`: `None` for an all-zero page, else its sha256.
pub fn hash_pages(block: &[u8]) -> Vec<Option<[u8; 32]>> {
    block
        .chunks(PAGE_SIZE)
        .map(|p| if is_zero(p) { None } else { Some(sha256(p)) })
        .collect()
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// The worker's compression output buffer, reused: a fresh `compress_bound`-sized buffer
    /// per blob was faulted in anew every time (9x the time of zstd itself on incompressible
    /// data such as runsc's images).
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// zstd level 1 of one blob, when that saves at least 5%; `None` when it should stay raw.
/// Only a kept result is copied out of the worker's reused output buffer.
pub fn try_compress(raw: &[u8]) -> Option<Vec<u8>> {
    let bound = zstd::zstd_safe::compress_bound(raw.len());
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let c = c.as_mut()?;
        OUTPUT.with(|out| {
            let mut out = out.borrow_mut();
            if out.len() < bound + PAGE_SIZE {
                out.resize(bound + PAGE_SIZE, 0);
            }
            // Start the output half a page away from the input, modulo 4 KiB. Blobs start on
            // page boundaries of their block, and when the output sits at the same offset
            // within a page, zstd's copy of incompressible input into raw blocks suffers
            // 4 KiB aliasing: measured 3.0 ms instead of 0.97 ms per 4 MiB of random bytes.
            let src = raw.as_ptr() as usize % PAGE_SIZE;
            let dst = out.as_ptr() as usize % PAGE_SIZE;
            let start = (src + PAGE_SIZE / 2 + PAGE_SIZE - dst) % PAGE_SIZE;
            let window = &mut out[start..start + bound];
            let n = c.compress_to_buffer(raw, window).ok()?;
            (n + raw.len() / MIN_GAIN_DIVISOR <= raw.len()).then(|| out[start..start + n].to_vec())
        })
    })
}

/// Compresses one blob with zstd level 1, or keeps it raw when that saves less than 5%.
pub fn compress_blob(raw: &[u8]) -> (Codec, Vec<u8>) {
    match try_compress(raw) {
        Some(z) => (Codec::Zstd, z),
        None => (Codec::Raw, raw.to_vec()),
    }
}

/// Decompresses one blob into exactly `raw_len` bytes; refuses anything that would exceed it.
/// A sealed blob must have been opened first: `stored` is what was inside the seal.
pub fn decompress_blob(codec: Codec, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let out = match codec {
        Codec::Raw | Codec::SealedRaw => stored.to_vec(),
        Codec::Zstd | Codec::SealedZstd => DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            d.as_mut()
                .expect("just set")
                .decompress(stored, raw_len)
                .map_err(|e| format!("zstd: {e}"))
        })?,
    };
    if out.len() != raw_len {
        return Err(format!(
            "blob decompressed to {} bytes, expected {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Compresses an arbitrary buffer (indexes) with zstd level 3: small and written once.
pub fn compress_meta(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, 3).expect("zstd compression into a growable buffer")
}

/// Decompresses metadata of declared size `raw_len`, never producing more than that.
///
/// The output buffer grows with what the stream actually produces (at most `raw_len` + 1
/// bytes): a hostile manifest declaring a large size for a tiny object allocates nothing
/// up front. (`zstd::bulk::decompress` would reserve `raw_len` bytes before decoding.)
pub fn decompress_meta(stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let dec = zstd::stream::read::Decoder::with_buffer(stored).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::with_capacity(raw_len.min(stored.len().saturating_mul(4)));
    dec.take(raw_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() != raw_len {
        return Err(format!(
            "decompressed to {} bytes, manifest declares {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_and_hashing() {
        let mut block = vec![0u8; 3 * PAGE_SIZE + 100];
        block[PAGE_SIZE + 7] = 1;
        let h = hash_pages(&block);
        assert_eq!(h.len(), 4);
        assert!(h[0].is_none() && h[2].is_none() && h[3].is_none());
        assert_eq!(h[1], Some(sha256(&block[PAGE_SIZE..2 * PAGE_SIZE])));
    }

    #[test]
    fn incompressible_blobs_stay_raw_and_text_compresses() {
        let random: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ (i as u8).rotate_left(3))
            .collect();
        let (codec, _) = compress_blob(&random);
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(1000);
        let (tc, z) = compress_blob(&text);
        assert_eq!(tc, Codec::Zstd);
        assert_eq!(decompress_blob(tc, &z, text.len()).unwrap(), text);
        if codec == Codec::Raw {
            assert_eq!(
                decompress_blob(codec, &random, random.len()).unwrap(),
                random
            );
        }
    }

    #[test]
    fn decompression_is_bounded_by_the_declared_size() {
        let text = vec![b'a'; 1 << 20];
        let (c, z) = compress_blob(&text);
        assert_eq!(c, Codec::Zstd);
        assert!(decompress_blob(c, &z, 4096).is_err());
        assert!(decompress_meta(&compress_meta(&text), 1000).is_err());
    }
}

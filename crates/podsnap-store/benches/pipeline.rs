//! Micro-benchmarks of the pipeline's CPU-bound steps on a 4 MiB mixed block: zero detection
//! + page hashing ("split/hash"), blob compression, index encode/decode ("pack").
//!
//! Each step has a `baseline_*` neighbour measured in the same run on the same block: plain
//! sha256 of every page (what hashing costs without the zero check), plain zstd level 1 of
//! each 1 MiB with a reused context and its decompression (what the pipeline's codec calls
//! cost by themselves), so the pipeline's overhead reads as a ratio. The `incompressible`
//! group repeats hashing and compression on random bytes, like runsc's flate-compressed
//! checkpoint.img, where every blob ends up stored raw.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podsnap_store::chunk;
use podsnap_store::index::{BlobRef, Codec, FileIndex, ZERO_BLOB};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const PAGE: usize = 4096;

fn mixed_block(pages: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut out = vec![0u8; pages * PAGE];
    for p in 0..pages {
        let page = &mut out[p * PAGE..(p + 1) * PAGE];
        match rng.gen_range(0..10) {
            0..=3 => {}
            4..=6 => rng.fill_bytes(page),
            _ => {
                for (i, b) in page.iter_mut().enumerate() {
                    *b = b"memory page text of a sandbox "[(i + p) % 30];
                }
            }
        }
    }
    out
}

/// Hashing and compression of `data` and their baselines, in group `g`.
fn hash_and_compress(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    data: &[u8],
    zc: &mut zstd::bulk::Compressor<'_>,
) {
    g.bench_function("split_hash_4MiB", |b| b.iter(|| chunk::hash_pages(data)));
    g.bench_function("baseline_sha256_every_page_4MiB", |b| {
        b.iter(|| {
            data.chunks(PAGE)
                .map(|p| Sha256::digest(p)[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    g.bench_function("compress_4x1MiB", |b| {
        b.iter(|| {
            data.chunks(1 << 20)
                // What the push runs: a raw result stays a slice of the block (no copy).
                .map(|blob| chunk::try_compress(blob).map_or(0, |z| z.len()))
                .sum::<usize>()
        })
    });
    g.bench_function("baseline_zstd1_4x1MiB", |b| {
        b.iter(|| {
            data.chunks(1 << 20)
                .map(|blob| zc.compress(blob).unwrap().len())
                .sum::<usize>()
        })
    });
}

/// The mixed block: hashing, compression, and decompression against plain zstd's.
fn bench_pipeline(c: &mut Criterion) {
    let block = mixed_block(1024);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(block.len() as u64));
    let mut zc = zstd::bulk::Compressor::new(1).unwrap();
    hash_and_compress(&mut g, &block, &mut zc);
    let compressed: Vec<(Codec, Vec<u8>)> =
        block.chunks(1 << 20).map(chunk::compress_blob).collect();
    let plain: Vec<Vec<u8>> = block
        .chunks(1 << 20)
        .map(|blob| zstd::bulk::compress(blob, 1).unwrap())
        .collect();
    let mut zd = zstd::bulk::Decompressor::new().unwrap();
    g.bench_function("decompress_4x1MiB", |b| {
        b.iter(|| {
            compressed
                .iter()
                .map(|(c, z)| chunk::decompress_blob(*c, z, 1 << 20).unwrap().len())
                .sum::<usize>()
        })
    });
    g.bench_function("baseline_zstd_decompress_4x1MiB", |b| {
        b.iter(|| {
            plain
                .iter()
                .map(|z| zd.decompress(z, 1 << 20).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();
}

/// A runsc checkpoint.img is already flate-compressed: what the pipeline pays on it.
fn bench_incompressible(c: &mut Criterion) {
    let mut random = vec![0u8; 1024 * PAGE];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut random);
    let mut g = c.benchmark_group("incompressible");
    g.throughput(Throughput::Bytes(random.len() as u64));
    let mut zc = zstd::bulk::Compressor::new(1).unwrap();
    hash_and_compress(&mut g, &random, &mut zc);
    g.finish();
}

/// An index for 1 GiB with 5% scattered pages from another blob: the worst realistic case.
fn large_index() -> FileIndex {
    let mut idx = FileIndex {
        packs: vec![[1; 32], [2; 32]],
        ..Default::default()
    };
    for b in 0..1024u32 {
        idx.blobs.push(BlobRef {
            pack: b % 2,
            offset: b as u64 * 300_000,
            stored_len: 300_000,
            raw_len: 1 << 20,
            codec: Codec::Zstd,
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for b in 0..1024u32 {
        for p in 0..256u32 {
            if rng.gen_range(0..20) == 0 {
                idx.push_extent(ZERO_BLOB, 0, 1);
            } else {
                idx.push_extent(b, p, 1);
                idx.digests.push([p as u8; 32]);
            }
        }
    }
    idx.file_size = 1 << 30;
    idx
}

fn bench_index(c: &mut Criterion) {
    let idx = large_index();
    let encoded = idx.encode();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("encode_1GiB_file", |b| b.iter(|| idx.encode().len()));
    g.bench_function("decode_1GiB_file", |b| {
        b.iter(|| FileIndex::decode(&encoded).unwrap().extents.len())
    });
    g.finish();
}

criterion_group!(benches, bench_pipeline, bench_incompressible, bench_index);
criterion_main!(benches);

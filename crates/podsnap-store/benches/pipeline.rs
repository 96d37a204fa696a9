//! Micro-benchmarks of the pipeline's CPU-bound steps on a 4 MiB mixed block: zero detection
//! + page hashing ("split/hash"), blob compression, index encode/decode ("pack").

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podsnap_store::chunk;
use podsnap_store::index::{BlobRef, Codec, FileIndex, ZERO_BLOB};
use rand::{Rng, RngCore, SeedableRng};

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

fn bench(c: &mut Criterion) {
    let block = mixed_block(1024);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("split_hash_4MiB", |b| b.iter(|| chunk::hash_pages(&block)));
    g.bench_function("compress_4x1MiB", |b| {
        b.iter(|| {
            block
                .chunks(1 << 20)
                .map(|blob| chunk::compress_blob(blob).1.len())
                .sum::<usize>()
        })
    });
    let compressed: Vec<(Codec, Vec<u8>)> =
        block.chunks(1 << 20).map(chunk::compress_blob).collect();
    g.bench_function("decompress_4x1MiB", |b| {
        b.iter(|| {
            compressed
                .iter()
                .map(|(c, z)| chunk::decompress_blob(*c, z, 1 << 20).unwrap().len())
                .sum::<usize>()
        })
    });
    g.finish();

    // An index for 1 GiB with 5% scattered pages from another blob: the worst realistic case.
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
    let encoded = idx.encode();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("encode_1GiB_file", |b| b.iter(|| idx.encode().len()));
    g.bench_function("decode_1GiB_file", |b| {
        b.iter(|| FileIndex::decode(&encoded).unwrap().extents.len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

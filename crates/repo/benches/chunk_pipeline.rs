//! Per-chunk CPU cost of the data path: id (keyed BLAKE3), seal (zstd + AES-256-GCM +
//! framing) and open (verify + decrypt + decompress + digest check), for the kinds of
//! data a disk holds. One core; the pipeline runs these on both.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use haven_repo::{Backend, Repository, is_all_zero};

fn sample(kind: &str, len: usize) -> Vec<u8> {
    match kind {
        "random" => {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        }
        "text" => b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .cycle()
            .take(len)
            .copied()
            .collect(),
        _ => vec![0u8; len],
    }
}

fn chunk_costs(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let repo = runtime
        .block_on(Repository::init(Backend::memory(), b"bench", 1 << 20))
        .expect("in-memory repository");
    let mut group = c.benchmark_group("chunk");
    for len in [256 * 1024usize, 1 << 20] {
        for kind in ["random", "text", "zero"] {
            let data = sample(kind, len);
            let id = repo.chunk_id(&data);
            let sealed = repo.seal_chunk(&id, &data).expect("seal");
            group.throughput(Throughput::Bytes(len as u64));
            let label = format!("{kind}/{}KiB", len / 1024);
            group.bench_with_input(BenchmarkId::new("id", &label), &data, |b, data| {
                b.iter(|| repo.chunk_id(data))
            });
            group.bench_with_input(BenchmarkId::new("zero_check", &label), &data, |b, data| {
                b.iter(|| is_all_zero(data))
            });
            group.bench_with_input(BenchmarkId::new("seal", &label), &data, |b, data| {
                b.iter(|| repo.seal_chunk(&id, data).expect("seal"))
            });
            group.bench_with_input(BenchmarkId::new("open", &label), &sealed, |b, sealed| {
                b.iter(|| {
                    repo.open_chunk(&id, sealed, Some(len as u64))
                        .expect("open")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, chunk_costs);
criterion_main!(benches);

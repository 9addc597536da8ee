//! The client against Haven's own NBD server whose replies are mutated on the way:
//! a randomized, seeded complement to the scripted cases of `hostile.rs`.
//!
//! A proxy forwards what the client sends untouched and damages what the server
//! answers, one way per case: bytes flipped at random offsets, the stream cut at a
//! random offset, random bytes inserted. The handshake, option replies, structured
//! read chunks and block status chunks all pass through it. Every case must end in a
//! result (the client's errors are fine) without a panic or a hang: each socket
//! exchange runs under the client's timeout (short here). NBD carries no checksum, so data that a
//! flip damaged cannot be detected by the client; that is not checked here.
//!
//! `HAVEN_NBD_MUTATIONS` sets the number of cases (default 300); a failure names the
//! case's seed.

use std::sync::Arc;
use std::time::Duration;

use haven_nbd::{
    CONTEXT_BASE_ALLOCATION, Client, ConnectOptions, Endpoint, NbdServer, PATTERN_BLOCK,
    PatternExport, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;

const BLOCK: u64 = PATTERN_BLOCK;

/// 512 KiB: data in even blocks, holes in odd ones.
const PATTERN: PatternExport = PatternExport {
    blocks: 8,
    corrupt: None,
};

/// SplitMix64: a seeded generator with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How the server's answer is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at each offset with a non-zero value.
    Flip(Vec<(u64, u8)>),
    /// Close the stream after this many bytes.
    Cut(u64),
    /// Insert these bytes at this offset.
    Insert(u64, Vec<u8>),
}

impl Mutation {
    /// A mutation that lands in the first `span` bytes of the answer (the handshake
    /// is about 150 bytes, a read reply 64 KiB plus headers).
    fn draw(rng: &mut Rng) -> Self {
        let span = if rng.below(2) == 0 { 200 } else { 70_000 };
        match rng.below(3) {
            0 => Mutation::Flip(
                (0..1 + rng.below(4))
                    .map(|_| (rng.below(span), 1 + rng.below(255) as u8))
                    .collect(),
            ),
            1 => Mutation::Cut(rng.below(span)),
            _ => Mutation::Insert(
                rng.below(span),
                (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect(),
            ),
        }
    }

    /// Applies the mutation to `chunk`, which starts at `offset` of the answer;
    /// `None` once the stream is to be closed.
    fn apply(&self, offset: u64, chunk: &[u8]) -> Option<Vec<u8>> {
        let end = offset + chunk.len() as u64;
        let mut out = chunk.to_vec();
        match self {
            Mutation::Flip(flips) => {
                for (at, value) in flips {
                    if (offset..end).contains(at) {
                        out[(at - offset) as usize] ^= value;
                    }
                }
            }
            Mutation::Cut(at) => {
                if *at < end {
                    out.truncate(at.saturating_sub(offset) as usize);
                    return (!out.is_empty()).then_some(out);
                }
            }
            Mutation::Insert(at, bytes) => {
                if (offset..end).contains(at) {
                    let position = (at - offset) as usize;
                    out.splice(position..position, bytes.iter().copied());
                }
            }
        }
        Some(out)
    }
}

/// Serves one client through a proxy that damages the server's answers as `mutation`
/// says; returns the endpoint the client connects to.
fn serve_mutated(dir: &std::path::Path, mutation: Mutation) -> Endpoint {
    let path = dir.join("mutated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let (server_end, proxy_end) = tokio::io::duplex(1 << 20);
        let server = NbdServer::new(Arc::new(PATTERN), ServerConfig::new("disk"));
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let _ = server.serve_stream(server_end, stopped).await;
        });
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = tokio::io::split(proxy_end);
        let upstream = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        });
        let mut offset = 0u64;
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(read) = from_server.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            let Some(out) = mutation.apply(offset, &buffer[..read]) else {
                break;
            };
            offset += read as u64;
            if to_client.write_all(&out).await.is_err() {
                break;
            }
            if matches!(mutation, Mutation::Cut(at) if at < offset) {
                break;
            }
        }
        upstream.abort();
    });
    Endpoint::Unix(path)
}

/// What one case ended in, for the summary.
#[derive(Debug, Default)]
struct Outcomes {
    connect_failed: u64,
    read_failed: u64,
    status_failed: u64,
    completed: u64,
}

#[tokio::test]
async fn damaged_server_answers_end_in_a_result() {
    let cases: u64 = std::env::var("HAVEN_NBD_MUTATIONS")
        .map(|n| n.parse().expect("HAVEN_NBD_MUTATIONS: a number"))
        .unwrap_or(300);
    let mut outcomes = Outcomes::default();
    for seed in 0..cases {
        let mut rng = Rng(seed);
        let mutation = Mutation::draw(&mut rng);
        // Shown by the harness if the case panics.
        eprintln!("case {seed}: {mutation:?}");
        let dir = tempfile::tempdir().unwrap();
        let endpoint = serve_mutated(dir.path(), mutation.clone());
        let options = ConnectOptions {
            meta_contexts: vec![CONTEXT_BASE_ALLOCATION.to_string()],
            // Bounds a case whose damaged lengths make the client wait for bytes
            // that never come; any outcome is accepted, so a slow machine only
            // changes which error a case ends in.
            timeout: Duration::from_millis(300),
            ..ConnectOptions::new("disk")
        };
        let mut client = match Client::connect(&endpoint, &options).await {
            Ok(client) => client,
            Err(_) => {
                outcomes.connect_failed += 1;
                continue;
            }
        };
        let size = client.size().min(8 * BLOCK);
        let mut buf = vec![0u8; BLOCK.min(size) as usize];
        if client.read(0, &mut buf).await.is_err() {
            outcomes.read_failed += 1;
            continue;
        }
        if client.has_meta_context(CONTEXT_BASE_ALLOCATION)
            && client
                .block_status(CONTEXT_BASE_ALLOCATION, 0, size)
                .await
                .is_err()
        {
            outcomes.status_failed += 1;
            continue;
        }
        outcomes.completed += 1;
    }
    eprintln!("{cases} mutated servers: {outcomes:?}");
    assert!(
        outcomes.connect_failed + outcomes.read_failed + outcomes.status_failed > 0,
        "no mutation was noticed: the proxy damages nothing"
    );
}

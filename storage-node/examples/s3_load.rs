//! S3 load generator for the storage-node benchmark (`bench/storage-node/`).
//!
//! The Python client costs most of a core per GB/s on this 2-core machine, so
//! it measured itself as much as the server. This one presigns every request
//! (SigV4, `UNSIGNED-PAYLOAD`) before timing, then runs N concurrent
//! keep-alive HTTP/1.1 clients that PUT one shared buffer (no copy per
//! request) and GET while counting bytes without keeping them.
//!
//! ```text
//! s3_load ENDPOINT ACCESS_KEY SECRET_KEY LABEL
//!   env: BENCH_CLIENTS (16), BENCH_BIG_OBJECTS (256), BENCH_SMALL_OBJECTS (4000)
//! ```
//! Prints one Markdown table row: PUT/GET MB/s for 4 MiB, ops/s for 4 KiB.

use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use rand::RngCore;
use time::macros::format_description;

const REGION: &str = "us-east-1";
const BUCKET: &str = "bench";

struct Target {
    endpoint: String,
    host: String,
    access: String,
    secret: String,
    /// The signing time of every request, `YYYYMMDDTHHMMSSZ`.
    amz_date: String,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// A presigned path-style URL for `method` on `path` (`/bench/key`).
fn presign(target: &Target, method: &str, path: &str) -> String {
    let amz_date = &target.amz_date;
    let date = &amz_date[..8];
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let credential = format!("{}/{scope}", target.access).replace('/', "%2F");
    let query = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={credential}&X-Amz-Date={amz_date}&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    );
    let canonical = format!(
        "{method}\n{path}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
        target.host
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut signing_key = hmac_sha256(format!("AWS4{}", target.secret).as_bytes(), date.as_bytes());
    for part in [REGION, "s3", "aws4_request"] {
        signing_key = hmac_sha256(&signing_key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&signing_key, string_to_sign.as_bytes()));
    format!(
        "{}{path}?{query}&X-Amz-Signature={signature}",
        target.endpoint
    )
}

/// Runs every URL once from `clients` tasks; returns (bytes moved, seconds).
async fn run(
    http: &reqwest::Client,
    clients: usize,
    method: reqwest::Method,
    urls: Vec<String>,
    body: Option<Bytes>,
) -> anyhow::Result<(u64, f64)> {
    let urls = Arc::new(urls);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, urls, next, body, method) = (
            http.clone(),
            Arc::clone(&urls),
            Arc::clone(&next),
            body.clone(),
            method.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut moved = 0u64;
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(url) = urls.get(index) else {
                    return Ok::<u64, anyhow::Error>(moved);
                };
                let mut request = http.request(method.clone(), url);
                if let Some(body) = &body {
                    request = request.body(body.clone());
                    moved += body.len() as u64;
                }
                let mut response = request.send().await?;
                let status = response.status();
                while let Some(chunk) = response.chunk().await? {
                    if body.is_none() {
                        moved += chunk.len() as u64;
                    }
                }
                anyhow::ensure!(status.is_success(), "{method} {url}: {status}");
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, access, secret, label] = args.as_slice() else {
        anyhow::bail!("usage: s3_load ENDPOINT ACCESS_KEY SECRET_KEY LABEL");
    };
    let host = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("endpoint must be http://HOST:PORT"))?
        .trim_end_matches('/')
        .to_owned();
    let now = time::OffsetDateTime::now_utc();
    let target = Target {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        host,
        access: access.clone(),
        secret: secret.clone(),
        amz_date: now.format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))?,
    };
    let clients = env_number("BENCH_CLIENTS", 16);
    let big_count = env_number("BENCH_BIG_OBJECTS", 256);
    let small_count = env_number("BENCH_SMALL_OBJECTS", 4000);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .http1_only()
        .build()?;
    // Create the bucket (an existing one answers 409, which is fine).
    http.put(presign(&target, "PUT", &format!("/{BUCKET}")))
        .send()
        .await?;

    // Random bytes: nothing on the way compresses or deduplicates them.
    let noise = |len: usize| {
        let mut out = vec![0u8; len];
        rand::rng().fill_bytes(&mut out);
        Bytes::from(out)
    };
    let big_keys: Vec<String> = (0..big_count).map(|i| format!("big/{i:05}")).collect();
    let small_keys: Vec<String> = (0..small_count)
        .map(|i| format!("small/{:02x}/{i:06}", i / 256))
        .collect();
    let urls = |method: &str, keys: &[String]| -> Vec<String> {
        keys.iter()
            .map(|k| presign(&target, method, &format!("/{BUCKET}/{k}")))
            .collect()
    };

    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;
    let (bytes, secs) = run(
        &http,
        clients,
        put.clone(),
        urls("PUT", &big_keys),
        Some(noise(4 << 20)),
    )
    .await?;
    let put_mb = bytes as f64 / secs / 1e6;
    let (bytes, secs) = run(&http, clients, get.clone(), urls("GET", &big_keys), None).await?;
    anyhow::ensure!(
        bytes == (big_count as u64) << 22,
        "GET returned {bytes} bytes"
    );
    let get_mb = bytes as f64 / secs / 1e6;
    let (_, secs) = run(
        &http,
        clients,
        put,
        urls("PUT", &small_keys),
        Some(noise(4096)),
    )
    .await?;
    let put_ops = small_count as f64 / secs;
    let (_, secs) = run(&http, clients, get, urls("GET", &small_keys), None).await?;
    let get_ops = small_count as f64 / secs;
    println!(
        "| {label} | {put_mb:.0} MB/s | {get_mb:.0} MB/s | {put_ops:.0} ops/s | {get_ops:.0} ops/s |"
    );
    Ok(())
}

//! What Haven's fuzz targets share: an allocator that turns an unbounded allocation
//! into a crash, one async runtime, a Unix-socket peer that answers with the fuzzer's
//! bytes, and the seed corpora each target writes of real encoded objects.
//!
//! Every target in `fuzz_targets/` calls the product's own parser (through the
//! crates' `#[doc(hidden)] pub mod fuzzing` entry points where the parser is
//! private); none parses on its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::runtime::Runtime;

pub mod seeds;

/// Largest single allocation a target may make. Every parser bounds what it allocates
/// from a length it read (the largest legitimate buffer is a 32 MiB NBD read); a
/// larger request means a length went unchecked. libFuzzer's own `-rss_limit_mb` does
/// not see it: zeroed allocations are not resident until written.
const MAX_ALLOCATION: usize = 256 << 20;

/// The system allocator, aborting (a crash the fuzzer reports) on any allocation
/// larger than [`MAX_ALLOCATION`].
pub struct Capped;

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // Formatting a number allocates nothing; the abort is the finding.
        eprintln!("haven-fuzz: allocation of {size} bytes, over the {MAX_ALLOCATION} limit");
        std::process::abort();
    }
}

// SAFETY: forwards to `System` unchanged after a size check.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// One current-thread runtime per target process, with time and I/O.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A Unix socket whose every connection is answered with the bytes of the current
/// input: the hostile server of the client targets (NBD, QMP).
pub struct ScriptedPeer {
    listener: UnixListener,
    path: PathBuf,
}

impl ScriptedPeer {
    /// Binds a socket in a fresh folder of the temporary directory; call inside
    /// [`runtime`].
    pub fn bind(name: &str) -> Self {
        let folder = std::env::temp_dir().join(format!("haven-fuzz-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).expect("a socket folder");
        let path = folder.join("socket");
        let listener = UnixListener::bind(&path).expect("a socket");
        Self { listener, path }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection, sends `script`, closes its sending side and swallows
    /// whatever the client writes until it hangs up (`transcript`, when given,
    /// receives it).
    pub async fn answer(&self, script: &[u8], transcript: Option<&mut Vec<u8>>) {
        let Ok((mut stream, _)) = self.listener.accept().await else {
            return;
        };
        let (mut reader, mut writer) = stream.split();
        let send = async {
            let _ = writer.write_all(script).await;
            let _ = writer.shutdown().await;
        };
        let swallow = async {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
            sink
        };
        let ((), received) = tokio::join!(send, swallow);
        if let Some(transcript) = transcript {
            *transcript = received;
        }
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        if let Some(folder) = self.path.parent() {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// What Haven's NBD client does with a server, as a backup and a restore do it:
/// connect asking for allocation and dirty-bitmap contexts, read, ask for block status
/// of the whole disk in every granted context, write, write zeroes, flush, disconnect.
pub async fn nbd_client_session(socket: &Path) {
    use haven_nbd::{CONTEXT_BASE_ALLOCATION, Client, ConnectOptions, Endpoint};
    let mut options = ConnectOptions::new("disk");
    let bitmap = haven_nbd::dirty_bitmap_context("haven-1");
    options.meta_contexts = vec![CONTEXT_BASE_ALLOCATION.to_string(), bitmap.clone()];
    options.timeout = std::time::Duration::from_secs(5);
    let endpoint = Endpoint::Unix(socket.to_path_buf());
    let Ok(mut client) = Client::connect(&endpoint, &options).await else {
        return;
    };
    let size = client.size();
    let block = u64::from(client.minimum_block_size().max(1));
    let length = size.min(128 * 1024) / block * block;
    if length > 0 {
        let mut buf = vec![0u8; length as usize];
        let _ = client.read(0, &mut buf).await;
        for context in [CONTEXT_BASE_ALLOCATION, bitmap.as_str()] {
            if client.has_meta_context(context) {
                if let Ok(extents) = client.block_status(context, 0, size).await {
                    let mut position = 0;
                    for extent in &extents {
                        assert_eq!(extent.offset, position, "extents with a gap");
                        position = extent.end();
                    }
                    assert_eq!(position, size, "extents that do not cover the disk");
                }
            }
        }
        if !client.is_read_only() {
            let _ = client.write(0, &buf[..block as usize]).await;
            let _ = client.write_zeroes(0, block as u32).await;
            let _ = client.flush().await;
        }
    }
    let _ = client.disconnect().await;
}

/// Haven's NBD server exporting a small pattern disk, as `haven serve-nbd` serves a
/// snapshot, for one client connected over `stream`.
pub async fn nbd_serve<T>(stream: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use haven_nbd::{NbdServer, PatternExport, ServerConfig};
    let mut config = ServerConfig::new("disk");
    config.handshake_timeout = std::time::Duration::from_secs(5);
    config.reply_timeout = std::time::Duration::from_secs(5);
    let export = PatternExport {
        blocks: 4,
        corrupt: Some(2),
    };
    let server = NbdServer::new(std::sync::Arc::new(export), config);
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let _ = server.serve_stream(stream, shutdown).await;
}

/// `--expand-env` on a configuration file's text: never a panic, and text without
/// `${` comes back unchanged.
pub fn check_env_expansion(file_name: &str, text: &str) {
    let expanded = haven_config::expand_env(file_name, text);
    if !text.contains("${") {
        assert_eq!(expanded.as_deref(), Ok(text));
    }
}

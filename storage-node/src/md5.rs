//! MD5 for S3 ETags and Content-MD5 checks, through aws-lc's assembly
//! implementation (`md5-x86_64.S` on x86-64), which is faster than the
//! portable `md-5` crate s3s uses. MD5 is the single largest CPU cost of a
//! PUT: S3 clients expect the ETag of a single-part object to be the MD5 of
//! its bytes, so it cannot be skipped.

use std::ptr::NonNull;

use aws_lc_sys::{
    EVP_DigestFinal_ex, EVP_DigestInit_ex, EVP_DigestUpdate, EVP_MD_CTX, EVP_MD_CTX_free,
    EVP_MD_CTX_new, EVP_md5,
};

/// An MD5 computation in progress (an aws-lc `EVP_MD_CTX` it owns).
pub struct Md5 {
    context: NonNull<EVP_MD_CTX>,
}

// SAFETY: the context is owned exclusively by this value and only used
// through `&mut self`; aws-lc digest contexts have no thread affinity.
unsafe impl Send for Md5 {}

/// aws-lc fails only when it cannot allocate: treat that like Rust's own
/// allocation failure.
fn out_of_memory() -> ! {
    std::alloc::handle_alloc_error(std::alloc::Layout::new::<EVP_MD_CTX>())
}

impl Md5 {
    /// Starts a new digest.
    pub fn new() -> Self {
        // SAFETY: EVP_MD_CTX_new has no preconditions; null means no memory.
        let Some(context) = NonNull::new(unsafe { EVP_MD_CTX_new() }) else {
            out_of_memory()
        };
        let md5 = Self { context };
        // SAFETY: the context is fresh and valid; EVP_md5 returns a static
        // descriptor; no engine.
        let ok =
            unsafe { EVP_DigestInit_ex(md5.context.as_ptr(), EVP_md5(), std::ptr::null_mut()) };
        if ok != 1 {
            out_of_memory();
        }
        md5
    }

    /// Feeds bytes into the digest.
    pub fn update(&mut self, data: &[u8]) {
        // SAFETY: the pointer and length describe the live slice `data`; the
        // context was initialised for MD5 in `new`. MD5 updates cannot fail.
        unsafe { EVP_DigestUpdate(self.context.as_ptr(), data.as_ptr().cast(), data.len()) };
    }

    /// Finishes the digest.
    pub fn finalize(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut length = 0;
        // SAFETY: `out` has room for the 16-byte MD5 digest; the context is
        // initialised and freed (in drop) right after.
        unsafe { EVP_DigestFinal_ex(self.context.as_ptr(), out.as_mut_ptr(), &mut length) };
        debug_assert_eq!(length, 16);
        out
    }
}

impl Drop for Md5 {
    fn drop(&mut self) {
        // SAFETY: the context came from EVP_MD_CTX_new and is freed once.
        unsafe { EVP_MD_CTX_free(self.context.as_ptr()) };
    }
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(parts: &[&[u8]]) -> String {
        let mut digest = Md5::new();
        for part in parts {
            digest.update(part);
        }
        hex::encode(digest.finalize())
    }

    #[test]
    fn known_answers() {
        // RFC 1321 test suite.
        assert_eq!(md5(&[]), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5(&[b"abc"]), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5(&[
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ]),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn agrees_with_the_portable_implementation_in_any_split() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut reference = <s3s::crypto::Md5 as s3s::crypto::Checksum>::new();
        s3s::crypto::Checksum::update(&mut reference, &data);
        let expected = hex::encode(s3s::crypto::Checksum::finalize(reference));
        for split in [0, 1, 63, 64, 65, 4096, 299_999] {
            assert_eq!(
                md5(&[&data[..split], &data[split..]]),
                expected,
                "split {split}"
            );
        }
    }

    /// Throughput of this MD5 against the portable `md-5` crate s3s uses;
    /// a measurement, not a check: `cargo test --release -p
    /// haven-storage-node md5_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn md5_throughput() {
        let data = vec![0x5au8; 64 << 20];
        let rounds = 8;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let mut digest = Md5::new();
            for chunk in data.chunks(1 << 20) {
                digest.update(chunk);
            }
            std::hint::black_box(digest.finalize());
        }
        let ours = (rounds * data.len()) as f64 / started.elapsed().as_secs_f64() / 1e6;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let mut digest = <s3s::crypto::Md5 as s3s::crypto::Checksum>::new();
            for chunk in data.chunks(1 << 20) {
                s3s::crypto::Checksum::update(&mut digest, chunk);
            }
            std::hint::black_box(s3s::crypto::Checksum::finalize(digest));
        }
        let portable = (rounds * data.len()) as f64 / started.elapsed().as_secs_f64() / 1e6;
        println!("md5 MB/s: aws-lc {ours:.0}, md-5 (s3s) {portable:.0}");
    }
}

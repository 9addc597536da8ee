//! Block status results: extents, their flag bits, and the well-known contexts.

use crate::error::NbdError;

/// The `base:allocation` context: which ranges hold data, holes or zeros.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";

/// `base:allocation` flag: the range is not allocated on the server (a hole).
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: the range reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*` flag: the range changed since the bitmap was created.
pub const STATE_DIRTY: u32 = 1;

/// Name of the context that exposes qemu dirty bitmap `bitmap`, for incremental backups.
pub fn dirty_bitmap_context(bitmap: &str) -> String {
    format!("qemu:dirty-bitmap:{bitmap}")
}

/// One run of bytes with the same block status, as reported by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First byte of the run.
    pub offset: u64,
    /// Length of the run in bytes, never zero.
    pub length: u64,
    /// Context-specific flags, e.g. [`STATE_HOLE`] or [`STATE_DIRTY`].
    pub flags: u32,
}

impl Extent {
    /// The run of `length` bytes at `offset` with `flags`: one constructor for
    /// the places (mostly tests) that write extents by hand.
    pub const fn new(offset: u64, length: u64, flags: u32) -> Self {
        Extent {
            offset,
            length,
            flags,
        }
    }

    /// First byte after the run.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Turns the descriptors of one block status reply to a request for
/// `[offset, offset + length)` into extents: every descriptor must be
/// non-empty, at least one must be present, the last one is clamped to the
/// request and none may start past it.
pub(crate) fn extents_from_descriptors(
    offset: u64,
    length: u64,
    descriptors: &[(u32, u32)],
) -> Result<Vec<Extent>, NbdError> {
    if descriptors.is_empty() {
        return Err(NbdError::Protocol(
            "block status reply without descriptors".into(),
        ));
    }
    let end = offset.saturating_add(length);
    let mut position = offset;
    let mut extents = Vec::with_capacity(descriptors.len());
    for &(descriptor_length, flags) in descriptors {
        if position >= end {
            return Err(NbdError::Protocol(format!(
                "block status descriptors continue past the requested end {end}"
            )));
        }
        if descriptor_length == 0 {
            return Err(NbdError::Protocol(format!(
                "zero-length block status extent at offset {position}"
            )));
        }
        let extent_end = position
            .saturating_add(u64::from(descriptor_length))
            .min(end);
        extents.push(Extent {
            offset: position,
            length: extent_end - position,
            flags,
        });
        position = extent_end;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_become_extents() {
        assert_eq!(
            extents_from_descriptors(1000, 300, &[(100, 0), (50, 3), (150, 1)]).unwrap(),
            vec![
                Extent::new(1000, 100, 0),
                Extent::new(1100, 50, 3),
                Extent::new(1150, 150, 1)
            ]
        );
        // Partial answers are fine: the caller asks again from the end.
        assert_eq!(
            extents_from_descriptors(0, 300, &[(100, 0)]).unwrap(),
            vec![Extent::new(0, 100, 0)]
        );
        // The last extent is clamped to the request.
        assert_eq!(
            extents_from_descriptors(0, 300, &[(100, 0), (u32::MAX, 1)]).unwrap(),
            vec![Extent::new(0, 100, 0), Extent::new(100, 200, 1)]
        );
    }

    #[test]
    fn malformed_descriptors_are_rejected() {
        for descriptors in [
            &[][..],
            &[(0, 0)][..],
            &[(100, 0), (0, 1)][..],
            &[(300, 0), (1, 0)][..],
        ] {
            assert!(
                matches!(
                    extents_from_descriptors(0, 300, descriptors),
                    Err(NbdError::Protocol(_))
                ),
                "{descriptors:?}"
            );
        }
    }

    #[test]
    fn context_names() {
        assert_eq!(dirty_bitmap_context("bm0"), "qemu:dirty-bitmap:bm0");
    }
}

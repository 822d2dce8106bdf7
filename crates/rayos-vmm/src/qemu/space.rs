//! Room for a saved state: before a save stops the guest, the free space
//! of the file system that will hold the state is compared with what the
//! state can take, and the save is written raw, compressed, or not at all.
//!
//! Behaviour:
//! - A raw state holds at most the guest's RAM plus [`MARGIN`] and one
//!   page header per zero page (about RAM/455; RAM/256 is counted). It is
//!   written when that much is free ([`Plan::Write`] in the configured
//!   form).
//! - Below that a compressed state may still fit: its size depends on
//!   what the guest's RAM holds (13–16% of the RAM for the guests measured
//!   in docs/vm-profiles.md). It is tried when a quarter of the RAM plus
//!   [`MARGIN`] is free ([`Plan::Write`] with `fallback` set). If the
//!   stream turns out larger than the room, the save fails like any save
//!   on a full disk: the partial file is removed, the guest continues and
//!   the previous state is untouched.
//! - Below that the save is refused before the guest is stopped
//!   ([`Plan::Refuse`]).
//!
//! Limitations: the space is read once, before the save; another writer
//! on the same file system can still fill it during the save (which then
//! fails cleanly as above). A state file being replaced is not counted as
//! free: it stays on disk until the new one is complete.

use std::io;
use std::path::Path;

use super::SaveFormat;

/// Room kept beyond the guest's RAM: video RAM (16 MiB for `VGA` and
/// `virtio-vga`), firmware images and flash (about 5 MiB with OVMF),
/// device state, and some for the file system itself.
pub(crate) const MARGIN: u64 = 64 << 20;

/// What a save of a guest with `memory` bytes of RAM needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    /// The most a raw state can take.
    pub raw: u64,
    /// The least room in which a compressed state is worth trying.
    pub zstd: u64,
}

impl Need {
    pub(crate) fn for_memory(memory: u64) -> Need {
        Need {
            raw: memory.saturating_add(memory / 256).saturating_add(MARGIN),
            zstd: (memory / 4).saturating_add(MARGIN),
        }
    }
}

/// What the save does, decided before the guest is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Save in this form; `fallback`: compressed although raw was
    /// configured, as raw would not fit.
    Write { format: SaveFormat, fallback: bool },
    /// Not even a compressed state is likely to fit.
    Refuse,
}

/// The decision for `free` bytes of room, a guest of `memory` bytes and
/// the configured form.
pub(crate) fn plan(preferred: SaveFormat, free: u64, memory: u64) -> Plan {
    let need = Need::for_memory(memory);
    if free >= need.raw {
        return Plan::Write {
            format: preferred,
            fallback: false,
        };
    }
    if free >= need.zstd {
        return Plan::Write {
            format: SaveFormat::Zstd,
            fallback: preferred != SaveFormat::Zstd,
        };
    }
    Plan::Refuse
}

/// Bytes an unprivileged writer may still use on the file system holding
/// `dir` (the blocks ext4 reserves for root are left to the system, so a
/// save never takes the last of them).
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    rayos_base::sys::free_bytes(dir)
}

/// Whole MiB, rounded up, for messages.
pub(crate) fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn raw_when_it_fits() {
        let need = Need::for_memory(GIB);
        assert_eq!(need.raw, GIB + GIB / 256 + MARGIN);
        assert_eq!(
            plan(SaveFormat::Raw, need.raw, GIB),
            Plan::Write {
                format: SaveFormat::Raw,
                fallback: false
            }
        );
        assert_eq!(
            plan(SaveFormat::Raw, 100 * GIB, GIB),
            Plan::Write {
                format: SaveFormat::Raw,
                fallback: false
            }
        );
    }

    #[test]
    fn compressed_when_raw_does_not_fit() {
        let need = Need::for_memory(GIB);
        for free in [need.raw - 1, need.zstd, need.zstd + 1] {
            assert_eq!(
                plan(SaveFormat::Raw, free, GIB),
                Plan::Write {
                    format: SaveFormat::Zstd,
                    fallback: true
                },
                "{free}"
            );
        }
    }

    #[test]
    fn configured_zstd_is_no_fallback() {
        assert_eq!(
            plan(SaveFormat::Zstd, 100 * GIB, GIB),
            Plan::Write {
                format: SaveFormat::Zstd,
                fallback: false
            }
        );
        let need = Need::for_memory(GIB);
        assert_eq!(
            plan(SaveFormat::Zstd, need.zstd, GIB),
            Plan::Write {
                format: SaveFormat::Zstd,
                fallback: false
            }
        );
    }

    #[test]
    fn refused_below_the_compressed_floor() {
        let need = Need::for_memory(GIB);
        for preferred in [SaveFormat::Raw, SaveFormat::Zstd] {
            assert_eq!(plan(preferred, need.zstd - 1, GIB), Plan::Refuse);
            assert_eq!(plan(preferred, 0, GIB), Plan::Refuse);
        }
    }

    #[test]
    fn huge_memory_does_not_overflow() {
        let need = Need::for_memory(u64::MAX);
        assert_eq!(need.raw, u64::MAX);
        assert_eq!(
            plan(SaveFormat::Raw, u64::MAX, u64::MAX),
            Plan::Write {
                format: SaveFormat::Raw,
                fallback: false
            }
        );
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        // Any mounted file system answers; the figure itself is the
        // machine's.
        free_bytes(dir.path()).unwrap();
        let err = free_bytes(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

//! Lower-case hex and SHA-256 (RustCrypto's `sha2`), for every digest
//! RayOS writes or checks: the install manifest's system image, update
//! bundle payloads, VM configuration fingerprints.
//!
//! Digests are always handled as lower-case hex strings, the form the
//! manifests store, so comparing two is comparing two strings.
//!
//! Limits: reading is streamed in 1 MiB pieces; no other algorithm.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A SHA-256 and the number of bytes it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sum {
    /// How many bytes were hashed.
    pub len: u64,
    /// Lower-case hex.
    pub hex: String,
}

/// A SHA-256 computed piece by piece, for data that is hashed while it is
/// copied somewhere.
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    h: Sha256,
    len: u64,
}

impl Hasher {
    /// A hasher that has seen no bytes yet.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Adds `bytes` to what is hashed.
    pub fn update(&mut self, bytes: &[u8]) {
        self.h.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// The hash of everything added, and its length.
    pub fn finish(self) -> Sum {
        Sum {
            len: self.len,
            hex: hex(&self.h.finalize()),
        }
    }
}

/// SHA-256 of everything `r` yields.
pub fn sha256_reader(mut r: impl Read) -> io::Result<Sum> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<Sum> {
    sha256_reader(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256(b"abc"), ABC);
        assert_eq!(
            sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn streamed_equals_whole() {
        // More than one read buffer, and a reader that hands out odd pieces.
        let data: Vec<u8> = (0..3 * (1 << 20) + 17)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let whole = sha256(&data);
        let r = sha256_reader(&data[..]).unwrap();
        assert_eq!(
            r,
            Sum {
                len: data.len() as u64,
                hex: whole.clone()
            }
        );
        let mut h = Hasher::new();
        for piece in data.chunks(4093) {
            h.update(piece);
        }
        assert_eq!(h.finish().hex, whole);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            Sum {
                len: 3,
                hex: ABC.into()
            }
        );
    }
}

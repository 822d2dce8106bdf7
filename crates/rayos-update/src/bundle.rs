//! The update bundle: format, building, and checking one (untrusted bytes).
//!
//! Layout (all integers little-endian; full description in docs/update.md):
//!
//! ```text
//! 0   8  magic "RAYOSUPD"
//! 8   4  format version (1)
//! 12  4  manifest length M (1 ..= 65536)
//! 16  4  signature length S (64, or 0 for an unsigned bundle)
//! 20  4  reserved, 0
//! 24  8  payload length P (sum of the manifest's payload sizes)
//! 32  M  manifest: JSON, UTF-8 (see [`Manifest`])
//! ..  S  ed25519 signature over the exact M manifest bytes
//! ..  P  payloads, back to back, in manifest order
//! ```
//!
//! The file must be exactly `32 + M + S + P` bytes. Checking order: header
//! bounds, file length, signature against the trusted keys (before the
//! manifest JSON is parsed), manifest schema and values, architecture, then
//! the payload hashes (streamed: payloads are never held in memory whole;
//! when copying, hashed on the way, see [`Bundle::copy_payload`]).
//!
//! Limits: at most [`MAX_PAYLOADS`] payloads of at most [`MAX_PAYLOAD_SIZE`]
//! each; payload names are the fixed set in [`PayloadName`].

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ed25519_dalek::Signature;
use rayos_base::hash;
use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SecretKey};
use crate::version;

/// The first 8 bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"RAYOSUPD";
/// The format version this RayOS writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The fixed header's length in bytes.
pub const HEADER_LEN: usize = 32;
/// The longest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024;
/// The length of an ed25519 signature.
pub const SIGNATURE_LEN: u32 = 64;
/// At most this many payloads in a bundle.
pub const MAX_PAYLOADS: usize = 4;
/// At most this many bytes in one payload (1 GiB).
pub const MAX_PAYLOAD_SIZE: u64 = 1 << 30;
/// Payloads are read, hashed and written in pieces of this many bytes.
pub const PIECE: usize = 1 << 20;
/// Pieces read ahead of the writer (memory: this many [`PIECE`]s).
const PIECES_IN_FLIGHT: usize = 4;
/// The architecture this build runs on, as bundles name it.
pub const ARCH: &str = std::env::consts::ARCH;

/// Why a bundle is refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle could not be read; holds its path.
    #[error("cannot read bundle {0}")]
    Read(PathBuf, #[source] io::Error),
    /// The bundle could not be written; holds its path.
    #[error("cannot write bundle {0}")]
    Write(PathBuf, #[source] io::Error),
    /// The file does not start with [`MAGIC`].
    #[error("not a RayOS update bundle (bad magic)")]
    BadMagic,
    /// The header's format version is not [`FORMAT_VERSION`]; holds it.
    #[error("bundle format {0} is not supported by this RayOS (it reads format {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    /// A header field is out of bounds; says which.
    #[error("malformed bundle header: {0}")]
    BadHeader(&'static str),
    /// The file is not as long as the header says.
    #[error(
        "bundle is truncated or has trailing bytes: {actual} bytes, the header says {expected}"
    )]
    Length {
        /// The length the header gives.
        expected: u64,
        /// The file's length.
        actual: u64,
    },
    /// The bundle has no signature.
    #[error("bundle is not signed")]
    Unsigned,
    /// The signature matches none of the trusted keys.
    #[error(
        "the signature does not match any trusted key ({trusted}): the bundle was tampered with or signed by another key"
    )]
    BadSignature {
        /// The trusted keys (origin and fingerprint each).
        trusted: String,
    },
    /// The manifest is not JSON of the manifest's shape.
    #[error("manifest is not valid JSON of the expected shape")]
    ManifestJson(#[source] serde_json::Error),
    /// A manifest value is not valid; says which.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The bundle is for another architecture.
    #[error("bundle is for architecture {found}, this machine is {ARCH}")]
    WrongArchitecture {
        /// The bundle's architecture.
        found: String,
    },
    /// A payload's SHA-256 differs from the manifest's.
    #[error(
        "payload {name}: SHA-256 does not match the manifest: the payload was tampered with or damaged"
    )]
    PayloadHash {
        /// The payload's name.
        name: String,
    },
}

/// An inclusive range of schema versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRange {
    /// The oldest version in the range.
    pub min: u32,
    /// The newest version in the range.
    pub max: u32,
}

impl SchemaRange {
    /// Whether `v` is in the range.
    pub fn contains(&self, v: u32) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

/// Names a payload can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadName {
    /// The installed-mode UKI (the whole OS).
    Uki,
    /// The recovery-mode UKI, when it changed.
    RecoveryUki,
}

impl PayloadName {
    /// The payload's name in the manifest (`uki`, `recovery-uki`).
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadName::Uki => "uki",
            PayloadName::RecoveryUki => "recovery-uki",
        }
    }
}

/// One payload as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Which payload it is.
    pub name: PayloadName,
    /// Its size in bytes.
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// What a bundle holds; signed as the exact bytes it was serialised to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Equal to the header's format version.
    pub format: u32,
    /// The RayOS version the bundle installs.
    pub rayos_version: String,
    /// `x86_64`.
    pub architecture: String,
    /// Install manifest schemas (`/rayos/install-manifest.json` "schema")
    /// this version can run on.
    pub install_layout: SchemaRange,
    /// Data volume schemas this version can boot with: it migrates any in
    /// the range up to `max`, the one it writes.
    pub data_schema: SchemaRange,
    /// When the bundle was built (RFC 3339, informational).
    pub created: String,
    /// The payloads, in the order they follow the signature.
    pub payloads: Vec<Payload>,
}

impl Manifest {
    /// Checks values the JSON schema cannot: version syntax, ranges, names,
    /// sizes and hashes.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Manifest(m));
        if self.format != FORMAT_VERSION {
            return bad(format!(
                "format {} differs from the header's {FORMAT_VERSION}",
                self.format
            ));
        }
        if let Err(why) = version::validate(&self.rayos_version) {
            return bad(format!("rayos_version {:?}: {why}", self.rayos_version));
        }
        if self.architecture.is_empty() || self.architecture.len() > 32 {
            return bad("architecture is empty or too long".into());
        }
        for (what, r) in [
            ("install_layout", self.install_layout),
            ("data_schema", self.data_schema),
        ] {
            if r.min > r.max {
                return bad(format!("{what}: min {} is above max {}", r.min, r.max));
            }
        }
        if self.created.len() > 64 {
            return bad("created is too long".into());
        }
        if self.payloads.is_empty() || self.payloads.len() > MAX_PAYLOADS {
            return bad(format!(
                "{} payloads (1 to {MAX_PAYLOADS} allowed)",
                self.payloads.len()
            ));
        }
        for (i, p) in self.payloads.iter().enumerate() {
            if self.payloads[..i].iter().any(|q| q.name == p.name) {
                return bad(format!("payload {} is listed twice", p.name.as_str()));
            }
            if p.size == 0 || p.size > MAX_PAYLOAD_SIZE {
                return bad(format!(
                    "payload {} has size {} (1 byte to 1 GiB allowed)",
                    p.name.as_str(),
                    p.size
                ));
            }
            if p.sha256.len() != 64
                || !p
                    .sha256
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return bad(format!(
                    "payload {}: sha256 is not 64 lowercase hex digits",
                    p.name.as_str()
                ));
            }
        }
        if !self.payloads.iter().any(|p| p.name == PayloadName::Uki) {
            return bad("no uki payload".into());
        }
        Ok(())
    }

    /// The payload named `name`, if the bundle has one.
    pub fn payload(&self, name: PayloadName) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.name == name)
    }

    /// The payloads' total size in bytes.
    pub fn payload_len(&self) -> u64 {
        self.payloads.iter().map(|p| p.size).sum()
    }
}

/// The fixed-size header, parsed and bounds-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The manifest's length in bytes.
    pub manifest_len: u32,
    /// The signature's length in bytes (64, or 0 when unsigned).
    pub signature_len: u32,
    /// The payloads' total length in bytes.
    pub payload_len: u64,
}

impl Header {
    /// Reads and bounds-checks the header from the first [`HEADER_LEN`] bytes
    /// of `b`.
    pub fn parse(b: &[u8]) -> Result<Header, BundleError> {
        let b: &[u8; HEADER_LEN] =
            b.get(..HEADER_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(BundleError::Length {
                    expected: HEADER_LEN as u64,
                    actual: b.len() as u64,
                })?;
        if &b[0..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let format = u32_at(8);
        if format != FORMAT_VERSION {
            return Err(BundleError::UnsupportedFormat(format));
        }
        let h = Header {
            format,
            manifest_len: u32_at(12),
            signature_len: u32_at(16),
            payload_len: u64::from_le_bytes([
                b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31],
            ]),
        };
        if u32_at(20) != 0 {
            return Err(BundleError::BadHeader("reserved field is not zero"));
        }
        if h.manifest_len == 0 || h.manifest_len > MAX_MANIFEST_LEN {
            return Err(BundleError::BadHeader("manifest length out of bounds"));
        }
        if h.signature_len != 0 && h.signature_len != SIGNATURE_LEN {
            return Err(BundleError::BadHeader("signature length is not 64"));
        }
        if h.payload_len > MAX_PAYLOAD_SIZE * MAX_PAYLOADS as u64 {
            return Err(BundleError::BadHeader("payload length out of bounds"));
        }
        Ok(h)
    }

    /// The header's bytes on the wire.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.format.to_le_bytes());
        b[12..16].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.signature_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Offset of the first payload byte.
    pub fn payload_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.manifest_len) + u64::from(self.signature_len)
    }

    /// The length the whole bundle file must have.
    pub fn total_len(&self) -> u64 {
        self.payload_offset() + self.payload_len
    }
}

/// Parses a manifest without any signature check (for inspection and the
/// fuzz target): JSON shape, then [`Manifest::validate`], then the header
/// cross-check.
pub fn parse_manifest(header: &Header, bytes: &[u8]) -> Result<Manifest, BundleError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(BundleError::ManifestJson)?;
    m.validate()?;
    if m.format != header.format {
        return Err(BundleError::Manifest(
            "format differs from the header".into(),
        ));
    }
    if m.payload_len() != header.payload_len {
        return Err(BundleError::Manifest(format!(
            "payload sizes add up to {}, the header says {}",
            m.payload_len(),
            header.payload_len
        )));
    }
    Ok(m)
}

/// Checks the signature over the manifest bytes; returns the key that made it.
pub fn check_signature<'k>(
    manifest: &[u8],
    signature: &[u8],
    trusted: &'k [PublicKey],
) -> Result<&'k PublicKey, BundleError> {
    if signature.is_empty() {
        return Err(BundleError::Unsigned);
    }
    let names = || {
        trusted
            .iter()
            .map(|k| format!("{} {}", k.origin, k.fingerprint()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sig_bytes: &[u8; 64] = signature
        .try_into()
        .map_err(|_| BundleError::BadSignature { trusted: names() })?;
    let sig = Signature::from_bytes(sig_bytes);
    trusted
        .iter()
        .find(|k| k.key.verify_strict(manifest, &sig).is_ok())
        .ok_or_else(|| BundleError::BadSignature { trusted: names() })
}

/// A bundle whose header, length, signature and manifest have been checked.
/// Payload hashes are checked by [`Bundle::verify_payloads`] (`rayos update
/// verify`), or while copying ([`Bundle::copy_payload`], what `apply` does:
/// one read of each payload).
#[derive(Debug)]
pub struct Bundle {
    /// The bundle file.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    /// Its manifest, checked.
    pub manifest: Manifest,
    /// The manifest's bytes, as signed.
    pub manifest_bytes: Vec<u8>,
    /// The trusted key that signed it.
    pub signer: PublicKey,
}

impl Bundle {
    /// Opens `path` and checks everything but the payload hashes.
    pub fn open(path: &Path, trusted: &[PublicKey]) -> Result<Bundle, BundleError> {
        let rerr = |e| BundleError::Read(path.to_path_buf(), e);
        let mut f = File::open(path).map_err(rerr)?;
        let actual = f.metadata().map_err(rerr)?.len();
        let mut head = Vec::with_capacity(HEADER_LEN);
        (&mut f)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(rerr)?;
        let header = Header::parse(&head)?;
        if actual != header.total_len() {
            return Err(BundleError::Length {
                expected: header.total_len(),
                actual,
            });
        }
        let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
        f.read_exact(&mut manifest_bytes).map_err(rerr)?;
        let mut sig = vec![0u8; header.signature_len as usize];
        f.read_exact(&mut sig).map_err(rerr)?;
        let signer = check_signature(&manifest_bytes, &sig, trusted)?.clone();
        let manifest = parse_manifest(&header, &manifest_bytes)?;
        if manifest.architecture != ARCH {
            return Err(BundleError::WrongArchitecture {
                found: manifest.architecture,
            });
        }
        Ok(Bundle {
            path: path.to_path_buf(),
            header,
            manifest,
            manifest_bytes,
            signer,
        })
    }

    fn payload_range(&self, name: PayloadName) -> Option<(u64, &Payload)> {
        let mut off = self.header.payload_offset();
        for p in &self.manifest.payloads {
            if p.name == name {
                return Some((off, p));
            }
            off += p.size;
        }
        None
    }

    /// Streams every payload through SHA-256 and compares with the manifest.
    pub fn verify_payloads(&self) -> Result<(), BundleError> {
        for p in &self.manifest.payloads {
            self.copy_payload(p.name, None)?;
        }
        Ok(())
    }

    /// Copies payload `name` into `out` (when given), hashing it on the
    /// way, in one read of the bundle; an error if the bytes read differ
    /// from the manifest (the caller then discards what `out` got).
    ///
    /// The payload is read in owned pieces of [`PIECE`] bytes, hashed on
    /// this thread while a second thread writes the previous pieces to
    /// `out`: hashing and writing overlap, and every byte written is a byte
    /// hashed, as a piece is never changed between the two.
    pub fn copy_payload(
        &self,
        name: PayloadName,
        out: Option<&mut (dyn Write + Send)>,
    ) -> Result<u64, BundleError> {
        let rerr = |e| BundleError::Read(self.path.clone(), e);
        let Some((off, p)) = self.payload_range(name) else {
            return Err(BundleError::Manifest(format!(
                "no {} payload",
                name.as_str()
            )));
        };
        let mut f = File::open(&self.path).map_err(rerr)?;
        f.seek(SeekFrom::Start(off)).map_err(rerr)?;
        let mut h = hash::Hasher::new();
        let mut left = p.size;
        // Reads and hashes the next piece into `buf`; true while more follow.
        let mut next = |buf: &mut Vec<u8>| -> Result<bool, BundleError> {
            let n = (PIECE as u64).min(left) as usize;
            buf.resize(n, 0);
            f.read_exact(buf).map_err(rerr)?;
            h.update(buf);
            left -= n as u64;
            Ok(left > 0)
        };
        match out {
            None => {
                let mut buf = Vec::new();
                while next(&mut buf)? {}
            }
            Some(out) => std::thread::scope(|s| {
                let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(PIECES_IN_FLIGHT);
                let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
                for _ in 0..PIECES_IN_FLIGHT {
                    let _ = free_tx.send(vec![0; PIECE]);
                }
                let writer = s.spawn(move || -> io::Result<()> {
                    for buf in full_rx {
                        out.write_all(&buf)?;
                        // Fails only when the reader already stopped.
                        let _ = free_tx.send(buf);
                    }
                    out.flush()
                });
                let mut read = Ok(());
                // A channel closes early only when the writer stopped on an
                // error, which its join returns.
                while let Ok(mut buf) = free_rx.recv() {
                    match next(&mut buf) {
                        Ok(more) => {
                            if full_tx.send(buf).is_err() || !more {
                                break;
                            }
                        }
                        Err(e) => {
                            read = Err(e);
                            break;
                        }
                    }
                }
                drop(full_tx);
                let written = match writer.join() {
                    Ok(r) => r.map_err(|e| BundleError::Write(self.path.clone(), e)),
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                read.and(written)
            })?,
        }
        if h.finish().hex != p.sha256 {
            return Err(BundleError::PayloadHash {
                name: name.as_str().to_string(),
            });
        }
        Ok(p.size)
    }

    /// A few lines saying what the bundle holds.
    pub fn describe(&self) -> String {
        let m = &self.manifest;
        let mut s = format!(
            "RayOS {} for {}, built {}\nsigned by: {} ({})\ninstall layout schema {}..={}, data schema {}..={}\n",
            m.rayos_version,
            m.architecture,
            m.created,
            self.signer.origin,
            self.signer.fingerprint(),
            m.install_layout.min,
            m.install_layout.max,
            m.data_schema.min,
            m.data_schema.max
        );
        for p in &m.payloads {
            s.push_str(&format!(
                "payload {:<13} {:>11} bytes  sha256 {}\n",
                p.name.as_str(),
                p.size,
                p.sha256
            ));
        }
        s
    }
}

/// What to put in a new bundle.
pub struct BuildSpec<'a> {
    /// The RayOS version it installs.
    pub version: String,
    /// The architecture it is for (`x86_64`).
    pub architecture: String,
    /// The install layouts it runs on.
    pub install_layout: SchemaRange,
    /// The data volume schemas it boots with.
    pub data_schema: SchemaRange,
    /// When it is built (RFC 3339).
    pub created: String,
    /// The payloads and the files they are read from.
    pub payloads: Vec<(PayloadName, &'a Path)>,
    /// `None`: an unsigned bundle (only useful to test that it is refused).
    pub key: Option<&'a SecretKey>,
}

/// Writes a bundle to `out` (through `out.tmp`, renamed when complete).
pub fn build(spec: &BuildSpec<'_>, out: &Path) -> Result<Manifest, BundleError> {
    let mut payloads = Vec::new();
    for (name, path) in &spec.payloads {
        let hash::Sum {
            len: size,
            hex: sha256,
        } = hash::sha256_file(path).map_err(|e| BundleError::Read(path.to_path_buf(), e))?;
        payloads.push(Payload {
            name: *name,
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT_VERSION,
        rayos_version: spec.version.clone(),
        architecture: spec.architecture.clone(),
        install_layout: spec.install_layout,
        data_schema: spec.data_schema,
        created: spec.created.clone(),
        payloads,
    };
    manifest.validate()?;
    let mbytes = serde_json::to_vec_pretty(&manifest).map_err(BundleError::ManifestJson)?;
    let sig = spec.key.map(|k| k.sign(&mbytes));
    let header = Header {
        format: FORMAT_VERSION,
        manifest_len: mbytes.len() as u32,
        signature_len: if sig.is_some() { SIGNATURE_LEN } else { 0 },
        payload_len: manifest.payload_len(),
    };
    let tmp = {
        let mut n = out.file_name().unwrap_or_default().to_os_string();
        n.push(".tmp");
        out.with_file_name(n)
    };
    let werr = |e| BundleError::Write(out.to_path_buf(), e);
    {
        let mut f = io::BufWriter::new(File::create(&tmp).map_err(werr)?);
        f.write_all(&header.to_bytes()).map_err(werr)?;
        f.write_all(&mbytes).map_err(werr)?;
        if let Some(s) = sig {
            f.write_all(&s).map_err(werr)?;
        }
        for (_, path) in &spec.payloads {
            let mut src = File::open(path).map_err(|e| BundleError::Read(path.to_path_buf(), e))?;
            io::copy(&mut src, &mut f).map_err(werr)?;
        }
        f.into_inner()
            .map_err(|e| werr(e.into_error()))?
            .sync_all()
            .map_err(werr)?;
    }
    fs::rename(&tmp, out).map_err(werr)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec<'a>(
        version: &str,
        uki: &'a Path,
        key: Option<&'a SecretKey>,
    ) -> BuildSpec<'a> {
        BuildSpec {
            version: version.into(),
            architecture: ARCH.into(),
            install_layout: SchemaRange { min: 1, max: 1 },
            data_schema: SchemaRange { min: 0, max: 1 },
            created: "2026-11-26T00:00:00Z".into(),
            payloads: vec![(PayloadName::Uki, uki)],
            key,
        }
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let h = Header {
            format: 1,
            manifest_len: 10,
            signature_len: 64,
            payload_len: 5,
        };
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        assert_eq!(h.total_len(), 32 + 10 + 64 + 5);
        let mut b = h.to_bytes();
        b[0] = b'X';
        assert!(matches!(Header::parse(&b), Err(BundleError::BadMagic)));
        let mut b = h.to_bytes();
        b[8] = 2;
        assert!(matches!(
            Header::parse(&b),
            Err(BundleError::UnsupportedFormat(2))
        ));
        let mut b = h.to_bytes();
        b[16] = 63;
        assert!(matches!(Header::parse(&b), Err(BundleError::BadHeader(_))));
        let mut b = h.to_bytes();
        b[12..16].copy_from_slice(&(MAX_MANIFEST_LEN + 1).to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(BundleError::BadHeader(_))));
        let mut b = h.to_bytes();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Header::parse(&b), Err(BundleError::BadHeader(_))));
        assert!(matches!(
            Header::parse(&b[..31]),
            Err(BundleError::Length { .. })
        ));
    }

    #[test]
    fn manifest_rules() {
        let good = Manifest {
            format: 1,
            rayos_version: "0.2.0".into(),
            architecture: "x86_64".into(),
            install_layout: SchemaRange { min: 1, max: 1 },
            data_schema: SchemaRange { min: 0, max: 1 },
            created: String::new(),
            payloads: vec![Payload {
                name: PayloadName::Uki,
                size: 3,
                sha256: "a".repeat(64),
            }],
        };
        assert!(good.validate().is_ok());
        let mut m = good.clone();
        m.rayos_version = "0.2+3".into();
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.payloads.push(m.payloads[0].clone());
        assert!(m.validate().is_err(), "duplicate payload");
        let mut m = good.clone();
        m.payloads[0].name = PayloadName::RecoveryUki;
        assert!(m.validate().is_err(), "no uki");
        let mut m = good.clone();
        m.payloads[0].sha256 = "A".repeat(64);
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.payloads[0].size = 0;
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.data_schema = SchemaRange { min: 2, max: 1 };
        assert!(m.validate().is_err());
        // Unknown keys are refused.
        let mut v = serde_json::to_value(&good).unwrap();
        v["extra"] = serde_json::json!(1);
        let h = Header {
            format: 1,
            manifest_len: 1,
            signature_len: 0,
            payload_len: 3,
        };
        assert!(parse_manifest(&h, &serde_json::to_vec(&v).unwrap()).is_err());
        assert!(parse_manifest(&h, &serde_json::to_vec(&good).unwrap()).is_ok());
        let h2 = Header {
            payload_len: 4,
            ..h
        };
        assert!(parse_manifest(&h2, &serde_json::to_vec(&good).unwrap()).is_err());
    }

    #[test]
    fn build_open_verify() {
        let d = tempfile::tempdir().unwrap();
        let uki = d.path().join("rayos.efi");
        fs::write(&uki, vec![0x5au8; 3 << 20]).unwrap();
        let key = SecretKey::from_seed([1; 32]);
        let out = d.path().join("b.bundle");
        build(&spec("0.2.0", &uki, Some(&key)), &out).unwrap();
        let trusted = [key.public("test key")];
        let b = Bundle::open(&out, &trusted).unwrap();
        assert_eq!(b.manifest.rayos_version, "0.2.0");
        b.verify_payloads().unwrap();
        let mut copy = Vec::new();
        b.copy_payload(PayloadName::Uki, Some(&mut copy)).unwrap();
        assert_eq!(copy, fs::read(&uki).unwrap());
        assert!(b.describe().contains("test key"));

        // Another key: refused.
        let other = [SecretKey::from_seed([2; 32]).public("other")];
        assert!(matches!(
            Bundle::open(&out, &other),
            Err(BundleError::BadSignature { .. })
        ));
        // Every single-byte change anywhere is refused: the header and
        // manifest bytes by the signature or the cross-checks, the signature
        // by strict verification, the payload by its hash.
        let bytes = fs::read(&out).unwrap();
        let header = Header::parse(&bytes).unwrap();
        let payload_at = header.payload_offset() as usize;
        let positions = (0..payload_at).chain((payload_at..bytes.len()).step_by(bytes.len() / 97));
        let m = d.path().join("m.bundle");
        for i in positions {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            fs::write(&m, &t).unwrap();
            let r = Bundle::open(&m, &trusted).and_then(|b| b.verify_payloads());
            assert!(r.is_err(), "a flip at byte {i} was accepted");
        }

        // Unsigned: refused.
        let unsigned = d.path().join("u.bundle");
        build(&spec("0.2.0", &uki, None), &unsigned).unwrap();
        assert!(matches!(
            Bundle::open(&unsigned, &trusted),
            Err(BundleError::Unsigned)
        ));
    }
}

//! Signing keys: file format, the keys a RayOS build trusts, signing.
//!
//! Key files are one line of text, so they can be read, diffed and pasted:
//!
//! ```text
//! rayos-update-ed25519-public <64 hex digits: the 32-byte public key>
//! rayos-update-ed25519-secret <64 hex digits: the 32-byte secret seed>
//! ```
//!
//! Trust: a RayOS binary trusts the release key compiled into it
//! (`keys/release.pub` of this crate; its secret half is kept offline and
//! is not in the repository) and, only when the build set
//! `RAYOS_UPDATE_DEV_PUBKEY` (the hex public key, or a public key line) at
//! compile time, that development key too. Nothing read at run time adds
//! trust: an installed system applies only bundles signed by a key its
//! image was built with. Tools that only *inspect* a bundle
//! (`rayos update verify --key`) may check against another key.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rayos_base::hash;

const PUBLIC_TAG: &str = "rayos-update-ed25519-public";
const SECRET_TAG: &str = "rayos-update-ed25519-secret";

/// The release public key, as committed in the repository.
pub const RELEASE_PUBKEY: &str = include_str!("../keys/release.pub");

/// Why a key could not be read, parsed or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read; holds its path.
    #[error("cannot read key file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The key file could not be written; holds its path.
    #[error("cannot write key file {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// The text is not a key of the expected kind.
    #[error("{what}: not a RayOS {kind} key ({why})")]
    Parse {
        /// Where the text came from.
        what: String,
        /// `public` or `secret`.
        kind: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No random bytes for a new key.
    #[error("cannot read random bytes from /dev/urandom")]
    Random(#[source] std::io::Error),
}

/// A public key a bundle can be checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The ed25519 key.
    pub key: VerifyingKey,
    /// Where it came from, for messages: "built-in release key", a path.
    pub origin: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} from {})", self.fingerprint(), self.origin)
    }
}

impl PublicKey {
    /// The first 8 bytes of the key in hex: enough to tell keys apart in
    /// messages.
    pub fn fingerprint(&self) -> String {
        hash::hex(&self.key.as_bytes()[..8])
    }

    /// The key-file line of this key.
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", hash::hex(self.key.as_bytes()))
    }

    /// Parses a public key line (or bare hex), `what` names the source.
    pub fn parse(text: &str, what: &str) -> Result<PublicKey, KeyError> {
        let bytes = parse_line(text, PUBLIC_TAG).map_err(|why| KeyError::Parse {
            what: what.to_string(),
            kind: "public",
            why,
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Parse {
            what: what.to_string(),
            kind: "public",
            why: "not a valid ed25519 point",
        })?;
        Ok(PublicKey {
            key,
            origin: what.to_string(),
        })
    }

    /// Reads a public key file.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_small(path)?;
        PublicKey::parse(&text, &path.display().to_string())
    }
}

/// A secret signing key (development or release).
pub struct SecretKey {
    key: SigningKey,
}

impl SecretKey {
    /// A fresh key from the kernel's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(KeyError::Random)?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// A key from a fixed seed (tests only need determinism, not secrecy).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half, with `origin` named in messages.
    pub fn public(&self, origin: &str) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            origin: origin.to_string(),
        }
    }

    /// The ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// The key-file line of this key (keep it secret).
    pub fn to_line(&self) -> String {
        format!("{SECRET_TAG} {}\n", hash::hex(self.key.as_bytes()))
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        let text = read_small(path)?;
        let seed = parse_line(&text, SECRET_TAG).map_err(|why| KeyError::Parse {
            what: path.display().to_string(),
            kind: "secret",
            why,
        })?;
        Ok(SecretKey::from_seed(seed))
    }

    /// Writes `<stem>.key` (mode 0600) and `<stem>.pub` next to each other.
    pub fn write_pair(&self, key_path: &Path, pub_path: &Path) -> Result<(), KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |p: &Path| {
            let p = p.to_path_buf();
            move |e| KeyError::Write(p, e)
        };
        if let Some(d) = key_path.parent() {
            fs::create_dir_all(d).map_err(werr(key_path))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_path)
            .map_err(werr(key_path))?;
        std::io::Write::write_all(&mut f, self.to_line().as_bytes()).map_err(werr(key_path))?;
        fs::write(pub_path, self.public("").to_line()).map_err(werr(pub_path))?;
        Ok(())
    }
}

/// The keys this build of RayOS trusts for `rayos update apply`.
pub fn built_in() -> Vec<PublicKey> {
    let mut keys = Vec::new();
    if let Ok(k) = PublicKey::parse(RELEASE_PUBKEY, "built-in release key") {
        keys.push(k);
    }
    if let Some(dev) = option_env!("RAYOS_UPDATE_DEV_PUBKEY")
        && let Ok(k) = PublicKey::parse(dev, "built-in development key (RAYOS_UPDATE_DEV_PUBKEY)")
    {
        keys.push(k);
    }
    keys
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(|e| KeyError::Read(path.to_path_buf(), e))?;
    Ok(text)
}

fn parse_line(text: &str, tag: &str) -> Result<[u8; 32], &'static str> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("empty")?;
    let hexpart = match line.split_once(' ') {
        Some((t, rest)) if t == tag => rest.trim(),
        Some(_) => return Err("wrong key type tag"),
        None => line,
    };
    unhex32(hexpart).ok_or("expected 64 hex digits")
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_key_parses_and_is_trusted() {
        let keys = built_in();
        assert!(!keys.is_empty());
        assert_eq!(keys[0].origin, "built-in release key");
    }

    #[test]
    fn key_files_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let sk = SecretKey::generate().unwrap();
        let (k, p) = (d.path().join("k/dev.key"), d.path().join("k/dev.pub"));
        sk.write_pair(&k, &p).unwrap();
        let back = SecretKey::read(&k).unwrap();
        assert_eq!(back.to_line(), sk.to_line());
        let public = PublicKey::read(&p).unwrap();
        assert_eq!(public.key, sk.public("").key);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A secret key is not accepted where a public one is expected.
        assert!(PublicKey::read(&k).is_err());
        assert!(PublicKey::parse("zz", "x").is_err());
    }
}

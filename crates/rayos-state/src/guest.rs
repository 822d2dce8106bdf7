//! First-boot settings of a guest (the `guest` of a VM definition): the
//! user to create, how it logs in, and the machine settings the guest
//! takes on. rayosd hands them to the guest at every start (QEMU fw_cfg,
//! as systemd credentials `rayos.<name>`, see [`GuestConfig::credentials`]);
//! the guest applies them once, on its first boot (docs/linux-vm.md).
//!
//! Only a password *hash* is ever stored ([`hash_password`]: SHA-512-crypt,
//! what Debian's `chpasswd -e` and `login` accept), never the password.

use serde::{Deserialize, Serialize};
use sha_crypt::{PasswordHasher, PasswordVerifier, ShaCrypt};

use crate::machine::{validate_hostname, validate_keyboard, validate_locale, validate_timezone};

/// First-boot settings for a Linux VM's guest, handed to it at every start
/// (through fw_cfg credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// Login name created on first boot (member of `sudo`).
    pub user: String,
    /// crypt(3) hash of the user's password (`$6$…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// One OpenSSH public key; the guest enables its SSH server for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_key: Option<String>,
    /// The guest's host name.
    pub hostname: String,
    /// The guest's time zone (`Europe/Berlin`).
    pub timezone: String,
    /// The guest's locale (`en_US.UTF-8`).
    pub locale: String,
    /// The guest's keyboard layout (`de`).
    pub keyboard: String,
}

/// Names of system accounts a person's login must not take.
const RESERVED_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "nobody",
    "systemd-network",
    "systemd-timesync",
    "messagebus",
    "sshd",
    "_apt",
];

/// A Linux login name: 1-32 of `a-z 0-9 _ -`, starting with a letter or
/// `_`, not a system account.
pub fn validate_user(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.as_bytes()[0].is_ascii_lowercase()
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(format!(
            "user name {u:?} is not valid: use 1-32 of a-z, 0-9, '_' and '-', starting with a letter"
        ));
    }
    if RESERVED_USERS.contains(&u) {
        return Err(format!(
            "user name {u:?} is a system account: choose another name"
        ));
    }
    Ok(())
}

/// A crypt(3) hash in modular crypt format (`$id$…`), one line, no `:`.
pub fn validate_password_hash(h: &str) -> Result<(), String> {
    let ok = h.starts_with('$')
        && h.len() <= 512
        && h.split('$').nth(1).is_some_and(|id| !id.is_empty())
        && h.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(())
    } else {
        Err(
            "the password hash is not a crypt(3) hash such as \"$6$salt$...\": give the password and RayOS hashes it"
                .into(),
        )
    }
}

/// One OpenSSH public key line: `<type> <base64> [comment]`.
pub fn validate_ssh_key(k: &str) -> Result<(), String> {
    let mut words = k.split(' ');
    let kind = words.next().unwrap_or("");
    let data = words.next().unwrap_or("");
    let ok = k.len() <= 16 * 1024
        && !k.contains(['\n', '\r', '\0'])
        && (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-".contains(&b))
        && !data.is_empty()
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(
            "the SSH key is not an OpenSSH public key line such as \"ssh-ed25519 AAAA... me@host\" (the contents of a .pub file)"
                .into(),
        )
    }
}

impl GuestConfig {
    /// Checks every value; the message says what is wrong and what to do.
    pub fn validate(&self) -> Result<(), String> {
        validate_user(&self.user)?;
        if self.password_hash.is_none() && self.ssh_authorized_key.is_none() {
            return Err(format!(
                "user {} needs a password or an SSH key to log in",
                self.user
            ));
        }
        if let Some(h) = &self.password_hash {
            validate_password_hash(h)?;
        }
        if let Some(k) = &self.ssh_authorized_key {
            validate_ssh_key(k)?;
        }
        validate_hostname(&self.hostname)?;
        validate_timezone(&self.timezone)?;
        validate_locale(&self.locale)?;
        validate_keyboard(&self.keyboard)
    }

    /// The systemd credentials the guest's first-boot script reads: name
    /// (without the `rayos.` prefix it gets on fw_cfg) and value.
    pub fn credentials(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("user", self.user.clone())];
        if let Some(h) = &self.password_hash {
            v.push(("password-hash", h.clone()));
        }
        if let Some(k) = &self.ssh_authorized_key {
            v.push(("ssh-authorized-key", k.clone()));
        }
        v.push(("hostname", self.hostname.clone()));
        v.push(("timezone", self.timezone.clone()));
        v.push(("locale", self.locale.clone()));
        v.push(("keyboard", self.keyboard.clone()));
        v
    }
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// No random bytes for the salt.
    #[error("cannot read random bytes for the salt from /dev/urandom")]
    Random(#[source] std::io::Error),
    /// The hasher refused; holds its message.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The password is empty.
    #[error("the password is empty")]
    Empty,
}

/// The SHA-512-crypt hash (`$6$rounds=5000$<16-char salt>$…`: the
/// crypt(3) default number of rounds, written out as the crate does, which
/// glibc's crypt and so `login` and `chpasswd -e` accept) of `password`,
/// salted with 12 bytes from `/dev/urandom`.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    use std::io::Read;
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    // The crate writes the salt in crypt's base64: 12 bytes, 16 characters.
    let mut salt = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(PasswordError::Random)?;
    ShaCrypt::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.as_str().to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the crypt hash `hash` (SHA-256/512-crypt).
pub fn verify_password(password: &str, hash: &str) -> bool {
    ShaCrypt::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> GuestConfig {
        GuestConfig {
            user: "alice".into(),
            password_hash: Some(hash_password("s3cret").unwrap()),
            ssh_authorized_key: None,
            hostname: "rayos-linux".into(),
            timezone: "Europe/Berlin".into(),
            locale: "en_US.UTF-8".into(),
            keyboard: "de".into(),
        }
    }

    #[test]
    fn password_hash_is_sha512_crypt_and_verifies() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$6$rounds=5000$"), "{h}");
        // $6$rounds=5000$<salt>$<86 chars>
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts.len(), 5, "{h}");
        assert_eq!(parts[3].len(), 16);
        assert_eq!(parts[4].len(), 86);
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3creT", &h));
        assert_ne!(h, hash_password("s3cret").unwrap(), "salts differ");
        assert!(matches!(hash_password(""), Err(PasswordError::Empty)));
        validate_password_hash(&h).unwrap();
    }

    #[test]
    fn glibc_crypt_accepts_our_hash() {
        // What the guest's login does: glibc's crypt(3) of the password
        // with our hash as the setting must give our hash back. Perl
        // (Essential on Debian) calls crypt(3).
        let h = hash_password("correct horse").unwrap();
        let out = std::process::Command::new("perl")
            .args(["-e", "print crypt($ARGV[0], $ARGV[1])", "correct horse", &h])
            .output()
            .expect("perl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), h);
    }

    #[test]
    fn known_crypt_vector_verifies() {
        // glibc crypt("Hello world!", "$6$saltstring") from the SHA-crypt spec.
        let h = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        assert!(verify_password("Hello world!", h));
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let good = sample();
        good.validate().unwrap();
        let bad = |f: &dyn Fn(&mut GuestConfig), what: &str| {
            let mut g = sample();
            f(&mut g);
            let e = g.validate().unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        bad(&|g| g.user = "root".into(), "system account");
        bad(&|g| g.user = "Alice".into(), "not valid");
        bad(&|g| g.password_hash = None, "password or an SSH key");
        bad(&|g| g.password_hash = Some("plain".into()), "crypt(3)");
        bad(&|g| g.password_hash = Some("$6$a:b$c".into()), "crypt(3)");
        bad(&|g| g.ssh_authorized_key = Some("AAAA".into()), "OpenSSH");
        bad(
            &|g| g.ssh_authorized_key = Some("ssh-ed25519 AAAA\nx".into()),
            "OpenSSH",
        );
        bad(&|g| g.timezone = "../etc/passwd".into(), "timezone");
        let mut key_only = sample();
        key_only.password_hash = None;
        key_only.ssh_authorized_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@host".into());
        key_only.validate().unwrap();
    }

    #[test]
    fn credentials_carry_only_what_is_set() {
        let c = sample().credentials();
        let names: Vec<&str> = c.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "user",
                "password-hash",
                "hostname",
                "timezone",
                "locale",
                "keyboard"
            ]
        );
        assert_eq!(c[0].1, "alice");
    }
}

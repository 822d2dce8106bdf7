//! `machine.toml`: the settings of this RayOS machine.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ConfigError;

/// The `version` this RayOS writes and reads in `machine.toml`.
pub const MACHINE_SCHEMA_VERSION: u32 = 1;

/// The contents of `machine.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// The file's schema version ([`MACHINE_SCHEMA_VERSION`]).
    pub version: u32,
    /// The host name.
    pub hostname: String,
    /// The time zone (`Europe/Berlin`).
    pub timezone: String,
    /// The locale (`en_US.UTF-8`).
    pub locale: String,
    /// The console keyboard layout (`de`).
    pub keyboard: String,
    /// Identifies this install for its whole life (chosen by the installer).
    pub install_id: Uuid,
}

impl MachineConfig {
    /// Settings for a new install, with a new install id.
    pub fn new(hostname: &str, timezone: &str, locale: &str, keyboard: &str) -> Self {
        MachineConfig {
            version: MACHINE_SCHEMA_VERSION,
            hostname: hostname.into(),
            timezone: timezone.into(),
            locale: locale.into(),
            keyboard: keyboard.into(),
            install_id: Uuid::new_v4(),
        }
    }

    /// Reads `text` (from `path`, named in errors) and checks its version and
    /// values.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let m: MachineConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        if m.version != MACHINE_SCHEMA_VERSION {
            return Err(ConfigError::semantic(
                path,
                format!(
                    "machine.toml version {} is not supported (this RayOS reads {})",
                    m.version, MACHINE_SCHEMA_VERSION
                ),
            ));
        }
        m.validate()
            .map_err(|msg| ConfigError::semantic(path, msg))?;
        Ok(m)
    }

    /// Checks the values a person types; returns what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        validate_hostname(&self.hostname)?;
        validate_timezone(&self.timezone)?;
        validate_locale(&self.locale)?;
        validate_keyboard(&self.keyboard)
    }

    /// The file's text (TOML).
    pub fn to_toml(&self) -> String {
        // Serialising a struct of strings cannot fail.
        toml::to_string(self).unwrap_or_default()
    }
}

/// RFC 1123 host name label: 1-63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hostname {h:?} is not valid: use 1-63 letters, digits and '-', not starting or ending with '-'"
        ))
    }
}

/// An IANA zone name such as `UTC` or `Europe/Berlin` (shape only; the zone
/// database is not consulted, so the installer works on any host).
pub fn validate_timezone(tz: &str) -> Result<(), String> {
    let ok = !tz.is_empty()
        && tz.len() <= 64
        && !tz.starts_with('/')
        && !tz.contains("..")
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "timezone {tz:?} is not valid: use an IANA zone name such as \"UTC\" or \"Europe/Berlin\""
        ))
    }
}

/// `ll_CC.CHARSET` style, for example `en_US.UTF-8`, or `C`/`POSIX`.
pub fn validate_locale(l: &str) -> Result<(), String> {
    let ok = l == "C"
        || l == "POSIX"
        || l == "C.UTF-8"
        || (l.len() <= 32
            && l.split(['_', '.', '@']).all(|p| {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            && l.as_bytes().first().is_some_and(|b| b.is_ascii_lowercase()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "locale {l:?} is not valid: use a name such as \"en_US.UTF-8\""
        ))
    }
}

/// An X keyboard layout name such as `us`, `de` or `fr-bepo`.
pub fn validate_keyboard(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.len() <= 32
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyboard {k:?} is not valid: use a layout name such as \"us\" or \"de\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = MachineConfig::new("rayos-test", "UTC", "en_US.UTF-8", "us");
        let back = MachineConfig::parse("machine.toml", &m.to_toml()).unwrap();
        assert_eq!(m, back);
    }

    #[test]
    fn rejects_bad_values_with_reason() {
        assert!(validate_hostname("-bad").is_err());
        assert!(validate_hostname("has space").is_err());
        assert!(validate_timezone("../etc/passwd").is_err());
        assert!(validate_timezone("Europe/Berlin").is_ok());
        assert!(validate_locale("en_US.UTF-8").is_ok());
        assert!(validate_locale("EN").is_err());
        assert!(validate_keyboard("US!").is_err());
    }

    #[test]
    fn unknown_key_names_line() {
        let text = "version = 1\nhostname = \"a\"\ntimezone = \"UTC\"\nlocale = \"C\"\nkeyboard = \"us\"\ninstall_id = \"67e55044-10b1-426f-9247-bb680e5fe0c8\"\ncolour = \"red\"\n";
        let e = MachineConfig::parse("machine.toml", text).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.to_string().contains("colour"), "{e}");
    }
}

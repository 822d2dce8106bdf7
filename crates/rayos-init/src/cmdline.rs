//! The kernel command line as far as RayOS reads it.
//!
//! Keys (all optional):
//! - `rayos.mode=installer|installed|recovery` — what this boot is for
//!   (default `installed`);
//! - `rayos.answers=PATH` or `rayos.answers=LABEL:PATH` — the answer file of
//!   an unattended install: `PATH` is looked up on every FAT/ISO volume,
//!   `LABEL:PATH` only on the volume with that filesystem label;
//! - `rayos.console=DEV[,DEV…]` — the terminals that get a `rayos>` prompt
//!   (default `ttyS0,tty1`, the ones present);
//! - `rayos.debug` — log every module load and step detail to the console.
//!
//! Words are split like the kernel does: on spaces, with double quotes
//! grouping a value that contains spaces (`rayos.answers="/a b.toml"`).
//! Unknown keys are ignored (they belong to the kernel).

use std::fmt;

/// What this boot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Boot media: install RayOS onto a disk.
    Installer,
    /// The installed system: mount the data volume, run rayosd.
    Installed,
    /// The recovery entry: same image, data volume mounted, no VMs started,
    /// the full set of `rayos` commands on the console.
    Recovery,
}

impl Mode {
    /// The mode a `rayos.mode=` value names (`install`, `normal` and `rescue`
    /// too).
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "installer" | "install" => Some(Mode::Installer),
            "installed" | "normal" => Some(Mode::Installed),
            "recovery" | "rescue" => Some(Mode::Recovery),
            _ => None,
        }
    }
    /// The mode's name (`installer`, `installed`, `recovery`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Installer => "installer",
            Mode::Installed => "installed",
            Mode::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the answer file of an unattended install is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AnswersRef {
    /// Filesystem label of the volume that holds it; `None`: any volume.
    pub label: Option<String>,
    /// Path inside that volume (always starting with `/`).
    pub path: String,
}

impl AnswersRef {
    /// Reads a `rayos.answers=` value (`[LABEL:]PATH`); `None` when it is not
    /// one.
    pub fn parse(value: &str) -> Option<AnswersRef> {
        let (label, path) = match value.split_once(':') {
            Some((l, p)) if !l.is_empty() && !l.contains('/') => (Some(l.to_string()), p),
            _ => (None, value),
        };
        if path.is_empty() || path.split('/').any(|c| c == "..") {
            return None;
        }
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Some(AnswersRef { label, path })
    }
}

/// What RayOS read from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootParams {
    /// `rayos.mode=`: what this boot does (default: installed).
    pub mode: Mode,
    /// `rayos.answers=`: where the answer file of an unattended install is.
    pub answers: Option<AnswersRef>,
    /// `rayos.console=`: the terminals that get a `rayos>` prompt.
    pub consoles: Vec<String>,
    /// `rayos.debug`: every module load and step detail on the console.
    pub debug: bool,
    /// Problems with RayOS keys (bad values fall back to defaults and are
    /// reported on the console instead of stopping the boot).
    pub warnings: Vec<String>,
}

/// The consoles when the command line names none.
pub const DEFAULT_CONSOLES: [&str; 2] = ["ttyS0", "tty1"];

impl BootParams {
    /// Reads the RayOS keys of a kernel command line; bad values become
    /// defaults and warnings.
    pub fn parse(cmdline: &str) -> BootParams {
        let mut p = BootParams {
            mode: Mode::Installed,
            answers: None,
            consoles: DEFAULT_CONSOLES.iter().map(|s| s.to_string()).collect(),
            debug: false,
            warnings: Vec::new(),
        };
        for word in split_words(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("rayos.mode", Some(v)) => match Mode::parse(v) {
                    Some(m) => p.mode = m,
                    None => p.warnings.push(format!(
                        "rayos.mode={v:?} is not a mode (installer, installed, recovery): booting as {}",
                        p.mode
                    )),
                },
                ("rayos.answers", Some(v)) => match AnswersRef::parse(v) {
                    Some(a) => p.answers = Some(a),
                    None => p.warnings.push(format!(
                        "rayos.answers={v:?} is not PATH or LABEL:PATH: searching for rayos-answers.toml instead"
                    )),
                },
                ("rayos.console", Some(v)) => {
                    let list: Vec<String> = v
                        .split(',')
                        .map(|s| s.trim_start_matches("/dev/").to_string())
                        .filter(|s| valid_tty_name(s))
                        .collect();
                    if list.is_empty() {
                        p.warnings
                            .push(format!("rayos.console={v:?} names no terminal: using the defaults"));
                    } else {
                        p.consoles = list;
                    }
                }
                ("rayos.debug", None) | ("rayos.debug", Some("1")) => p.debug = true,
                _ => {}
            }
        }
        p
    }
}

fn valid_tty_name(s: &str) -> bool {
    !s.is_empty() && s.len() < 32 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits a command line into words: spaces separate, double quotes group
/// and are removed (the kernel's `next_arg` rules).
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut have = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                have = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if have {
                    words.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_installed_with_both_consoles() {
        let p = BootParams::parse("BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet\n");
        assert_eq!(p.mode, Mode::Installed);
        assert_eq!(p.consoles, vec!["ttyS0", "tty1"]);
        assert!(p.answers.is_none());
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn reads_mode_answers_console_debug() {
        let p = BootParams::parse(
            "console=ttyS0 rayos.mode=installer rayos.answers=RAYOS_SEED:/auto/a.toml rayos.console=/dev/ttyS1,tty2 rayos.debug",
        );
        assert_eq!(p.mode, Mode::Installer);
        assert_eq!(
            p.answers,
            Some(AnswersRef {
                label: Some("RAYOS_SEED".into()),
                path: "/auto/a.toml".into()
            })
        );
        assert_eq!(p.consoles, vec!["ttyS1", "tty2"]);
        assert!(p.debug);
    }

    #[test]
    fn quoted_values_keep_spaces() {
        let p = BootParams::parse(r#"rayos.answers="/my answers.toml" rayos.mode=recovery"#);
        assert_eq!(p.answers.unwrap().path, "/my answers.toml");
        assert_eq!(p.mode, Mode::Recovery);
        assert_eq!(split_words(r#"a "b c"d  e"#), vec!["a", "b cd", "e"]);
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let p =
            BootParams::parse("rayos.mode=party rayos.answers=../../etc/shadow rayos.console=,");
        assert_eq!(p.mode, Mode::Installed);
        assert!(p.answers.is_none());
        assert_eq!(p.consoles, vec!["ttyS0", "tty1"]);
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("party"));
    }

    #[test]
    fn answers_without_label_or_slash() {
        assert_eq!(
            AnswersRef::parse("rayos-answers.toml"),
            Some(AnswersRef {
                label: None,
                path: "/rayos-answers.toml".into()
            })
        );
        assert_eq!(AnswersRef::parse("/x/y.toml").unwrap().label, None);
        assert_eq!(AnswersRef::parse("LBL:").map(|a| a.path), None);
    }
}

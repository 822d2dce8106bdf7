//! The console keyboard layout: `machine.toml`'s `keyboard` applied to the
//! Linux virtual consoles (the `rayos>` prompt on tty1).
//!
//! The media build compiles each offered layout with kbd's `loadkeys -b`
//! from Debian's console-data keymaps into the binary keymap format
//! (`/usr/share/rayos/keymaps/<layout>.bmap`); PID 1 loads one with the
//! `KDSKBENT` ioctl, as busybox's `loadkmap` does, so the image carries
//! neither loadkeys nor the keymap sources (about 2.5 KB per layout).
//!
//! Format ("bkeymap"): the magic `bkeymap`, 256 bytes saying which of the
//! 256 keymaps (modifier combinations) follow, then for each present one
//! 128 native-endian u16 entries (`KTYP << 8 | value`) by keycode.
//!
//! Limits: the layouts in [`LAYOUTS`]; anything else keeps the kernel's
//! built-in US map (with a warning). The serial console is the remote
//! terminal's business, and the VMs get scancodes and map them themselves.

/// Layout names `machine.toml` may use → the console-data keymap compiled
/// for it (path below `/usr/share/keymaps/i386/`).
pub const LAYOUTS: &[(&str, &str)] = &[
    ("us", "qwerty/us"),
    ("uk", "qwerty/uk"),
    ("gb", "qwerty/uk"),
    ("de", "qwertz/de-latin1"),
    ("fr", "azerty/fr-latin1"),
    ("es", "qwerty/es"),
    ("it", "qwerty/it"),
];

/// Where the image keeps the compiled keymaps.
pub const DIR: &str = "/usr/share/rayos/keymaps";

const MAGIC: &[u8] = b"bkeymap";
const MAX_NR_KEYMAPS: usize = 256;
const NR_KEYS: usize = 128;

/// One `KDSKBENT` entry: keymap (modifier set), keycode, value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The keymap: which modifiers are held (0 plain, 1 shift, …).
    pub table: u8,
    /// The key code.
    pub index: u8,
    /// What the key gives (a keysym with its type in the high byte).
    pub value: u16,
}

/// Why bytes are not a binary keymap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeymapError {
    /// No `bkeymap` magic at the start.
    #[error("not a binary keymap (no `bkeymap` magic)")]
    Magic,
    /// The file ends early; holds its length and the length needed.
    #[error("the binary keymap ends early: {0} bytes, {1} needed")]
    Short(usize, usize),
}

/// The entries of a binary keymap.
pub fn parse(b: &[u8]) -> Result<Vec<Entry>, KeymapError> {
    if !b.starts_with(MAGIC) {
        return Err(KeymapError::Magic);
    }
    let head = MAGIC.len() + MAX_NR_KEYMAPS;
    let flags = b
        .get(MAGIC.len()..head)
        .ok_or(KeymapError::Short(b.len(), head))?;
    let present: Vec<usize> = (0..MAX_NR_KEYMAPS).filter(|&i| flags[i] == 1).collect();
    let need = head + present.len() * NR_KEYS * 2;
    if b.len() < need {
        return Err(KeymapError::Short(b.len(), need));
    }
    let mut out = Vec::with_capacity(present.len() * NR_KEYS);
    for (n, table) in present.into_iter().enumerate() {
        let base = head + n * NR_KEYS * 2;
        for key in 0..NR_KEYS {
            let o = base + key * 2;
            out.push(Entry {
                table: table as u8,
                index: key as u8,
                value: u16::from_ne_bytes([b[o], b[o + 1]]),
            });
        }
    }
    Ok(out)
}

/// The compiled keymap file of `layout`, when RayOS offers it.
pub fn file_of(layout: &str) -> Option<std::path::PathBuf> {
    LAYOUTS
        .iter()
        .any(|(l, _)| *l == layout)
        .then(|| std::path::Path::new(DIR).join(format!("{layout}.bmap")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bmap(maps: &[(u8, &[(u8, u16)])]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        let mut flags = [0u8; MAX_NR_KEYMAPS];
        for (t, _) in maps {
            flags[*t as usize] = 1;
        }
        b.extend_from_slice(&flags);
        let mut sorted = maps.to_vec();
        sorted.sort_by_key(|(t, _)| *t);
        for (_, keys) in sorted {
            let mut tab = [0u16; NR_KEYS];
            for (k, v) in keys {
                tab[*k as usize] = *v;
            }
            for v in tab {
                b.extend_from_slice(&v.to_ne_bytes());
            }
        }
        b
    }

    #[test]
    fn parses_the_present_maps_in_order() {
        let b = bmap(&[(0, &[(21, 0x0b7a)]), (1, &[(21, 0x0b5a)])]);
        let e = parse(&b).unwrap();
        assert_eq!(e.len(), 2 * NR_KEYS);
        assert!(e.contains(&Entry {
            table: 0,
            index: 21,
            value: 0x0b7a
        }));
        assert!(e.contains(&Entry {
            table: 1,
            index: 21,
            value: 0x0b5a
        }));
    }

    #[test]
    fn bad_files_are_errors() {
        assert_eq!(parse(b"nope"), Err(KeymapError::Magic));
        let b = bmap(&[(0, &[])]);
        assert!(matches!(
            parse(&b[..b.len() - 1]),
            Err(KeymapError::Short(..))
        ));
        assert!(matches!(parse(&b[..20]), Err(KeymapError::Short(..))));
        for n in 0..b.len() {
            let _ = parse(&b[..n]);
        }
    }

    #[test]
    fn layouts_the_wizard_offers_have_files() {
        for l in ["us", "uk", "de", "fr", "es", "it"] {
            assert_eq!(
                file_of(l).unwrap(),
                std::path::Path::new(DIR).join(format!("{l}.bmap"))
            );
        }
        assert_eq!(file_of("dvorak"), None);
    }

    /// kbd's own compiler on console-data's keymaps (scripts/install-deps.sh
    /// installs both): each layout compiles, and parses to what the layout
    /// is known for.
    #[test]
    fn real_keymaps_compile_and_parse() {
        let value = |layout: &str, table: u8, key: u8| -> u16 {
            let src = LAYOUTS.iter().find(|(l, _)| *l == layout).unwrap().1;
            let out = std::process::Command::new("loadkeys")
                .arg("-b")
                .arg(format!("/usr/share/keymaps/i386/{src}.kmap.gz"))
                .output()
                .expect("loadkeys (kbd, scripts/install-deps.sh)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let e = parse(&out.stdout).unwrap();
            e.iter()
                .find(|e| e.table == table && e.index == key)
                .map(|e| e.value)
                .unwrap_or(0)
        };
        let ch = |v: u16| (v & 0xff) as u8 as char;
        // Keycode 21 is the key right of T; 16 the first letter key; 3 is
        // the digit 2.
        assert_eq!(ch(value("us", 0, 21)), 'y');
        assert_eq!(ch(value("de", 0, 21)), 'z');
        assert_eq!(ch(value("fr", 0, 16)), 'a');
        assert_eq!(ch(value("uk", 1, 3)), '"');
        assert_eq!(ch(value("us", 1, 3)), '@');
        assert_eq!(ch(value("it", 0, 39)), 'ò');
        assert_eq!(ch(value("es", 0, 39)), 'ñ');
    }
}

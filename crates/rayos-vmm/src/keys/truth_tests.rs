//! The layout tables checked against the keymaps guests really use:
//! Debian's console-data keymaps compiled by kbd's `loadkeys -b` (what the
//! Linux console of RayOS and of the test guest load), and xkb-data's
//! symbols files (what a Debian VM's `keyboard-configuration` and
//! `console-setup` build its layout from). `scripts/install-deps.sh`
//! installs both.
//!
//! Round trip: every character [`type_text`] types (printable ASCII and
//! Latin-1) lands, through the key and level it chose, on that character
//! in both files. Completeness: every character both files put on the
//! same key and level without a dead key is typed by the table (on some
//! key), so a table cannot quietly leave out what the layout offers.

use std::collections::HashMap;
use std::path::Path;

use super::{layouts, type_text};

/// Layout → console-data keymap (below `/usr/share/keymaps/i386/`, the
/// same files as `rayos_init::keymap::LAYOUTS`) and xkb layout name.
const SOURCES: &[(&str, &str, &str)] = &[
    ("us", "qwerty/us", "us"),
    ("uk", "qwerty/uk", "gb"),
    ("de", "qwertz/de-latin1", "de"),
    ("fr", "azerty/fr-latin1", "fr"),
    ("es", "qwerty/es", "es"),
    ("it", "qwerty/it", "it"),
];

/// QEMU key name → Linux key code and xkb key name.
const KEYS: &[(&str, u8, &str)] = &[
    ("grave_accent", 41, "TLDE"),
    ("1", 2, "AE01"),
    ("2", 3, "AE02"),
    ("3", 4, "AE03"),
    ("4", 5, "AE04"),
    ("5", 6, "AE05"),
    ("6", 7, "AE06"),
    ("7", 8, "AE07"),
    ("8", 9, "AE08"),
    ("9", 10, "AE09"),
    ("0", 11, "AE10"),
    ("minus", 12, "AE11"),
    ("equal", 13, "AE12"),
    ("q", 16, "AD01"),
    ("w", 17, "AD02"),
    ("e", 18, "AD03"),
    ("r", 19, "AD04"),
    ("t", 20, "AD05"),
    ("y", 21, "AD06"),
    ("u", 22, "AD07"),
    ("i", 23, "AD08"),
    ("o", 24, "AD09"),
    ("p", 25, "AD10"),
    ("bracket_left", 26, "AD11"),
    ("bracket_right", 27, "AD12"),
    ("a", 30, "AC01"),
    ("s", 31, "AC02"),
    ("d", 32, "AC03"),
    ("f", 33, "AC04"),
    ("g", 34, "AC05"),
    ("h", 35, "AC06"),
    ("j", 36, "AC07"),
    ("k", 37, "AC08"),
    ("l", 38, "AC09"),
    ("semicolon", 39, "AC10"),
    ("apostrophe", 40, "AC11"),
    ("backslash", 43, "BKSL"),
    ("less", 86, "LSGT"),
    ("z", 44, "AB01"),
    ("x", 45, "AB02"),
    ("c", 46, "AB03"),
    ("v", 47, "AB04"),
    ("b", 48, "AB05"),
    ("n", 49, "AB06"),
    ("m", 50, "AB07"),
    ("comma", 51, "AB08"),
    ("dot", 52, "AB09"),
    ("slash", 53, "AB10"),
    ("spc", 57, "SPCE"),
    ("ret", 28, "RTRN"),
    ("tab", 15, "TAB"),
];

// ---- console-data, through kbd's loadkeys -------------------------------

/// The compiled keymap: (modifier table, key code) → entry
/// (`KTYP << 8 | value`). Tables: 0 plain, 1 shift, 2 AltGr, 3 both.
fn console_map(src: &str) -> HashMap<(usize, u8), u16> {
    let path = format!("/usr/share/keymaps/i386/{src}.kmap.gz");
    let out = std::process::Command::new("loadkeys")
        .arg("-b")
        .arg(&path)
        .output()
        .expect("loadkeys (kbd and console-data, scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "loadkeys -b {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "bkeymap", 256 flags (which tables follow), 128 u16 per table.
    let b = out.stdout;
    assert!(b.starts_with(b"bkeymap"), "{path}: not a binary keymap");
    let flags = &b[7..263];
    let mut map = HashMap::new();
    let mut at = 263;
    for (table, _) in flags.iter().enumerate().filter(|(_, f)| **f == 1) {
        for key in 0..128u8 {
            let v = u16::from_ne_bytes([b[at], b[at + 1]]);
            map.insert((table, key), v);
            at += 2;
        }
    }
    map
}

/// The character an entry types directly: KT_LATIN (0) and KT_LETTER
/// (11) carry a Latin-1 character; dead keys (KT_DEAD, 4) and everything
/// else type none.
fn console_char(v: u16) -> Option<char> {
    let (typ, val) = (v >> 8, v & 0xff);
    (typ == 0 || typ == 11)
        .then(|| char::from(val as u8))
        .filter(|c| *c != '\0')
}

// ---- xkb-data symbols files ----------------------------------------------

const XKB: &str = "/usr/share/X11/xkb/symbols";

/// Key name → keysym names by level, as `file(section)` resolves them
/// (includes first, later definitions override level by level, as
/// xkbcomp merges them).
fn xkb_symbols(spec: &str, keys: &mut HashMap<String, Vec<String>>, depth: usize) {
    assert!(depth < 10, "xkb includes nest too deep at {spec}");
    let (file, section) = match spec.split_once('(') {
        Some((f, s)) => (f, Some(s.trim_end_matches(')'))),
        None => (spec, None),
    };
    let path = Path::new(XKB).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (xkb-data, scripts/install-deps.sh)",
            path.display()
        )
    });
    let text: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let body = xkb_section(&text, section).unwrap_or_else(|| panic!("{spec}: no such section"));
    // `include "…"` stands alone (no ';'); other statements end with ';'.
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        if let Some(inc) = rest.strip_prefix("include") {
            let inc = inc.trim_start().strip_prefix('"').expect("include \"…\"");
            let end = inc.find('"').expect("include \"…\"");
            for part in inc[..end].split('+') {
                xkb_symbols(part, keys, depth + 1);
            }
            rest = inc[end + 1..].trim_start();
            continue;
        }
        let Some(end) = statement_end(rest) else {
            break;
        };
        let stmt = rest[..end].trim();
        rest = rest[end + 1..].trim_start();
        if let Some(k) = stmt
            .strip_prefix("key ")
            .or_else(|| stmt.strip_prefix("replace key "))
            .or_else(|| stmt.strip_prefix("override key "))
        {
            let (Some(open), Some(close)) = (k.find('<'), k.find('>')) else {
                continue;
            };
            let name = k[open + 1..close].to_string();
            let Some(list) = first_bracket_list(&k[close..]) else {
                continue;
            };
            let syms: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            let entry = keys.entry(name).or_default();
            for (i, s) in syms.into_iter().enumerate() {
                if i < entry.len() {
                    entry[i] = s;
                } else {
                    entry.push(s);
                }
            }
        }
    }
}

/// Where the statement at the start of `s` ends (its ';' outside braces).
fn statement_end(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ';' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// The body of `xkb_symbols "section"` (or the `default` one).
fn xkb_section<'a>(text: &'a str, section: Option<&str>) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = text[from..].find("xkb_symbols") {
        let at = from + i;
        let head_end = text[at..].find('{')? + at;
        let head = &text[at..head_end];
        let name = head.split('"').nth(1)?;
        let before = &text[text[..at].rfind(['}', ';']).map_or(0, |p| p + 1)..at];
        let wanted = match section {
            Some(s) => name == s,
            None => before.contains("default"),
        };
        // The matching closing brace.
        let mut depth = 0;
        let mut end = None;
        for (j, c) in text[head_end..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(head_end + j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end?;
        if wanted {
            return Some(&text[head_end + 1..end]);
        }
        from = end;
    }
    None
}

/// The first `[ … ]` list of symbols in a key's definition (group 1's;
/// `type[Group1]` and `symbols[Group1]` name groups, not symbols).
fn first_bracket_list(s: &str) -> Option<&str> {
    let mut from = 0;
    loop {
        let open = s[from..].find('[')? + from;
        let close = s[open..].find(']')? + open;
        let inner = &s[open + 1..close];
        if !inner.trim_start().starts_with("Group") {
            return Some(inner);
        }
        from = close + 1;
    }
}

/// The X keysym names of Latin-1 (`keysymdef.h`: keysyms 0x20-0xff are
/// the Latin-1 code points), plus `Uxxxx`.
fn keysym_char(name: &str) -> Option<char> {
    const ASCII: &[&str] = &[
        "space",
        "exclam",
        "quotedbl",
        "numbersign",
        "dollar",
        "percent",
        "ampersand",
        "apostrophe",
        "parenleft",
        "parenright",
        "asterisk",
        "plus",
        "comma",
        "minus",
        "period",
        "slash",
    ];
    const ASCII2: &[&str] = &[
        "colon",
        "semicolon",
        "less",
        "equal",
        "greater",
        "question",
        "at",
    ];
    const ASCII3: &[&str] = &[
        "bracketleft",
        "backslash",
        "bracketright",
        "asciicircum",
        "underscore",
        "grave",
    ];
    const ASCII4: &[&str] = &["braceleft", "bar", "braceright", "asciitilde"];
    const LATIN1: &[&str] = &[
        "nobreakspace",
        "exclamdown",
        "cent",
        "sterling",
        "currency",
        "yen",
        "brokenbar",
        "section",
        "diaeresis",
        "copyright",
        "ordfeminine",
        "guillemotleft",
        "notsign",
        "hyphen",
        "registered",
        "macron",
        "degree",
        "plusminus",
        "twosuperior",
        "threesuperior",
        "acute",
        "mu",
        "paragraph",
        "periodcentered",
        "cedilla",
        "onesuperior",
        "masculine",
        "guillemotright",
        "onequarter",
        "onehalf",
        "threequarters",
        "questiondown",
        "Agrave",
        "Aacute",
        "Acircumflex",
        "Atilde",
        "Adiaeresis",
        "Aring",
        "AE",
        "Ccedilla",
        "Egrave",
        "Eacute",
        "Ecircumflex",
        "Ediaeresis",
        "Igrave",
        "Iacute",
        "Icircumflex",
        "Idiaeresis",
        "ETH",
        "Ntilde",
        "Ograve",
        "Oacute",
        "Ocircumflex",
        "Otilde",
        "Odiaeresis",
        "multiply",
        "Oslash",
        "Ugrave",
        "Uacute",
        "Ucircumflex",
        "Udiaeresis",
        "Yacute",
        "THORN",
        "ssharp",
        "agrave",
        "aacute",
        "acircumflex",
        "atilde",
        "adiaeresis",
        "aring",
        "ae",
        "ccedilla",
        "egrave",
        "eacute",
        "ecircumflex",
        "ediaeresis",
        "igrave",
        "iacute",
        "icircumflex",
        "idiaeresis",
        "eth",
        "ntilde",
        "ograve",
        "oacute",
        "ocircumflex",
        "otilde",
        "odiaeresis",
        "division",
        "oslash",
        "ugrave",
        "uacute",
        "ucircumflex",
        "udiaeresis",
        "yacute",
        "thorn",
        "ydiaeresis",
    ];
    let at = |list: &[&str], first: u32| {
        list.iter()
            .position(|n| *n == name)
            .and_then(|i| char::from_u32(first + i as u32))
    };
    if name.len() == 1 && name.as_bytes()[0].is_ascii_alphanumeric() {
        return name.chars().next();
    }
    if let Some(hex) = name
        .strip_prefix('U')
        .filter(|h| h.len() >= 4 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
    }
    at(ASCII, 0x20)
        .or_else(|| at(ASCII2, 0x3a))
        .or_else(|| at(ASCII3, 0x5b))
        .or_else(|| at(ASCII4, 0x7b))
        .or_else(|| at(LATIN1, 0xa0))
        // Newer names of the same keysyms.
        .or(match name {
            "guillemetleft" => Some('«'),
            "guillemetright" => Some('»'),
            "ordmasculine" => Some('º'),
            _ => None,
        })
}

/// The layout as Debian's `keyboard-configuration` builds it for a
/// pc105 keyboard: `pc+<layout>` (the rules' `inet(evdev)` holds no
/// character keys).
fn xkb_map(layout: &str) -> HashMap<String, Vec<String>> {
    let mut keys = HashMap::new();
    xkb_symbols("pc", &mut keys, 0);
    xkb_symbols(layout, &mut keys, 0);
    keys
}

// ---- the checks ----------------------------------------------------------

/// What key `q` gives at `level` on both sources: (console, xkb).
struct Truth {
    console: HashMap<(usize, u8), u16>,
    xkb: HashMap<String, Vec<String>>,
}

impl Truth {
    fn of(layout: &str) -> Truth {
        let &(_, src, x) = SOURCES.iter().find(|(l, _, _)| *l == layout).unwrap();
        Truth {
            console: console_map(src),
            xkb: xkb_map(x),
        }
    }

    fn console(&self, key: &str, level: usize) -> Option<char> {
        let &(_, code, _) = KEYS.iter().find(|(q, _, _)| *q == key).unwrap();
        self.console
            .get(&(level, code))
            .copied()
            .and_then(console_char)
    }

    fn xkb(&self, key: &str, level: usize) -> Option<char> {
        let &(_, _, name) = KEYS.iter().find(|(q, _, _)| *q == key).unwrap();
        let syms = self.xkb.get(name)?;
        // A one-level key (space) is the same on every level in xkb's
        // ONE_LEVEL type; letters use shift only through their type.
        syms.get(level).and_then(|s| keysym_char(s))
    }
}

/// (key, level) of a combination `type_text` chose.
fn key_level(combo: &[&'static str]) -> (&'static str, usize) {
    let key = combo[combo.len() - 1];
    let shift = combo.contains(&"shift");
    let altgr = combo.contains(&"alt_r");
    (key, usize::from(shift) + 2 * usize::from(altgr))
}

fn candidates() -> impl Iterator<Item = char> {
    (' '..='~').chain('\u{a0}'..='\u{ff}')
}

#[test]
fn every_typed_character_is_that_character_in_console_data_and_xkb() {
    let mut wrong = Vec::new();
    for &(layout, _, _) in SOURCES {
        let t = Truth::of(layout);
        let mut typed = 0;
        for c in candidates() {
            let Ok(combos) = type_text(&c.to_string(), layout) else {
                continue;
            };
            typed += 1;
            let (key, level) = key_level(&combos[0].0);
            let console = t.console(key, level);
            if console != Some(c) {
                wrong.push(format!(
                    "{layout}: {c:?} is typed as {}, which is {console:?} in console-data's keymap",
                    combos[0]
                ));
            }
            let xkb = t.xkb(key, level);
            if c != ' ' && xkb != Some(c) {
                wrong.push(format!(
                    "{layout}: {c:?} is typed as {}, which is {xkb:?} in xkb's layout",
                    combos[0]
                ));
            }
        }
        // Letters, digits and most of ASCII's punctuation at least.
        assert!(typed >= 85, "{layout}: only {typed} characters");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn what_both_keymaps_type_directly_is_in_the_table() {
    let mut missing = Vec::new();
    for &(layout, _, _) in SOURCES {
        let t = Truth::of(layout);
        let table = layouts::get(layout).unwrap();
        for &key in layouts::MAIN_BLOCK {
            // US keyboards have no ISO key, whatever the keymaps say.
            if layout == "us" && key == "less" {
                continue;
            }
            for level in 0..4 {
                let (Some(a), Some(b)) = (t.console(key, level), t.xkb(key, level)) else {
                    continue;
                };
                if a != b
                    || !(a == ' ' || a.is_ascii_graphic() || ('\u{a1}'..='\u{ff}').contains(&a))
                {
                    continue;
                }
                // Letters on AltGr of console-data's keymaps only repeat
                // the plain letter.
                if level >= 2 && table.levels(key).is_some_and(|l| l.first() == Some(&a)) {
                    continue;
                }
                if type_text(&a.to_string(), layout).is_err() {
                    missing.push(format!(
                        "{layout}: {key} at level {level} is {a:?} in both console-data and xkb, but the table cannot type it"
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// AltGr is the right Alt key in both: console-data's keymaps bind key
/// code 100 to AltGr (KT_SHIFT, KG_ALTGR), xkb's layouts include
/// `level3(ralt_switch)`.
#[test]
fn altgr_is_the_right_alt_key_where_a_table_uses_it() {
    for &(layout, _, _) in SOURCES {
        let uses = candidates()
            .any(|c| type_text(&c.to_string(), layout).is_ok_and(|t| t[0].0.contains(&"alt_r")));
        if !uses {
            continue;
        }
        let t = Truth::of(layout);
        assert_eq!(t.console.get(&(0, 100)), Some(&0x0701), "{layout}");
        let ralt = t.xkb.get("RALT").map(|s| s.join(",")).unwrap_or_default();
        assert!(
            ralt.contains("ISO_Level3_Shift"),
            "{layout}: RALT is {ralt}"
        );
    }
}

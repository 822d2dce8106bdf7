//! Keys for injected input (the agent bridge, docs/agent-bridge.md): QEMU
//! key names (`QKeyCode`, "qcodes"), key combinations such as
//! `ctrl+alt+delete`, and text turned into key presses with a keyboard
//! layout.
//!
//! A combination is pressed in the order written and released in reverse,
//! as a person would. Text is typed one character at a time as the key (and
//! shift) that produces it on the VM's layout, because the guest turns key
//! codes back into characters with its own layout: the same key is `y` on
//! a US layout and `z` on a German one.
//!
//! Layouts: `us`, `uk` (also `gb`), `de`, `fr`, `es`, `it`, the ones the
//! installer offers (`keys/layouts.rs` has the tables and why they hold what
//! they hold). A character the layout types only through a dead key (`^`
//! on German, `¨` on French keyboards), or has no key for (other scripts),
//! is refused with a message naming it and the layout, never replaced by
//! another key; text for a VM with another layout is refused, and keys
//! still work there.

use std::fmt;

/// The QEMU 7.2 qcodes a combination may name (the common part of
/// `QKeyCode`; media and language keys are left out).
pub const QCODES: &[&str] = &[
    "shift",
    "shift_r",
    "alt",
    "alt_r",
    "ctrl",
    "ctrl_r",
    "meta_l",
    "meta_r",
    "menu",
    "esc",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "0",
    "minus",
    "equal",
    "backspace",
    "tab",
    "q",
    "w",
    "e",
    "r",
    "t",
    "y",
    "u",
    "i",
    "o",
    "p",
    "bracket_left",
    "bracket_right",
    "ret",
    "a",
    "s",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "semicolon",
    "apostrophe",
    "grave_accent",
    "backslash",
    "z",
    "x",
    "c",
    "v",
    "b",
    "n",
    "m",
    "comma",
    "dot",
    "slash",
    "asterisk",
    "spc",
    "caps_lock",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "f6",
    "f7",
    "f8",
    "f9",
    "f10",
    "f11",
    "f12",
    "num_lock",
    "scroll_lock",
    "kp_divide",
    "kp_multiply",
    "kp_subtract",
    "kp_add",
    "kp_enter",
    "kp_decimal",
    "sysrq",
    "kp_0",
    "kp_1",
    "kp_2",
    "kp_3",
    "kp_4",
    "kp_5",
    "kp_6",
    "kp_7",
    "kp_8",
    "kp_9",
    "less",
    "home",
    "pgup",
    "pgdn",
    "end",
    "left",
    "up",
    "down",
    "right",
    "insert",
    "delete",
    "pause",
    "print",
    "power",
];

/// Friendlier names for some qcodes.
const ALIASES: &[(&str, &str)] = &[
    ("control", "ctrl"),
    ("enter", "ret"),
    ("return", "ret"),
    ("space", "spc"),
    ("escape", "esc"),
    ("del", "delete"),
    ("ins", "insert"),
    ("super", "meta_l"),
    ("win", "meta_l"),
    ("meta", "meta_l"),
    ("pageup", "pgup"),
    ("pagedown", "pgdn"),
    ("capslock", "caps_lock"),
    ("altgr", "alt_r"),
];

mod layouts;
#[cfg(test)]
mod truth_tests;

/// The layouts [`type_text`] knows (`gb` is another name of `uk`).
pub const LAYOUTS: &[&str] = &["us", "uk", "de", "fr", "es", "it"];

/// Why keys or text cannot be sent to a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A name that is not a QEMU key name (or alias); holds it.
    #[error(
        "{0:?} is not a key name: use QEMU key names such as ctrl, alt, shift, meta_l, ret, esc, tab, f1, a, 1, delete (aliases: enter, space, del, win)"
    )]
    UnknownKey(String),
    /// A combination with no key in it.
    #[error("the key combination is empty: name keys joined by '+', e.g. ctrl+alt+delete")]
    EmptyCombo,
    /// A combination with more keys than can be held at once; holds the limit.
    #[error("a key combination has at most {0} keys")]
    TooManyKeys(usize),
    /// Text for a keyboard layout RayOS cannot type; holds the layout.
    #[error(
        "the VM's keyboard layout is {0:?}, and RayOS types text only for the layouts {LAYOUTS:?}: send keys instead"
    )]
    Layout(String),
    /// A character no key of the layout gives without a dead key; holds
    /// it and the layout.
    #[error(
        "character {0:?} cannot be typed on the {1:?} keyboard layout (no key gives it without a dead key): send keys for it instead"
    )]
    NoKey(char, &'static str),
}

/// At most this many keys held at once in one combination.
pub const MAX_COMBO: usize = 8;

/// Keys pressed together, in pressing order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Combo(pub Vec<&'static str>);

impl fmt::Display for Combo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("+"))
    }
}

/// The qcode for a key name or alias (case-insensitive).
pub fn qcode(name: &str) -> Result<&'static str, KeyError> {
    let lower = name.trim().to_ascii_lowercase();
    let lower = ALIASES
        .iter()
        .find(|(a, _)| *a == lower)
        .map_or(lower.as_str(), |(_, q)| q);
    QCODES
        .iter()
        .find(|q| **q == lower)
        .copied()
        .ok_or_else(|| KeyError::UnknownKey(name.to_string()))
}

/// Parses `ctrl+alt+delete`: key names joined by `+` (no key name
/// contains `+`; the `+` character itself is `shift+equal`).
pub fn parse_combo(text: &str) -> Result<Combo, KeyError> {
    if text.trim().is_empty() {
        return Err(KeyError::EmptyCombo);
    }
    let keys = text.split('+').map(qcode).collect::<Result<Vec<_>, _>>()?;
    if keys.len() > MAX_COMBO {
        return Err(KeyError::TooManyKeys(MAX_COMBO));
    }
    Ok(Combo(keys))
}

/// The key presses that type `text` on `layout`, one combination per
/// character (`\n` is Return, `\t` Tab). AltGr is the right Alt key, as
/// on the keyboards of these layouts.
pub fn type_text(text: &str, layout: &str) -> Result<Vec<Combo>, KeyError> {
    let l = layouts::get(layout).ok_or_else(|| KeyError::Layout(layout.to_string()))?;
    text.chars()
        .map(|c| {
            let (key, level) = match c {
                ' ' => ("spc", 0),
                '\n' => ("ret", 0),
                '\t' => ("tab", 0),
                _ => l.find(c).ok_or(KeyError::NoKey(c, l.name))?,
            };
            Ok(Combo(match level {
                0 => vec![key],
                1 => vec!["shift", key],
                2 => vec!["alt_r", key],
                _ => vec!["shift", "alt_r", key],
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combos_parse_with_aliases_and_case() {
        assert_eq!(
            parse_combo("Ctrl+Alt+Del").unwrap().0,
            ["ctrl", "alt", "delete"]
        );
        assert_eq!(parse_combo("enter").unwrap().0, ["ret"]);
        assert_eq!(parse_combo("meta_l+r").unwrap().to_string(), "meta_l+r");
        assert_eq!(
            parse_combo("ctrl+hyper").unwrap_err(),
            KeyError::UnknownKey("hyper".into())
        );
        assert_eq!(parse_combo(" ").unwrap_err(), KeyError::EmptyCombo);
        // `a++b` names an empty key.
        assert!(matches!(
            parse_combo("a++b"),
            Err(KeyError::UnknownKey(k)) if k.is_empty()
        ));
        assert_eq!(
            parse_combo("a+b+c+d+e+f+g+h+i").unwrap_err(),
            KeyError::TooManyKeys(MAX_COMBO)
        );
    }

    #[test]
    fn every_printable_ascii_character_has_a_us_key() {
        for c in ' '..='~' {
            let combos = type_text(&c.to_string(), "us").unwrap();
            assert_eq!(combos.len(), 1, "{c:?}");
            for k in &combos[0].0 {
                assert!(QCODES.contains(k), "{c:?} -> {k}");
            }
        }
        // Two characters never share a combination.
        let mut seen = std::collections::HashSet::new();
        for c in (' '..='~').chain(['\n', '\t']) {
            assert!(
                seen.insert(type_text(&c.to_string(), "us").unwrap()),
                "{c:?}"
            );
        }
    }

    #[test]
    fn text_uses_shift_for_capitals_and_symbols() {
        let t = type_text("Hi!\n", "us").unwrap();
        assert_eq!(
            t,
            [
                Combo(vec!["shift", "h"]),
                Combo(vec!["i"]),
                Combo(vec!["shift", "1"]),
                Combo(vec!["ret"]),
            ]
        );
    }

    #[test]
    fn other_layouts_and_missing_characters_are_refused() {
        assert_eq!(
            type_text("a", "dvorak").unwrap_err(),
            KeyError::Layout("dvorak".into())
        );
        assert_eq!(
            type_text("é", "us").unwrap_err(),
            KeyError::NoKey('é', "us")
        );
        // Dead keys on German and French keyboards, the euro sign nowhere
        // in Latin-1 keymaps, another script.
        for (c, l) in [('^', "de"), ('`', "de"), ('~', "de"), ('^', "fr")] {
            assert_eq!(type_text(&format!("a{c}"), l), Err(KeyError::NoKey(c, l)));
        }
        for l in LAYOUTS {
            assert!(type_text("€", l).is_err());
            assert!(type_text("ж", l).is_err());
            assert!(type_text("\0", l).is_err());
        }
        let msg = type_text("x^", "de").unwrap_err().to_string();
        assert!(msg.contains("'^'") && msg.contains("\"de\""), "{msg}");
    }

    /// Every layout types all letters, digits, space, Return and Tab, each
    /// character with its own combination of real key names, and
    /// everything it types is one key with at most shift and AltGr.
    #[test]
    fn every_layout_types_letters_and_digits_with_distinct_keys() {
        let alnum = ('a'..='z').chain('A'..='Z').chain('0'..='9');
        for l in LAYOUTS {
            for c in alnum.clone().chain([' ', '\n', '\t']) {
                let t = type_text(&c.to_string(), l).unwrap_or_else(|e| panic!("{l}: {e}"));
                assert_eq!(t.len(), 1);
                let keys = &t[0].0;
                assert!(keys.len() <= 3, "{l} {c:?}: {keys:?}");
                for k in keys {
                    assert!(QCODES.contains(k), "{l} {c:?} -> {k}");
                }
            }
            let mut seen = std::collections::HashMap::new();
            for c in (' '..='~').chain('\u{a0}'..='\u{ff}') {
                if let Ok(t) = type_text(&c.to_string(), l) {
                    if let Some(other) = seen.insert(t.clone(), c) {
                        panic!("{l}: {c:?} and {other:?} are both {}", t[0]);
                    }
                    let (mods, key) = t[0].0.split_at(t[0].0.len() - 1);
                    assert!(
                        mods.iter().all(|m| ["shift", "alt_r"].contains(m)),
                        "{l} {c:?}: {:?}",
                        t[0]
                    );
                    assert!(layouts::MAIN_BLOCK.contains(&key[0]) || c == ' ');
                }
            }
        }
        assert_eq!(
            layouts::ALL.iter().map(|l| l.name).collect::<Vec<_>>(),
            LAYOUTS
        );
    }

    #[test]
    fn layouts_are_what_their_keyboards_are_known_for() {
        let one = |t: &str, l: &str| type_text(t, l).unwrap()[0].to_string();
        // German: y and z swapped, umlauts and sharp s, AltGr for @ and {.
        assert_eq!(one("z", "de"), "y");
        assert_eq!(one("y", "de"), "z");
        assert_eq!(one("Z", "de"), "shift+y");
        assert_eq!(one("ß", "de"), "minus");
        assert_eq!(one("ä", "de"), "apostrophe");
        assert_eq!(one("ö", "de"), "semicolon");
        assert_eq!(one("Ü", "de"), "shift+bracket_left");
        assert_eq!(one("@", "de"), "alt_r+q");
        assert_eq!(one("{", "de"), "alt_r+7");
        assert_eq!(one("(", "de"), "shift+8");
        // French: AZERTY, digits on shift, M right of L.
        assert_eq!(one("a", "fr"), "q");
        assert_eq!(one("q", "fr"), "a");
        assert_eq!(one("w", "fr"), "z");
        assert_eq!(one("m", "fr"), "semicolon");
        assert_eq!(one(",", "fr"), "m");
        for d in '0'..='9' {
            assert_eq!(one(&d.to_string(), "fr"), format!("shift+{d}"));
        }
        assert_eq!(one("é", "fr"), "2");
        // UK: £ on shift+3, " on shift+2, @ right of L, # and \ of ISO keys.
        assert_eq!(one("£", "uk"), "shift+3");
        assert_eq!(one("\"", "uk"), "shift+2");
        assert_eq!(one("@", "uk"), "shift+apostrophe");
        assert_eq!(one("#", "uk"), "backslash");
        assert_eq!(one("\\", "uk"), "less");
        assert_eq!(type_text("£", "gb"), type_text("£", "uk"));
        // Spanish and Italian.
        assert_eq!(one("ñ", "es"), "semicolon");
        assert_eq!(one("¿", "es"), "shift+equal");
        assert_eq!(one("@", "es"), "alt_r+2");
        assert_eq!(one("ò", "it"), "semicolon");
        assert_eq!(one("@", "it"), "alt_r+semicolon");
        // US: every printable ASCII character, none on the ISO key.
        for c in ' '..='~' {
            assert!(!one(&c.to_string(), "us").contains("less"), "{c:?}");
        }
    }
}

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
//! Limits: one layout, `us` (also the layout of guests without first-boot
//! settings: Windows, imported images, the test guest); text for a VM with
//! another layout is refused with a message, and keys still work there.
//! Characters a US keyboard has no key for (accents, non-Latin scripts)
//! are refused, not dropped: the caller learns which one.

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

/// The layouts [`type_text`] knows.
pub const LAYOUTS: &[&str] = &["us"];

/// Why keys or text cannot be sent to a VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{0:?} is not a key name: use QEMU key names such as ctrl, alt, shift, meta_l, ret, esc, tab, f1, a, 1, delete (aliases: enter, space, del, win)"
    )]
    /// A name that is not a QEMU key name (or alias); holds it.
    UnknownKey(String),
    /// A combination with no key in it.
    #[error("the key combination is empty: name keys joined by '+', e.g. ctrl+alt+delete")]
    EmptyCombo,
    /// A combination with more keys than can be held at once; holds the limit.
    #[error("a key combination has at most {0} keys")]
    TooManyKeys(usize),
    #[error(
        "the VM's keyboard layout is {0:?}, and RayOS types text only for the layouts {LAYOUTS:?}: send keys instead"
    )]
    /// Text for a keyboard layout RayOS cannot type; holds the layout.
    Layout(String),
    /// A character the layout has no key for; holds it and the layout.
    #[error("character {0:?} has no key on the {1} layout: send keys for it instead")]
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
/// character (`\n` is Return, `\t` Tab).
pub fn type_text(text: &str, layout: &str) -> Result<Vec<Combo>, KeyError> {
    if layout != "us" {
        return Err(KeyError::Layout(layout.to_string()));
    }
    text.chars()
        .map(|c| {
            us_key(c)
                .map(|(key, shift)| Combo(if shift { vec!["shift", key] } else { vec![key] }))
                .ok_or(KeyError::NoKey(c, "us"))
        })
        .collect()
}

/// The key (and whether shift is held) for `c` on a US keyboard.
fn us_key(c: char) -> Option<(&'static str, bool)> {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    const LETTERS: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t", "u", "v", "w", "x", "y", "z",
    ];
    // The shifted digit row, from 0 to 9.
    const SHIFTED_DIGITS: [char; 10] = [')', '!', '@', '#', '$', '%', '^', '&', '*', '('];
    if c.is_ascii_lowercase() {
        return Some((LETTERS[usize::from(c as u8 - b'a')], false));
    }
    if c.is_ascii_uppercase() {
        return Some((LETTERS[usize::from(c as u8 - b'A')], true));
    }
    if c.is_ascii_digit() {
        return Some((DIGITS[usize::from(c as u8 - b'0')], false));
    }
    if let Some(i) = SHIFTED_DIGITS.iter().position(|&s| s == c) {
        return Some((DIGITS[i], true));
    }
    let (key, shift) = match c {
        ' ' => ("spc", false),
        '\n' => ("ret", false),
        '\t' => ("tab", false),
        '-' => ("minus", false),
        '_' => ("minus", true),
        '=' => ("equal", false),
        '+' => ("equal", true),
        '[' => ("bracket_left", false),
        '{' => ("bracket_left", true),
        ']' => ("bracket_right", false),
        '}' => ("bracket_right", true),
        '\\' => ("backslash", false),
        '|' => ("backslash", true),
        ';' => ("semicolon", false),
        ':' => ("semicolon", true),
        '\'' => ("apostrophe", false),
        '"' => ("apostrophe", true),
        '`' => ("grave_accent", false),
        '~' => ("grave_accent", true),
        ',' => ("comma", false),
        '<' => ("comma", true),
        '.' => ("dot", false),
        '>' => ("dot", true),
        '/' => ("slash", false),
        '?' => ("slash", true),
        _ => return None,
    };
    Some((key, shift))
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
            type_text("a", "de").unwrap_err(),
            KeyError::Layout("de".into())
        );
        assert_eq!(
            type_text("é", "us").unwrap_err(),
            KeyError::NoKey('é', "us")
        );
    }
}

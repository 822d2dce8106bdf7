//! Keyboard layouts for typed text: which key, at which level (plain,
//! shift, AltGr, shift+AltGr), gives a character on the layouts the
//! installer offers (`us`, `uk`, `de`, `fr`, `es`, `it`).
//!
//! A table lists the keys of the main block by QEMU key name with the
//! characters of their levels. Only characters a key gives *directly* are
//! listed: a dead key (`^` and `´` on a German keyboard, `¨` on a French
//! one) combines with the next key, so typing it alone would change the
//! next character. A character is listed only where Debian's console
//! keymap (console-data, what the Linux console and the test guest load)
//! and the X keyboard layout (xkb-data, what a Debian VM's
//! `keyboard-configuration` sets up) agree; where they differ (`~` is a
//! dead key on console-data's `de` and `fr` keymaps but not in xkb) the
//! character is left out and typing it is an error, never a wrong key.
//! `keys/truth_tests.rs` checks every entry against both files.
//!
//! Letter keys not listed type their own letter (lower case plain, upper
//! case with shift), so a table names only what differs from that.

/// No character at this level (a dead key, or the sources disagree).
const NONE: char = '\0';

/// One layout: keys (QEMU key names) and the characters of their levels,
/// in level order (plain, shift, AltGr, shift+AltGr; [`NONE`] for a gap).
pub(super) struct Layout {
    pub name: &'static str,
    pub keys: &'static [(&'static str, &'static str)],
}

impl Layout {
    /// The characters of `key` by level: its table entry, or for a letter
    /// key not listed the letter and its capital.
    pub fn levels(&self, key: &str) -> Option<Vec<char>> {
        if let Some((_, chars)) = self.keys.iter().find(|(k, _)| *k == key) {
            return Some(chars.chars().collect());
        }
        let b = key.as_bytes();
        (b.len() == 1 && b[0].is_ascii_lowercase()).then(|| {
            let c = char::from(b[0]);
            vec![c, c.to_ascii_uppercase()]
        })
    }

    /// The key and level that type `c`: the lowest level over all keys
    /// (plain before shift before AltGr), then the first key in
    /// [`MAIN_BLOCK`] order, so the choice is the one a person makes.
    pub fn find(&self, c: char) -> Option<(&'static str, usize)> {
        if c == NONE {
            return None;
        }
        (0..4).find_map(|level| {
            MAIN_BLOCK.iter().find_map(|&key| {
                self.levels(key)
                    .filter(|l| l.get(level) == Some(&c))
                    .map(|_| (key, level))
            })
        })
    }
}

/// The keys of the main block a table may use, in row order. `less` is
/// the extra key of ISO keyboards (left of Z); US keyboards lack it.
pub(super) const MAIN_BLOCK: &[&str] = &[
    "grave_accent",
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
    "backslash",
    "less",
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
];

const US: Layout = Layout {
    name: "us",
    keys: &[
        ("grave_accent", "`~"),
        ("1", "1!"),
        ("2", "2@"),
        ("3", "3#"),
        ("4", "4$"),
        ("5", "5%"),
        ("6", "6^"),
        ("7", "7&"),
        ("8", "8*"),
        ("9", "9("),
        ("0", "0)"),
        ("minus", "-_"),
        ("equal", "=+"),
        ("bracket_left", "[{"),
        ("bracket_right", "]}"),
        ("semicolon", ";:"),
        ("apostrophe", "'\""),
        ("backslash", "\\|"),
        // No `less` key on a US keyboard.
        ("less", ""),
        ("comma", ",<"),
        ("dot", ".>"),
        ("slash", "/?"),
    ],
};

const UK: Layout = Layout {
    name: "uk",
    keys: &[
        ("grave_accent", "`¬|"),
        ("1", "1!"),
        ("2", "2\""),
        ("3", "3£"),
        ("4", "4$"),
        ("5", "5%"),
        ("6", "6^"),
        ("7", "7&"),
        ("8", "8*"),
        ("9", "9("),
        ("0", "0)"),
        ("minus", "-_"),
        ("equal", "=+"),
        ("bracket_left", "[{"),
        ("bracket_right", "]}"),
        ("semicolon", ";:"),
        ("apostrophe", "'@"),
        ("backslash", "#~"),
        ("less", "\\|"),
        ("comma", ",<"),
        ("dot", ".>"),
        ("slash", "/?"),
    ],
};

const DE: Layout = Layout {
    name: "de",
    keys: &[
        // Plain: dead circumflex.
        ("grave_accent", "\0°"),
        ("1", "1!"),
        ("2", "2\"²"),
        ("3", "3§³"),
        ("4", "4$"),
        ("5", "5%"),
        ("6", "6&"),
        ("7", "7/{"),
        ("8", "8(["),
        ("9", "9)]"),
        ("0", "0=}"),
        ("minus", "ß?\\"),
        // Dead acute and grave.
        ("equal", ""),
        ("q", "qQ@"),
        ("y", "zZ"),
        ("bracket_left", "üÜ"),
        // AltGr: `~`, a dead key on console-data's keymap, plain in xkb.
        ("bracket_right", "+*"),
        ("semicolon", "öÖ"),
        ("apostrophe", "äÄ"),
        ("backslash", "#'"),
        ("less", "<>|"),
        ("c", "cC¢"),
        ("z", "yY"),
        ("m", "mMµ"),
        ("comma", ",;"),
        ("dot", ".:"),
        ("slash", "-_"),
    ],
};

const FR: Layout = Layout {
    name: "fr",
    keys: &[
        // Shift: `~` in xkb, `²` in console-data.
        ("grave_accent", "²"),
        ("1", "&1"),
        // AltGr: `~`, dead on console-data's keymap.
        ("2", "é2"),
        ("3", "\"3#"),
        ("4", "'4{"),
        ("5", "(5["),
        ("6", "-6|"),
        // AltGr: `` ` ``, dead on console-data's keymap.
        ("7", "è7"),
        ("8", "_8\\"),
        // AltGr: `^`, dead on console-data's keymap.
        ("9", "ç9"),
        ("0", "à0@"),
        ("minus", ")°]"),
        ("equal", "=+}"),
        ("q", "aA"),
        ("w", "zZ"),
        // Dead circumflex and diaeresis.
        ("bracket_left", ""),
        ("bracket_right", "$£¤"),
        ("a", "qQ"),
        ("semicolon", "mM"),
        ("apostrophe", "ù%"),
        ("backslash", "*µ"),
        ("less", "<>"),
        ("z", "wW"),
        ("m", ",?"),
        ("comma", ";."),
        ("dot", ":/"),
        ("slash", "!§"),
    ],
};

const ES: Layout = Layout {
    name: "es",
    keys: &[
        ("grave_accent", "ºª\\"),
        ("1", "1!|"),
        ("2", "2\"@"),
        ("3", "3·#"),
        ("4", "4$~"),
        ("5", "5%"),
        ("6", "6&¬"),
        ("7", "7/"),
        ("8", "8("),
        ("9", "9)"),
        ("0", "0="),
        ("minus", "'?"),
        ("equal", "¡¿"),
        // Plain and shift: dead grave and circumflex.
        ("bracket_left", "\0\0["),
        ("bracket_right", "+*]"),
        ("semicolon", "ñÑ"),
        // Plain and shift: dead acute and diaeresis.
        ("apostrophe", "\0\0{"),
        ("backslash", "çÇ}"),
        ("less", "<>"),
        ("c", "cC¢"),
        ("comma", ",;"),
        ("dot", ".:"),
        ("slash", "-_"),
    ],
};

const IT: Layout = Layout {
    name: "it",
    keys: &[
        ("grave_accent", "\\|"),
        ("1", "1!"),
        ("2", "2\""),
        ("3", "3£"),
        ("4", "4$"),
        ("5", "5%"),
        ("6", "6&"),
        ("7", "7/"),
        ("8", "8("),
        ("9", "9)"),
        ("0", "0="),
        ("minus", "'?`"),
        ("equal", "ì^"),
        ("bracket_left", "èé["),
        ("bracket_right", "+*]"),
        ("semicolon", "òç@"),
        ("apostrophe", "à°#"),
        ("backslash", "ù§"),
        ("less", "<>"),
        ("c", "cC¢"),
        ("comma", ",;"),
        ("dot", ".:"),
        ("slash", "-_"),
    ],
};

/// Every layout [`super::type_text`] knows.
pub(super) const ALL: &[Layout] = &[US, UK, DE, FR, ES, IT];

/// Other names of layouts: xkb calls the UK layout `gb`.
pub(super) const ALIASES: &[(&str, &str)] = &[("gb", "uk")];

/// The layout named `name` (or an alias of it).
pub(super) fn get(name: &str) -> Option<&'static Layout> {
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, l)| l);
    ALL.iter().find(|l| l.name == name)
}

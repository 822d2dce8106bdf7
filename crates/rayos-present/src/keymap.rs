//! Linux evdev key codes → what a VM's VNC server understands.
//!
//! [`qnum`]: QEMU's "qnum", the XT (set 1) scancode with bit 7 standing for
//! the 0xE0 prefix — what QEMU's extended key event carries. The guest then
//! applies its own keyboard layout, which is why RayOS sends scancodes and
//! not characters. Evdev codes 1..=88 were defined to equal XT scancodes,
//! so those map to themselves; the rest come from a table (the same
//! assignments as QEMU's `ui/keycodemapdb` linux→qnum map).
//!
//! [`keysym`]: a US-layout X keysym, only for VNC servers without
//! extended key events (a fallback; layouts do not apply there).

/// Evdev key codes the presenter handles itself.
pub mod code {
    /// `KEY_ESC`.
    pub const ESC: u16 = 1;
    /// `KEY_LEFTCTRL`.
    pub const LEFTCTRL: u16 = 29;
    /// `KEY_LEFTSHIFT`.
    pub const LEFTSHIFT: u16 = 42;
    /// `KEY_RIGHTSHIFT`.
    pub const RIGHTSHIFT: u16 = 54;
    /// `KEY_LEFTALT`.
    pub const LEFTALT: u16 = 56;
    /// `KEY_F1` (F1 to F10 are consecutive).
    pub const F1: u16 = 59;
    /// `KEY_F10`.
    pub const F10: u16 = 68;
    /// `KEY_F11`.
    pub const F11: u16 = 87;
    /// `KEY_F12`.
    pub const F12: u16 = 88;
    /// `KEY_RIGHTCTRL`.
    pub const RIGHTCTRL: u16 = 97;
    /// `KEY_RIGHTALT` (AltGr).
    pub const RIGHTALT: u16 = 100;
    /// `KEY_HOME`.
    pub const HOME: u16 = 102;
    /// `KEY_LEFTMETA` (the left Windows key).
    pub const LEFTMETA: u16 = 125;
    /// `KEY_RIGHTMETA` (the right Windows key).
    pub const RIGHTMETA: u16 = 126;
    /// `KEY_A`.
    pub const A: u16 = 30;
    /// `BTN_LEFT`: the primary pointer button.
    pub const BTN_LEFT: u16 = 0x110;
    /// `BTN_RIGHT`: the secondary pointer button.
    pub const BTN_RIGHT: u16 = 0x111;
    /// `BTN_MIDDLE`: the middle pointer button.
    pub const BTN_MIDDLE: u16 = 0x112;
    /// `BTN_TOUCH`: a touch screen or pad touched.
    pub const BTN_TOUCH: u16 = 0x14a;
}

/// The XT scancode (bit 7 = 0xE0 prefix) of an evdev key, if it has one.
pub fn qnum(evdev: u16) -> Option<u8> {
    let q = match evdev {
        1..=83 => evdev as u8,
        86 => 0x56,                                // 102ND
        87 => 0x57,                                // F11
        88 => 0x58,                                // F12
        89 => 0x73,                                // RO
        92 => 0x79,                                // HENKAN
        93 => 0x70,                                // KATAKANAHIRAGANA
        94 => 0x7b,                                // MUHENKAN
        96 => 0x9c,                                // KPENTER
        97 => 0x9d,                                // RIGHTCTRL
        98 => 0xb5,                                // KPSLASH
        99 => 0xb7,                                // SYSRQ
        100 => 0xb8,                               // RIGHTALT
        102 => 0xc7,                               // HOME
        103 => 0xc8,                               // UP
        104 => 0xc9,                               // PAGEUP
        105 => 0xcb,                               // LEFT
        106 => 0xcd,                               // RIGHT
        107 => 0xcf,                               // END
        108 => 0xd0,                               // DOWN
        109 => 0xd1,                               // PAGEDOWN
        110 => 0xd2,                               // INSERT
        111 => 0xd3,                               // DELETE
        113 => 0xa0,                               // MUTE
        114 => 0xae,                               // VOLUMEDOWN
        115 => 0xb0,                               // VOLUMEUP
        116 => 0xde,                               // POWER
        117 => 0x59,                               // KPEQUAL
        119 => 0xc6,                               // PAUSE
        121 => 0x7e,                               // KPCOMMA
        122 => 0xf2,                               // HANGEUL
        123 => 0xf1,                               // HANJA
        124 => 0x7d,                               // YEN
        125 => 0xdb,                               // LEFTMETA
        126 => 0xdc,                               // RIGHTMETA
        127 => 0xdd,                               // COMPOSE
        142 => 0xdf,                               // SLEEP
        143 => 0xe3,                               // WAKEUP
        183..=185 => (0x5d + (evdev - 183)) as u8, // F13..F15
        _ => return None,
    };
    Some(q)
}

/// A US-layout keysym for servers without extended key events.
pub fn keysym(evdev: u16) -> Option<u32> {
    const ROW1: &[u8] = b"1234567890-=";
    const ROW2: &[u8] = b"qwertyuiop[]";
    const ROW3: &[u8] = b"asdfghjkl;'`";
    const ROW4: &[u8] = b"\\zxcvbnm,./";
    let k = match evdev {
        1 => 0xff1b,
        2..=13 => u32::from(ROW1[usize::from(evdev - 2)]),
        14 => 0xff08,
        15 => 0xff09,
        16..=27 => u32::from(ROW2[usize::from(evdev - 16)]),
        28 => 0xff0d,
        29 => 0xffe3,
        30..=41 => u32::from(ROW3[usize::from(evdev - 30)]),
        42 => 0xffe1,
        43..=53 => u32::from(ROW4[usize::from(evdev - 43)]),
        54 => 0xffe2,
        55 => 0xffaa,
        56 => 0xffe9,
        57 => 0x20,
        58 => 0xffe5,
        59..=68 => 0xffbe + u32::from(evdev - 59), // F1..F10
        87 => 0xffc8,
        88 => 0xffc9,
        96 => 0xff8d,
        97 => 0xffe4,
        100 => 0xffea,
        102 => 0xff50,
        103 => 0xff52,
        104 => 0xff55,
        105 => 0xff51,
        106 => 0xff53,
        107 => 0xff57,
        108 => 0xff54,
        109 => 0xff56,
        110 => 0xff63,
        111 => 0xffff,
        125 => 0xffeb,
        126 => 0xffec,
        _ => return None,
    };
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scancodes_of_well_known_keys() {
        // Set-1 scancodes from the IBM PC/AT reference.
        assert_eq!(qnum(code::ESC), Some(0x01));
        assert_eq!(qnum(code::A), Some(0x1e));
        assert_eq!(qnum(28), Some(0x1c)); // Enter
        assert_eq!(qnum(code::F1), Some(0x3b));
        assert_eq!(qnum(code::F12), Some(0x58));
        assert_eq!(qnum(code::RIGHTCTRL), Some(0x9d)); // E0 1D
        assert_eq!(qnum(code::RIGHTALT), Some(0xb8)); // E0 38
        assert_eq!(qnum(code::HOME), Some(0xc7)); // E0 47
        assert_eq!(qnum(111), Some(0xd3)); // Delete: E0 53
        assert_eq!(qnum(code::LEFTMETA), Some(0xdb)); // E0 5B
        assert_eq!(qnum(84), None);
        assert_eq!(qnum(code::BTN_LEFT), None);
    }

    #[test]
    fn scancodes_are_unique() {
        let mut seen = std::collections::HashMap::new();
        for c in 0..=255u16 {
            if let Some(q) = qnum(c) {
                assert!(q != 0, "key {c} maps to 0");
                if let Some(prev) = seen.insert(q, c) {
                    panic!("keys {prev} and {c} both map to {q:#x}");
                }
            }
        }
        assert!(seen.len() > 110);
    }

    #[test]
    fn keysyms_for_the_fallback() {
        assert_eq!(keysym(code::A), Some(u32::from(b'a')));
        assert_eq!(keysym(2), Some(u32::from(b'1')));
        assert_eq!(keysym(44), Some(u32::from(b'z')));
        assert_eq!(keysym(28), Some(0xff0d));
        assert_eq!(keysym(68), Some(0xffc7)); // F10
        assert_eq!(keysym(200), None);
    }
}

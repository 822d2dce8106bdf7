//! Keys as the state machine sees them: a small closed set, independent of
//! the terminal library, so tests feed keys without a terminal.

/// One key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Arrow up: the previous item.
    Up,
    /// Arrow down: the next item.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Enter: choose or confirm.
    Enter,
    /// Escape: back to the previous screen.
    Esc,
    /// Backspace: delete the character before the cursor.
    Backspace,
    /// Tab: the next field or button.
    Tab,
    /// Page up: scroll up a page.
    PageUp,
    /// Page down: scroll down a page.
    PageDown,
    /// F1: the help screen.
    F1,
    /// Ctrl-C: leave (refused while the disk is being written).
    Interrupt,
    /// A printable character.
    Char(char),
}

impl Key {
    /// Keys for a string typed character by character (tests).
    pub fn text(s: &str) -> Vec<Key> {
        s.chars().map(Key::Char).collect()
    }
}

/// Translates a crossterm key event (presses only).
pub fn from_crossterm(ev: &crossterm::event::KeyEvent) -> Option<Key> {
    use crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    if ev.modifiers.contains(KeyModifiers::CONTROL) {
        return match ev.code {
            KeyCode::Char('c') | KeyCode::Char('C') => Some(Key::Interrupt),
            // Some serial terminals send ^H for Backspace.
            KeyCode::Char('h') => Some(Key::Backspace),
            _ => None,
        };
    }
    Some(match ev.code {
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Tab => Key::Tab,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::F(1) => Key::F1,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}

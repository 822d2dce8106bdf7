//! Bodies of the agent-bridge endpoints (docs/agent-bridge.md): input
//! injection, console writes and commands run through the guest agent.
//!
//! Like every request type, these reject unknown fields; their limits
//! ([`MAX_TEXT_CHARS`], [`MAX_CONSOLE_BYTES`], [`MAX_EXEC_SECS`], …) are
//! checked by the daemon and listed in `docs/api/openapi.yaml`.

use serde::{Deserialize, Serialize};

/// At most this many characters of text per request (each is typed as a
/// key press and release, paced for the guest).
pub const MAX_TEXT_CHARS: usize = 1000;
/// At most this many actions per input request.
pub const MAX_ACTIONS: usize = 100;
/// At most this many bytes per console write.
pub const MAX_CONSOLE_BYTES: usize = 64 * 1024;
/// Time limit of an exec when the request names none.
pub const DEFAULT_EXEC_SECS: u64 = 30;
/// The longest time limit an exec may ask for.
pub const MAX_EXEC_SECS: u64 = 300;
/// Kept of stdout and of stderr each, at most.
pub const MAX_EXEC_OUTPUT: usize = 64 * 1024;

wire_enum! {
    /// A pointer button.
    #[derive(Default)]
    pub enum Button {
        /// The primary button (the default).
        #[default]
        Left = "left",
        /// The middle button (the wheel's press).
        Middle = "middle",
        /// The secondary button (context menus).
        Right = "right",
    }
}

/// One thing to do with the VM's keyboard or pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputAction {
    /// A key or key combination, QEMU key names joined by `+`
    /// (`ctrl+alt+delete`, `shift+tab`, `ret`): pressed in order,
    /// released in reverse.
    Key {
        /// The key names, joined by `+`.
        keys: String,
    },
    /// Text typed with the VM's keyboard layout (`\n` is Return).
    Text {
        /// The text to type.
        text: String,
    },
    /// Moves the pointer to pixel (x, y) of the screen as a screenshot
    /// shows it (0, 0 is the top left).
    Move {
        /// Pixels from the screen's left edge.
        x: u32,
        /// Pixels from the screen's top edge.
        y: u32,
    },
    /// Moves the pointer to (x, y), then presses and releases `button`.
    Click {
        /// Pixels from the screen's left edge.
        x: u32,
        /// Pixels from the screen's top edge.
        y: u32,
        /// The button (left when the request names none).
        #[serde(default)]
        button: Button,
    },
}

/// `POST /v1/vms/{name}/input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    /// What to do, in order.
    pub actions: Vec<InputAction>,
    /// Send the input although the VM is not presented (nobody sees it).
    /// Without this, input for a hidden VM is refused (409).
    #[serde(default)]
    pub hidden: bool,
}

/// Reply of `POST /v1/vms/{name}/input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputReply {
    /// Key presses, releases, moves and button changes sent.
    pub events: usize,
    /// The screen size pointer coordinates were mapped from (only when
    /// the request moved the pointer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<[u32; 2]>,
}

/// `POST /v1/vms/{name}/console`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleWriteRequest {
    /// Written to the serial console as UTF-8, as is (a line needs its
    /// own `\n` or `\r`).
    pub text: String,
}

/// Reply of `POST /v1/vms/{name}/console`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleWriteReply {
    /// How many bytes were written.
    pub bytes: usize,
}

/// `POST /v1/vms/{name}/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program, as the guest finds it (an absolute path is surest).
    pub path: String,
    /// The program's arguments (without its name).
    #[serde(default)]
    pub args: Vec<String>,
    /// Standard input for the program (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Seconds to wait for the program (default [`DEFAULT_EXEC_SECS`],
    /// at most [`MAX_EXEC_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Reply of `POST /v1/vms/{name}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReply {
    /// The program's process id in the guest.
    pub pid: i64,
    /// True when the time limit passed before the program ended; it keeps
    /// running in the guest and there is no output.
    pub timed_out: bool,
    /// The program's exit code, when it exited (no code when a signal ended it
    /// or the time ran out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the program (Linux guests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Output as UTF-8 (invalid bytes replaced), at most
    /// [`MAX_EXEC_OUTPUT`] bytes each.
    pub stdout: String,
    /// Error output as UTF-8 (invalid bytes replaced), at most
    /// [`MAX_EXEC_OUTPUT`] bytes.
    pub stderr: String,
    /// True when stdout was cut at [`MAX_EXEC_OUTPUT`] bytes.
    pub stdout_truncated: bool,
    /// True when stderr was cut at [`MAX_EXEC_OUTPUT`] bytes.
    pub stderr_truncated: bool,
}

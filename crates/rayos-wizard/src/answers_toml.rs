//! Writing [`Answers`] back as an answer file (`--save-answers`), in the
//! format `rayos_install::answers` parses (docs/answer-file.md), so an
//! install made with the wizard can be repeated unattended.
//!
//! The file is written by the engine ([`Answers::to_toml`], next to the
//! parser, with the `toml` crate); this module keeps the wizard's names.

use rayos_install::answers::{Answers, human_size};
use rayos_state::Networking;

/// The answer file for `a` (serialized next to its parser,
/// [`Answers::to_toml`]). `comment` lines are written first, as `#`
/// comments (what the file cannot express, who wrote it).
pub fn to_toml(a: &Answers, comment: &[String]) -> String {
    a.to_toml(comment)
}

/// The answer file's word for a networking setting (`off`, `on`,
/// `provisioning_only`).
pub fn networking(n: Networking) -> &'static str {
    match n {
        Networking::Off => "off",
        Networking::On => "on",
        Networking::ProvisioningOnly => "provisioning_only",
    }
}

/// `human_size` re-exported for the screens.
pub fn human(b: u64) -> String {
    human_size(b)
}

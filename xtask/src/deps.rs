//! System packages: `scripts/install-deps.sh` is the one list.

use std::process::Command;

pub fn ensure() -> anyhow::Result<()> {
    crate::run_cmd(Command::new("bash").arg("scripts/install-deps.sh"))
}

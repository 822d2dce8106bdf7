//! Running the external tools the media builders drive (mkfs.fat, mtools,
//! xorriso, sgdisk, fsck.fat), with errors that name the tool, its exit
//! status and the package to install.

use std::io;
use std::process::{Command, Output};

/// Why an external tool did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool could not be started (not installed).
    #[error("cannot run {tool} (install the Debian package {package}: scripts/install-deps.sh)")]
    Spawn {
        /// The tool.
        tool: String,
        /// The Debian package that provides it.
        package: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The tool exited with an error.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command, package: &'static str) -> Result<Output, ToolError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: tool.clone(),
            package,
            source,
        })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(ToolError::Failed {
            tool,
            status: out.status,
            stderr,
        });
    }
    Ok(out)
}

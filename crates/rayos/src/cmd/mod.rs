//! One module per subcommand. Each has `Args` (clap) and
//! `run(Args) -> anyhow::Result<ExitCode>`.

pub mod console;
pub mod daemon;
pub mod disks;
pub mod init;
pub mod install;
pub mod logs;
pub mod mcp;
pub mod media;
pub mod net;
pub mod policy;
pub mod present;
pub mod recovery;
pub mod shutdown;
pub mod status;
pub mod update;
pub mod vm;
pub mod vm_agent;
pub mod vm_console;
pub mod wizard;

/// Exit codes scripts may rely on (see main.rs).
#[allow(dead_code)] // used as the subcommands are built
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
}

/// An error that wants a specific exit code. Put it anywhere in an
/// `anyhow` chain (`Err(Exit::new(2, "…"))?` or `.context(Exit::…)`).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    #[allow(dead_code)]
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Refuses a `--sector-size` other than 512 or 4096 (`rayos install`,
/// `rayos wizard`).
pub fn check_sector_size(sector_size: Option<u32>) -> Result<(), Exit> {
    match sector_size {
        Some(ss) if ss != 512 && ss != 4096 => Err(Exit::new(
            exit::BAD_INPUT,
            format!("--sector-size {ss}: use 512 or 4096"),
        )),
        _ => Ok(()),
    }
}

/// Refuses a target disk that does not exist, pointing at `rayos disks`.
pub fn check_disk_exists(disk: &std::path::Path) -> Result<(), Exit> {
    if disk.exists() {
        return Ok(());
    }
    Err(Exit::new(
        exit::NOT_FOUND,
        format!(
            "{} does not exist: `rayos disks` lists the disks",
            disk.display()
        ),
    ))
}

/// The exit code for an error: the first [`Exit`] in its chain (or the
/// outermost context, which the chain does not show as an `Exit`), else 1.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Exit>()
        .or_else(|| e.chain().find_map(|c| c.downcast_ref::<Exit>()))
        .map(|x| x.code)
        .unwrap_or(exit::FAILED)
}

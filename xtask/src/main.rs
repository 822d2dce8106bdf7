//! `cargo xtask`: the one developer entry point for build, test, media,
//! end-to-end tests and benchmarks. Every subcommand lives in its own module.

mod bench;
mod bundle;
mod demo;
mod deps;
mod e2e;
mod e2e_debian;
mod e2e_net;
mod e2e_present;
mod e2e_update;
mod e2e_windows;
mod fuzz;
mod installed;
mod linux_vm;
mod media;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install (as root) or list the system packages RayOS needs.
    Deps,
    /// Everything CI runs: deps, fmt check, clippy, all tests.
    Test(test::Args),
    /// RayOS's main job end to end (see README).
    Demo(demo::Args),
    /// Build the UKI, installer ISO and USB image into build/.
    Media(media::Args),
    /// Build only the Debian VM image (build/linux-vm.qcow2; docs/linux-vm.md).
    LinuxVm(linux_vm::Args),
    /// End-to-end tests: boot the media under QEMU and drive them.
    E2e(e2e::Args),
    /// Benchmarks, reported as ratios against a baseline measured in the same run.
    Bench(bench::Args),
    /// Run the fuzz targets of the parsers of untrusted bytes (libFuzzer).
    Fuzz(fuzz::Args),
    /// A signed update bundle from a built UKI (docs/update.md).
    Bundle(bundle::Args),
    /// Update, blessing and rollback end to end under QEMU (docs/update.md).
    E2eUpdate(e2e_update::Args),
    /// Presenter and input routing end to end on an installed RayOS with a
    /// display (docs/present.md).
    E2ePresent(e2e_present::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Deps => deps::ensure(),
        Command::Test(a) => test::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Media(a) => media::run(a),
        Command::LinuxVm(a) => linux_vm::run(a),
        Command::E2e(a) => e2e::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Fuzz(a) => fuzz::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::E2eUpdate(a) => e2e_update::run(a),
        Command::E2ePresent(a) => e2e_present::run(a),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Runs a command from the workspace root, failing with its name on a non-zero exit.
pub fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    anyhow::ensure!(status.success(), "{:?} failed: {status}", cmd);
    Ok(())
}

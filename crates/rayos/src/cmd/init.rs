//! `rayos init`: PID 1 of the RayOS image (crates/rayos-init). The image's
//! `/init` is the `rayos` binary itself; `main` sends a process started as
//! `init` here, since the kernel passes no subcommand.

use std::process::ExitCode;

#[derive(clap::Args, Default)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    if std::process::id() != 1 {
        return Err(super::Exit::new(
            super::exit::BAD_INPUT,
            "rayos init runs only as PID 1 of the RayOS image (it mounts filesystems and powers the machine off); \
             to operate a running RayOS use `rayos status`, `rayos shutdown` or `rayos console`",
        )
        .into());
    }
    rayos_init::boot::main()
}

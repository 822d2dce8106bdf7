//! `rayos init`. (Being built; see the issue that owns it.)

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(super::Exit::new(super::exit::FAILED, "rayos init is not built yet").into())
}

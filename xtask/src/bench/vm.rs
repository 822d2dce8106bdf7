//! `cargo xtask bench vm`. (Being built.)

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask bench vm is not built yet")
}

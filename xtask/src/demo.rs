//! `cargo xtask demo`. (Being built.)

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask demo is not built yet")
}

//! `cargo xtask bench install`. (Being built.)

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask bench install is not built yet")
}

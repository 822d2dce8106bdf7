//! `cargo xtask bench <what>`: each benchmark measures RayOS against a
//! baseline in the same run and reports ratios, never absolute times alone
//! (these machines are noisy). One module per benchmark.

mod boot;
mod install;
mod present;
mod update;
mod vm;
mod vm_debian;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Kernel start to RAYOS_READY vs a busybox init; media sizes; rayosd memory.
    Boot(boot::Args),
    /// Installer wall time against `dd` of the same bytes.
    Install(install::Args),
    /// Resume vs cold boot, save/restore vs dd, daemon RSS.
    Vm(vm::Args),
    /// Applying an update bundle against `cp` + `sync` of the same bytes.
    Update(update::Args),
    /// Presenter: present→first frame and key→guest vs a direct VNC client; CPU while hidden.
    Present(present::Args),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Boot(a) => boot::run(a),
        What::Install(a) => install::run(a),
        What::Vm(a) => vm::run(a),
        What::Update(a) => update::run(a),
        What::Present(a) => present::run(a),
    }
}

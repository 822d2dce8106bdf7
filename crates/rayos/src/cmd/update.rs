//! `rayos update verify|apply|status|rollback`: signed A/B updates of the
//! installed system (logic in `rayos-update`; format in docs/update.md).
//!
//! Without `--system-dir`, the install's system partition is found by its
//! GPT type and mounted at `/run/rayos/system-update` for the command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rayos_base::efivar::EFIVARS_DIR;
use rayos_base::error::chain as error_chain;
use rayos_base::paths::{BUNDLE_SOURCE, SYSTEM_UPDATE};
use rayos_update::bundle::{Bundle, BundleError};
use rayos_update::{ApplyError, ApplyOptions, PublicKey, entries};

use super::{Exit, exit};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Check a bundle (signature, manifest, hashes) and say what it holds.
    Verify(VerifyArgs),
    /// Install a bundle beside the running version; it boots next.
    Apply(ApplyArgs),
    /// Running version, installed versions, default, tries left, last result.
    Status(StatusArgs),
    /// Make the previous good version the default at the next boot.
    Rollback(SystemArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The bundle file; when no such file exists, `PATH` or `LABEL:PATH` on
    /// a FAT/ISO volume (a USB stick), mounted read-only for the command.
    file: PathBuf,
    /// Check against this public key instead of the keys built into RayOS.
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(clap::Args, Default)]
struct SystemArgs {
    /// The mounted system partition (default: find and mount this
    /// machine's).
    #[arg(long)]
    system_dir: Option<PathBuf>,
    /// The running version (default: from the loader's EFI variables, else
    /// this binary's version).
    #[arg(long)]
    running_version: Option<String>,
}

#[derive(clap::Args)]
struct ApplyArgs {
    /// The bundle file; when no such file exists, `PATH` or `LABEL:PATH` on
    /// a FAT/ISO volume (a USB stick), mounted read-only for the command.
    file: PathBuf,
    #[command(flatten)]
    system: SystemArgs,
    /// Install an older version than the running one.
    #[arg(long)]
    allow_downgrade: bool,
    /// The data volume, for the schema check (default /var/rayos when it
    /// has a schema file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Trust this public key instead of the built-in ones. Debug builds
    /// only (tests); an installed RayOS trusts only the keys it was built
    /// with.
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    system: SystemArgs,
    /// The ESP, to read loader.conf's `default` (default: `rayos-*`, what
    /// the installer writes).
    #[arg(long)]
    esp_dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Verify(a) => verify(a),
        What::Apply(a) => apply(a),
        What::Status(a) => status(a),
        What::Rollback(a) => rollback(a),
    }
}

/// The system partition for one command: a given directory, or this
/// machine's, mounted until dropped.
enum SystemDir {
    Given(PathBuf),
    Mounted(rayos_init::sysmount::SystemMount),
}

impl SystemDir {
    fn open(given: &Option<PathBuf>) -> anyhow::Result<SystemDir> {
        if let Some(d) = given {
            anyhow::ensure!(d.is_dir(), "{} is not a directory", d.display());
            return Ok(SystemDir::Given(d.clone()));
        }
        let install = rayos_init::sysmount::find().map_err(|e| {
            Exit::new(
                exit::NOT_FOUND,
                format!(
                    "cannot find this machine's RayOS system partition ({}); pass --system-dir DIR",
                    error_chain(&e)
                ),
            )
        })?;
        let m = rayos_init::sysmount::SystemMount::mount(&install, Path::new(SYSTEM_UPDATE))
            .context("mounting the system partition (run as root)")?;
        Ok(SystemDir::Mounted(m))
    }

    fn path(&self) -> &Path {
        match self {
            SystemDir::Given(p) => p,
            SystemDir::Mounted(m) => m.path(),
        }
    }
}

/// The running version and where it came from.
fn running(a: &SystemArgs) -> (Option<String>, String) {
    if let Some(v) = &a.running_version {
        return (Some(v.clone()), "--running-version".into());
    }
    if let Some(f) = rayos_init::bless::running_uki(Path::new(EFIVARS_DIR))
        && let Some(v) = entries::version_of_file(&f)
    {
        return (Some(v), format!("booted from {f}"));
    }
    (
        Some(env!("CARGO_PKG_VERSION").to_string()),
        "this rayos binary".into(),
    )
}

fn bundle_refusal(e: BundleError) -> anyhow::Error {
    let code = match e {
        BundleError::Read(..) => exit::NOT_FOUND,
        _ => exit::BAD_INPUT,
    };
    Exit::new(code, format!("bundle refused: {}", error_chain(&e))).into()
}

fn trusted_keys(key: &Option<PathBuf>, allow_override: bool) -> anyhow::Result<Vec<PublicKey>> {
    match key {
        Some(p) if allow_override => Ok(vec![PublicKey::read(p)?]),
        Some(_) => Err(Exit::new(
            exit::BAD_INPUT,
            "--key is honoured only by debug builds: an installed RayOS applies only bundles signed with a \
             key it was built with (check a bundle against another key with `rayos update verify --key`)",
        )
        .into()),
        None => Ok(rayos_update::keys::built_in()),
    }
}

/// The bundle's path: the file itself, or found on a FAT/ISO volume (kept
/// mounted while the returned guard lives).
fn locate(file: &Path) -> anyhow::Result<(PathBuf, Option<rayos_init::sysmount::VolumeMount>)> {
    if file.exists() {
        return Ok((file.to_path_buf(), None));
    }
    let spec = file.to_string_lossy();
    // Volumes are searched only on RayOS itself or for an explicit
    // LABEL:PATH, so a typo on a developer machine mounts nothing.
    let on_rayos = Path::new(rayos_base::paths::INIT_STATUS).exists();
    let found = if on_rayos
        || rayos_init::cmdline::AnswersRef::parse(&spec).is_some_and(|r| r.label.is_some())
    {
        rayos_init::sysmount::file_on_volumes(&spec, Path::new(BUNDLE_SOURCE))
    } else {
        None
    };
    match found {
        Some((m, p)) => {
            println!("found {spec} on {}", m.device.display());
            Ok((p, Some(m)))
        }
        None => Err(Exit::new(
            exit::NOT_FOUND,
            format!(
                "{spec}: no such file here or on any FAT/ISO volume (give a path, or LABEL:PATH for a USB stick)"
            ),
        )
        .into()),
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let trusted = trusted_keys(&a.key, true)?;
    let (file, _volume) = locate(&a.file)?;
    let b = Bundle::open(&file, &trusted).map_err(bundle_refusal)?;
    b.verify_payloads().map_err(bundle_refusal)?;
    print!("{}", b.describe());
    println!(
        "{}: OK (signature, manifest and payload hashes check out)",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let trusted = trusted_keys(&a.key, cfg!(debug_assertions))?;
    let (running, source) = running(&a.system);
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(rayos_base::paths::DATA));
    let layout = rayos_state::DataLayout::new(&data_dir);
    let data_schema = if a.data_dir.is_some() || layout.schema_version().exists() {
        Some(rayos_update::schema::read(&layout).with_context(|| {
            format!("reading the data volume's schema in {}", data_dir.display())
        })?)
    } else {
        None
    };
    let (file, _volume) = locate(&a.file)?;
    let sys = SystemDir::open(&a.system.system_dir)?;
    println!(
        "running RayOS {} ({source}); system partition {}",
        running.as_deref().unwrap_or("unknown"),
        sys.path().display()
    );
    let opts = ApplyOptions {
        trusted,
        running,
        allow_downgrade: a.allow_downgrade,
        data_schema,
        progress: Some(|m| {
            use std::io::Write as _;
            println!("{m} ...");
            let _ = std::io::stdout().flush();
        }),
    };
    let done = match rayos_update::apply(&file, sys.path(), &opts) {
        Ok(d) => d,
        Err(ApplyError::Bundle(e)) => return Err(bundle_refusal(e)),
        Err(
            e @ (ApplyError::Downgrade { .. }
            | ApplyError::AlreadyRunning(_)
            | ApplyError::Layout { .. }
            | ApplyError::DataSchema { .. }
            | ApplyError::NoSpace { .. }),
        ) => {
            return Err(Exit::new(
                exit::BAD_INPUT,
                format!("update refused, nothing written: {}", error_chain(&e)),
            )
            .into());
        }
        Err(e @ ApplyError::NotInstalled(_)) => {
            return Err(Exit::new(exit::NOT_FOUND, error_chain(&e)).into());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context("the update failed; the running version is untouched"));
        }
    };
    for p in &done.pruned {
        println!("removed old version {p}");
    }
    for v in &done.demoted {
        println!("demoted {v} (0 tries left: booted only as a last resort)");
    }
    println!("installed RayOS {} as {}", done.version, done.file);
    if let Some(r) = &done.recovery {
        println!("recovery entry updated: {r}");
    }
    match (&done.next_default, &done.fallback) {
        (Some(n), fallback) if n == &done.file => {
            println!(
                "At the next boot systemd-boot starts {n} (3 tries). RayOS blesses it once its VM supervisor is \
                 healthy; if it fails 3 times, the machine goes back to {} by itself.",
                fallback.as_deref().unwrap_or("(no other version!)")
            );
        }
        (Some(n), _) => {
            println!("Note: the boot menu's default stays {n} (see `rayos update status`).")
        }
        (None, _) => println!("Note: no default boot entry found; check `rayos update status`."),
    }
    drop(sys);
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (running, source) = running(&a.system);
    let pattern = a
        .esp_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("loader/loader.conf")).ok())
        .and_then(|t| entries::loader_conf_default(&t))
        .unwrap_or_else(|| entries::DEFAULT_PATTERN.to_string());
    let sys = SystemDir::open(&a.system.system_dir)?;
    let st = rayos_update::status::status(sys.path(), running.as_deref(), &source, &pattern)
        .with_context(|| format!("reading {}", sys.path().display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn rollback(a: SystemArgs) -> anyhow::Result<ExitCode> {
    let (running, source) = running(&a);
    let sys = SystemDir::open(&a.system_dir)?;
    let r = match rayos_update::rollback::rollback(sys.path(), running.as_deref()) {
        Ok(r) => r,
        Err(e @ rayos_update::rollback::RollbackError::NoPrevious(_)) => {
            return Err(Exit::new(exit::NOT_FOUND, error_chain(&e)).into());
        }
        Err(e) => return Err(e.into()),
    };
    for (from, to) in &r.demoted {
        println!("demoted {from} -> {to}");
    }
    println!(
        "running {} ({source}); at the next boot systemd-boot starts {}. Reboot when ready (`rayos reboot`).",
        running.as_deref().unwrap_or("unknown"),
        r.target
    );
    Ok(ExitCode::SUCCESS)
}

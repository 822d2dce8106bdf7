//! `cargo xtask bundle`: a signed update bundle from a built UKI
//! (`build/rayos-update-<version>.bundle`; format in docs/update.md).
//!
//! Keys: `--key FILE` signs with that secret key; without it the
//! development key `build/keys/dev.key` is used, generated (with
//! `dev.pub`) on first use. `build/` is gitignored, so the dev key never
//! reaches the repository. Release bundles are signed with the offline
//! release key (`--key /path/to/release.key`), whose public half is
//! `crates/rayos-update/keys/release.pub`.
//!
//! Version: the UKI's `.osrel` `VERSION_ID` unless `--version` says
//! otherwise; then the UKI is re-assembled (same stub, kernel, initramfs
//! and command line) with a new `.osrel`, because systemd-boot orders
//! entries by `VERSION_ID` and the file name must agree with it.
//!
//! `--broken` builds a system that never comes up, for the rollback test:
//! the command line gets `rdinit=/rayos-broken-for-tests panic=5`, so the
//! kernel finds no init, panics and reboots after 5 s — three times, until
//! systemd-boot falls back. No code path of a normal RayOS changes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayos_image::uki;
use rayos_update::bundle::{self, BuildSpec, PayloadName, SchemaRange};
use rayos_update::keys::SecretKey;

#[derive(clap::Args)]
pub struct Args {
    /// Secret key to sign with (default: build/keys/dev.key, generated on first use).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The installed-mode UKI (default: build/rayos.efi from `cargo xtask media`).
    #[arg(long)]
    pub uki: Option<PathBuf>,
    /// Also ship this recovery-mode UKI (e.g. build/rayos-recovery.efi).
    #[arg(long)]
    pub recovery_uki: Option<PathBuf>,
    /// The RayOS version of the bundle (default: the UKI's VERSION_ID).
    #[arg(long)]
    pub version: Option<String>,
    /// A system that never comes up (kernel finds no init): for the rollback test.
    #[arg(long)]
    pub broken: bool,
    /// Leave the bundle unsigned (only to test that it is refused).
    #[arg(long)]
    pub unsigned: bool,
    /// Output directory.
    #[arg(long, default_value = "build")]
    pub out: PathBuf,
}

/// Install manifest schema the bundles are for
/// (`rayos_install::manifest::MANIFEST_SCHEMA_VERSION`).
const INSTALL_LAYOUT: u32 = 1;
const BROKEN_CMDLINE: &str = "rdinit=/rayos-broken-for-tests panic=5";

pub fn run(args: Args) -> Result<()> {
    let root = crate::root();
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let out_dir = abs(&args.out);
    let uki_path = args
        .uki
        .as_deref()
        .map(abs)
        .unwrap_or_else(|| root.join("build/rayos.efi"));
    anyhow::ensure!(
        uki_path.is_file(),
        "{} does not exist: build it with `cargo xtask media` or pass --uki FILE",
        uki_path.display()
    );
    let key = if args.unsigned {
        None
    } else {
        Some(load_or_make_key(args.key.as_deref().map(abs), &root)?)
    };
    let osrel_version = osrel_version(&uki_path)?;
    let version = args
        .version
        .clone()
        .or(osrel_version.clone())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    if let Err(why) = rayos_update::version::validate(&version) {
        bail!("--version {version:?}: {why}");
    }
    let work = out_dir.join("bundle-work");
    fs::create_dir_all(&work)?;
    let restamp = |src: &Path, what: &str, broken: bool| -> Result<PathBuf> {
        if osrel_version.as_deref() == Some(version.as_str()) && !broken {
            return Ok(src.to_path_buf());
        }
        let out = work.join(format!("{what}-{version}.efi"));
        restamp_uki(src, &out, &version, broken, &work)?;
        Ok(out)
    };
    let uki = restamp(&uki_path, "rayos", args.broken)?;
    let recovery = match &args.recovery_uki {
        Some(r) => Some(restamp(&abs(r), "rayos-recovery", false)?),
        None => None,
    };
    let mut payloads = vec![(PayloadName::Uki, uki.as_path())];
    if let Some(r) = &recovery {
        payloads.push((PayloadName::RecoveryUki, r.as_path()));
    }
    let name = format!(
        "rayos-update-{version}{}{}.bundle",
        if args.broken { "-broken" } else { "" },
        if args.unsigned { "-unsigned" } else { "" }
    );
    let out = out_dir.join(name);
    let spec = BuildSpec {
        version: version.clone(),
        architecture: bundle::ARCH.to_string(),
        install_layout: SchemaRange {
            min: INSTALL_LAYOUT,
            max: INSTALL_LAYOUT,
        },
        data_schema: SchemaRange {
            min: 0,
            max: rayos_state::DATA_SCHEMA_VERSION,
        },
        created: rayos_update::state::now_rfc3339(),
        payloads,
        key: key.as_ref(),
    };
    let manifest =
        bundle::build(&spec, &out).with_context(|| format!("writing {}", out.display()))?;
    let size = fs::metadata(&out)?.len();
    let uki_size = fs::metadata(&uki)?.len();
    println!("{}", out.display());
    println!(
        "  RayOS {version}{} for {}, {} payload(s), {} bytes ({:.1} MiB; UKI {:.1} MiB, overhead {} bytes)",
        if args.broken {
            " (broken on purpose)"
        } else {
            ""
        },
        manifest.architecture,
        manifest.payloads.len(),
        size,
        size as f64 / (1 << 20) as f64,
        uki_size as f64 / (1 << 20) as f64,
        size.saturating_sub(manifest.payload_len())
    );
    match &key {
        Some(k) => println!("  signed by key {}", k.public("").fingerprint()),
        None => println!("  UNSIGNED (refused by every RayOS)"),
    }
    Ok(())
}

pub fn load_or_make_key(given: Option<PathBuf>, root: &Path) -> Result<SecretKey> {
    if let Some(p) = given {
        return SecretKey::read(&p)
            .with_context(|| format!("reading the signing key {}", p.display()));
    }
    let (k, p) = (
        root.join("build/keys/dev.key"),
        root.join("build/keys/dev.pub"),
    );
    if k.is_file() {
        return Ok(SecretKey::read(&k)?);
    }
    let key = SecretKey::generate()?;
    key.write_pair(&k, &p)?;
    println!(
        "generated the development key {} (public: {})",
        k.display(),
        p.display()
    );
    Ok(key)
}

/// `VERSION_ID` of a UKI's `.osrel`.
fn osrel_version(uki_path: &Path) -> Result<Option<String>> {
    let osrel = uki::read_section(uki_path, ".osrel")
        .with_context(|| format!("reading {}", uki_path.display()))?;
    Ok(osrel.and_then(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_ID="))
            .map(|v| v.trim_matches('"').trim_end_matches('\0').to_string())
    }))
}

/// Re-assembles `src` with `.osrel` for `version` (and the broken command
/// line when asked), into `out`.
fn restamp_uki(src: &Path, out: &Path, version: &str, broken: bool, work: &Path) -> Result<()> {
    let section = |name: &str| -> Result<Vec<u8>> {
        uki::read_section(src, name)
            .with_context(|| format!("reading {}", src.display()))?
            .with_context(|| format!("{} has no {name} section", src.display()))
    };
    let kernel = work.join("kernel.bin");
    let initrd = work.join("initrd.bin");
    fs::write(&kernel, section(".linux")?)?;
    fs::write(&initrd, section(".initrd")?)?;
    let mut cmdline = String::from_utf8_lossy(&section(".cmdline")?)
        .trim_end_matches(['\0', '\n'])
        .to_string();
    if broken {
        cmdline.push(' ');
        cmdline.push_str(BROKEN_CMDLINE);
    }
    let uname = uki::read_section(src, ".uname")?.map(|b| {
        String::from_utf8_lossy(&b)
            .trim_end_matches(['\0', '\n'])
            .to_string()
    });
    uki::assemble(
        &rayos_image::UkiParts {
            stub: PathBuf::from(uki::DEBIAN_STUB),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline,
            osrel: uki::os_release(version),
            uname,
        },
        out,
    )
    .with_context(|| format!("assembling {}", out.display()))?;
    let _ = fs::remove_file(kernel);
    let _ = fs::remove_file(initrd);
    Ok(())
}

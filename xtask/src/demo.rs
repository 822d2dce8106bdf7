//! `cargo xtask demo`: RayOS's main job end to end, on a disk image.
//!
//! 1. system packages (`deps::ensure`), then `cargo build -p rayos`;
//! 2. a fresh sparse disk image `build/demo/disk.img` (8 GiB by default)
//!    and an answer file `build/demo/answers.toml`;
//! 3. `rayos install --dry-run` (the plan), then the real install with
//!    `--yes` (progress and markers on stderr);
//! 4. `rayos disks --disk build/demo/disk.img` and the seeded files read
//!    back from the image (mtools for FAT, debugfs for ext4) — no mount,
//!    no root needed for the image itself.
//!
//! The system image is `build/rayos.efi` when `cargo xtask media` built it,
//! else a placeholder file (the installer accepts any file for now).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::installed::AnswerFile;

#[derive(clap::Args)]
pub struct Args {
    /// Size of the demo disk image (bytes, or with K/M/G suffix).
    #[arg(long, default_value = "8G")]
    pub size: String,
    /// Logical sector size of the demo disk (512 or 4096).
    #[arg(long, default_value_t = 512)]
    pub sector_size: u32,
}

fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("--size {s}: not a size like 8G"))?;
    Ok(n * mult)
}

fn section(title: &str) {
    println!("\n==== {title}");
}

/// Runs `cmd` showing its command line; its output goes to the terminal.
fn show(cmd: &mut Command) -> Result<()> {
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("$ {}", line.join(" "));
    crate::run_cmd(cmd)
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .current_dir(crate::root())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(args: Args) -> Result<()> {
    crate::deps::ensure()?;
    let root = crate::root();
    section("building rayos");
    show(Command::new("cargo").args(["build", "-p", "rayos"]))?;
    let rayos = target_dir(&root).join("debug/rayos");

    let dir = root.join("build/demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let disk = dir.join("disk.img");
    let _ = std::fs::remove_file(&disk);
    let size = parse_size(&args.size)?;
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("cannot create {}", disk.display()))?;
    let answers = dir.join("answers.toml");
    let answers_text = AnswerFile {
        hostname: "rayos-demo",
        countdown: None,
        disk: None,
        spelled_out: true,
        test_guest: false,
    }
    .text();
    std::fs::write(&answers, &answers_text)?;
    let image = system_image(&root, &dir)?;
    section(&format!(
        "fresh sparse disk {} ({} GiB, {}-byte sectors), answers {}",
        rel(&root, &disk),
        size >> 30,
        args.sector_size,
        rel(&root, &answers)
    ));
    print!("{answers_text}");

    let common = |c: &mut Command| {
        c.arg("install")
            .arg("--target")
            .arg(&disk)
            .arg("--answers")
            .arg(&answers)
            .arg("--sector-size")
            .arg(args.sector_size.to_string());
    };
    section("the plan (rayos install --dry-run)");
    let mut c = Command::new(&rayos);
    common(&mut c);
    show(c.arg("--dry-run"))?;

    section("the install (rayos install --yes)");
    let mut c = Command::new(&rayos);
    common(&mut c);
    c.arg("--yes").arg("--system-image").arg(&image);
    // The recovery UKI `cargo xtask media` builds gives the recovery entry.
    let recovery = root.join("build/rayos-recovery.efi");
    if recovery.is_file() {
        c.arg("--recovery-image").arg(&recovery);
    }
    show(&mut c)?;

    section("what the disk holds now (rayos disks)");
    if let Err(e) = show(Command::new(&rayos).arg("disks").arg("--disk").arg(&disk)) {
        println!("(rayos disks failed: {e:#})");
    }

    section("seeded files, read back from the image");
    let report = rayos_disk::probe_image(&disk, Some(args.sector_size))?;
    let part = |t| {
        report
            .partitions
            .iter()
            .find(|p| p.type_guid == Some(t))
            .map(|p| p.start_bytes)
            .with_context(|| format!("no partition of type {t} on the demo disk"))
    };
    let esp = part(rayos_disk::types::ESP)?;
    let sys = part(rayos_disk::types::XBOOTLDR)?;
    let data = part(rayos_disk::types::RAYOS_DATA)?;
    let fat = |off: u64| format!("{}@@{off}", disk.display());
    println!("-- ESP:");
    print!(
        "{}",
        capture(
            Command::new("mdir")
                .args(["-/", "-b", "-i", &fat(esp), "::"])
                .env("MTOOLS_SKIP_CHECK", "1")
        )?
    );
    println!("-- ESP /loader/loader.conf:");
    print!(
        "{}",
        capture(
            Command::new("mtype")
                .args(["-i", &fat(esp), "::/loader/loader.conf"])
                .env("MTOOLS_SKIP_CHECK", "1")
        )?
    );
    println!("-- system partition:");
    print!(
        "{}",
        capture(
            Command::new("mdir")
                .args(["-/", "-b", "-i", &fat(sys), "::"])
                .env("MTOOLS_SKIP_CHECK", "1")
        )?
    );
    println!("-- system partition /rayos/install-manifest.json:");
    print!(
        "{}",
        capture(
            Command::new("mtype")
                .args(["-i", &fat(sys), "::/rayos/install-manifest.json"])
                .env("MTOOLS_SKIP_CHECK", "1")
        )?
    );
    let ext = format!("{}?offset={data}", disk.display());
    for req in [
        "ls -l /",
        "cat /machine.toml",
        "cat /policy/rayos-policy.toml",
        "cat /vm/registry.json",
    ] {
        println!("-- data volume: debugfs -R '{req}'");
        print!(
            "{}",
            capture(Command::new("debugfs").args(["-R", req, &ext]))?
        );
    }
    let used =
        std::fs::metadata(&disk).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)?;
    section(&format!(
        "done: RayOS installed on {} ({} MiB of the {} GiB image written)",
        rel(&root, &disk),
        used >> 20,
        size >> 30
    ));
    Ok(())
}

/// `build/rayos.efi` from `cargo xtask media`, or a placeholder.
fn system_image(root: &Path, dir: &Path) -> Result<PathBuf> {
    let built = root.join("build/rayos.efi");
    if built.is_file() {
        return Ok(built);
    }
    let p = dir.join("rayos-placeholder.efi");
    std::fs::write(
        &p,
        "RayOS system image placeholder: `cargo xtask media` builds the real UKI (build/rayos.efi)\n",
    )?;
    Ok(p)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `target/`).
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

//! `cargo xtask bench install`: the installer's wall time against `dd`
//! writing the same number of bytes to the same filesystem, in one run.
//!
//! Per repetition: a fresh sparse image in `build/bench/`, a timed
//! `rayos install --yes` (release build) onto it, then the bytes the install
//! really wrote are measured as the image's allocated blocks (`stat`
//! st_blocks × 512), and a timed `dd if=/dev/zero bs=1M conv=fsync` writes
//! that many bytes to a file beside it. The installer fsyncs its target, so
//! both sides end on stable storage. Reports the medians, min–max of each
//! side and the ratio of the medians (install / dd): the installer's
//! overhead over the raw write of its data. Figures: docs/install.md,
//! "Performance".
//!
//! With the Debian VM image (`--linux-image`, by default the one the media
//! recipe has cached) the install is the one a medium with
//! `rayos/linux-vm.qcow2.zst` does: a `[linux]` user in the answers, the
//! image decompressed into the Linux VM's thin qcow2 on the data volume —
//! most of the bytes a person waits for. Its staging directory is in RAM
//! (`--staging-dir`, default `/dev/shm`), as on the medium, whose `/tmp`
//! is a tmpfs. Each rep also times `zstd -d` of the image to /dev/null
//! alone: work dd does not do, and the floor of any install that ships the
//! image compressed. The per-step times the installer prints are collected
//! and their medians printed, to see which step the time goes to.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Size of the sparse target image in GiB.
    #[arg(long, default_value_t = 16)]
    pub disk_gib: u64,
    /// Use this system image instead of build/rayos.efi (or a 64 MiB
    /// pseudo-random stand-in when that is not built).
    #[arg(long)]
    pub system_image: Option<PathBuf>,
    /// Logical sector size of the image.
    #[arg(long, default_value_t = 512)]
    pub sector_size: u32,
    /// Time this `rayos` binary instead of building the worktree's (to
    /// compare an older build with the current one, run after run).
    #[arg(long)]
    pub rayos: Option<PathBuf>,
    /// Install this compressed Debian VM image as a real install does
    /// (default: the media recipe's cached `linux-vm.qcow2.frames.zst` under
    /// `.cache/linux-vm/`, else `build/linux-vm.qcow2.zst`, if either exists).
    #[arg(long, conflicts_with = "no_linux_image")]
    pub linux_image: Option<PathBuf>,
    /// Leave the Debian VM image out (the UKI-only install).
    #[arg(long)]
    pub no_linux_image: bool,
    /// The install's staging directory (its TMPDIR). Default `/dev/shm`
    /// (RAM, like the installer medium's `/tmp`) when it exists.
    #[arg(long)]
    pub staging_dir: Option<PathBuf>,
}

const ANSWERS: &str =
    "version = 1\n[target]\nmode = \"whole-disk\"\n[machine]\nhostname = \"rayos-bench\"\n";
/// Added with the Debian VM image: it needs a first user.
const LINUX_ANSWERS: &str = "[linux]\nuser = \"bench\"\npassword = \"bench\"\n";

/// The compressed Debian VM image a medium would carry: the one cached for
/// the default recipe, else the last `cargo xtask linux-vm` output.
fn default_linux_image(root: &Path) -> Option<PathBuf> {
    let cached = rayos_image::linux_vm::cached(
        &root.join(".cache"),
        &rayos_image::linux_vm::BuildOptions::default(),
    )
    .map(|img| img.dir.join(crate::linux_vm::CACHED));
    cached
        .into_iter()
        .chain([root.join("build").join(crate::linux_vm::SHIPPED)])
        .find(|p| p.is_file())
}

/// `rayos install: step 3/8 format-data done in 1.23s` -> ("format-data", 1.23).
fn step_time(line: &str) -> Option<(String, f64)> {
    let rest = line.strip_prefix("rayos install: step ")?;
    let (_, rest) = rest.split_once(' ')?;
    let (step, secs) = rest.split_once(" done in ")?;
    Some((step.to_string(), secs.strip_suffix('s')?.parse().ok()?))
}

fn allocated(p: &Path) -> Result<u64> {
    let m = std::fs::metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
    Ok(std::os::unix::fs::MetadataExt::blocks(&m) * 512)
}

/// Runs `cmd` to success; returns its stderr.
fn quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(out.status.success(), "{:?} failed: {err}", cmd);
    Ok(err)
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    crate::deps::ensure()?;
    let root = crate::root();
    let rayos = match &args.rayos {
        Some(p) => p.clone(),
        None => {
            crate::run_cmd(Command::new("cargo").args(["build", "--release", "-p", "rayos"]))?;
            crate::demo::target_dir(&root).join("release/rayos")
        }
    };
    let dir = root.join("build/bench");
    std::fs::create_dir_all(&dir)?;
    let linux_image = match (&args.linux_image, args.no_linux_image) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => default_linux_image(&root),
    };
    let staging = match &args.staging_dir {
        Some(p) => p.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let answers = dir.join("answers.toml");
    let text = match &linux_image {
        Some(_) => format!("{ANSWERS}{LINUX_ANSWERS}"),
        None => ANSWERS.to_string(),
    };
    std::fs::write(&answers, text)?;
    let image = match &args.system_image {
        Some(p) => p.clone(),
        None if root.join("build/rayos.efi").is_file() => root.join("build/rayos.efi"),
        None => {
            // Incompressible stand-in of a typical UKI's size.
            let p = dir.join("stand-in.efi");
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut buf = Vec::with_capacity(64 << 20);
            while buf.len() < 64 << 20 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            std::fs::write(&p, &buf)?;
            p
        }
    };
    let image_size = std::fs::metadata(&image)?.len();
    let disk = dir.join("disk.img");
    let dd_file = dir.join("dd.out");
    println!(
        "bench install: {} ({}), {} reps, {} GiB sparse image, {}-byte sectors, system image {} ({:.1} MiB)",
        rayos.display(),
        if args.rayos.is_some() {
            "given"
        } else {
            "built"
        },
        args.reps,
        args.disk_gib,
        args.sector_size,
        image.display(),
        image_size as f64 / (1 << 20) as f64
    );
    match &linux_image {
        Some(p) => println!(
            "  Debian VM image {} ({:.1} MiB), staging in {}",
            p.display(),
            std::fs::metadata(p)
                .with_context(|| format!("cannot stat {}", p.display()))?
                .len() as f64
                / (1 << 20) as f64,
            staging.display()
        ),
        None => println!(
            "  no Debian VM image (--linux-image, or `cargo xtask linux-vm` to build one), staging in {}",
            staging.display()
        ),
    }
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    let (mut t_install, mut t_dd, mut bytes, mut ratios, mut t_unzstd) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=args.reps {
        let _ = std::fs::remove_file(&disk);
        std::fs::File::create(&disk)?.set_len(args.disk_gib << 30)?;
        let mut cmd = Command::new(&rayos);
        cmd.arg("install")
            .arg("--yes")
            .arg("--target")
            .arg(&disk)
            .arg("--answers")
            .arg(&answers)
            .arg("--system-image")
            .arg(&image)
            .arg("--sector-size")
            .arg(args.sector_size.to_string())
            .env("TMPDIR", &staging);
        if let Some(p) = &linux_image {
            cmd.arg("--linux-vm-image").arg(p);
        }
        let t0 = Instant::now();
        let err = quiet(&mut cmd)?;
        let ti = t0.elapsed().as_secs_f64();
        for (step, secs) in err.lines().filter_map(step_time) {
            match steps.iter_mut().find(|(s, _)| *s == step) {
                Some((_, v)) => v.push(secs),
                None => steps.push((step, vec![secs])),
            }
        }
        let written = allocated(&disk)?;
        let mib = written.div_ceil(1 << 20);

        let _ = std::fs::remove_file(&dd_file);
        let t0 = Instant::now();
        quiet(Command::new("dd").args([
            "if=/dev/zero",
            &format!("of={}", dd_file.display()),
            "bs=1M",
            &format!("count={mib}"),
            "conv=fsync",
            "status=none",
        ]))?;
        let td = t0.elapsed().as_secs_f64();
        // What dd does not do: decompressing the image, alone (the floor
        // of any install that ships it compressed).
        let unzstd = match &linux_image {
            Some(p) => {
                let t0 = Instant::now();
                quiet(
                    Command::new("zstd")
                        .args(["-q", "-d", "-c", "--long=27"])
                        .arg(p)
                        .stdout(Stdio::null()),
                )?;
                let t = t0.elapsed().as_secs_f64();
                t_unzstd.push(t);
                format!(", zstd -d alone {t:.3} s")
            }
            None => String::new(),
        };
        println!(
            "  rep {rep}: install {ti:.3} s, dd {td:.3} s for {mib} MiB, ratio {:.2}{unzstd}",
            ti / td
        );
        ratios.push(ti / td);
        t_install.push(ti);
        t_dd.push(td);
        bytes.push(written as f64);
    }
    let _ = std::fs::remove_file(&dd_file);
    let _ = std::fs::remove_file(&disk);
    let (i, d) = (
        super::spread(t_install.iter().copied()),
        super::spread(t_dd.iter().copied()),
    );
    let (mi, md, mb) = (i.median, d.median, super::median(&bytes));
    let ((ilo, ihi), (dlo, dhi)) = ((i.min, i.max), (d.min, d.max));
    println!(
        "median: install {mi:.3} s (min-max {ilo:.3}-{ihi:.3}), baseline dd of the same {:.1} MiB {md:.3} s (min-max {dlo:.3}-{dhi:.3}) -> ratio install/dd = {:.2} (median of the per-rep ratios {:.2})",
        mb / (1 << 20) as f64,
        mi / md,
        super::median(&ratios)
    );
    if !t_unzstd.is_empty() {
        let z = super::spread(t_unzstd.iter().copied());
        println!(
            "  decompressing the Debian VM image alone (zstd -d to /dev/null): median {:.3} s (min-max {:.3}-{:.3}), {:.2}x the dd",
            z.median,
            z.min,
            z.max,
            z.median / md
        );
    }
    let steps: Vec<String> = steps
        .iter()
        .map(|(s, v)| format!("{s} {:.3}", super::median(v)))
        .collect();
    println!("  install steps, median s: {}", steps.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_are_parsed() {
        assert_eq!(
            step_time("rayos install: step 3/8 format-data done in 1.23s"),
            Some(("format-data".to_string(), 1.23))
        );
        assert_eq!(step_time("rayos install: Linux VM disk: 50%"), None);
    }
}

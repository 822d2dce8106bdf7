//! `cargo xtask bench update`: applying an update bundle against copying
//! the same bytes with `cp` + `sync`, on the same filesystem, in one run.
//!
//! Per repetition: a fresh system-partition directory (install manifest +
//! a running UKI) in `--dir` (default `build/bench-update`), a timed
//! `rayos_update::apply` of a bundle signed with a throwaway key (it
//! checks the signature over the manifest, reads the payload once, hashing
//! it while a second thread copies it to a temporary, fsyncs the file,
//! renames it and fsyncs the directory, then writes its state record the
//! same way), then a timed `cp <uki> <dir>` + `sync` of the same UKI beside
//! it. Reports medians and min–max, the ratio apply / (cp+sync) (median,
//! and min–max over the repetitions' own ratios), what `rayos update
//! verify` costs (a hash pass, no write), the bundle's size against the
//! UKI's, and the machine's load.
//!
//! The page cache is warm for both sides (the bundle was just written),
//! so the ratio shows RayOS's own overhead over the raw write. The baseline
//! is lenient to `cp`: one `sync` makes everything durable at once, where
//! `apply` waits for four separate fsyncs (file, directory, state record,
//! its directory), and `cp` hashes nothing. Hashing is CPU work, the rest
//! mostly waits on the disk, so on a busy machine the ratio grows (the
//! load is printed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use rayos_update::bundle::{self, BuildSpec, PayloadName, SchemaRange};
use rayos_update::{ApplyOptions, Bundle, SecretKey};

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// UKI to ship (default build/rayos.efi, or a 64 MiB pseudo-random
    /// stand-in when that is not built).
    #[arg(long)]
    pub uki: Option<PathBuf>,
    /// Working directory (the filesystem measured).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Smallest and largest of `v`.
/// The 1-minute load average, when /proc tells it.
fn load_1min() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `len` bytes of noise at `path`: an image that does not compress, like
/// a real system image.
fn stand_in(path: &Path, len: usize) -> Result<()> {
    let bytes = rayos_testkit::disks::pseudo_random(0x9e37_79b9_7f4a_7c15, len);
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn fresh_system(dir: &Path) -> Result<PathBuf> {
    let sys = dir.join("system");
    if sys.exists() {
        std::fs::remove_dir_all(&sys)?;
    }
    std::fs::create_dir_all(sys.join("EFI/Linux"))?;
    std::fs::create_dir_all(sys.join("rayos"))?;
    std::fs::write(sys.join("rayos/install-manifest.json"), r#"{"schema":1}"#)?;
    std::fs::write(sys.join("EFI/Linux/rayos-0.0.1.efi"), b"running")?;
    Ok(sys)
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    let root = crate::root();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| root.join("build/bench-update"));
    std::fs::create_dir_all(&dir)?;
    let (uki, what) = match &args.uki {
        Some(p) => (p.clone(), "given UKI"),
        None if root.join("build/rayos.efi").is_file() => {
            (root.join("build/rayos.efi"), "build/rayos.efi")
        }
        None => {
            let p = dir.join("stand-in.efi");
            stand_in(&p, 64 << 20)?;
            (
                p,
                "64 MiB pseudo-random stand-in (build/rayos.efi not built)",
            )
        }
    };
    let key = SecretKey::generate()?;
    let bundle_path = dir.join("bench.bundle");
    bundle::build(
        &BuildSpec {
            version: "9.9.9".into(),
            architecture: bundle::ARCH.into(),
            install_layout: SchemaRange { min: 1, max: 1 },
            data_schema: SchemaRange { min: 0, max: 1 },
            created: rayos_update::state::now_rfc3339(),
            payloads: vec![(PayloadName::Uki, uki.as_path())],
            key: Some(&key),
        },
        &bundle_path,
    )?;
    let uki_size = std::fs::metadata(&uki)?.len();
    let bundle_size = std::fs::metadata(&bundle_path)?.len();
    let trusted = vec![key.public("bench key")];
    let opts = ApplyOptions {
        trusted: trusted.clone(),
        running: Some("0.0.1".into()),
        allow_downgrade: false,
        data_schema: Some(1),
        progress: None,
    };
    let (mut apply_s, mut verify_s, mut cp_s) = (Vec::new(), Vec::new(), Vec::new());
    let load_before = load_1min();
    for rep in 0..args.reps {
        // `rayos update verify`: signature + one hashing pass, no write
        let t = Instant::now();
        let b = Bundle::open(&bundle_path, &trusted)?;
        b.verify_payloads()?;
        verify_s.push(t.elapsed().as_secs_f64());

        let sys = fresh_system(&dir)?;
        Command::new("sync").status()?;
        let t = Instant::now();
        rayos_update::apply(&bundle_path, &sys, &opts)?;
        apply_s.push(t.elapsed().as_secs_f64());

        let dst = dir.join("cp-copy.efi");
        let _ = std::fs::remove_file(&dst);
        Command::new("sync").status()?;
        let t = Instant::now();
        let ok = Command::new("cp").arg(&uki).arg(&dst).status()?.success()
            && Command::new("sync").status()?.success();
        anyhow::ensure!(ok, "cp + sync failed");
        cp_s.push(t.elapsed().as_secs_f64());
        eprintln!(
            "rep {}: apply {:.3} s, cp+sync {:.3} s (ratio {:.2}); verify alone {:.3} s",
            rep + 1,
            apply_s[rep],
            cp_s[rep],
            apply_s[rep] / cp_s[rep],
            verify_s[rep]
        );
    }
    let load_after = load_1min();
    let ratios: Vec<f64> = apply_s.iter().zip(&cp_s).map(|(a, c)| a / c).collect();
    let min_max = |v: &[f64]| {
        let s = super::spread(v.iter().copied());
        (s.min, s.max)
    };
    let (r_lo, r_hi) = min_max(&ratios);
    let (a_lo, a_hi) = min_max(&apply_s);
    let (c_lo, c_hi) = min_max(&cp_s);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (a, v, c) = (
        super::median(&apply_s),
        super::median(&verify_s),
        super::median(&cp_s),
    );
    let fs_type = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "uki": what, "uki_bytes": uki_size, "bundle_bytes": bundle_size,
                "bundle_over_uki": bundle_size as f64 / uki_size as f64,
                "apply_median_s": a, "apply_min_s": a_lo, "apply_max_s": a_hi,
                "verify_median_s": v,
                "cp_sync_median_s": c, "cp_sync_min_s": c_lo, "cp_sync_max_s": c_hi,
                "apply_over_cp_sync": a / c,
                "apply_over_cp_sync_min": r_lo, "apply_over_cp_sync_max": r_hi,
                "reps": args.reps, "filesystem": fs_type,
                "load_1min_before": load_before, "load_1min_after": load_after, "cpus": cpus,
            })
        );
    } else {
        println!(
            "update bench ({} reps, {what}, {fs_type} at {}):",
            args.reps,
            dir.display()
        );
        println!(
            "  bundle {} bytes / UKI {} bytes = {:.6} (overhead {} bytes)",
            bundle_size,
            uki_size,
            bundle_size as f64 / uki_size as f64,
            bundle_size - uki_size
        );
        println!(
            "  apply (signature, one read: hash + copy, 4 fsyncs) median {a:.3} s ({a_lo:.3}–{a_hi:.3})"
        );
        println!(
            "  baseline: cp + sync of the same bytes            median {c:.3} s ({c_lo:.3}–{c_hi:.3})"
        );
        println!(
            "  ratio apply / (cp + sync) = {:.2} (per rep {r_lo:.2}–{r_hi:.2})",
            a / c
        );
        println!("  verify alone (rayos update verify: hash pass, no write) median {v:.3} s");
        let load = |l: Option<f64>| l.map_or("?".to_string(), |l| format!("{l:.1}"));
        println!(
            "  load average {} before, {} after, on {cpus} CPUs (hashing is CPU-bound: a busy machine raises the ratio)",
            load(load_before),
            load(load_after)
        );
    }
    let _ = std::fs::remove_file(dir.join("cp-copy.efi"));
    let _ = std::fs::remove_dir_all(dir.join("system"));
    Ok(())
}

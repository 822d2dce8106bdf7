//! `cargo xtask fuzz [TARGET...] [--secs N]`: runs the libFuzzer targets in
//! `fuzz/` (every target when none is named), each for N seconds, starting
//! from its committed seeds; fails naming each target that crashed and the
//! file holding the input. `--make-seeds` regenerates the seeds instead
//! ([`seeds`]).
//!
//! Build: `cargo fuzz run -a`, an optimised build with debug assertions and
//! overflow checks on (an overflow is a crash, as in a debug build of
//! RayOS), and AddressSanitizer for the `unsafe` blocks. cargo-fuzz passes
//! `-Z` flags to rustc; only a stable toolchain can be had on these
//! machines, so `RUSTC_BOOTSTRAP=1` lets stable accept them.
//!
//! Files: the seeds `fuzz/seeds/<target>/` are copied into a scratch corpus
//! `fuzz/target/corpus/<target>/` (kept between runs, so later runs start
//! from what earlier ones found; delete it to start over) and libFuzzer
//! writes only there; crash inputs go to `fuzz/artifacts/<target>/`, the
//! log to `fuzz/target/logs/<target>.log`. All three are gitignored.
//! A dictionary `fuzz/dict/<name>.dict` is passed when [`DICTS`] names one.

mod dhcp_lab;
mod seeds;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Targets to run (default: all in fuzz/Cargo.toml).
    pub targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, visible_alias = "seconds", default_value_t = 60)]
    pub secs: u64,
    /// Regenerate the seed corpora in fuzz/seeds/ from real tools (root,
    /// QEMU, OVMF, sgdisk; see fuzz/README.md) and run nothing.
    #[arg(long)]
    pub make_seeds: bool,
    /// Internal to --make-seeds: record a DHCP server's replies into DIR
    /// from inside the lab's client network namespace.
    #[arg(long, hide = true, value_name = "DIR")]
    pub dhcp_capture: Option<std::path::PathBuf>,
}

/// Targets that share a dictionary (by default a target's own name).
const DICTS: &[(&str, &str)] = &[("answers", "answers"), ("plan", "answers")];

/// The per-input limit: any input taking longer is reported as a hang.
const INPUT_TIMEOUT_SECS: u32 = 30;

pub fn run(args: Args) -> Result<()> {
    let root = crate::root();
    if let Some(dir) = &args.dhcp_capture {
        return dhcp_lab::capture(dir);
    }
    if args.make_seeds {
        return seeds::make(&root);
    }
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    let targets = if args.targets.is_empty() {
        list_targets(&fuzz_dir)?
    } else {
        args.targets
    };
    // One build up front, so every target's time is spent fuzzing.
    let status = cargo_fuzz(&fuzz_dir).args(["build", "-a"]).status()?;
    anyhow::ensure!(status.success(), "building the fuzz targets failed");

    let mut failures = Vec::new();
    for t in &targets {
        match run_target(&fuzz_dir, t, args.secs) {
            Ok(summary) => println!("fuzz: {t}: clean ({summary})"),
            Err(e) => {
                println!("fuzz: {t}: FAILED: {e:#}");
                failures.push(format!("{t}: {e:#}"));
            }
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} fuzz targets failed:\n  {}",
        failures.len(),
        targets.len(),
        failures.join("\n  ")
    );
    println!(
        "fuzz: {} targets ran clean for {} s each",
        targets.len(),
        args.secs
    );
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        crate::run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(fuzz_dir);
    c
}

fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = cargo_fuzz(fuzz_dir).arg("list").output()?;
    anyhow::ensure!(out.status.success(), "cargo fuzz list failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one target; `Ok` holds libFuzzer's summary, `Err` says what failed
/// and where the input that did it is.
fn run_target(fuzz_dir: &Path, t: &str, secs: u64) -> Result<String> {
    let seeds = fuzz_dir.join("seeds").join(t);
    let corpus = fuzz_dir.join("target/corpus").join(t);
    let artifacts = fuzz_dir.join("artifacts").join(t);
    let logs = fuzz_dir.join("target/logs");
    for d in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(d)?;
    }
    let seed_files = files_in(&seeds);
    anyhow::ensure!(
        !seed_files.is_empty(),
        "no seeds in {}: commit some (cargo xtask fuzz --make-seeds, fuzz/README.md)",
        seeds.display()
    );
    for f in &seed_files {
        fs::copy(seeds.join(f), corpus.join(f))
            .with_context(|| format!("copying seed {}", seeds.join(f).display()))?;
    }
    let before = files_in(&artifacts);
    let log_path = logs.join(format!("{t}.log"));
    let log = fs::File::create(&log_path)?;

    println!("fuzz: {t} for {secs} s ({} seeds)", seed_files.len());
    let mut cmd = cargo_fuzz(fuzz_dir);
    cmd.args(["run", "-a", t])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        // Mutate whole seeds from the start: by default libFuzzer first
        // cuts inputs to a few bytes and lets the limit grow over minutes,
        // which drops the tail of every seed (an answer file's [sizes], a
        // GPT's backup copy, an RFB session's updates).
        .arg("-len_control=0")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = DICTS
        .iter()
        .find(|(name, _)| *name == t)
        .map_or(t, |(_, d)| d);
    let dict = fuzz_dir.join("dict").join(format!("{dict}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if status.success() {
        return Ok(summary(&text));
    }

    let new: Vec<String> = files_in(&artifacts)
        .difference(&before)
        .map(|f| artifacts.join(f).display().to_string())
        .collect();
    // The panic or sanitizer report, not cargo-fuzz's advice after it.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: "))
        .unwrap_or(lines.len().saturating_sub(20));
    for l in lines.iter().skip(start).take(16) {
        eprintln!("  {t}| {l}");
    }
    if new.is_empty() {
        anyhow::bail!(
            "exited with {status} and left no input (log {})",
            log_path.display()
        );
    }
    // A committed seed that crashes (a regression input whose fix is
    // missing) is named, so it is not mistaken for a new find.
    let known: Vec<String> = new
        .iter()
        .filter_map(|a| {
            let bytes = fs::read(a).ok()?;
            let same = seed_files
                .iter()
                .find(|f| fs::read(seeds.join(f)).is_ok_and(|b| b == bytes))?;
            Some(format!(" = seed {}", seeds.join(same).display()))
        })
        .collect();
    anyhow::bail!(
        "crash input {}{} (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -a {t} {}; log {})",
        new.join(", "),
        known.join(""),
        new[0],
        log_path.display()
    )
}

/// "N runs, corpus C inputs, coverage X" from libFuzzer's output.
fn summary(log: &str) -> String {
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov: "))
        .unwrap_or("");
    let field = |name: &str| {
        last.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "{runs} runs, coverage {}, corpus {}",
        field("cov:"),
        field("corp:")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_libfuzzer_output() {
        let log = "INFO: Seed: 1\n\
                   #10\tINITED cov: 5479 ft: 10018 corp: 8/4529b exec/s: 0 rss: 52Mb\n\
                   #548935\tDONE   cov: 7880 ft: 20000 corp: 1390/271Kb lim: 4096 exec/s: 9000 rss: 480Mb\n\
                   Done 548935 runs in 61 second(s)\n";
        assert_eq!(
            summary(log),
            "548935 runs, coverage 7880, corpus 1390/271Kb"
        );
        assert_eq!(summary(""), "? runs, coverage ?, corpus ?");
    }
}

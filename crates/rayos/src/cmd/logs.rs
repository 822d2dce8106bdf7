//! `rayos logs`: the logs RayOS keeps (`/var/rayos/logs/`, or
//! `/run/rayos/logs/` when no data volume is mounted), crash reports and
//! boot records.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Which log: init, kernel, rayosd, ... ; `crash` for the newest crash
    /// report, `boots` for the boot history. Without it: the list.
    name: Option<String>,
    /// Lines from the end to show.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: usize,
    /// Include the rotated generations (oldest first).
    #[arg(long)]
    all: bool,
    /// Log directory (default: /var/rayos/logs, else /run/rayos/logs).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn default_dir() -> PathBuf {
    let data = rayos_state::DataLayout::new(rayos_base::paths::DATA).logs();
    if data.is_dir() {
        data
    } else {
        PathBuf::from(rayos_base::paths::RUN_LOGS)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let Some(name) = args.name.as_deref() else {
        return list(&dir);
    };
    let root = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    match name {
        "crash" => newest_file(&root.join("crash"), "crash reports", args.lines),
        "boots" => boots(&root.join("boot")),
        _ => show(&dir, name, args.lines, args.all),
    }
}

fn list(dir: &Path) -> anyhow::Result<ExitCode> {
    let mut names: Vec<(String, u64)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?.len(),
                ))
            })
            .collect(),
        Err(e) => {
            return Err(super::Exit::new(
                super::exit::NOT_FOUND,
                format!(
                    "cannot list {}: {e} (no data volume mounted?)",
                    dir.display()
                ),
            )
            .into());
        }
    };
    names.sort();
    println!(
        "logs in {} (`logs NAME` shows one; `logs crash`, `logs boots`):",
        dir.display()
    );
    for (n, size) in names {
        println!("  {n:<28} {size:>10} bytes");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(dir: &Path, name: &str, lines: usize, all: bool) -> anyhow::Result<ExitCode> {
    if name.contains('/') || name.starts_with('.') {
        return Err(super::Exit::new(
            super::exit::BAD_INPUT,
            format!("{name:?} is not a log name"),
        )
        .into());
    }
    let base = name.trim_end_matches(".log");
    let current = dir.join(format!("{base}.log"));
    if !current.is_file() {
        return Err(super::Exit::new(
            super::exit::NOT_FOUND,
            format!("no log {base:?} in {}: `logs` lists them", dir.display()),
        )
        .into());
    }
    let mut files = Vec::new();
    if all {
        let mut n = 1;
        while dir.join(format!("{base}.log.{n}")).is_file() {
            files.push(dir.join(format!("{base}.log.{n}")));
            n += 1;
        }
        files.reverse();
    }
    files.push(current);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for f in files {
        let r = BufReader::new(fs::File::open(&f)?);
        for l in r.lines() {
            let l = l.unwrap_or_default();
            tail.push_back(l);
            if !all && tail.len() > lines {
                tail.pop_front();
            }
        }
    }
    for l in tail {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

fn newest_file(dir: &Path, what: &str, lines: usize) -> anyhow::Result<ExitCode> {
    let newest = fs::read_dir(dir)
        .ok()
        .and_then(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).max());
    let Some(p) = newest else {
        println!("no {what} in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    println!("== {} ==", p.display());
    let text = fs::read_to_string(&p)?;
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines.max(200))..] {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

fn boots(dir: &Path) -> anyhow::Result<ExitCode> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        println!("no boot records in {}", dir.display());
    }
    for f in files {
        let v: serde_json::Value = fs::read(&f)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        println!(
            "{}  {:<10} {:<12} mode {:<9} faults {}",
            v["started_unix"],
            v["version"].as_str().unwrap_or("?"),
            v["result"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?"),
            v["faults"].as_array().map(|a| a.len()).unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `rayos disks [--json] [--disk PATH]... [--sector-size N]`: list the
//! machine's disks (or the given block devices and image files) and what
//! they hold. All the work is in `rayos-disk`; this file only formats.
//!
//! `--json` prints `{"disks": [Disk, ...]}` with `Disk` as serialised by
//! `rayos_disk::Disk`. Exit code 2 when a `--disk` path does not exist or is
//! not a whole disk.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rayos_disk::{Disk, DiskKind, EnumerateError, Table};

use super::{Exit, exit};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON (`{"disks": [...]}`) instead of tables.
    #[arg(long)]
    json: bool,
    /// Probe only this block device or image file (repeatable).
    #[arg(long = "disk", value_name = "PATH")]
    disks: Vec<PathBuf>,
    /// Logical sector size for image files (default: where a GPT header is
    /// found, else 512).
    #[arg(long, value_name = "N", value_parser = ["512", "4096"])]
    sector_size: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sector_size = args
        .sector_size
        .as_deref()
        .and_then(|s| s.parse::<u32>().ok());
    let disks = if args.disks.is_empty() {
        rayos_disk::list_block_devices().context("listing the block devices failed")?
    } else {
        let mut out = Vec::new();
        for path in &args.disks {
            let disk = rayos_disk::probe_path(path, sector_size).map_err(|e| match e {
                EnumerateError::NotFound(_)
                | EnumerateError::IsPartition { .. }
                | EnumerateError::NotADisk { .. }
                | EnumerateError::SectorSize(_) => anyhow::Error::new(Exit::new(
                    exit::BAD_INPUT,
                    format!("{e}; check the path given to --disk"),
                )),
                other => {
                    anyhow::Error::new(other).context(format!("probing {} failed", path.display()))
                }
            })?;
            out.push(disk);
        }
        out
    };
    if args.json {
        // A struct, not json!(): keeps the fields in their documented order.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            disks: &'a [Disk],
        }
        println!("{}", serde_json::to_string_pretty(&Out { disks: &disks })?);
    } else if disks.is_empty() {
        println!("no disks found");
    } else {
        let text: Vec<String> = disks.iter().map(human).collect();
        print!("{}", text.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}

/// "931.5 GiB", "100.0 MiB", "512 B".
fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB * KIB {
        format!("{:.1} TiB", b / (KIB * KIB * KIB * KIB))
    } else if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// One disk as a readable block of text.
fn human(d: &Disk) -> String {
    let mut s = String::new();
    let kind = match d.kind {
        DiskKind::BlockDevice => "disk",
        DiskKind::ImageFile => "image file",
    };
    let table = match &d.table {
        Table::Gpt if !d.hybrid_mbr.is_empty() => {
            "GPT with a hybrid MBR (legacy BIOS view of some partitions)".to_string()
        }
        Table::Gpt => "GPT".to_string(),
        Table::Mbr => "MBR".to_string(),
        Table::None => "no partition table".to_string(),
        Table::Corrupt { reason, .. } => format!("CORRUPT GPT: {reason}"),
        Table::Unreadable { reason } => format!("unreadable: {reason}"),
    };
    let _ = writeln!(
        s,
        "{}  {}  {kind}, {}-byte sectors, {table}",
        d.path.display(),
        size(d.size_bytes),
        d.logical_sector_size
    );
    let mut facts = Vec::new();
    if let Some(m) = &d.model {
        facts.push(format!("model {m}"));
    }
    if let Some(x) = &d.serial {
        facts.push(format!("serial {x}"));
    }
    if d.removable {
        facts.push("removable".into());
    }
    if d.read_only {
        facts.push("read-only".into());
    }
    if !facts.is_empty() {
        let _ = writeln!(s, "  {}", facts.join(", "));
    }
    if let Some(fs) = &d.whole_disk_filesystem {
        let label = fs
            .label
            .as_deref()
            .map(|l| format!(" \"{l}\""))
            .unwrap_or_default();
        let _ = writeln!(s, "  whole disk holds {}{label}", fs.filesystem);
    }
    if !d.partitions.is_empty() {
        let rows: Vec<[String; 8]> = d
            .partitions
            .iter()
            .map(|p| {
                [
                    p.number.to_string(),
                    size(p.start_bytes),
                    size(p.size_bytes),
                    p.type_name.clone(),
                    p.name.clone(),
                    p.filesystem
                        .map(|f| f.to_string())
                        .unwrap_or_else(|| "-".into()),
                    p.fs_label.clone().unwrap_or_default(),
                    p.device
                        .as_ref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let head = [
            "#", "start", "size", "type", "name", "fs", "label", "device",
        ];
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        // Image files have no partition device nodes: drop the empty column.
        let columns = if rows.iter().all(|r| r[7].is_empty()) {
            7
        } else {
            8
        };
        let line = |cells: &[String]| {
            let mut l = String::from(" ");
            for (i, c) in cells.iter().enumerate().take(columns) {
                let pad = width[i] - c.chars().count();
                // numbers right-aligned, text left-aligned
                if i <= 2 {
                    let _ = write!(l, " {}{c}", " ".repeat(pad));
                } else {
                    let _ = write!(l, " {c}{}", " ".repeat(pad));
                }
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(s, "{}", line(&head.map(String::from)));
        for r in &rows {
            let _ = writeln!(s, "{}", line(r));
        }
    }
    if !d.free_regions.is_empty() {
        let free: Vec<String> = d
            .free_regions
            .iter()
            .map(|f| format!("{} at {}", size(f.size_bytes), size(f.start_bytes)))
            .collect();
        let _ = writeln!(s, "  free: {}", free.join(", "));
    }
    if d.in_use.is_empty() {
        let _ = writeln!(s, "  in use: no");
    } else {
        for u in &d.in_use {
            let _ = writeln!(s, "  in use: {u}");
        }
    }
    if let Some(r) = &d.rayos {
        let mut parts = Vec::new();
        if let Some(n) = r.system {
            parts.push(format!("system {n}"));
        }
        if let Some(n) = r.data {
            parts.push(format!("data {n}"));
        }
        for n in &r.vm_storage {
            parts.push(format!("VM storage {n}"));
        }
        let _ = writeln!(s, "  RayOS install: partitions {}", parts.join(", "));
    }
    for sys in &d.systems {
        let _ = writeln!(
            s,
            "  {}: {}",
            match sys.kind {
                rayos_disk::SystemKind::Windows => "Windows",
                rayos_disk::SystemKind::Linux => "Linux",
                rayos_disk::SystemKind::Esp => "ESP",
            },
            sys.evidence.join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1 << 20), "1.0 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
    }
}

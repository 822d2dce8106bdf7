//! The human rendering of a plan (`--dry-run`, and the confirmation before
//! writing): the disk, every partition's action, every file, the machine,
//! policy, VMs, boot entry and notes.

use std::fmt::Write;

use crate::answers::human_size;

use super::{Action, FilePlan, PartitionPlan, Plan, Source, TableAction};

/// A human rendering of the plan for `--dry-run` and the confirmation.
pub fn render(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Install plan for {} ({}, {}-byte sectors{}) — mode {}, RayOS {}",
        plan.target.display(),
        human_size(plan.disk_size_bytes),
        plan.sector_size,
        if plan.image_file { ", image file" } else { "" },
        plan.mode,
        plan.rayos_version
    );
    let _ = writeln!(
        s,
        "Partition table: {}",
        match plan.table {
            TableAction::New => "write a new GPT (everything on the disk is replaced)",
            TableAction::Edit => "edit the existing GPT",
        }
    );
    let _ = writeln!(s, "\nPartitions:");
    for p in &plan.partitions {
        let _ = writeln!(s, "{}", partition_line(p));
    }
    let _ = writeln!(s, "\nFiles:");
    for f in &plan.files {
        let _ = writeln!(s, "{}", file_line(f));
    }
    settings(&mut s, plan);
    for n in &plan.notes {
        let _ = writeln!(s, "Note: {n}");
    }
    s
}

/// `  create     #4       2 GiB  at   40.1 GiB  rayos-system  new FAT32 ...`
fn partition_line(p: &PartitionPlan) -> String {
    let what = match p.action {
        Action::Keep => "keep      ",
        Action::Delete => "DELETE    ",
        Action::Create => "create    ",
        Action::Format => "FORMAT    ",
        Action::ReuseEsp => "reuse ESP ",
    };
    let role = p.role.map(|r| r.label()).unwrap_or("-");
    let fs = match p.action {
        Action::Create | Action::Format => format!(
            "new {} \"{}\"",
            p.filesystem.as_deref().unwrap_or("?"),
            p.fs_label.as_deref().unwrap_or("")
        ),
        Action::ReuseEsp => "add files only, never formatted".into(),
        _ => String::new(),
    };
    let was = match (&p.was, p.action) {
        (Some(w), Action::Keep | Action::Delete | Action::Format | Action::ReuseEsp) => {
            format!("(was {w})")
        }
        _ => String::new(),
    };
    format!(
        "  {what} #{:<3} {:>10}  at {:>10}  {:<16} {fs} {was}",
        p.number,
        human_size(p.size_bytes),
        human_size(p.start_bytes),
        role,
    )
}

/// `  ESP            /EFI/systemd/systemd-bootx64.efi   from /usr/lib/...`
fn file_line(f: &FilePlan) -> String {
    let src = match &f.source {
        Source::HostFile { path } => format!("from {}", path.display()),
        Source::Text { content } => format!("{} bytes", content.len()),
        Source::Directory => "directory".into(),
        Source::LinuxVmImage { path, disk_size } => format!(
            "Debian VM image {} as a {} thin qcow2",
            path.display(),
            human_size(*disk_size)
        ),
        Source::Manifest => "install manifest, written last".into(),
    };
    let cond = if f.only_if_absent {
        " (only if absent)"
    } else {
        ""
    };
    format!("  {:<14} {:<52} {src}{cond}", f.role.label(), f.path)
}

/// Machine, policy, VMs and the boot entry.
fn settings(s: &mut String, plan: &Plan) {
    let _ = writeln!(
        s,
        "\nMachine: hostname {}, timezone {}, locale {}, keyboard {}",
        plan.machine.hostname, plan.machine.timezone, plan.machine.locale, plan.machine.keyboard
    );
    let _ = writeln!(
        s,
        "Policy: Linux autostart {} (hidden: {}), Windows {}, networking {:?}",
        plan.policy.linux.autostart,
        !plan.policy.linux.present_on_boot,
        if plan.policy.windows.enabled {
            "enabled"
        } else {
            "disabled"
        },
        plan.policy.linux.networking
    );
    let vms: Vec<String> = plan
        .registry
        .vms
        .iter()
        .map(|v| format!("{} ({})", v.name, v.id))
        .collect();
    let _ = writeln!(s, "VMs: {}", vms.join(", "));
    match &plan.nvram {
        Some(n) => {
            let _ = writeln!(
                s,
                "UEFI boot entry: \"{}\" -> partition {} {} (first in BootOrder)",
                n.description, n.esp_number, n.loader
            );
        }
        None => {
            let _ = writeln!(s, "UEFI boot entry: none");
        }
    }
}

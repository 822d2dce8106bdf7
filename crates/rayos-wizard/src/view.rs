//! Drawing the wizard: [`draw`] renders a [`Wizard`] into a ratatui frame.
//! It reads the state and changes nothing.
//!
//! Made for a serial console: 80x24 is enough, only ASCII characters are
//! drawn (no box drawing, no colours): the selection is marked with `>`
//! and reverse video, check boxes are `[x]`, the disk bar uses letters.
//! Every screen ends with a line of the keys it takes.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout as Split, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use rayos_install::answers::{VmStorage, human_size};
use rayos_install::plan::{Action, Role, TableAction};

use crate::answers_toml::networking;
use crate::layout::{ROLES, Row, role_words};
use crate::wizard::{
    DiskChoice, LINUX_FIELDS, MACHINE_FIELDS, Modal, RoleTarget, Screen, Wizard, contents,
    disk_name,
};

const ASCII: border::Set = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

fn sel(on: bool, text: String) -> Line<'static> {
    if on {
        Line::from(Span::styled(
            format!(">{text}"),
            Style::default().add_modifier(Modifier::REVERSED),
        ))
    } else {
        Line::from(format!(" {text}"))
    }
}

fn bold(text: impl Into<String>) -> Line<'static> {
    Line::from(Span::styled(
        text.into(),
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

/// The keys line of each screen.
fn keys(w: &Wizard) -> &'static str {
    if let Some(m) = &w.modal {
        return match m {
            Modal::Help => "any key: close help",
            Modal::Confirm { .. } => "type the word shown, Enter: confirm  Esc: cancel",
            Modal::Size { .. } | Modal::VmSize { .. } => {
                "type a size (2GiB, 512MiB; empty: all), Enter: next  Esc: cancel"
            }
            Modal::RolePick { .. } => "Up/Down: choose  Enter: set role  Esc: cancel",
        };
    }
    match w.screen {
        Screen::Welcome => "Enter: start  q: quit (nothing is written)  ?: help",
        Screen::Disk => "Up/Down: move  Enter: choose  Esc: back  q: quit  ?: help",
        Screen::Partitions => {
            "Up/Down move  w whole disk  i install here  n new  d delete  a role\nu undo  r reset  Enter: next  Esc: back  ?: help"
        }
        Screen::VmStorage => {
            "Up/Down: move  Space: switch  e: size  Enter: next  Esc: back  ?: help"
        }
        Screen::Machine => {
            "Up/Down: field  type to edit  Backspace  Enter: next  Esc: back  ?: help"
        }
        Screen::Policy => "Up/Down: move  Space: change  Enter: next  Esc: back  ?: help",
        Screen::Summary => "type the disk's name, Enter: INSTALL  Esc: back  ?: help",
        Screen::Progress => {
            if w.progress.finished {
                "r: reboot  p: power off  e: exit"
            } else if w.progress.failed.is_some() {
                "r: retry  Esc: back to the summary"
            } else {
                "please wait: the disk is being written"
            }
        }
    }
}

/// Renders the whole screen.
pub fn draw(f: &mut Frame, w: &Wizard) {
    let area = f.area();
    if area.width < 80 || area.height < 24 {
        f.render_widget(
            Paragraph::new(format!(
                "The terminal is {}x{}; the installer needs at least 80x24. Make it larger (or `stty cols 80 rows 24` on a serial console).",
                area.width, area.height
            ))
            .wrap(Wrap { trim: false }),
            area,
        );
        return;
    }
    let key_text = keys(w);
    let key_lines = key_text.lines().count() as u16;
    let [head, body, status, foot] = Split::vertical([
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(2),
        Constraint::Length(key_lines + 1),
    ])
    .areas(area);
    let title = format!(
        "RayOS {} installer - step {}/8: {}",
        w.setup.version,
        w.screen.number(),
        w.screen.title()
    );
    let rule = "-".repeat(area.width as usize);
    f.render_widget(
        Paragraph::new(vec![bold(title), Line::from(rule.clone())]),
        head,
    );
    let lines = match w.screen {
        Screen::Welcome => welcome(w),
        Screen::Disk => disks(w, body.height as usize),
        Screen::Partitions => partitions(w, body.width as usize, body.height as usize),
        Screen::VmStorage => vm_storage(w),
        Screen::Machine => machine(w),
        Screen::Policy => policy(w),
        Screen::Summary => summary(w),
        Screen::Progress => progress(w, body.width as usize),
    };
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), body);
    if let Some(s) = &w.status {
        f.render_widget(
            Paragraph::new(format!("! {s}")).wrap(Wrap { trim: false }),
            status,
        );
    }
    let mut foot_lines = vec![Line::from(rule)];
    foot_lines.extend(key_text.lines().map(|l| Line::from(l.to_string())));
    f.render_widget(Paragraph::new(foot_lines), foot);
    if let Some(m) = &w.modal {
        modal(f, w, m, area);
    }
}

fn welcome(w: &Wizard) -> Vec<Line<'static>> {
    let mut l = vec![
        Line::from(""),
        bold(format!("Welcome to RayOS {}.", w.setup.version)),
        Line::from(""),
        Line::from(
            "This installer puts RayOS on a disk of this machine. Nothing is written".to_string(),
        ),
        Line::from("until you confirm the exact changes on the summary.".to_string()),
        Line::from(""),
    ];
    let fw = if w.setup.uefi {
        "UEFI".to_string()
    } else if w.setup.allow_bios {
        "BIOS/legacy (allowed by --allow-bios)".to_string()
    } else if w.firmware_ok() {
        "BIOS/legacy (fine: the targets are image files)".to_string()
    } else {
        "BIOS/legacy".to_string()
    };
    l.push(Line::from(format!("  Firmware mode:   {fw}")));
    let usable = w.setup.disks.iter().filter(|d| d.refusal.is_none()).count();
    l.push(Line::from(format!(
        "  Disks found:     {} ({usable} can take RayOS)",
        w.setup.disks.len()
    )));
    l.push(Line::from(format!(
        "  Keyboard layout: {} (change it on the Machine step)",
        w.machine[3]
    )));
    l.push(Line::from(""));
    if !w.firmware_ok() {
        l.push(bold(
            "RayOS cannot be installed: this machine did not boot in UEFI mode.",
        ));
        l.push(Line::from(
            "RayOS boots only with UEFI (/sys/firmware/efi is missing). Reboot, open the"
                .to_string(),
        ));
        l.push(Line::from(
            "firmware boot menu and pick the installer's \"UEFI:\" entry, or turn off".to_string(),
        ));
        l.push(Line::from(
            "CSM/legacy boot in the firmware setup. Press q to leave.".to_string(),
        ));
    } else if w.setup.disks.is_empty() {
        l.push(bold(
            "No disks were found. Attach a disk and start the installer again.",
        ));
    } else {
        l.push(Line::from("Press Enter to choose a disk.".to_string()));
    }
    if w.setup.dry_run {
        l.push(Line::from(""));
        l.push(Line::from(
            "Dry run: the plan is shown and saved, nothing is written.".to_string(),
        ));
    }
    l
}

fn disk_line(d: &DiskChoice) -> (String, String) {
    let disk = &d.disk;
    let model = disk.model.clone().unwrap_or_else(|| match disk.kind {
        rayos_disk::DiskKind::ImageFile => "image file".into(),
        rayos_disk::DiskKind::BlockDevice => "-".into(),
    });
    let main = format!(
        "{:<16} {:<16} {:>9} {:>4}B {:<22}",
        cut(&disk.path.display().to_string(), 16),
        cut(&model, 16),
        human_size(disk.size_bytes),
        disk.logical_sector_size,
        cut(&contents(d), 22),
    );
    let safe = match &d.refusal {
        None => "ok".to_string(),
        Some(_) => "NO".to_string(),
    };
    (main, safe)
}

fn disks(w: &Wizard, height: usize) -> Vec<Line<'static>> {
    let mut l = vec![
        Line::from("Choose the disk for RayOS. Disks marked NO cannot be chosen.".to_string()),
        Line::from(""),
        bold(format!(
            " {:<16} {:<16} {:>9} {:>5} {:<22} {}",
            "Disk", "Model", "Size", "Sect", "Holds", "Usable"
        )),
    ];
    // Two lines per disk at most (the reason it cannot be chosen), the
    // window following the cursor, some room left for the evidence below.
    let n = w.setup.disks.len();
    let fit = (height.saturating_sub(8) / 2).max(2);
    let first = (w.disk_cursor + 1).saturating_sub(fit);
    if first > 0 {
        l.push(Line::from(format!("  ... {first} more above")));
    }
    for (i, d) in w.setup.disks.iter().enumerate().skip(first).take(fit) {
        let (main, safe) = disk_line(d);
        l.push(sel(i == w.disk_cursor, format!("{main} {safe}")));
        if let Some(why) = &d.refusal {
            l.push(Line::from(format!("     {}", cut(why, 72))));
        }
    }
    let below = n.saturating_sub(first + fit);
    if below > 0 {
        l.push(Line::from(format!("  ... {below} more below")));
    }
    if let Some(d) = w.setup.disks.get(w.disk_cursor) {
        l.push(Line::from(""));
        if let Some(r) = &d.disk.rayos {
            let _ = r;
            l.push(Line::from(
                "This disk holds RayOS: installing replaces it only if you say so.".to_string(),
            ));
        }
        for s in &d.disk.systems {
            for e in s.evidence.iter().take(3) {
                l.push(Line::from(format!("  {}", cut(e, 76))));
            }
        }
    }
    l
}

/// Letter for a partition on the bar: its role's letter for RayOS roles,
/// else its number.
fn bar_char(role: Option<Role>, number: u32) -> char {
    match role {
        Some(Role::Esp) => 'E',
        Some(Role::System) => 'S',
        Some(Role::Data) => 'D',
        Some(Role::VmLinux) => 'L',
        Some(Role::VmWindows) => 'W',
        None => char::from_digit(number % 36, 36).unwrap_or('#'),
    }
}

/// A proportional bar of the disk, `width` characters inside brackets.
pub fn bar(rows: &[Row], total_lba: u64, width: usize) -> String {
    let segs: Vec<(u64, char)> = rows
        .iter()
        .map(|r| match r {
            Row::Part(s) => (s.last_lba + 1 - s.first_lba, bar_char(s.role, s.number)),
            Row::Free(f) => (f.last_lba + 1 - f.first_lba, '.'),
        })
        .collect();
    if segs.is_empty() || width == 0 {
        return format!("[{}]", " ".repeat(width));
    }
    let total = total_lba.max(1);
    let mut widths: Vec<usize> = segs
        .iter()
        .map(|(n, _)| ((*n as u128 * width as u128 / total as u128) as usize).max(1))
        .collect();
    // Fix rounding so the bar is exactly `width`: grow or shrink the widest.
    loop {
        let sum: usize = widths.iter().sum();
        if sum == width {
            break;
        }
        let Some(i) = (0..widths.len()).max_by_key(|i| widths[*i]) else {
            break;
        };
        if sum > width {
            if widths[i] <= 1 {
                break;
            }
            widths[i] -= 1;
        } else {
            widths[i] += 1;
        }
    }
    let mut s = String::from("[");
    for ((_, c), n) in segs.iter().zip(widths) {
        s.extend(std::iter::repeat_n(*c, n));
    }
    s.push(']');
    s
}

/// A role in at most 11 characters (the table's last column).
fn short_role(r: Role) -> &'static str {
    match r {
        Role::Esp => "ESP",
        Role::System => "system",
        Role::Data => "data",
        Role::VmLinux => "Linux VMs",
        Role::VmWindows => "Windows VMs",
    }
}

fn partitions(w: &Wizard, width: usize, height: usize) -> Vec<Line<'static>> {
    let Some(layout) = &w.layout else {
        return vec![];
    };
    let d = layout.disk();
    let ss = d.logical_sector_size as u64;
    let rows = layout.rows();
    let mut l = vec![Line::from(format!(
        "{} - {}, {}-byte sectors{}",
        d.path.display(),
        human_size(d.size_bytes),
        ss,
        if layout.whole_disk {
            " - WHOLE DISK: a new partition table"
        } else {
            ""
        }
    ))];
    l.push(Line::from(bar(
        &rows,
        d.size_bytes / ss.max(1),
        width.saturating_sub(2),
    )));
    l.push(Line::from(
        "E ESP  S system  D data  L/W VM storage  digits: other partitions  . free".to_string(),
    ));
    l.push(bold(format!(
        " {:<3} {:>9} {:>9}  {:<30} {}",
        "#", "Start", "Size", "Now", "Plan"
    )));
    match layout.editable() {
        Err(e) if d.partitions.is_empty() => {
            l.push(Line::from(format!("  {}", cut(&e.to_string(), 76))))
        }
        _ => {}
    }
    // Rows that fit under the 4 header lines, leaving 2 for the notes
    // below; the window follows the cursor.
    let mut fit = height.saturating_sub(6).max(3);
    if rows.len() > fit {
        // Room for the "more" markers.
        fit = fit.saturating_sub(2).max(1);
    }
    let first = (w.row_cursor + 1).saturating_sub(fit);
    if first > 0 {
        l.push(Line::from(format!("  ... {first} more above")));
    }
    for (i, r) in rows.iter().enumerate().skip(first).take(fit) {
        let text = match r {
            Row::Part(s) => {
                let now = if s.new {
                    "(new)".to_string()
                } else {
                    d.partition(s.number)
                        .map(|p| {
                            let fs = p.filesystem.map(|f| f.name()).unwrap_or("-");
                            if p.name.is_empty() {
                                format!("{fs} {}", p.type_name)
                            } else {
                                format!("{fs} \"{}\"", p.name)
                            }
                        })
                        .unwrap_or_default()
                };
                let implicit_esp = layout.implicit_esp() == Some(s.number)
                    && layout.slots.iter().any(|s| s.role == Some(Role::System));
                let plan = match (s.new, s.role) {
                    (false, None) if implicit_esp => "ESP: add files".to_string(),
                    (true, Some(r)) => format!("new {}", short_role(r)),
                    (false, Some(Role::Esp)) => "ESP: add files".to_string(),
                    (false, Some(r)) => format!("FORMAT: {}", short_role(r)),
                    _ => "keep".to_string(),
                };
                format!(
                    "{:<3} {:>9} {:>9}  {:<30} {}",
                    s.number,
                    human_size(s.first_lba * ss),
                    human_size((s.last_lba + 1 - s.first_lba) * ss),
                    cut(&now, 30),
                    plan
                )
            }
            Row::Free(f) => format!(
                "{:<3} {:>9} {:>9}  {:<30} {}",
                "-",
                human_size(f.first_lba * ss),
                human_size((f.last_lba + 1 - f.first_lba) * ss),
                "free space",
                ""
            ),
        };
        l.push(sel(i == w.row_cursor, text));
    }
    let below = rows.len().saturating_sub(first + fit);
    if below > 0 {
        l.push(Line::from(format!("  ... {below} more below")));
    }
    let deleted: Vec<String> = layout.deleted.iter().map(|n| n.to_string()).collect();
    if !deleted.is_empty() {
        l.push(Line::from(format!(
            "  to be DELETED: {}",
            cut(&deleted.join(", "), 60)
        )));
    }
    if layout.whole_disk && layout.slots.is_empty() {
        l.push(Line::from(""));
        l.push(Line::from(
            "Enter: RayOS lays out ESP, system and data over the whole disk (or n: your own)."
                .to_string(),
        ));
    }
    if !layout.is_edited() {
        l.push(Line::from(""));
        l.push(Line::from(
            "Nothing is planned yet: pick a free region and press i, or w for the whole disk."
                .to_string(),
        ));
    }
    l
}

fn storage_words(w: &Wizard, which: usize) -> String {
    let role = [Role::VmLinux, Role::VmWindows][which];
    if let Some(n) = w.vm_partition(role) {
        return format!("partition {n} (set in the partition manager)");
    }
    let st = if which == 0 {
        &w.answers.vm_storage.linux
    } else {
        &w.answers.vm_storage.windows
    };
    match st {
        VmStorage::Data => "[x] on the data volume  [ ] own partition".into(),
        VmStorage::Create(b) => format!(
            "[ ] on the data volume  [x] own partition of {}",
            human_size(*b)
        ),
        VmStorage::Reuse(r) => format!("{} (reused)", r.value),
    }
}

fn vm_storage(w: &Wizard) -> Vec<Line<'static>> {
    let mut l = vec![
        Line::from("Where the Linux and Windows VMs keep their disks and saved state.".to_string()),
        Line::from(
            "The data volume is the default; an own partition is created beside it.".to_string(),
        ),
        Line::from(""),
    ];
    for (i, name) in ["Linux VM  ", "Windows VM"].iter().enumerate() {
        l.push(sel(
            i == w.vm_cursor,
            format!("{name}  {}", storage_words(w, i)),
        ));
    }
    l
}

fn machine(w: &Wizard) -> Vec<Line<'static>> {
    let mut l = vec![
        Line::from("How this machine is set up (you can change it later).".to_string()),
        Line::from(""),
    ];
    for (i, name) in MACHINE_FIELDS.iter().enumerate() {
        let cursor = if i == w.machine_cursor { "_" } else { "" };
        l.push(sel(
            i == w.machine_cursor,
            format!("{name:<16} [{}{cursor}]", w.machine[i]),
        ));
    }
    if w.machine_rows() > 4 {
        l.push(Line::from(""));
        l.push(Line::from(
            "The Linux VM (Debian 12): its first user, member of sudo.".to_string(),
        ));
        for (j, name) in LINUX_FIELDS.iter().enumerate() {
            let i = 4 + j;
            let cursor = if i == w.machine_cursor { "_" } else { "" };
            // Passwords are never shown; a hash already taken shows as set.
            let value = match j {
                0 => w.linux[0].clone(),
                _ if w.linux[j].is_empty() && w.answers.linux.password_hash.is_some() => {
                    "(set)".into()
                }
                _ => "*".repeat(w.linux[j].chars().count()),
            };
            l.push(sel(
                i == w.machine_cursor,
                format!("{name:<16} [{value}{cursor}]"),
            ));
        }
    }
    l.push(Line::from(""));
    l.push(Line::from(
        "Examples: timezone Europe/Berlin, locale de_DE.UTF-8, keyboard de".to_string(),
    ));
    l
}

fn check(b: bool) -> &'static str {
    if b { "[x]" } else { "[ ]" }
}

fn policy(w: &Wizard) -> Vec<Line<'static>> {
    let p = &w.answers.policy;
    let rows = [
        format!(
            "{} Linux subsystem starts at every boot, hidden",
            check(p.linux_autostart)
        ),
        format!("{} Windows subsystem enabled", check(p.windows_enabled)),
        format!(
            "{} Windows subsystem starts at every boot",
            check(p.windows_autostart)
        ),
        format!("    Networking for the VMs: {}", networking(p.networking)),
    ];
    let mut l = vec![
        Line::from("What RayOS does at boot (rayos policy changes it later).".to_string()),
        Line::from(""),
    ];
    for (i, r) in rows.into_iter().enumerate() {
        l.push(sel(i == w.policy_cursor, r));
    }
    l
}

fn summary(w: &Wizard) -> Vec<Line<'static>> {
    let (Some(planned), Some(d)) = (&w.planned, w.chosen_disk()) else {
        return vec![Line::from("No plan.".to_string())];
    };
    let plan = &planned.plan;
    let mut l = vec![bold(format!(
        "{} ({}): {}",
        plan.target.display(),
        human_size(plan.disk_size_bytes),
        match plan.table {
            TableAction::New => "NEW partition table (everything on it is erased)",
            TableAction::Edit => "the partition table is edited",
        }
    ))];
    let mut kept = Vec::new();
    for p in &plan.partitions {
        let what = match p.action {
            Action::Keep => {
                kept.push(p.number.to_string());
                continue;
            }
            Action::Delete if plan.table == TableAction::New => continue,
            Action::Delete => "DELETE ",
            Action::Create => "create ",
            Action::Format => "FORMAT ",
            Action::ReuseEsp => "add to ",
        };
        let role = p.role.map(role_words).unwrap_or("-");
        let fs = match p.action {
            Action::Create | Action::Format => {
                format!("new {}", p.filesystem.as_deref().unwrap_or("?"))
            }
            Action::ReuseEsp => "files added".into(),
            _ => String::new(),
        };
        let was = match (&p.was, p.action) {
            (Some(w), Action::Delete | Action::Format) => format!(" was {w}"),
            _ => String::new(),
        };
        l.push(Line::from(format!(
            "  {what} #{:<3} {:>9}  {:<19} {}",
            p.number,
            human_size(p.size_bytes),
            role,
            cut(&format!("{fs}{was}"), 34)
        )));
    }
    if plan.table == TableAction::New && !d.disk.partitions.is_empty() {
        l.push(Line::from(format!(
            "  ERASED: all {} partitions now on the disk",
            d.disk.partitions.len()
        )));
    }
    l.push(Line::from(if kept.is_empty() {
        "  Not touched: nothing else is on this disk".to_string()
    } else {
        format!(
            "  Not touched: partition {} (every byte stays)",
            kept.join(", ")
        )
    }));
    l.push(Line::from("  Other disks are not touched.".to_string()));
    let m = &plan.machine;
    l.push(Line::from(format!(
        "Machine: {}, {}, {}, keyboard {}",
        m.hostname, m.timezone, m.locale, m.keyboard
    )));
    // What the Linux VM will be, said outright: the Debian VM with its
    // user, or the test guest of a development medium without the image.
    l.push(Line::from(
        match plan
            .registry
            .by_name("linux")
            .and_then(|vm| vm.guest.as_ref())
        {
            Some(g) => format!(
                "Linux VM: Debian 12, user {}, {} thin disk",
                g.user,
                human_size(w.answers.linux.disk_size)
            ),
            None if w.setup.opts.linux_vm_image.is_none() => {
                "Linux VM: the small test guest (this medium has no Debian image)".to_string()
            }
            None => "Linux VM: the small test guest (as the answers ask)".to_string(),
        },
    ));
    let p = &w.answers.policy;
    l.push(Line::from(format!(
        "Policy: Linux {}; Windows {}; networking {}",
        if p.linux_autostart {
            "starts hidden"
        } else {
            "manual"
        },
        match (p.windows_enabled, p.windows_autostart) {
            (false, _) => "off",
            (true, false) => "enabled, manual",
            (true, true) => "enabled, starts at boot",
        },
        networking(p.networking)
    )));
    for n in plan.notes.iter().take(2) {
        l.push(Line::from(format!("Note: {n}")));
    }
    if w.setup.dry_run {
        l.push(Line::from(
            "Dry run: confirming saves the plan and writes nothing.".to_string(),
        ));
    }
    l.push(Line::from(""));
    let name = disk_name(&d.disk);
    l.push(bold(format!(
        "To install, type the disk's name \"{name}\" and press Enter:"
    )));
    l.push(Line::from(format!("  [{}_]", w.confirm_input)));
    l
}

fn progress(w: &Wizard, width: usize) -> Vec<Line<'static>> {
    let pr = &w.progress;
    let total = pr.steps.len().max(1);
    let done = pr.done();
    let bw = width.saturating_sub(12).min(60);
    let filled = done * bw / total;
    let target = w
        .planned
        .as_ref()
        .map(|p| p.plan.target.display().to_string())
        .unwrap_or_default();
    let mut l = vec![
        Line::from(format!("Installing RayOS onto {target}")),
        Line::from(format!(
            "[{}{}] {done}/{total}",
            "#".repeat(filled),
            ".".repeat(bw - filled)
        )),
        Line::from(""),
    ];
    for (i, s) in pr.steps.iter().enumerate() {
        let mark = match (s.seconds, pr.running == Some(i)) {
            (Some(_), _) => "[x]",
            (None, true) => "[>]",
            _ if pr.failed.as_ref().is_some_and(|(f, _)| *f == s.name) => "[!]",
            _ => "[ ]",
        };
        let t = s.seconds.map(|t| format!("{t:.1}s")).unwrap_or_default();
        l.push(Line::from(format!("  {mark} {:<20} {t}", s.name)));
    }
    if let Some((step, err)) = &pr.failed {
        l.push(Line::from(""));
        l.push(bold(format!("FAILED at step {step}:")));
        l.push(Line::from(cut(err, 230)));
        let changed: Vec<&str> = pr
            .steps
            .iter()
            .filter(|s| s.seconds.is_some())
            .map(|s| s.name.as_str())
            .collect();
        l.push(Line::from(if changed.is_empty() {
            "Nothing was written to the disk.".to_string()
        } else {
            format!("Done before the failure: {}", changed.join(", "))
        }));
    } else if pr.finished {
        l.push(Line::from(""));
        l.push(bold(
            "RayOS is installed. Remove the installer medium, then reboot.",
        ));
    }
    for n in pr.notes.iter().take(2) {
        l.push(Line::from(cut(n, 78)));
    }
    l
}

fn help(w: &Wizard) -> Vec<String> {
    let t: &[&str] = match w.screen {
        Screen::Welcome => &[
            "The installer asks where RayOS goes and how the",
            "machine is set up, shows every change, and writes",
            "only after you type the disk's name.",
        ],
        Screen::Disk => &[
            "Disks marked NO cannot be chosen: the installer's own",
            "medium, disks in use (mounted, swap), read-only or",
            "too small disks. The reason is shown under the disk.",
        ],
        Screen::Partitions => &[
            "w  whole disk: erase everything (type \"erase\")",
            "i  on a free region: put RayOS there (ESP if none,",
            "   2 GiB system, the rest data)",
            "n  on a free region: new partition, size then role",
            "d  delete a partition (type its name or \"erase\")",
            "a  give a partition a role (ESP, system, data, VM)",
            "u  undo the last action; r reset to the disk as is",
            "Nothing is written until the summary's confirmation.",
        ],
        Screen::VmStorage => &[
            "VM disks live on the data volume by default.",
            "An own partition keeps them apart; e sets its size.",
        ],
        Screen::Machine => &[
            "Hostname: letters, digits, '-'. Timezone: an IANA",
            "name (UTC, Europe/Berlin). Locale: en_US.UTF-8.",
            "Keyboard: a layout name (us, de, fr).",
        ],
        Screen::Policy => &[
            "Linux starts hidden at every boot by default;",
            "Windows is off until you enable it; networking",
            "for the VMs is off by default.",
        ],
        Screen::Summary => &[
            "Check every line: these are the exact changes.",
            "Type the disk's name and press Enter to install,",
            "or Esc to go back. A typo writes nothing.",
        ],
        Screen::Progress => &[
            "The install runs step by step. On a failure you",
            "can retry (the install finishes the job) or go back.",
        ],
    };
    t.iter().map(|s| s.to_string()).collect()
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn modal(f: &mut Frame, w: &Wizard, m: &Modal, area: Rect) {
    let (title, lines): (String, Vec<Line<'static>>) = match m {
        Modal::Help => (
            " Help ".into(),
            help(w).into_iter().map(Line::from).collect(),
        ),
        Modal::Confirm {
            title,
            expect,
            input,
            ..
        } => (
            " Confirm ".into(),
            vec![
                Line::from(cut(title, 54)),
                Line::from(""),
                Line::from(format!("Type \"{expect}\" to confirm:")),
                Line::from(format!("[{input}_]")),
            ],
        ),
        Modal::Size { free, input } => {
            let ss = w.layout.as_ref().map(|l| l.sector_size()).unwrap_or(512);
            (
                " New partition ".into(),
                vec![
                    Line::from(format!(
                        "Free region at {}, {} long.",
                        human_size(free.first_lba * ss),
                        human_size((free.last_lba + 1 - free.first_lba) * ss)
                    )),
                    Line::from("Size (e.g. 20GiB, 512MiB; empty = all of it):".to_string()),
                    Line::from(format!("[{input}_]")),
                ],
            )
        }
        Modal::VmSize { which, input } => (
            " VM storage size ".into(),
            vec![
                Line::from(format!(
                    "Size of the {} VM partition (at least 1GiB):",
                    if *which == 0 { "Linux" } else { "Windows" }
                )),
                Line::from(format!("[{input}_]")),
            ],
        ),
        Modal::RolePick { target, cursor } => {
            let mut l = vec![Line::from(match target {
                RoleTarget::New { .. } => "Role of the new partition:".to_string(),
                RoleTarget::Existing(n) => format!("Role of partition {n}:"),
            })];
            for (i, r) in ROLES.iter().enumerate() {
                l.push(sel(i == *cursor, format!(" {}", role_words(*r))));
            }
            if matches!(target, RoleTarget::Existing(_)) {
                l.push(sel(
                    *cursor == ROLES.len(),
                    " none (keep it as it is)".into(),
                ));
            }
            (" Role ".into(), l)
        }
    };
    let h = lines.len() as u16 + 2;
    let r = centered(area, 60, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().border_set(ASCII).title(title)),
        r,
    );
}

//! The wizard as a pure state machine: [`Wizard`] holds everything on
//! screen, [`Wizard::handle`] takes one [`Key`] and returns an [`Effect`]
//! for the runner (quit, install, retry, finish). It does no I/O: the disks
//! and the facts about them are read before it starts ([`Setup`]), and the
//! runner feeds apply progress back with [`Wizard::on_event`] and
//! [`Wizard::on_finished`]. Rendering is [`crate::view`].
//!
//! Inputs besides keys: apply progress, and [`Wizard::on_disks_changed`]
//! when the runner sees a disk appear or go.
//!
//! Screens, in order: Welcome, Disk, Partitions, VM storage, Machine,
//! Policy, Summary, Progress. Esc goes back one screen (or closes a
//! dialog), `?`/F1 shows help, Ctrl-C leaves (except while writing).
//! Nothing is written before the disk's name is typed on the Summary.

use rayos_disk::{Disk, Table};
use rayos_install::answers::{Answers, GIB, VmStorage, human_size, parse_size};
use rayos_install::apply::Event;
use rayos_install::plan::{Facts, Plan, PlanOptions, Role};
use rayos_state::Networking;
use rayos_state::machine::{
    validate_hostname, validate_keyboard, validate_locale, validate_timezone,
};

use crate::key::Key;
use crate::layout::{self, Free, Layout, Planned, ROLES, Row, role_words};

/// A disk the wizard may offer.
#[derive(Debug, Clone)]
pub struct DiskChoice {
    /// The disk as it was read.
    pub disk: Disk,
    /// What was read from it for the planner (a RayOS manifest, the
    /// installer medium, partitions RayOS does not recognise).
    pub facts: Facts,
    /// Why it cannot be chosen (boot medium, in use, read-only, ...).
    pub refusal: Option<String>,
}

/// Everything read before the wizard starts.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The RayOS version being installed (shown on the Welcome screen).
    pub version: String,
    /// Booted in UEFI mode (`/sys/firmware/efi` exists).
    pub uefi: bool,
    /// Go on without UEFI (tests, building images on a BIOS host).
    pub allow_bios: bool,
    /// The disks to offer, in the order shown.
    pub disks: Vec<DiskChoice>,
    /// What the plans are made with (the images to install, versions).
    pub opts: PlanOptions,
    /// Stop after the confirmation: nothing is written.
    pub dry_run: bool,
    /// Starting answers (defaults, or a loaded file).
    pub answers: Answers,
}

/// One screen of the wizard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// What RayOS is and what the wizard will do.
    Welcome,
    /// Choose the target disk.
    Disk,
    /// Keep, delete or add partitions, or use the whole disk.
    Partitions,
    /// Where the VMs' disks go (a dedicated partition or the data volume).
    VmStorage,
    /// Host name, time zone, locale, keyboard and the Linux VM's user.
    Machine,
    /// What the VMs may do (autostart, networking).
    Policy,
    /// The plan, and the typed confirmation.
    Summary,
    /// Writing the disk, step by step.
    Progress,
}

impl Screen {
    /// Every screen, in order.
    pub const ALL: [Screen; 8] = [
        Screen::Welcome,
        Screen::Disk,
        Screen::Partitions,
        Screen::VmStorage,
        Screen::Machine,
        Screen::Policy,
        Screen::Summary,
        Screen::Progress,
    ];
    /// The screen's position, from 1.
    pub fn number(self) -> usize {
        Screen::ALL.iter().position(|s| *s == self).unwrap_or(0) + 1
    }
    /// The screen's title.
    pub fn title(self) -> &'static str {
        match self {
            Screen::Welcome => "Welcome",
            Screen::Disk => "Disk",
            Screen::Partitions => "Partitions",
            Screen::VmStorage => "VM storage",
            Screen::Machine => "Machine",
            Screen::Policy => "Policy",
            Screen::Summary => "Summary",
            Screen::Progress => "Install",
        }
    }
}

/// A destructive edit waiting for its typed confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Use the whole disk: every partition goes.
    WholeDisk,
    /// Delete the partition with this number.
    Delete(u32),
    /// Give the partition with this number a role (or take it away).
    Assign(u32, Option<Role>),
}

/// What a role menu is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleTarget {
    /// A new partition in `free`, of `size` bytes (`None`: all of it).
    New {
        /// The free space it goes into.
        free: Free,
        /// Its size in bytes (`None`: all of the free space).
        size: Option<u64>,
    },
    /// An existing partition, by its number.
    Existing(u32),
}

/// A dialog over the current screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    /// The keys and what they do.
    Help,
    /// Type `expect` to go on.
    Confirm {
        /// The dialog's title.
        title: String,
        /// What the person must type.
        expect: String,
        /// What has been typed so far.
        input: String,
        /// The edit that is done once `expect` is typed.
        action: Pending,
    },
    /// Size of a new partition in `free`.
    Size {
        /// The free space the partition goes into.
        free: Free,
        /// What has been typed so far (a size such as `20G`).
        input: String,
    },
    /// Pick a role for a partition.
    RolePick {
        /// Which partition.
        target: RoleTarget,
        /// The highlighted role.
        cursor: usize,
    },
    /// Size of a dedicated VM storage partition (0 Linux, 1 Windows).
    VmSize {
        /// Which VM: 0 Linux, 1 Windows.
        which: usize,
        /// What has been typed so far.
        input: String,
    },
}

/// What the person chooses once RayOS is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Reboot into the installed system.
    Reboot,
    /// Power the machine off.
    PowerOff,
    /// Leave the wizard without rebooting or powering off.
    Exit,
}

/// What the runner must do after a key.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Nothing to do; draw the screen again.
    None,
    /// Leave without writing anything.
    Quit,
    /// The person confirmed: save answers (if asked), then apply the plan
    /// (or, in a dry run, stop here).
    Install(Box<Planned>),
    /// Apply failed; make the plan again from the disk as it is now and
    /// apply it.
    Retry(Box<Planned>),
    /// Apply failed after writing, and the person goes back: read the
    /// chosen disk again and pass it to [`Wizard::on_rescanned`].
    Rescan,
    /// Installed; reboot, power off or exit.
    Finish(After),
}

/// One apply step on the Progress screen.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    /// The step's name, as the installer engine reports it.
    pub name: String,
    /// How long the step took, once it is done.
    pub seconds: Option<f64>,
}

/// What the Progress screen shows of an install.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Every step of the plan, in order.
    pub steps: Vec<StepLine>,
    /// The index of the step that runs now.
    pub running: Option<usize>,
    /// The step that failed (or `preflight`) and the error, once one did.
    pub failed: Option<(String, String)>,
    /// True when the install succeeded.
    pub finished: bool,
    /// Notes the installer engine reported on the way.
    pub notes: Vec<String>,
}

impl Progress {
    /// How many steps are done.
    pub fn done(&self) -> usize {
        self.steps.iter().filter(|s| s.seconds.is_some()).count()
    }
}

/// The machine fields, in screen order.
pub const MACHINE_FIELDS: [&str; 4] = ["Hostname", "Timezone", "Locale", "Keyboard layout"];
/// The Debian VM's login, below the machine settings (when the medium
/// carries the image). The user is required there.
pub const LINUX_FIELDS: [&str; 3] = ["Linux VM user", "Password", "Password again"];

/// Everything the wizard shows and has been told: one install's state.
#[derive(Debug, Clone)]
pub struct Wizard {
    /// What was read before the start.
    pub setup: Setup,
    /// The screen shown.
    pub screen: Screen,
    /// The dialog over the screen, if any.
    pub modal: Option<Modal>,
    /// One line of feedback (errors, "undone", ...).
    pub status: Option<String>,
    /// The highlighted disk on the Disk screen.
    pub disk_cursor: usize,
    /// The index of the chosen disk in `setup.disks`.
    pub chosen: Option<usize>,
    /// The chosen disk's partitions as edited so far.
    pub layout: Option<Layout>,
    /// The highlighted row on the Partitions screen.
    pub row_cursor: usize,
    /// Existing partitions whose erasure was confirmed by typing.
    pub consented: Vec<u32>,
    /// The answers as the screens have set them so far.
    pub answers: Answers,
    /// The highlighted VM (0 Linux, 1 Windows) on the VM storage screen.
    pub vm_cursor: usize,
    /// The highlighted field on the Machine screen.
    pub machine_cursor: usize,
    /// The machine fields' text, in the order of [`MACHINE_FIELDS`].
    pub machine: [String; 4],
    /// The Debian VM's user, password and the password again, asked on the
    /// machine screen when the medium carries the Debian VM image. The
    /// password is hashed and these cleared as soon as it is accepted.
    pub linux: [String; 3],
    /// The highlighted setting on the Policy screen.
    pub policy_cursor: usize,
    /// The plan shown on the Summary screen, once it was made.
    pub planned: Option<Planned>,
    /// What has been typed of the disk's name on the Summary screen.
    pub confirm_input: String,
    /// The install's progress.
    pub progress: Progress,
}

/// The name typed to confirm an install on `disk`: its file name
/// (`sda`, `nvme0n1`, `disk.img`).
pub fn disk_name(disk: &Disk) -> String {
    disk.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| disk.path.display().to_string())
}

/// Why a disk cannot be an install target, judged from its report.
pub fn refusal(disk: &Disk, facts: &Facts) -> Option<String> {
    if let Some(why) = &facts.installer_medium {
        return Some(format!("installer medium: {why}"));
    }
    if let Some(why) = rayos_install::plan::medium_evidence(disk) {
        return Some(format!("installer medium: {why}"));
    }
    if let Table::Unreadable { reason } = &disk.table {
        return Some(format!("cannot be read: {reason}"));
    }
    if disk.read_only {
        return Some("read-only".into());
    }
    if let Some(u) = disk.in_use.first() {
        return Some(format!("in use: {u}"));
    }
    if let Some(u) = disk.partitions.iter().flat_map(|p| p.in_use.iter()).next() {
        return Some(format!("in use: {u}"));
    }
    if disk.size_bytes < 4 * GIB {
        return Some(format!(
            "too small ({}; RayOS needs at least 4 GiB)",
            human_size(disk.size_bytes)
        ));
    }
    None
}

/// What a disk holds, in a few words.
pub fn contents(d: &DiskChoice) -> String {
    let disk = &d.disk;
    let mut parts: Vec<String> = Vec::new();
    match &disk.table {
        Table::Unreadable { .. } => return "unreadable".into(),
        Table::Corrupt { .. } => parts.push("damaged table".into()),
        Table::Mbr => parts.push("MBR".into()),
        _ => {}
    }
    if let Some(fs) = &disk.whole_disk_filesystem {
        let label = fs.label.as_deref().unwrap_or("");
        parts.push(
            format!("{} {label}", fs.filesystem.name())
                .trim()
                .to_string(),
        );
    }
    if disk.rayos.is_some() {
        parts.push(if d.facts.manifest.is_some() {
            "RayOS".into()
        } else {
            "unfinished RayOS".into()
        });
    }
    for s in &disk.systems {
        let w = match s.kind {
            rayos_disk::SystemKind::Windows => "Windows",
            rayos_disk::SystemKind::Linux => "Linux",
            rayos_disk::SystemKind::Esp => continue,
        };
        parts.push(w.into());
    }
    if parts.is_empty() {
        if disk.partitions.is_empty() {
            parts.push("empty".into());
        } else {
            let n = disk.partitions.len();
            parts.push(format!("{n} partition{}", if n == 1 { "" } else { "s" }));
        }
    }
    parts.join(", ")
}

fn printable(c: char) -> bool {
    c.is_ascii_graphic() || c == ' '
}

/// Edit a one-line text buffer; true when the key was consumed.
fn edit_text(buf: &mut String, key: Key, max: usize) -> bool {
    match key {
        Key::Char(c) if printable(c) => {
            if buf.len() < max {
                buf.push(c);
            }
            true
        }
        Key::Backspace => {
            buf.pop();
            true
        }
        _ => false,
    }
}

impl Wizard {
    /// A wizard on its first screen, with the answers `setup` starts from.
    pub fn new(setup: Setup) -> Wizard {
        let answers = setup.answers.clone();
        let m = &answers.machine;
        let machine = [
            m.hostname.clone(),
            m.timezone.clone(),
            m.locale.clone(),
            m.keyboard.clone(),
        ];
        let disk_cursor = setup
            .disks
            .iter()
            .position(|d| d.refusal.is_none())
            .unwrap_or(0);
        Wizard {
            setup,
            screen: Screen::Welcome,
            modal: None,
            status: None,
            disk_cursor,
            chosen: None,
            layout: None,
            row_cursor: 0,
            consented: Vec::new(),
            answers,
            vm_cursor: 0,
            machine_cursor: 0,
            linux: Default::default(),
            machine,
            policy_cursor: 0,
            planned: None,
            confirm_input: String::new(),
            progress: Progress::default(),
        }
    }

    /// Whether the firmware check lets the install go on: UEFI, the
    /// override, or only image files as targets (their firmware is not
    /// this machine's).
    pub fn firmware_ok(&self) -> bool {
        self.setup.uefi
            || self.setup.allow_bios
            || (!self.setup.disks.is_empty()
                && self
                    .setup
                    .disks
                    .iter()
                    .all(|d| d.disk.kind == rayos_disk::DiskKind::ImageFile))
    }

    /// The disk the person chose, if any.
    pub fn chosen_disk(&self) -> Option<&DiskChoice> {
        self.chosen.and_then(|i| self.setup.disks.get(i))
    }

    /// Rows of the partition table (empty before a disk is chosen).
    pub fn rows(&self) -> Vec<Row> {
        self.layout.as_ref().map(|l| l.rows()).unwrap_or_default()
    }

    fn go(&mut self, s: Screen) {
        self.screen = s;
        self.status = None;
    }

    /// Makes the plan from the current layout and answers.
    pub fn replan(&mut self) -> Result<(), String> {
        let (Some(layout), Some(d)) = (&self.layout, self.chosen_disk()) else {
            return Err("choose a disk first".into());
        };
        // The disk screens plan before the machine screen has asked for
        // the Debian VM's user, which the engine requires with the image.
        // The image decides only the Linux VM's files, not a partition, so
        // those layouts are checked without it; the plan made after the
        // machine screen (the one confirmed) has it.
        let l = &self.answers.linux;
        let mut opts = std::borrow::Cow::Borrowed(&self.setup.opts);
        if l.user.is_none() && l.system.is_none() {
            opts.to_mut().linux_vm_image = None;
        }
        match layout::plan(layout, &self.answers, &d.facts, &self.consented, &opts) {
            Ok(p) => {
                self.planned = Some(p);
                Ok(())
            }
            Err(e) => {
                self.planned = None;
                Err(e.to_string())
            }
        }
    }

    /// Handle one key.
    pub fn handle(&mut self, key: Key) -> Effect {
        if key == Key::Interrupt {
            if self.screen == Screen::Progress
                && !self.progress.finished
                && self.progress.failed.is_none()
            {
                self.status = Some("the disk is being written: wait for the install to end".into());
                return Effect::None;
            }
            return Effect::Quit;
        }
        if let Some(m) = self.modal.take() {
            return self.handle_modal(m, key);
        }
        // `?` is never part of a valid hostname, locale or disk name, so it
        // means help on the text screens too.
        if key == Key::F1 || key == Key::Char('?') {
            self.modal = Some(Modal::Help);
            return Effect::None;
        }
        match self.screen {
            Screen::Welcome => self.on_welcome(key),
            Screen::Disk => self.on_disk(key),
            Screen::Partitions => self.on_partitions(key),
            Screen::VmStorage => self.on_vm(key),
            Screen::Machine => self.on_machine(key),
            Screen::Policy => self.on_policy(key),
            Screen::Summary => self.on_summary(key),
            Screen::Progress => self.on_progress(key),
        }
    }

    fn on_welcome(&mut self, key: Key) -> Effect {
        match key {
            Key::Enter => {
                if !self.firmware_ok() {
                    self.status = Some(
                        "this machine did not boot in UEFI mode: RayOS cannot be installed here"
                            .into(),
                    );
                } else if self.setup.disks.is_empty() {
                    self.status = Some("no disks were found: attach a disk and start again".into());
                } else {
                    self.go(Screen::Disk);
                }
                Effect::None
            }
            Key::Char('q') | Key::Esc => Effect::Quit,
            _ => Effect::None,
        }
    }

    fn on_disk(&mut self, key: Key) -> Effect {
        let n = self.setup.disks.len();
        match key {
            Key::Up => self.disk_cursor = self.disk_cursor.saturating_sub(1),
            Key::Down if self.disk_cursor + 1 < n => self.disk_cursor += 1,
            Key::Esc => self.go(Screen::Welcome),
            Key::Char('q') => return Effect::Quit,
            Key::Enter => {
                let Some(d) = self.setup.disks.get(self.disk_cursor) else {
                    return Effect::None;
                };
                if let Some(why) = &d.refusal {
                    self.status =
                        Some(format!("{} cannot be chosen: {why}", d.disk.path.display()));
                    return Effect::None;
                }
                if self.chosen != Some(self.disk_cursor) {
                    self.chosen = Some(self.disk_cursor);
                    self.layout = Some(Layout::new(&d.disk));
                    self.consented.clear();
                    self.row_cursor = 0;
                    self.planned = None;
                }
                self.go(Screen::Partitions);
            }
            _ => {}
        }
        Effect::None
    }

    fn on_partitions(&mut self, key: Key) -> Effect {
        let rows = self.rows();
        let Some(layout) = self.layout.as_mut() else {
            self.go(Screen::Disk);
            return Effect::None;
        };
        self.status = None;
        match key {
            Key::Up => self.row_cursor = self.row_cursor.saturating_sub(1),
            Key::Down if self.row_cursor + 1 < rows.len() => self.row_cursor += 1,
            Key::Esc => self.go(Screen::Disk),
            Key::Char('w') => {
                self.modal = Some(Modal::Confirm {
                    title: format!(
                        "Erase ALL of {} and give it to RayOS",
                        layout.disk().path.display()
                    ),
                    expect: "erase".into(),
                    input: String::new(),
                    action: Pending::WholeDisk,
                });
            }
            Key::Char('i') => match rows.get(self.row_cursor) {
                Some(Row::Free(f)) => match layout.install_into(*f, &self.answers) {
                    Ok(()) => {
                        self.status =
                            Some("RayOS goes into this free region (nothing is written yet)".into())
                    }
                    Err(e) => self.status = Some(e.to_string()),
                },
                _ => self.status = Some("select a free region first (Up/Down)".into()),
            },
            Key::Char('n') => match rows.get(self.row_cursor) {
                Some(Row::Free(f)) => match layout.editable() {
                    Ok(()) => {
                        self.modal = Some(Modal::Size {
                            free: *f,
                            input: String::new(),
                        })
                    }
                    Err(e) => self.status = Some(e.to_string()),
                },
                _ => self.status = Some("select a free region first (Up/Down)".into()),
            },
            Key::Char('d') => match rows.get(self.row_cursor) {
                Some(Row::Part(s)) if s.new => {
                    if let Err(e) = layout.delete(s.number) {
                        self.status = Some(e.to_string());
                    }
                }
                Some(Row::Part(s)) => {
                    if let Err(e) = layout.editable() {
                        self.status = Some(e.to_string());
                    } else {
                        let p = layout.existing(s.number);
                        let expect = p
                            .map(|p| p.name.clone())
                            .filter(|n| !n.is_empty() && n.is_ascii())
                            .unwrap_or_else(|| "erase".into());
                        self.modal = Some(Modal::Confirm {
                            title: format!("Delete partition {} (its data is lost)", s.number),
                            expect,
                            input: String::new(),
                            action: Pending::Delete(s.number),
                        });
                    }
                }
                _ => self.status = Some("select a partition first (Up/Down)".into()),
            },
            Key::Char('a') => match rows.get(self.row_cursor) {
                Some(Row::Part(s)) => match layout.editable() {
                    Ok(()) => {
                        let cursor = s
                            .role
                            .and_then(|r| ROLES.iter().position(|x| *x == r))
                            .unwrap_or(0);
                        self.modal = Some(Modal::RolePick {
                            target: RoleTarget::Existing(s.number),
                            cursor,
                        });
                    }
                    Err(e) => self.status = Some(e.to_string()),
                },
                _ => self.status = Some("select a partition first (Up/Down)".into()),
            },
            Key::Char('u') => {
                self.status = Some(if layout.undo() {
                    "undone".into()
                } else {
                    "nothing to undo".into()
                });
                // An undone erasure must be confirmed again if redone.
                let l = &*layout;
                self.consented
                    .retain(|n| l.slot(*n).is_some_and(|s| s.role.is_some()));
            }
            Key::Char('r') => {
                layout.reset();
                self.consented.clear();
                self.status = Some("reset: the disk as it is".into());
            }
            Key::Enter => match self.replan() {
                Ok(()) => self.go(Screen::VmStorage),
                Err(e) => self.status = Some(e),
            },
            _ => {}
        }
        let n = self.rows().len();
        if self.row_cursor >= n {
            self.row_cursor = n.saturating_sub(1);
        }
        Effect::None
    }

    /// The role of a dedicated VM storage partition set in the manager.
    pub fn vm_partition(&self, role: Role) -> Option<u32> {
        self.layout
            .as_ref()?
            .slots
            .iter()
            .find(|s| s.role == Some(role))
            .map(|s| s.number)
    }

    fn on_vm(&mut self, key: Key) -> Effect {
        match key {
            Key::Up => self.vm_cursor = 0,
            Key::Down => self.vm_cursor = 1,
            Key::Esc => self.go(Screen::Partitions),
            Key::Char(' ') | Key::Left | Key::Right => {
                let role = [Role::VmLinux, Role::VmWindows][self.vm_cursor];
                if let Some(n) = self.vm_partition(role) {
                    self.status = Some(format!(
                        "partition {n} has this role in the partition manager: change it there (Esc)"
                    ));
                    return Effect::None;
                }
                let st = self.vm_storage_mut(self.vm_cursor);
                *st = match st {
                    VmStorage::Data => VmStorage::Create(20 * GIB),
                    _ => VmStorage::Data,
                };
            }
            Key::Char('e') => {
                if matches!(self.vm_storage_mut(self.vm_cursor), VmStorage::Create(_)) {
                    self.modal = Some(Modal::VmSize {
                        which: self.vm_cursor,
                        input: String::new(),
                    });
                } else {
                    self.status = Some("only a new partition has a size (Space switches)".into());
                }
            }
            Key::Enter => match self.replan() {
                Ok(()) => self.go(Screen::Machine),
                Err(e) => {
                    let own = [
                        &self.answers.vm_storage.linux,
                        &self.answers.vm_storage.windows,
                    ]
                    .iter()
                    .any(|s| matches!(s, VmStorage::Create(_)));
                    self.status = Some(if own {
                        format!(
                            "no room for an own VM partition: make the data partition smaller (Esc, n) or keep VMs on the data volume. {e}"
                        )
                    } else {
                        e
                    });
                }
            },
            _ => {}
        }
        Effect::None
    }

    fn vm_storage_mut(&mut self, which: usize) -> &mut VmStorage {
        if which == 0 {
            &mut self.answers.vm_storage.linux
        } else {
            &mut self.answers.vm_storage.windows
        }
    }

    /// Rows of the machine screen: the four settings, and the Debian VM's
    /// user and password twice when the medium carries the image.
    pub fn machine_rows(&self) -> usize {
        if self.setup.opts.linux_vm_image.is_some() {
            4 + LINUX_FIELDS.len()
        } else {
            4
        }
    }

    fn on_machine(&mut self, key: Key) -> Effect {
        let rows = self.machine_rows();
        match key {
            Key::Up => self.machine_cursor = self.machine_cursor.saturating_sub(1),
            Key::Down | Key::Tab => self.machine_cursor = (self.machine_cursor + 1) % rows,
            Key::Esc => self.go(Screen::VmStorage),
            Key::Enter => {
                type Check = fn(&str) -> Result<(), String>;
                let checks: [Check; 4] = [
                    validate_hostname,
                    validate_timezone,
                    validate_locale,
                    validate_keyboard,
                ];
                for (i, check) in checks.iter().enumerate() {
                    if let Err(e) = check(&self.machine[i]) {
                        self.machine_cursor = i;
                        self.status = Some(e);
                        return Effect::None;
                    }
                }
                if rows > 4
                    && let Err((row, e)) = self.accept_linux_user()
                {
                    self.machine_cursor = row;
                    self.status = Some(e);
                    return Effect::None;
                }
                let m = &mut self.answers.machine;
                m.hostname = self.machine[0].clone();
                m.timezone = self.machine[1].clone();
                m.locale = self.machine[2].clone();
                m.keyboard = self.machine[3].clone();
                self.go(Screen::Policy);
            }
            k => {
                let c = self.machine_cursor;
                if c < 4 {
                    edit_text(&mut self.machine[c], k, 63);
                } else {
                    edit_text(&mut self.linux[c - 4], k, 128);
                }
                self.status = None;
            }
        }
        Effect::None
    }

    /// The Debian VM's user from the machine screen into the answers: a
    /// user is required (nobody could log in to the VM otherwise; the test
    /// guest is only for answer files that name it), and needs the same
    /// password twice, which is hashed at once (only the hash is kept).
    fn accept_linux_user(&mut self) -> Result<(), (usize, String)> {
        let [user, pw, again] = &self.linux;
        if user.is_empty() {
            return Err((
                4,
                "type a user name for the Linux VM (Debian 12): you log in to it with this name and password".into(),
            ));
        }
        rayos_state::guest::validate_user(user).map_err(|e| (4, e))?;
        if pw.is_empty() && self.answers.linux.password_hash.is_some() {
            // Accepted before (the person came back to this screen).
            self.answers.linux.user = Some(user.clone());
            return Ok(());
        }
        if pw.is_empty() {
            return Err((5, format!("type a password for {user}")));
        }
        if pw != again {
            self.linux[2].clear();
            return Err((6, "the passwords differ: type it again".into()));
        }
        let hash = rayos_state::guest::hash_password(pw).map_err(|e| (5, e.to_string()))?;
        self.answers.linux.user = Some(user.clone());
        self.answers.linux.password_hash = Some(hash);
        self.linux[1].clear();
        self.linux[2].clear();
        Ok(())
    }

    fn on_policy(&mut self, key: Key) -> Effect {
        let p = &mut self.answers.policy;
        match key {
            Key::Up => self.policy_cursor = self.policy_cursor.saturating_sub(1),
            Key::Down if self.policy_cursor < 3 => self.policy_cursor += 1,
            Key::Esc => self.go(Screen::Machine),
            Key::Char(' ') | Key::Left | Key::Right => match self.policy_cursor {
                0 => p.linux_autostart = !p.linux_autostart,
                1 => {
                    p.windows_enabled = !p.windows_enabled;
                    if !p.windows_enabled {
                        p.windows_autostart = false;
                    }
                }
                2 => {
                    if p.windows_enabled {
                        p.windows_autostart = !p.windows_autostart;
                    } else {
                        self.status =
                            Some("Windows is not enabled: enable it first (one line up)".into());
                    }
                }
                _ => {
                    p.networking = match p.networking {
                        Networking::Off => Networking::On,
                        Networking::On => Networking::ProvisioningOnly,
                        Networking::ProvisioningOnly => Networking::Off,
                    }
                }
            },
            Key::Enter => match self.replan() {
                Ok(()) => {
                    self.confirm_input.clear();
                    self.go(Screen::Summary);
                }
                Err(e) => self.status = Some(e),
            },
            _ => {}
        }
        Effect::None
    }

    fn on_summary(&mut self, key: Key) -> Effect {
        match key {
            Key::Esc => self.go(Screen::Policy),
            Key::Enter => {
                let Some(d) = self.chosen_disk() else {
                    return Effect::None;
                };
                let name = disk_name(&d.disk);
                if self.confirm_input != name {
                    self.status = Some(format!(
                        "\"{}\" is not \"{name}\": nothing was written. Type the disk's name exactly",
                        self.confirm_input
                    ));
                    self.confirm_input.clear();
                    return Effect::None;
                }
                let Some(planned) = self.planned.clone() else {
                    self.status = Some("no plan: go back and check the choices".into());
                    return Effect::None;
                };
                if !self.setup.dry_run {
                    self.start_progress(&planned.plan);
                }
                return Effect::Install(Box::new(planned));
            }
            k => {
                edit_text(&mut self.confirm_input, k, 64);
            }
        }
        Effect::None
    }

    /// Resets the Progress screen for `plan` and shows it.
    pub fn start_progress(&mut self, plan: &Plan) {
        self.progress = Progress {
            steps: rayos_install::apply::steps(plan)
                .into_iter()
                .map(|name| StepLine {
                    name,
                    seconds: None,
                })
                .collect(),
            ..Progress::default()
        };
        self.go(Screen::Progress);
    }

    fn on_progress(&mut self, key: Key) -> Effect {
        if self.progress.finished {
            return match key {
                Key::Char('r') => Effect::Finish(After::Reboot),
                Key::Char('p') => Effect::Finish(After::PowerOff),
                Key::Char('e') | Key::Enter => Effect::Finish(After::Exit),
                _ => Effect::None,
            };
        }
        if self.progress.failed.is_some() {
            return match key {
                Key::Char('r') => match self.planned.clone() {
                    Some(p) => {
                        self.progress.failed = None;
                        self.status = Some("retrying".into());
                        Effect::Retry(Box::new(p))
                    }
                    None => Effect::None,
                },
                // Nothing written: the plan still holds.
                Key::Esc | Key::Char('b') if self.progress.done() == 0 => {
                    self.go(Screen::Summary);
                    self.confirm_input.clear();
                    Effect::None
                }
                // The disk changed: plan again from the disk as it is.
                Key::Esc | Key::Char('b') => Effect::Rescan,
                _ => Effect::None,
            };
        }
        Effect::None
    }

    /// Progress from `apply`.
    pub fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::StepStarted { index, .. } => self.progress.running = Some(*index),
            Event::StepDone { index, seconds, .. } => {
                if let Some(s) = self.progress.steps.get_mut(*index) {
                    s.seconds = Some(*seconds);
                }
                self.progress.running = None;
            }
            Event::Note { message } => self.progress.notes.push(message.clone()),
        }
    }

    /// The end of `apply`: `Err` carries the whole error chain.
    pub fn on_finished(&mut self, r: Result<(), String>) {
        self.status = None;
        match r {
            Ok(()) => self.progress.finished = true,
            Err(e) => {
                let step = self
                    .progress
                    .running
                    .and_then(|i| self.progress.steps.get(i))
                    .map(|s| s.name.clone())
                    .unwrap_or_else(|| "preflight".into());
                self.progress.failed = Some((step, e));
            }
        }
        self.progress.running = None;
    }

    /// The chosen disk read again after a failed install wrote to it: the
    /// partition manager starts over from it.
    pub fn on_rescanned(&mut self, d: DiskChoice) {
        let Some(i) = self.chosen else { return };
        self.layout = Some(Layout::new(&d.disk));
        if let Some(slot) = self.setup.disks.get_mut(i) {
            *slot = d;
        }
        self.consented.clear();
        self.planned = None;
        self.row_cursor = 0;
        self.progress = Progress::default();
        self.go(Screen::Partitions);
        self.status = Some(
            "the failed install changed this disk: it is shown as it is now (delete the new partitions, or w)"
                .into(),
        );
    }

    /// The machine's disks changed (a stick was plugged in or pulled out):
    /// `disks` is the list read again, and the Disk screen shows it. The
    /// chosen disk keeps its report and the person's partition edits while
    /// it is still there; when it is gone, the edits are dropped and the
    /// person is taken back to the Disk screen. Nothing changes while the
    /// disk is being written or once it was (the Progress screen).
    pub fn on_disks_changed(&mut self, mut disks: Vec<DiskChoice>) {
        if self.screen == Screen::Progress {
            return;
        }
        let path_at = |list: &[DiskChoice], i: usize| list.get(i).map(|d| d.disk.path.clone());
        let cursor_path = path_at(&self.setup.disks, self.disk_cursor);
        let chosen = self.chosen_disk().cloned();
        let old: Vec<_> = self
            .setup
            .disks
            .iter()
            .map(|d| d.disk.path.clone())
            .collect();
        let added: Vec<String> = disks
            .iter()
            .filter(|d| !old.contains(&d.disk.path))
            .map(|d| d.disk.path.display().to_string())
            .collect();
        let removed: Vec<String> = old
            .iter()
            .filter(|p| !disks.iter().any(|d| &d.disk.path == *p))
            .map(|p| p.display().to_string())
            .collect();
        if let Some(c) = &chosen
            && let Some(slot) = disks.iter_mut().find(|d| d.disk.path == c.disk.path)
        {
            *slot = c.clone();
        }
        let find =
            |list: &[DiskChoice], p: &std::path::Path| list.iter().position(|d| d.disk.path == p);
        self.chosen = chosen.as_ref().and_then(|c| find(&disks, &c.disk.path));
        self.disk_cursor = cursor_path
            .as_deref()
            .and_then(|p| find(&disks, p))
            .or_else(|| disks.iter().position(|d| d.refusal.is_none()))
            .unwrap_or(0);
        self.setup.disks = disks;
        let mut said = Vec::new();
        if !added.is_empty() {
            said.push(format!("disk {} appeared", added.join(", ")));
        }
        if !removed.is_empty() {
            said.push(format!("disk {} was removed", removed.join(", ")));
        }
        if let Some(c) = chosen
            && self.chosen.is_none()
        {
            self.layout = None;
            self.planned = None;
            self.consented.clear();
            self.row_cursor = 0;
            self.modal = None;
            self.confirm_input.clear();
            if self.screen != Screen::Welcome {
                self.screen = Screen::Disk;
            }
            said = vec![format!(
                "{} was removed: nothing was written to it; choose a disk again",
                c.disk.path.display()
            )];
        }
        if !said.is_empty() {
            self.status = Some(said.join("; "));
        }
    }

    /// A new plan for a retry (made by the runner from the disk as it is
    /// now).
    pub fn on_retry_plan(&mut self, planned: Planned) {
        self.start_progress(&planned.plan);
        self.planned = Some(planned);
    }

    fn handle_modal(&mut self, m: Modal, key: Key) -> Effect {
        match m {
            Modal::Help => {
                // Any key closes help.
            }
            Modal::Confirm {
                title,
                expect,
                mut input,
                action,
            } => match key {
                Key::Esc => self.status = Some("cancelled: nothing changed".into()),
                Key::Enter if input == expect => self.confirmed(action),
                Key::Enter => {
                    self.status = Some(format!("\"{input}\" is not \"{expect}\": nothing changed"));
                }
                k => {
                    edit_text(&mut input, k, 64);
                    self.modal = Some(Modal::Confirm {
                        title,
                        expect,
                        input,
                        action,
                    });
                }
            },
            Modal::Size { free, mut input } => match key {
                Key::Esc => {}
                Key::Enter => {
                    let t = input.trim();
                    let size = if t.is_empty() || t == "rest" {
                        Ok(None)
                    } else {
                        parse_size(t).map(Some)
                    };
                    match size {
                        Ok(size) => {
                            self.modal = Some(Modal::RolePick {
                                target: RoleTarget::New { free, size },
                                cursor: 0,
                            })
                        }
                        Err(e) => {
                            self.status = Some(e);
                            self.modal = Some(Modal::Size { free, input });
                        }
                    }
                }
                k => {
                    edit_text(&mut input, k, 24);
                    self.modal = Some(Modal::Size { free, input });
                }
            },
            Modal::RolePick { target, cursor } => {
                let n_options = match target {
                    RoleTarget::New { .. } => ROLES.len(),
                    RoleTarget::Existing(_) => ROLES.len() + 1,
                };
                match key {
                    Key::Esc => {}
                    Key::Up => {
                        self.modal = Some(Modal::RolePick {
                            target,
                            cursor: cursor.saturating_sub(1),
                        })
                    }
                    Key::Down => {
                        self.modal = Some(Modal::RolePick {
                            target,
                            cursor: (cursor + 1).min(n_options - 1),
                        })
                    }
                    Key::Enter => {
                        let role = ROLES.get(cursor).copied();
                        self.pick_role(target, role);
                    }
                    _ => self.modal = Some(Modal::RolePick { target, cursor }),
                }
            }
            Modal::VmSize { which, mut input } => match key {
                Key::Esc => {}
                Key::Enter => match parse_size(input.trim()) {
                    Ok(b) if b < GIB => {
                        self.status = Some("VM storage must be at least 1 GiB".into());
                        self.modal = Some(Modal::VmSize { which, input });
                    }
                    Ok(b) => *self.vm_storage_mut(which) = VmStorage::Create(b),
                    Err(e) => {
                        self.status = Some(e);
                        self.modal = Some(Modal::VmSize { which, input });
                    }
                },
                k => {
                    edit_text(&mut input, k, 24);
                    self.modal = Some(Modal::VmSize { which, input });
                }
            },
        }
        Effect::None
    }

    fn pick_role(&mut self, target: RoleTarget, role: Option<Role>) {
        let facts = self
            .chosen_disk()
            .map(|d| d.facts.clone())
            .unwrap_or_default();
        let Some(layout) = self.layout.as_mut() else {
            return;
        };
        match target {
            RoleTarget::New { free, size } => {
                let Some(role) = role else { return };
                match layout.create(free, size, role) {
                    Ok(n) => {
                        self.status = Some(format!(
                            "partition {n} will be created for {}",
                            role_words(role)
                        ))
                    }
                    Err(e) => self.status = Some(e.to_string()),
                }
            }
            RoleTarget::Existing(n) => {
                if let Err(e) = layout.check_assign(n, role) {
                    self.status = Some(e.to_string());
                    return;
                }
                if layout.assign_is_destructive(n, role, &facts) && !self.consented.contains(&n) {
                    let expect = layout
                        .existing(n)
                        .map(|p| p.name.clone())
                        .filter(|s| !s.is_empty() && s.is_ascii())
                        .unwrap_or_else(|| "erase".into());
                    self.modal = Some(Modal::Confirm {
                        title: format!(
                            "Partition {n} will be reformatted as {} (its data is lost)",
                            role.map(role_words).unwrap_or("-")
                        ),
                        expect,
                        input: String::new(),
                        action: Pending::Assign(n, role),
                    });
                    return;
                }
                if let Err(e) = layout.assign(n, role) {
                    self.status = Some(e.to_string());
                }
            }
        }
    }

    fn confirmed(&mut self, action: Pending) {
        let Some(layout) = self.layout.as_mut() else {
            return;
        };
        let r = match action {
            Pending::WholeDisk => {
                layout.whole_disk();
                self.row_cursor = 0;
                Ok("the whole disk goes to RayOS (nothing is written yet)".to_string())
            }
            Pending::Delete(n) => layout
                .delete(n)
                .map(|()| format!("partition {n} will be deleted (nothing is written yet)")),
            Pending::Assign(n, role) => {
                self.consented.push(n);
                layout.assign(n, role).map(|()| {
                    format!(
                        "partition {n} will be {}",
                        role.map(role_words).unwrap_or("left alone")
                    )
                })
            }
        };
        self.status = Some(match r {
            Ok(m) => m,
            Err(e) => e.to_string(),
        });
    }
}

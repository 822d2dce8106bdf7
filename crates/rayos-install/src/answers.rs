//! Answer files: the TOML a person (or the wizard, or a test) writes to say
//! where RayOS goes and how the machine is set up. The format is documented
//! in `docs/answer-file.md`.
//!
//! Parsing is strict: unknown keys and bad values are errors that name the
//! key and its line (`answers.toml:7: unknown field ...`). Every section but
//! `[target]` may be left out; the defaults are the install defaults of the
//! issue (system 2 GiB, ESP 1 GiB when created, data the rest, VM storage on
//! the data volume, Linux autostarts hidden, Windows off, networking off).
//!
//! Limits: partition references are resolved later, against the disk the
//! plan is made for ([`crate::plan`]); this module only checks their shape.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use rayos_state::Networking;
use rayos_state::machine::{
    validate_hostname, validate_keyboard, validate_locale, validate_timezone,
};

/// The answer file `version` this RayOS reads and writes.
pub const ANSWERS_VERSION: u32 = 1;

/// One kibibyte.
pub const KIB: u64 = 1024;
/// One mebibyte.
pub const MIB: u64 = 1024 * KIB;
/// One gibibyte.
pub const GIB: u64 = 1024 * MIB;
/// One tebibyte.
pub const TIB: u64 = 1024 * GIB;
/// The largest size an answer file may give: 1 PiB, far beyond any disk
/// RayOS installs to, and small enough that the planner's sums of up to
/// five sizes (rounded up to 1 MiB) cannot overflow a `u64`.
pub const MAX_SIZE: u64 = 1024 * TIB;

/// "file:line: message"; line is 0 when the problem has no one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct AnswerError {
    /// The answer file, as named.
    pub path: String,
    /// The line (0: no one place).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Where RayOS goes on the target disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Erase the disk and give all of it to RayOS.
    WholeDisk,
    /// Keep every existing partition; use the largest free region.
    FreeSpace,
    /// Use partitions named in `[target]` for the system and data roles.
    Reuse,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::WholeDisk => "whole-disk",
            Mode::FreeSpace => "free-space",
            Mode::Reuse => "reuse",
        })
    }
}

/// A partition of the target disk, as written in an answer file: its number
/// (`3`) or a device path (`"/dev/vda3"`, `"/dev/nvme0n1p3"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum PartRef {
    /// A partition number.
    Number(u32),
    /// A device path of a partition.
    Path(String),
}

impl std::fmt::Display for PartRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartRef::Number(n) => write!(f, "partition {n}"),
            PartRef::Path(p) => f.write_str(p),
        }
    }
}

impl PartRef {
    /// The partition number this reference names on `disk` (a device path
    /// or image file): `N`, `<disk>N` or `<disk>pN`.
    pub fn number_on(&self, disk: &str) -> Option<u32> {
        match self {
            PartRef::Number(n) => Some(*n),
            PartRef::Path(p) => {
                let rest = p.strip_prefix(disk)?;
                let rest = rest.strip_prefix('p').unwrap_or(rest);
                if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                rest.parse().ok()
            }
        }
    }
}

/// A located answer: the value and the line it was written on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// The line it is on in the answer file (0 when not from a file).
    #[serde(skip)]
    pub line: usize,
}

/// `[target]`: the disk, the mode and the consents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// The disk to install to (`None`: `rayos install --target` names it).
    pub disk: Option<PathBuf>,
    /// How RayOS is placed on it.
    pub mode: Mode,
    /// `reuse`: the ESP to add files to (default: the disk's ESP).
    pub esp: Option<Located<PartRef>>,
    /// `reuse`: the partition that becomes `rayos-system`.
    pub system: Option<Located<PartRef>>,
    /// `reuse`: the partition that becomes `rayos-data`.
    pub data: Option<Located<PartRef>>,
    /// Consent: partitions holding another system's data that may be
    /// reformatted (reuse roles and VM storage reuse).
    pub format: Vec<Located<PartRef>>,
    /// Consent: replace a complete RayOS install found on the target.
    pub reinstall: bool,
}

/// The data volume's size (`[sizes] data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSize {
    /// All the space the other partitions leave.
    Rest,
    /// This many bytes.
    Bytes(u64),
}

/// `[sizes]`: partition sizes in bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    /// Size of the ESP when one is created.
    pub esp: u64,
    /// Size of the RayOS system partition.
    pub system: u64,
    /// Size of the data volume.
    pub data: DataSize,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            esp: GIB,
            system: 2 * GIB,
            data: DataSize::Rest,
        }
    }
}

/// Where one VM kind keeps its disks and saved state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmStorage {
    /// A directory on the data volume (the default).
    Data,
    /// A new partition of this many bytes.
    Create(u64),
    /// An existing partition, reformatted.
    Reuse(Located<PartRef>),
}

/// `[vm_storage]`: where each VM kind keeps its disks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmStorageAnswers {
    /// The Linux VM's storage.
    pub linux: VmStorage,
    /// The Windows VMs' storage.
    pub windows: VmStorage,
}

/// `[machine]`: the installed machine's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MachineAnswers {
    /// The host name.
    pub hostname: String,
    /// The time zone (`Europe/Berlin`).
    pub timezone: String,
    /// The locale (`en_US.UTF-8`).
    pub locale: String,
    /// The console keyboard layout (`de`).
    pub keyboard: String,
}

impl Default for MachineAnswers {
    fn default() -> Self {
        MachineAnswers {
            hostname: "rayos".into(),
            timezone: "UTC".into(),
            locale: "en_US.UTF-8".into(),
            keyboard: "us".into(),
        }
    }
}

/// `[policy]`: what the VMs may do, as the first policy file has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyAnswers {
    /// Start the Linux VM at boot.
    pub linux_autostart: bool,
    /// Show the Linux VM at boot.
    pub linux_present_on_boot: bool,
    /// Allow Windows VMs.
    pub windows_enabled: bool,
    /// Start Windows VMs at boot (only when they are allowed).
    pub windows_autostart: bool,
    /// Networking for every kind of VM.
    pub networking: Networking,
}

impl Default for PolicyAnswers {
    fn default() -> Self {
        PolicyAnswers {
            linux_autostart: true,
            linux_present_on_boot: false,
            windows_enabled: false,
            windows_autostart: false,
            networking: Networking::Off,
        }
    }
}

impl PolicyAnswers {
    /// The policy file a fresh install gets from these answers.
    pub fn to_policy(&self) -> rayos_state::Policy {
        let mut p = rayos_state::Policy::default();
        p.linux.autostart = self.linux_autostart;
        p.linux.present_on_boot = self.linux_present_on_boot;
        p.linux.networking = self.networking;
        p.windows.enabled = self.windows_enabled;
        p.windows.autostart = self.windows_enabled && self.windows_autostart;
        p.windows.networking = self.networking;
        p.generic.networking = self.networking;
        p
    }
}

/// Which system the Linux VM runs (`[linux] system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinuxSystem {
    /// The Debian 12 VM image the installer medium carries (docs/linux-vm.md).
    Debian,
    /// The small busybox test guest bundled in the RayOS image (tests).
    TestGuest,
}

/// The Linux VM (`[linux]`): its system, disk size and first user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinuxAnswers {
    /// `None`: the Debian VM when a user is given and the medium carries
    /// the image, else the test guest.
    pub system: Option<LinuxSystem>,
    /// The first user's login name (a member of `sudo`).
    pub user: Option<String>,
    /// Only ever a hash: a `password` in the file is hashed while parsing.
    pub password_hash: Option<String>,
    /// An OpenSSH public key for the user (the guest's SSH server is on for
    /// it).
    pub ssh_key: Option<String>,
    /// Virtual size of the VM's thin qcow2 disk.
    pub disk_size: u64,
}

/// The default size of the Linux VM's disk.
pub const LINUX_DISK_DEFAULT: u64 = 32 * GIB;
/// The smallest: the image itself is 2 GiB.
pub const LINUX_DISK_MIN: u64 = 4 * GIB;

impl Default for LinuxAnswers {
    fn default() -> Self {
        LinuxAnswers {
            system: None,
            user: None,
            password_hash: None,
            ssh_key: None,
            disk_size: LINUX_DISK_DEFAULT,
        }
    }
}

/// What the installer media do after an unattended install (`[finish]`;
/// read by rayos init, not by the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishAction {
    /// Reboot into the installed RayOS.
    #[default]
    Reboot,
    /// Power the machine off.
    #[serde(alias = "power-off", alias = "shutdown")]
    Poweroff,
}

/// Seconds the installer media show the plan before an unattended install
/// writes (`[unattended] countdown`; read by rayos init, not by the engine).
pub const DEFAULT_COUNTDOWN_SECS: u32 = 10;
/// The longest countdown an answer file may ask for.
pub const MAX_COUNTDOWN_SECS: u32 = 3600;

/// A parsed and checked answer file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Answers {
    /// `[target]`.
    pub target: Target,
    /// `[sizes]`.
    pub sizes: Sizes,
    /// `[vm_storage]`.
    pub vm_storage: VmStorageAnswers,
    /// `[machine]`.
    pub machine: MachineAnswers,
    /// `[policy]`.
    pub policy: PolicyAnswers,
    /// `[linux]`.
    pub linux: LinuxAnswers,
    /// `[finish]`.
    pub finish: FinishAction,
    /// `[unattended] countdown`: 1 ..= [`MAX_COUNTDOWN_SECS`] seconds.
    pub countdown_secs: u32,
}

// ---- writing an answer file (`rayos wizard --save-answers`) ----

/// A size the parser reads back exactly: the largest binary unit that
/// divides it, else whole bytes.
fn size_value(b: u64) -> toml::Value {
    for (m, u) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if b != 0 && b.is_multiple_of(m) {
            return toml::Value::String(format!("{}{u}", b / m));
        }
    }
    // Sizes are bounded far below i64::MAX (parse_size); the string form is
    // for the impossible rest and parses back all the same.
    i64::try_from(b)
        .map(toml::Value::Integer)
        .unwrap_or_else(|_| toml::Value::String(format!("{b}B")))
}

fn part_value(r: &PartRef) -> toml::Value {
    match r {
        // Partition numbers are 1..=128 (GPT); a larger one cannot parse.
        PartRef::Number(n) => toml::Value::Integer(i64::from(*n)),
        PartRef::Path(p) => toml::Value::String(p.clone()),
    }
}

fn storage_value(s: &VmStorage) -> toml::Value {
    let one = |k: &str, v: toml::Value| {
        let mut t = toml::Table::new();
        t.insert(k.into(), v);
        toml::Value::Table(t)
    };
    match s {
        VmStorage::Data => toml::Value::String("data".into()),
        VmStorage::Create(b) => one("create", size_value(*b)),
        VmStorage::Reuse(r) => one("reuse", part_value(&r.value)),
    }
}

/// A string form of a serde enum (`Mode`, `Networking`, ...), as the
/// parser reads it.
fn enum_value<T: serde::Serialize>(v: &T) -> toml::Value {
    toml::Value::try_from(v).unwrap_or_else(|_| toml::Value::String(String::new()))
}

impl Answers {
    /// These answers as an answer file that [`Answers::parse`] reads back
    /// to the same answers (line numbers aside). `comment` lines come
    /// first as `#` comments: what the file cannot express, who wrote it.
    /// A password is never written, only its hash.
    pub fn to_toml(&self, comment: &[String]) -> String {
        use toml::{Table, Value};
        let mut target = Table::new();
        let t = &self.target;
        if let Some(d) = &t.disk {
            target.insert("disk".into(), Value::String(d.display().to_string()));
        }
        target.insert("mode".into(), enum_value(&t.mode));
        for (k, v) in [("esp", &t.esp), ("system", &t.system), ("data", &t.data)] {
            if let Some(v) = v {
                target.insert(k.into(), part_value(&v.value));
            }
        }
        if !t.format.is_empty() {
            let list = t.format.iter().map(|f| part_value(&f.value)).collect();
            target.insert("format".into(), Value::Array(list));
        }
        if t.reinstall {
            target.insert("reinstall".into(), Value::Boolean(true));
        }
        let mut sizes = Table::new();
        sizes.insert("esp".into(), size_value(self.sizes.esp));
        sizes.insert("system".into(), size_value(self.sizes.system));
        let data = match self.sizes.data {
            DataSize::Rest => Value::String("rest".into()),
            DataSize::Bytes(b) => size_value(b),
        };
        sizes.insert("data".into(), data);
        let mut vm_storage = Table::new();
        vm_storage.insert("linux".into(), storage_value(&self.vm_storage.linux));
        vm_storage.insert("windows".into(), storage_value(&self.vm_storage.windows));
        let mut doc = Table::new();
        doc.insert("version".into(), Value::Integer(i64::from(ANSWERS_VERSION)));
        doc.insert("target".into(), Value::Table(target));
        doc.insert("sizes".into(), Value::Table(sizes));
        doc.insert("vm_storage".into(), Value::Table(vm_storage));
        doc.insert("machine".into(), enum_value(&self.machine));
        doc.insert("policy".into(), enum_value(&self.policy));
        let l = &self.linux;
        let mut linux = Table::new();
        if let Some(sys) = &l.system {
            linux.insert("system".into(), enum_value(sys));
        }
        for (k, v) in [
            ("user", &l.user),
            ("password_hash", &l.password_hash),
            ("ssh_key", &l.ssh_key),
        ] {
            if let Some(v) = v {
                linux.insert(k.into(), Value::String(v.clone()));
            }
        }
        linux.insert("disk_size".into(), size_value(l.disk_size));
        doc.insert("linux".into(), Value::Table(linux));
        let mut finish = Table::new();
        finish.insert("action".into(), enum_value(&self.finish));
        doc.insert("finish".into(), Value::Table(finish));
        let mut unattended = Table::new();
        unattended.insert(
            "countdown".into(),
            Value::Integer(i64::from(self.countdown_secs)),
        );
        doc.insert("unattended".into(), Value::Table(unattended));
        let mut out: String = comment.iter().map(|c| format!("# {c}\n")).collect();
        // Serializing a table of strings, numbers and tables cannot fail.
        out.push_str(&toml::to_string(&doc).unwrap_or_default());
        out
    }
}

// ---- raw TOML shape (spans kept for messages) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: Spanned<u32>,
    target: RawTarget,
    #[serde(default)]
    sizes: RawSizes,
    #[serde(default)]
    vm_storage: RawVmStorage,
    #[serde(default)]
    machine: RawMachine,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    linux: RawLinux,
    #[serde(default)]
    finish: RawFinish,
    #[serde(default)]
    unattended: RawUnattended,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLinux {
    system: Option<LinuxSystem>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_hash: Option<Spanned<String>>,
    ssh_key: Option<Spanned<String>>,
    disk_size: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFinish {
    action: Option<FinishAction>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUnattended {
    countdown: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    disk: Option<String>,
    mode: Mode,
    esp: Option<Spanned<toml::Value>>,
    system: Option<Spanned<toml::Value>>,
    data: Option<Spanned<toml::Value>>,
    #[serde(default)]
    format: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    reinstall: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSizes {
    esp: Option<Spanned<toml::Value>>,
    system: Option<Spanned<toml::Value>>,
    data: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVmStorage {
    linux: Option<Spanned<toml::Value>>,
    windows: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    hostname: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    locale: Option<Spanned<String>>,
    keyboard: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    linux_autostart: Option<bool>,
    linux_present_on_boot: Option<bool>,
    windows_enabled: Option<bool>,
    windows_autostart: Option<bool>,
    networking: Option<Networking>,
}

struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
    fn err<T>(&self, span: std::ops::Range<usize>, message: String) -> Result<T, AnswerError> {
        Err(AnswerError {
            path: self.path.into(),
            line: self.line_of(span),
            message,
        })
    }

    /// An error about the file as a whole (two settings that do not go
    /// together), reported without a line.
    fn file_err<T>(&self, message: impl Into<String>) -> Result<T, AnswerError> {
        Err(AnswerError {
            path: self.path.into(),
            line: 0,
            message: message.into(),
        })
    }

    /// A partition named by number (`3`) or device path (`"/dev/sda3"`).
    fn part(&self, v: &Spanned<toml::Value>, key: &str) -> Result<Located<PartRef>, AnswerError> {
        let line = self.line_of(v.span());
        let value = match v.get_ref() {
            toml::Value::Integer(n) if *n >= 1 && *n <= 128 => PartRef::Number(*n as u32),
            toml::Value::String(s) if s.starts_with('/') => PartRef::Path(s.clone()),
            other => {
                return self.err(
                    v.span(),
                    format!(
                        "{key} = {other} is not a partition: use its number (3) or device path (\"/dev/sda3\")"
                    ),
                );
            }
        };
        Ok(Located { value, line })
    }

    /// A size value (`"32GiB"` or bytes).
    fn size(&self, v: &Spanned<toml::Value>, key: &str) -> Result<u64, AnswerError> {
        match v.get_ref() {
            toml::Value::String(s) => {
                parse_size(s).or_else(|m| self.err(v.span(), format!("{key}: {m}")))
            }
            toml::Value::Integer(n) if *n > 0 => check_size_bound(*n as u64)
                .or_else(|_| self.err(v.span(), format!("{key}: {}", too_large(&n.to_string())))),
            other => self.err(
                v.span(),
                format!("{key} = {other} is not a size: write it like \"2GiB\""),
            ),
        }
    }

    /// `[target]`: the partitions of a reuse install only with that mode.
    fn target(&self, t: &RawTarget) -> Result<Target, AnswerError> {
        let target = Target {
            disk: t.disk.as_ref().map(PathBuf::from),
            mode: t.mode,
            esp: t
                .esp
                .as_ref()
                .map(|v| self.part(v, "target.esp"))
                .transpose()?,
            system: t
                .system
                .as_ref()
                .map(|v| self.part(v, "target.system"))
                .transpose()?,
            data: t
                .data
                .as_ref()
                .map(|v| self.part(v, "target.data"))
                .transpose()?,
            format: t
                .format
                .iter()
                .map(|v| self.part(v, "target.format"))
                .collect::<Result<_, _>>()?,
            reinstall: t.reinstall,
        };
        if target.mode == Mode::Reuse {
            for (key, v) in [("system", &target.system), ("data", &target.data)] {
                if v.is_none() {
                    return self.file_err(format!(
                        "[target] mode = \"reuse\" needs target.{key}: the partition (number or device path) that becomes rayos-{key}"
                    ));
                }
            }
        } else {
            for (key, v) in [("esp", &t.esp), ("system", &t.system), ("data", &t.data)] {
                if let Some(v) = v {
                    return self.err(
                        v.span(),
                        format!(
                            "target.{key} is only used with mode = \"reuse\"; remove it or set mode = \"reuse\""
                        ),
                    );
                }
            }
        }
        Ok(target)
    }

    /// `[sizes]`, the defaults where a key is left out.
    fn sizes(&self, raw: &RawSizes) -> Result<Sizes, AnswerError> {
        let mut sizes = Sizes::default();
        if let Some(v) = &raw.esp {
            sizes.esp = self.size(v, "sizes.esp")?;
        }
        if let Some(v) = &raw.system {
            sizes.system = self.size(v, "sizes.system")?;
        }
        if let Some(v) = &raw.data {
            sizes.data = match v.get_ref() {
                toml::Value::String(s) if s == "rest" => DataSize::Rest,
                _ => DataSize::Bytes(self.size(v, "sizes.data")?),
            };
        }
        Ok(sizes)
    }

    /// One `[vm_storage]` key: `"data"` (also when left out), a partition
    /// to create or one to reuse.
    fn vm_storage(
        &self,
        v: &Option<Spanned<toml::Value>>,
        key: &str,
    ) -> Result<VmStorage, AnswerError> {
        let Some(v) = v else {
            return Ok(VmStorage::Data);
        };
        let help = "use \"data\", { create = \"20GiB\" } or { reuse = \"/dev/sda5\" }";
        match v.get_ref() {
            toml::Value::String(s) if s == "data" => Ok(VmStorage::Data),
            toml::Value::Table(tb) if tb.len() == 1 => {
                let Some((k, inner)) = tb.iter().next() else {
                    return self.err(v.span(), format!("{key}: {help}"));
                };
                let inner = Spanned::new(v.span(), inner.clone());
                match k.as_str() {
                    "create" => Ok(VmStorage::Create(
                        self.size(&inner, &format!("{key}.create"))?,
                    )),
                    "reuse" => Ok(VmStorage::Reuse(
                        self.part(&inner, &format!("{key}.reuse"))?,
                    )),
                    other => self.err(v.span(), format!("{key}: unknown key {other:?}: {help}")),
                }
            }
            other => self.err(
                v.span(),
                format!("{key} = {other} is not VM storage: {help}"),
            ),
        }
    }

    /// `[machine]`, each value checked, the defaults where left out.
    fn machine(&self, raw: &RawMachine) -> Result<MachineAnswers, AnswerError> {
        let mut machine = MachineAnswers::default();
        type Check = fn(&str) -> Result<(), String>;
        let fields: [(&Option<Spanned<String>>, &mut String, Check, &str); 4] = [
            (
                &raw.hostname,
                &mut machine.hostname,
                validate_hostname,
                "hostname",
            ),
            (
                &raw.timezone,
                &mut machine.timezone,
                validate_timezone,
                "timezone",
            ),
            (&raw.locale, &mut machine.locale, validate_locale, "locale"),
            (
                &raw.keyboard,
                &mut machine.keyboard,
                validate_keyboard,
                "keyboard",
            ),
        ];
        for (src, dst, check, key) in fields {
            if let Some(v) = src {
                check(v.get_ref())
                    .or_else(|m| self.err(v.span(), format!("machine.{key}: {m}")))?;
                *dst = v.get_ref().clone();
            }
        }
        Ok(machine)
    }

    /// `[policy]`, the defaults where left out.
    fn policy(&self, p: &RawPolicy) -> Result<PolicyAnswers, AnswerError> {
        let d = PolicyAnswers::default();
        let policy = PolicyAnswers {
            linux_autostart: p.linux_autostart.unwrap_or(d.linux_autostart),
            linux_present_on_boot: p.linux_present_on_boot.unwrap_or(d.linux_present_on_boot),
            windows_enabled: p.windows_enabled.unwrap_or(d.windows_enabled),
            windows_autostart: p.windows_autostart.unwrap_or(d.windows_autostart),
            networking: p.networking.unwrap_or(d.networking),
        };
        if policy.windows_autostart && !policy.windows_enabled {
            return self
                .file_err("policy.windows_autostart = true needs policy.windows_enabled = true");
        }
        Ok(policy)
    }

    /// `[unattended] countdown`, in range.
    fn countdown(&self, u: &RawUnattended) -> Result<u32, AnswerError> {
        let Some(c) = &u.countdown else {
            return Ok(DEFAULT_COUNTDOWN_SECS);
        };
        match u32::try_from(*c.get_ref()) {
            Ok(n) if (1..=MAX_COUNTDOWN_SECS).contains(&n) => Ok(n),
            _ => self.err(
                c.span(),
                format!(
                    "unattended.countdown = {} is out of range: give 1 to {MAX_COUNTDOWN_SECS} seconds \
                     (the plan is shown that long before the install writes; any key cancels)",
                    c.get_ref()
                ),
            ),
        }
    }

    /// `[linux]`: the Debian VM's user and login, or the test guest.
    fn linux(&self, l: &RawLinux) -> Result<LinuxAnswers, AnswerError> {
        use rayos_state::guest::{
            hash_password, validate_password_hash, validate_ssh_key, validate_user,
        };
        let mut out = LinuxAnswers {
            system: l.system,
            ..LinuxAnswers::default()
        };
        if let Some(v) = &l.disk_size {
            out.disk_size = self.size(v, "linux.disk_size")?;
            if out.disk_size < LINUX_DISK_MIN {
                return self.err(
                    v.span(),
                    format!(
                        "linux.disk_size is {}: the Linux VM's disk needs at least {}",
                        human_size(out.disk_size),
                        human_size(LINUX_DISK_MIN)
                    ),
                );
            }
        }
        if let Some(u) = &l.user {
            validate_user(u.get_ref())
                .or_else(|m| self.err(u.span(), format!("linux.user: {m}")))?;
            out.user = Some(u.get_ref().clone());
        }
        match (&l.password, &l.password_hash) {
            (Some(a), Some(_)) => {
                return self.err(
                    a.span(),
                    "give linux.password or linux.password_hash, not both".into(),
                );
            }
            (Some(p), None) => {
                out.password_hash = Some(
                    hash_password(p.get_ref())
                        .or_else(|e| self.err(p.span(), format!("linux.password: {e}")))?,
                );
            }
            (None, Some(h)) => {
                validate_password_hash(h.get_ref())
                    .or_else(|m| self.err(h.span(), format!("linux.password_hash: {m}")))?;
                out.password_hash = Some(h.get_ref().clone());
            }
            (None, None) => {}
        }
        if let Some(k) = &l.ssh_key {
            validate_ssh_key(k.get_ref().trim())
                .or_else(|m| self.err(k.span(), format!("linux.ssh_key: {m}")))?;
            out.ssh_key = Some(k.get_ref().trim().to_string());
        }
        let has_login = out.password_hash.is_some() || out.ssh_key.is_some();
        if out.user.is_some() && !has_login {
            return self.file_err(
                "linux.user needs linux.password (or password_hash) or linux.ssh_key to log in",
            );
        }
        if out.user.is_none() && (has_login || out.system == Some(LinuxSystem::Debian)) {
            return self
                .file_err("the Debian VM needs linux.user (with linux.password or linux.ssh_key)");
        }
        Ok(out)
    }
}

/// Parses a size: a whole number of bytes or a number with a unit
/// (`KiB MiB GiB TiB`, also `K M G T`, all powers of 1024; `KB MB GB TB`
/// powers of 1000), for example `"2GiB"`, `"512 MiB"`, `"1.5GiB"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let mult: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" => KIB,
        "M" | "MiB" => MIB,
        "G" | "GiB" => GIB,
        "T" | "TiB" => TIB,
        "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        _ => {
            return Err(format!(
                "size {s:?} has an unknown unit {unit:?}: use KiB, MiB, GiB or TiB (for example \"2GiB\")"
            ));
        }
    };
    let bad = || format!("size {s:?} is not a number with a unit (for example \"2GiB\")");
    if num.is_empty() {
        return Err(bad());
    }
    let bytes = if let Some((whole, frac)) = num.split_once('.') {
        let w: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| {
                if whole.bytes().all(|b| b.is_ascii_digit()) {
                    too_large(s)
                } else {
                    bad()
                }
            })?
        };
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let f: u64 = frac.parse().map_err(|_| bad())?;
        let scale = 10_u64.pow(frac.len() as u32);
        w.checked_mul(mult)
            .and_then(|a| {
                (f as u128 * mult as u128 / scale as u128)
                    .try_into()
                    .ok()
                    .and_then(|b: u64| a.checked_add(b))
            })
            .ok_or_else(|| too_large(s))?
    } else {
        // A number too long for u64 is too large, not "not a number".
        let n: u64 = match num.parse() {
            Ok(n) => n,
            Err(_) if num.bytes().all(|b| b.is_ascii_digit()) => return Err(too_large(s)),
            Err(_) => return Err(bad()),
        };
        n.checked_mul(mult).ok_or_else(|| too_large(s))?
    };
    if bytes == 0 {
        return Err(format!("size {s:?} must be more than zero"));
    }
    check_size_bound(bytes).map_err(|_| too_large(s))
}

fn too_large(s: &str) -> String {
    format!(
        "size {s:?} is too large: at most {} (1 PiB)",
        human_size(MAX_SIZE)
    )
}

/// `bytes` if it is at most [`MAX_SIZE`] (the planner calls this too, for
/// answers built in code rather than parsed).
pub fn check_size_bound(bytes: u64) -> Result<u64, u64> {
    if bytes > MAX_SIZE {
        Err(bytes)
    } else {
        Ok(bytes)
    }
}

/// A human form of a byte count: `2 GiB`, `1.5 GiB`, `512 MiB`.
pub fn human_size(bytes: u64) -> String {
    let units = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (m, u) in units {
        if bytes >= m {
            let whole = bytes / m;
            let tenth = (bytes % m) * 10 / m;
            return if tenth == 0 {
                format!("{whole} {u}")
            } else {
                format!("{whole}.{tenth} {u}")
            };
        }
    }
    format!("{bytes} B")
}

impl Answers {
    /// Parses an answer file. `path` is only used in messages.
    pub fn parse(path: &str, text: &str) -> Result<Answers, AnswerError> {
        let cx = Ctx { path, text };
        let raw: Raw = toml::from_str(text).map_err(|e| AnswerError {
            path: path.into(),
            line: e.span().map(|s| cx.line_of(s)).unwrap_or(0),
            message: e.message().trim_end().to_string(),
        })?;
        if *raw.version.get_ref() != ANSWERS_VERSION {
            return cx.err(
                raw.version.span(),
                format!(
                    "version {} is not supported: this installer reads answer files of version {ANSWERS_VERSION}",
                    raw.version.get_ref()
                ),
            );
        }
        Ok(Answers {
            target: cx.target(&raw.target)?,
            sizes: cx.sizes(&raw.sizes)?,
            vm_storage: VmStorageAnswers {
                linux: cx.vm_storage(&raw.vm_storage.linux, "vm_storage.linux")?,
                windows: cx.vm_storage(&raw.vm_storage.windows, "vm_storage.windows")?,
            },
            machine: cx.machine(&raw.machine)?,
            policy: cx.policy(&raw.policy)?,
            linux: cx.linux(&raw.linux)?,
            finish: raw.finish.action.unwrap_or_default(),
            countdown_secs: cx.countdown(&raw.unattended)?,
        })
    }

    /// The answers used when none are given (`--sample`, the wizard's start):
    /// free space, all defaults.
    pub fn defaults(mode: Mode) -> Answers {
        Answers {
            target: Target {
                disk: None,
                mode,
                esp: None,
                system: None,
                data: None,
                format: Vec::new(),
                reinstall: false,
            },
            sizes: Sizes::default(),
            vm_storage: VmStorageAnswers {
                linux: VmStorage::Data,
                windows: VmStorage::Data,
            },
            machine: MachineAnswers::default(),
            policy: PolicyAnswers::default(),
            linux: LinuxAnswers::default(),
            finish: FinishAction::default(),
            countdown_secs: DEFAULT_COUNTDOWN_SECS,
        }
    }
}

/// The reference answer file (the one the installer issue specified),
/// exactly as written there: every RayOS version must accept it unchanged.
pub const ISSUE_EXAMPLE: &str = r#"version = 1
[target]
disk = "/dev/vda"
mode = "free-space"        # whole-disk | free-space | reuse
[sizes]
system = "2GiB"
data = "rest"
[vm_storage]
linux = "data"             # or { create = "20GiB" } or { reuse = "/dev/vda5" }
windows = "data"
[machine]
hostname = "rayos-test"
timezone = "UTC"
locale = "en_US.UTF-8"
keyboard = "us"
[policy]
linux_autostart = true
linux_present_on_boot = false
windows_enabled = false
networking = "off"
"#;

#[cfg(test)]
mod tests {
    /// `to_toml` and `parse` agree: every field the writer knows comes
    /// back, line numbers aside.
    #[test]
    fn written_answers_parse_back_to_the_same_answers() {
        fn strip_lines(mut a: Answers) -> Answers {
            for l in [&mut a.target.esp, &mut a.target.system, &mut a.target.data]
                .into_iter()
                .flatten()
            {
                l.line = 0;
            }
            for f in &mut a.target.format {
                f.line = 0;
            }
            for s in [&mut a.vm_storage.linux, &mut a.vm_storage.windows] {
                if let VmStorage::Reuse(r) = s {
                    r.line = 0;
                }
            }
            a
        }
        let mut a = Answers::defaults(Mode::Reuse);
        let at = |n| Located {
            value: PartRef::Number(n),
            line: 0,
        };
        a.target.disk = Some("/tmp/disk \"one\"\\ = [x].img".into());
        a.target.system = Some(at(5));
        a.target.data = Some(at(6));
        a.target.esp = Some(at(1));
        a.target.format = vec![at(6)];
        a.target.reinstall = true;
        a.sizes.system = 3 * GIB / 2;
        a.sizes.data = DataSize::Bytes(10 * GIB + 4096);
        a.vm_storage.linux = VmStorage::Create(20 * GIB);
        a.vm_storage.windows = VmStorage::Reuse(Located {
            value: PartRef::Path("/dev/sda7".into()),
            line: 0,
        });
        a.machine.hostname = "box-1".into();
        a.machine.timezone = "Europe/Berlin".into();
        a.machine.keyboard = "de".into();
        a.policy.windows_enabled = true;
        a.policy.windows_autostart = true;
        a.policy.networking = Networking::ProvisioningOnly;
        a.linux.system = Some(LinuxSystem::Debian);
        a.linux.user = Some("ada".into());
        a.linux.password_hash = Some("$6$salt$hash".into());
        a.linux.ssh_key = Some("ssh-ed25519 AAAA ada@home".into());
        a.linux.disk_size = 40 * GIB;
        a.finish = FinishAction::Poweroff;
        a.countdown_secs = 3;
        let text = a.to_toml(&["made by a test".into()]);
        assert!(
            text.starts_with("# made by a test\nversion = 1\n"),
            "{text}"
        );
        assert!(text.contains("disk_size = \"40GiB\""), "{text}");
        let back = Answers::parse("saved.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(strip_lines(back), a);

        for mode in [Mode::WholeDisk, Mode::FreeSpace] {
            let d = Answers::defaults(mode);
            let text = d.to_toml(&[]);
            let back = Answers::parse("d.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, d, "{text}");
        }
    }

    use super::*;

    #[test]
    fn issue_example_parses_exactly() {
        let a = Answers::parse("answers.toml", ISSUE_EXAMPLE).unwrap();
        assert_eq!(a.target.disk, Some(PathBuf::from("/dev/vda")));
        assert_eq!(a.target.mode, Mode::FreeSpace);
        assert_eq!(a.sizes.system, 2 * GIB);
        assert_eq!(a.sizes.esp, GIB);
        assert_eq!(a.sizes.data, DataSize::Rest);
        assert_eq!(a.vm_storage.linux, VmStorage::Data);
        assert_eq!(a.vm_storage.windows, VmStorage::Data);
        assert_eq!(a.machine.hostname, "rayos-test");
        assert_eq!(a.machine.locale, "en_US.UTF-8");
        assert!(a.policy.linux_autostart && !a.policy.linux_present_on_boot);
        assert!(!a.policy.windows_enabled);
        assert_eq!(a.policy.networking, Networking::Off);
        let p = a.policy.to_policy();
        assert!(p.linux.autostart && !p.windows.enabled && !p.windows.autostart);
    }

    #[test]
    fn linux_section_hashes_the_password_and_checks_logins() {
        let base = "version = 1\n[target]\nmode = \"whole-disk\"\n[linux]\n";
        let a = Answers::parse(
            "a",
            &format!("{base}user = \"alice\"\npassword = \"pw\"\ndisk_size = \"64GiB\"\n"),
        )
        .unwrap();
        let h = a.linux.password_hash.as_deref().unwrap();
        assert!(h.starts_with("$6$") && rayos_state::guest::verify_password("pw", h));
        assert_eq!(a.linux.disk_size, 64 * GIB);
        assert_eq!(
            Answers::parse("a", "version = 1\n[target]\nmode = \"whole-disk\"\n")
                .unwrap()
                .linux
                .disk_size,
            LINUX_DISK_DEFAULT
        );
        let bad = |extra: &str, what: &str| {
            let e = Answers::parse("a", &format!("{base}{extra}")).unwrap_err();
            assert!(e.message.contains(what), "{extra}: {e}");
        };
        bad("user = \"alice\"\n", "needs linux.password");
        bad("password = \"pw\"\n", "needs linux.user");
        bad("system = \"debian\"\n", "needs linux.user");
        bad("user = \"root\"\npassword = \"x\"\n", "system account");
        bad(
            "user = \"a\"\npassword = \"x\"\npassword_hash = \"$6$x$y\"\n",
            "not both",
        );
        bad("user = \"a\"\npassword_hash = \"plain\"\n", "crypt(3)");
        bad("user = \"a\"\nssh_key = \"AAAA\"\n", "OpenSSH");
        bad(
            "user = \"a\"\npassword = \"x\"\ndisk_size = \"1GiB\"\n",
            "at least",
        );
        bad("system = \"fedora\"\n", "unknown variant");
        let t = Answers::parse("a", &format!("{base}system = \"test-guest\"\n")).unwrap();
        assert_eq!(t.linux.system, Some(LinuxSystem::TestGuest));
    }

    #[test]
    fn only_target_is_required_and_defaults_apply() {
        let a = Answers::parse("a", "version = 1\n[target]\nmode = \"whole-disk\"\n").unwrap();
        assert_eq!(a.target.disk, None);
        let d = Answers::defaults(Mode::WholeDisk);
        assert_eq!(a, d);
        assert_eq!(a.sizes.system, 2 * GIB);
        assert_eq!(a.machine, MachineAnswers::default());
        assert_eq!(a.policy, PolicyAnswers::default());

        let e = Answers::parse("a", "version = 1\n[sizes]\nsystem = \"1GiB\"\n").unwrap_err();
        assert!(e.message.contains("target"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text =
            ISSUE_EXAMPLE.replace("keyboard = \"us\"", "keyboard = \"us\"\nkeybaord = \"de\"");
        let e = Answers::parse("answers.toml", &text).unwrap_err();
        assert_eq!(e.line, 16, "{e}");
        assert!(e.message.contains("keybaord"), "{e}");
        assert!(e.to_string().starts_with("answers.toml:16:"), "{e}");

        let e = Answers::parse(
            "a",
            "version = 1\n[target]\nmode = \"free-space\"\n[extra]\nx = 1\n",
        )
        .unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let cases = [
            (
                "mode = \"free-space\"",
                "mode = \"half-disk\"",
                4,
                "half-disk",
            ),
            (
                "system = \"2GiB\"",
                "system = \"2 parsecs\"",
                6,
                "sizes.system",
            ),
            (
                "linux = \"data\"",
                "linux = { grow = \"1GiB\" }",
                9,
                "vm_storage.linux",
            ),
            (
                "hostname = \"rayos-test\"",
                "hostname = \"-bad\"",
                12,
                "machine.hostname",
            ),
            (
                "networking = \"off\"",
                "networking = \"sometimes\"",
                20,
                "sometimes",
            ),
            (
                "linux_autostart = true",
                "linux_autostart = \"yes\"",
                17,
                "",
            ),
        ];
        for (from, to, line, needle) in cases {
            let text = ISSUE_EXAMPLE.replace(from, to);
            let e = Answers::parse("a.toml", &text).unwrap_err();
            assert_eq!(e.line, line, "{to}: {e}");
            assert!(e.message.contains(needle), "{to}: {e}");
        }
        let e = Answers::parse("a", "version = 2\n[target]\nmode = \"free-space\"\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn finish_action_for_the_media() {
        let base = "version = 1\n[target]\nmode = \"whole-disk\"\n";
        assert_eq!(
            Answers::parse("a", base).unwrap().finish,
            FinishAction::Reboot
        );
        for v in ["poweroff", "power-off", "shutdown"] {
            let a = Answers::parse("a", &format!("{base}[finish]\naction = \"{v}\"\n")).unwrap();
            assert_eq!(a.finish, FinishAction::Poweroff);
        }
        let e =
            Answers::parse("a", &format!("{base}[finish]\naction = \"explode\"\n")).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
    }

    #[test]
    fn countdown_of_the_unattended_install() {
        let base = "version = 1\n[target]\nmode = \"whole-disk\"\n";
        assert_eq!(
            Answers::parse("a", base).unwrap().countdown_secs,
            DEFAULT_COUNTDOWN_SECS
        );
        let with = |v: &str| Answers::parse("a", &format!("{base}[unattended]\ncountdown = {v}\n"));
        assert_eq!(with("3").unwrap().countdown_secs, 3);
        assert_eq!(with("3600").unwrap().countdown_secs, 3600);
        for bad in ["0", "-1", "3601", "99999999999"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.line, 5, "{bad}: {e}");
            assert!(e.message.contains("out of range"), "{bad}: {e}");
        }
        let e = with("\"10s\"").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = Answers::parse("a", &format!("{base}[unattended]\ncountdwn = 3\n")).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("2GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size("512 MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("1.5GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0GiB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("2 GiBs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size("1.2.3G").is_err());
        assert_eq!(human_size(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human_size(512 * MIB), "512 MiB");
    }

    /// Issue #10 item 7: 2^64-1 bytes used to reach the planner and
    /// overflow its rounding. Sizes are bounded where they are read.
    #[test]
    fn sizes_beyond_the_bound_are_refused_with_their_line() {
        for (text, line) in [
            ("[sizes]\nesp = \"18446744073709551615\"\n", 5),
            ("[sizes]\nsystem = 9223372036854775807\n", 5),
            ("[sizes]\ndata = \"16384PiB\"\n", 5),
            ("[sizes]\ndata = \"2EiB\"\n", 5),
            (
                "[vm_storage]\nlinux = { create = \"18446744073709551615\" }\n",
                5,
            ),
        ] {
            let e = Answers::parse(
                "a",
                &format!("version = 1\n[target]\nmode = \"whole-disk\"\n{text}"),
            )
            .unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(
                e.message.contains("too large") || e.message.contains("unknown unit"),
                "{text}: {e}"
            );
        }
        assert_eq!(parse_size("1024TiB"), Ok(MAX_SIZE));
        assert!(parse_size("1025TiB").is_err());
        assert!(parse_size(&(MAX_SIZE + 1).to_string()).is_err());
        let e = parse_size("18446744073709551615").unwrap_err();
        assert!(e.contains("at most 1024 TiB"), "{e}");
    }

    #[test]
    fn vm_storage_forms() {
        let text = ISSUE_EXAMPLE
            .replace("linux = \"data\"  ", "linux = { create = \"20GiB\" }")
            .replace("windows = \"data\"", "windows = { reuse = \"/dev/vda5\" }");
        let a = Answers::parse("a", &text).unwrap();
        assert_eq!(a.vm_storage.linux, VmStorage::Create(20 * GIB));
        match &a.vm_storage.windows {
            VmStorage::Reuse(p) => {
                assert_eq!(p.value, PartRef::Path("/dev/vda5".into()));
                assert_eq!(p.line, 10);
                assert_eq!(p.value.number_on("/dev/vda"), Some(5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reuse_needs_roles_and_roles_need_reuse() {
        let base = "version = 1\n[target]\nmode = \"reuse\"\n";
        let e = Answers::parse("a", base).unwrap_err();
        assert!(e.message.contains("target.system"), "{e}");
        let a = Answers::parse(
            "a",
            &format!("{base}system = 5\ndata = \"/dev/sda6\"\nformat = [6]\n"),
        )
        .unwrap();
        assert_eq!(a.target.system.unwrap().value, PartRef::Number(5));
        assert_eq!(a.target.format[0].value, PartRef::Number(6));
        let e = Answers::parse(
            "a",
            "version = 1\n[target]\nmode = \"free-space\"\nsystem = 3\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        let e = Answers::parse("a", &format!("{base}system = \"sda5\"\ndata = 6\n")).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn part_refs_resolve_against_the_disk() {
        assert_eq!(
            PartRef::Path("/dev/nvme0n1p3".into()).number_on("/dev/nvme0n1"),
            Some(3)
        );
        assert_eq!(
            PartRef::Path("/dev/sda12".into()).number_on("/dev/sda"),
            Some(12)
        );
        assert_eq!(
            PartRef::Path("/dev/sdb1".into()).number_on("/dev/sda"),
            None
        );
        assert_eq!(PartRef::Path("/dev/sda".into()).number_on("/dev/sda"), None);
    }
}

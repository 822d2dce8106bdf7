//! `rayos vm`: a client of rayosd's control API (`rayos_api::Client`).
//!
//! The daemon is found at `--socket`, else `$RAYOS_SOCKET`, else
//! `/run/rayos/api.sock`. `--json` prints the daemon's JSON reply instead of
//! text. Exit codes: 0 ok, 1 the operation failed, 2 bad input (from this
//! command line or refused by the daemon as such), 3 the daemon cannot be
//! reached, 4 no such VM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rayos_api::{Client, ClientError, CreateRequest, DiskRequest, EventKind, StopRequest, VmInfo};
use rayos_state::VmKind;
use serde::Serialize;

use super::{Exit, exit};

/// Lines `vm console` prints from the log when not told how many.
const DEFAULT_CONSOLE_LINES: usize = 100;

/// Whether `vm console` attaches to the VM's serial port (else it prints
/// the log): when asked to, or on a terminal unless the log, a number of
/// lines or JSON was asked for — scripts typed at the `rayos>` prompt,
/// which is a terminal, ask for lines and must get them back.
fn attaches(attach: bool, log: bool, lines: Option<usize>, json: bool, tty: bool) -> bool {
    attach || (tty && !log && lines.is_none() && !json)
}

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's API socket.
    #[arg(long, global = true, env = rayos_api::SOCKET_ENV, default_value = rayos_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's JSON reply.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List the VMs and their states.
    List,
    /// Everything about one VM.
    Show { name: String },
    /// Define a new VM (disks are created, or images converted, into its
    /// directory).
    Create(Box<CreateArgs>),
    /// Start a VM: resume its saved state when usable, else cold-boot.
    Start {
        name: String,
        /// Discard a saved state and cold-boot.
        #[arg(long)]
        fresh: bool,
    },
    /// Stop a VM: ACPI power button, then kill after a timeout.
    Stop {
        name: String,
        /// Kill at once.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the guest to shut down (default 60).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Save a VM's state to disk and end its QEMU.
    Suspend { name: String },
    /// Show a VM and give it input (hides the presented one).
    Present { name: String },
    /// Hide a VM (it keeps running, without input).
    Hide { name: String },
    /// The VM's serial console: on a terminal (or with --attach) type into
    /// it until Ctrl-]; otherwise (or with --log or --lines) print its last
    /// lines.
    Console {
        name: String,
        /// Print this many of the last lines (100 with --log), even on a
        /// terminal.
        #[arg(long, conflicts_with = "attach")]
        lines: Option<usize>,
        /// Attach even when stdin is not a terminal (scripts, tests).
        #[arg(long, conflicts_with = "log")]
        attach: bool,
        /// Print the log even on a terminal.
        #[arg(long)]
        log: bool,
    },
    /// Save the VM's display as a PNG file.
    Screenshot { name: String, file: PathBuf },
    /// Remove a VM from the registry (its disks are kept unless --purge).
    Delete {
        name: String,
        #[arg(long)]
        purge: bool,
    },
    /// Mark installation done: eject every medium, end provisioning-only
    /// networking.
    Provisioned { name: String },
    /// Attach or eject installation media (at once when the VM runs; kept
    /// until ejected). `rayos media` lists what can be attached.
    Media {
        name: String,
        #[command(subcommand)]
        action: MediaCmd,
    },
    /// Follow lifecycle events (one line each) until interrupted.
    Events {
        /// Replay kept events after this number first.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Daemon health and start-up notes.
    Health,
    #[command(flatten)]
    Agent(super::vm_agent::AgentCommand),
}

#[derive(clap::Subcommand)]
enum MediaCmd {
    /// Give the VM a medium: an image file (.iso, .img) or a stick
    /// (/dev/sdX) that RayOS does not use.
    Attach {
        source: PathBuf,
        /// How the guest sees it (default: cdrom when the source is named
        /// *.iso or holds an ISO 9660 file system, usb otherwise).
        #[arg(long = "as", value_name = "cdrom|usb")]
        form: Option<FormArg>,
        /// Copy the image file onto the data volume first (progress on
        /// stderr), so the stick can be removed.
        #[arg(long)]
        copy: bool,
    },
    /// Take a medium away (every medium without SOURCE).
    Eject { source: Option<PathBuf> },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormArg {
    Cdrom,
    Usb,
}

impl From<FormArg> for rayos_api::MediaForm {
    fn from(f: FormArg) -> Self {
        match f {
            FormArg::Cdrom => rayos_api::MediaForm::Cdrom,
            FormArg::Usb => rayos_api::MediaForm::Usb,
        }
    }
}

#[derive(clap::Args)]
struct CreateArgs {
    name: String,
    /// linux, windows or generic.
    #[arg(long)]
    kind: VmKind,
    /// Memory in MiB.
    #[arg(long)]
    memory: Option<u64>,
    #[arg(long)]
    cpus: Option<u32>,
    /// A new qcow2 disk of SIZE (e.g. 8G), or an image FILE (qcow2, raw,
    /// vmdk, vhdx, vdi) to convert into the VM's own qcow2; an image with a
    /// backing file or other external files is refused.
    #[arg(long = "disk", value_name = "SIZE|FILE")]
    disks: Vec<String>,
    /// An existing system image (a Linux distribution's qcow2 or raw disk)
    /// to convert in as the VM's first disk (progress on stderr); without
    /// --kernel the VM boots it through UEFI.
    #[arg(long = "import", value_name = "FILE")]
    import: Option<PathBuf>,
    /// Direct kernel boot: the kernel image (copied).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long)]
    cmdline: Option<String>,
    /// Installation or driver media: an image file or a stick (/dev/sdX)
    /// RayOS does not use; kept until ejected or provisioned.
    #[arg(long = "media", value_name = "SOURCE")]
    media: Vec<PathBuf>,
    /// How the guest sees --media (default: cdrom when a source is named
    /// *.iso or holds an ISO 9660 file system, usb otherwise).
    #[arg(long = "media-as", value_name = "cdrom|usb")]
    media_as: Option<FormArg>,
    /// UEFI Secure Boot (default: on for windows, off otherwise).
    #[arg(long, value_name = "on|off")]
    secure_boot: Option<OnOff>,
    /// First-boot settings for a guest that reads them (the Debian VM
    /// image, docs/linux-vm.md): the user to create.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// A file holding the user's password (its first line); only its
    /// SHA-512-crypt hash is sent and stored.
    #[arg(long, value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
    /// The user's password as a crypt(3) hash (`$6$...`).
    #[arg(
        long,
        value_name = "HASH",
        requires = "user",
        conflicts_with = "password_file"
    )]
    password_hash: Option<String>,
    /// An OpenSSH public key file (`.pub`) for the user; the guest enables SSH.
    #[arg(long, value_name = "FILE", requires = "user")]
    ssh_key: Option<PathBuf>,
    /// Guest host name (default: the VM's name).
    #[arg(long, requires = "user")]
    hostname: Option<String>,
    #[arg(long, default_value = "UTC", requires = "user")]
    timezone: String,
    #[arg(long, default_value = "C.UTF-8", requires = "user")]
    locale: String,
    /// Keyboard layout such as us, de or fr-bepo.
    #[arg(long, default_value = "us", requires = "user")]
    keyboard: String,
}

fn bad(msg: String) -> anyhow::Error {
    Exit::new(exit::BAD_INPUT, msg).into()
}

/// The first-boot settings of `vm create` (`None` without `--user`).
fn guest_config(a: &CreateArgs) -> anyhow::Result<Option<rayos_state::GuestConfig>> {
    let Some(user) = &a.user else {
        return Ok(None);
    };
    let password_hash = match (&a.password_file, &a.password_hash) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| bad(format!("cannot read {}: {e}", f.display())))?;
            let pw = text.lines().next().unwrap_or("");
            Some(
                rayos_state::guest::hash_password(pw)
                    .map_err(|e| bad(format!("{}: {e}", f.display())))?,
            )
        }
        (None, Some(h)) => Some(h.clone()),
        (None, None) => None,
    };
    let ssh_authorized_key = match &a.ssh_key {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| bad(format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let g = rayos_state::GuestConfig {
        user: user.clone(),
        password_hash,
        ssh_authorized_key,
        hostname: a.hostname.clone().unwrap_or_else(|| a.name.clone()),
        timezone: a.timezone.clone(),
        locale: a.locale.clone(),
        keyboard: a.keyboard.clone(),
    };
    g.validate().map_err(bad)?;
    Ok(Some(g))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn absolute(p: &Path, what: &str) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| {
        Exit::new(
            exit::BAD_INPUT,
            format!(
                "{what} {} cannot be read ({e}): check the path",
                p.display()
            ),
        )
        .into()
    })
}

fn disk_request(arg: &str) -> anyhow::Result<DiskRequest> {
    let p = Path::new(arg);
    if p.exists() {
        return Ok(DiskRequest::Import(absolute(p, "disk image")?));
    }
    let looks_like_size = arg
        .trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't'])
        .bytes()
        .all(|b| b.is_ascii_digit())
        && !arg.is_empty();
    if looks_like_size {
        Ok(DiskRequest::Size(arg.to_string()))
    } else {
        Err(Exit::new(
            exit::BAD_INPUT,
            format!("--disk {arg:?} is neither an existing image file nor a size such as 8G"),
        )
        .into())
    }
}

fn create_request(a: CreateArgs) -> anyhow::Result<CreateRequest> {
    let guest = guest_config(&a)?;
    let (mut cds, mut sticks) = (Vec::new(), Vec::new());
    for m in &a.media {
        let m = absolute(m, "media")?;
        let form = match a.media_as {
            Some(f) => f,
            None => match rayos_vmm::qemu::media::detect_form(&m) {
                Ok(rayos_vmm::qemu::media::Form::Cdrom) => FormArg::Cdrom,
                Ok(rayos_vmm::qemu::media::Form::Usb) => FormArg::Usb,
                Err(e) => return Err(bad(rayos_base::error::chain(&e))),
            },
        };
        match form {
            FormArg::Cdrom => cds.push(m),
            FormArg::Usb => sticks.push(m),
        }
    }
    Ok(CreateRequest {
        guest,
        name: a.name,
        kind: a.kind,
        memory_mib: a.memory,
        cpus: a.cpus,
        disks: a
            .import
            .map(|p| absolute(&p, "image to import").map(DiskRequest::Import))
            .into_iter()
            .chain(a.disks.iter().map(|d| disk_request(d)))
            .collect::<anyhow::Result<_>>()?,
        kernel: a.kernel.map(|k| absolute(&k, "kernel")).transpose()?,
        initrd: a.initrd.map(|k| absolute(&k, "initrd")).transpose()?,
        cmdline: a.cmdline,
        media: cds,
        usb_media: sticks,
        secure_boot: a.secure_boot.map(|s| matches!(s, OnOff::On)),
    })
}

/// Prints the daemon's `kind` events for VM `name` on stderr as `label
/// <detail>` while a request runs (the thread ends with the process).
fn show_progress(c: &Client, name: &str, kind: EventKind, label: &'static str) {
    let c = c.clone();
    let name = name.to_string();
    let _ = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            let _ = c.events(None, |ev| {
                if ev.vm == name && ev.event == kind {
                    eprintln!("{label} {}", ev.detail);
                }
                true
            });
        });
}

/// Prints the daemon's `importing` events for VM `name` on stderr while
/// the create request runs (the thread ends with the process).
fn show_import_progress(c: &Client, name: &str) {
    let c = c.clone();
    let name = name.to_string();
    let _ = std::thread::Builder::new()
        .name("import-progress".into())
        .spawn(move || {
            let _ = c.events(None, |ev| {
                if ev.vm == name && ev.event == EventKind::Importing {
                    eprintln!("importing {}", ev.detail);
                }
                true
            });
        });
}

/// Maps a client error to the exit codes scripts rely on.
pub(super) fn client_err(e: ClientError) -> anyhow::Error {
    let code = match &e {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Status { status: 404, .. } => exit::NOT_FOUND,
        ClientError::Status {
            status: 400 | 405 | 411 | 413 | 431,
            ..
        } => exit::BAD_INPUT,
        _ => exit::FAILED,
    };
    let msg = rayos_base::error::chain(&e);
    Exit::new(code, msg).into()
}

pub(super) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v).context("encoding the reply")?;
    println!("{text}");
    Ok(())
}

fn state_text(v: &VmInfo) -> String {
    if v.presented {
        format!("{} (presented)", v.state)
    } else if matches!(
        v.state,
        rayos_api::VmState::Running | rayos_api::VmState::Paused
    ) {
        format!("{} (hidden)", v.state)
    } else {
        v.state.to_string()
    }
}

fn print_list(vms: &[VmInfo]) {
    println!(
        "{:<20} {:<8} {:<20} {:>4} {:>8}  ID",
        "NAME", "KIND", "STATE", "CPUS", "MEMORY"
    );
    for v in vms {
        println!(
            "{:<20} {:<8} {:<20} {:>4} {:>5}MiB  {}",
            v.name,
            v.kind.to_string(),
            state_text(v),
            v.cpus,
            v.memory_mib,
            v.id
        );
    }
}

fn print_show(v: &VmInfo) {
    let opt = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("-".to_string(), |p| p.display().to_string())
    };
    println!("name:          {}", v.name);
    println!("id:            {}", v.id);
    println!("kind:          {}", v.kind);
    println!("state:         {}", state_text(v));
    println!("cpus / memory: {} / {} MiB", v.cpus, v.memory_mib);
    println!("network:       {}", if v.network { "on" } else { "off" });
    if let Some(a) = &v.accel {
        println!("accelerator:   {a}");
    }
    println!("provisioned:   {}", v.provisioned);
    println!("tpm:           {}", v.tpm);
    println!(
        "policy:        enabled={} autostart={}",
        v.enabled, v.autostart
    );
    println!("directory:     {}", v.vm_dir.display());
    for d in &v.disks {
        println!("disk:          {}", d.display());
    }
    for m in &v.media {
        println!("media:         {} (cdrom)", m.display());
    }
    for m in &v.usb_media {
        println!("media:         {} (usb stick)", m.display());
    }
    println!(
        "pid:           {}",
        v.pid.map_or("-".into(), |p| p.to_string())
    );
    println!("vnc socket:    {}", opt(&v.vnc_socket));
    println!("console:       {}", opt(&v.console_socket));
    if let Some(g) = &v.guest {
        let o = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        println!("guest host:    {}", o(&g.hostname));
        println!("guest os:      {} (kernel {})", o(&g.os), o(&g.kernel));
        if g.addresses.is_empty() {
            println!("guest address: -");
        }
        for a in &g.addresses {
            println!("guest address: {a}");
        }
    } else if v.state == rayos_api::VmState::Running {
        println!("guest agent:   not answering");
    }
    if let Some(b) = v.last_boot {
        println!("last boot:     {}", b.as_str());
    }
    match &v.saved_state {
        Some(s) => println!(
            "saved state:   {} ({} bytes, {})",
            s.path.display(),
            s.bytes,
            if s.usable {
                "usable"
            } else {
                "not usable: kept aside at the next start"
            }
        ),
        None => println!("saved state:   -"),
    }
    for u in &v.unusable_states {
        println!("unusable state kept: {}", u.display());
    }
    if let Some(e) = &v.last_error {
        println!("last error:    {e}");
    }
    if v.crash_count > 0 {
        println!("crashes:       {}", v.crash_count);
        for l in &v.crash_console {
            println!("  | {l}");
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.socket);
    let json = args.json;
    let reply = |r: Result<rayos_api::ActionReply, ClientError>| -> anyhow::Result<ExitCode> {
        let r = r.map_err(client_err)?;
        if json {
            print_json(&r)?;
        } else {
            println!("{}", r.message);
        }
        Ok(ExitCode::SUCCESS)
    };
    match args.command {
        Command::Agent(a) => return super::vm_agent::run(&c, a, json),
        Command::List => {
            let vms = c.list().map_err(client_err)?;
            if json {
                print_json(&vms)?;
            } else {
                print_list(&vms);
            }
        }
        Command::Show { name } => {
            let v = c.show(&name).map_err(client_err)?;
            if json {
                print_json(&v)?;
            } else {
                print_show(&v);
            }
        }
        Command::Health => {
            let h = c.health().map_err(client_err)?;
            if json {
                print_json(&h)?;
            } else {
                println!(
                    "rayosd {} (pid {}): {}, {} VMs, {} KiB resident",
                    h.version,
                    h.pid,
                    h.status,
                    h.vms,
                    h.rss_kib.map_or("?".into(), |r| r.to_string())
                );
                if let Some(a) = &h.accel {
                    println!("accelerator: {a}");
                }
                if !h.registry_writable {
                    println!("registry is read-only (it could not be read at start-up)");
                }
                for n in &h.notes {
                    println!("note: {n}");
                }
            }
        }
        Command::Create(a) => {
            let req = create_request(*a)?;
            if req
                .disks
                .iter()
                .any(|d| matches!(d, DiskRequest::Import(_)))
            {
                show_import_progress(&c, &req.name);
            }
            // An import of a large image takes as long as it takes.
            let v = c
                .clone()
                .with_timeout(None)
                .create(&req)
                .map_err(client_err)?;
            if json {
                print_json(&v)?;
            } else {
                println!("created VM {} ({}) in {}", v.name, v.id, v.vm_dir.display());
            }
        }
        Command::Start { name, fresh } => return reply(c.start(&name, fresh)),
        Command::Stop {
            name,
            force,
            timeout,
        } => {
            return reply(c.stop(
                &name,
                &StopRequest {
                    force,
                    timeout_secs: timeout,
                },
            ));
        }
        Command::Suspend { name } => return reply(c.action(&name, "suspend", None::<&()>)),
        Command::Present { name } => return reply(c.action(&name, "present", None::<&()>)),
        Command::Hide { name } => return reply(c.action(&name, "hide", None::<&()>)),
        Command::Provisioned { name } => {
            return reply(c.action(&name, "provisioned", None::<&()>));
        }
        Command::Media { name, action } => {
            let req = match action {
                MediaCmd::Attach { source, form, copy } => {
                    if copy {
                        show_progress(&c, &name, EventKind::Copying, "copying");
                    }
                    rayos_api::MediaRequest {
                        action: rayos_api::MediaAction::Attach,
                        source: Some(absolute(&source, "medium")?),
                        form: form.map(Into::into),
                        copy,
                    }
                }
                MediaCmd::Eject { source } => rayos_api::MediaRequest {
                    action: rayos_api::MediaAction::Eject,
                    // The path as attached (a stick that is gone cannot be
                    // resolved any more).
                    source: source.map(|s| std::path::absolute(&s).unwrap_or(s)),
                    form: None,
                    copy: false,
                },
            };
            return reply(c.media(&name, &req));
        }
        Command::Delete { name, purge } => return reply(c.delete(&name, purge)),
        Command::Console {
            name,
            lines,
            attach,
            log,
        } => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
            if attaches(attach, log, lines, json, tty) {
                let v = c.show(&name).map_err(client_err)?;
                let Some(sock) = v.console_socket else {
                    return Err(Exit::new(
                        exit::FAILED,
                        format!(
                            "VM {name} is {}: its console exists while it runs (`rayos vm start {name}`)",
                            v.state
                        ),
                    )
                    .into());
                };
                super::vm_console::attach(&name, &sock)?;
                return Ok(ExitCode::SUCCESS);
            }
            let r = c
                .console(&name, lines.unwrap_or(DEFAULT_CONSOLE_LINES))
                .map_err(client_err)?;
            if json {
                print_json(&r)?;
            } else {
                for l in r.lines {
                    println!("{l}");
                }
            }
        }
        Command::Screenshot { name, file } => {
            let png = c.screenshot(&name).map_err(client_err)?;
            std::fs::write(&file, &png)
                .with_context(|| format!("cannot write the screenshot to {}", file.display()))?;
            if json {
                print_json(&serde_json::json!({ "file": file, "bytes": png.len() }))?;
            } else {
                println!("wrote {} ({} bytes)", file.display(), png.len());
            }
        }
        Command::Events { since } => {
            let mut out = std::io::stdout();
            c.events(since, |ev| {
                let line = if json {
                    serde_json::to_string(&ev).unwrap_or_default()
                } else if ev.detail.is_empty() {
                    format!("{} {} {} -> {}", ev.seq, ev.vm, ev.event, ev.state)
                } else {
                    format!(
                        "{} {} {} -> {}: {}",
                        ev.seq, ev.vm, ev.event, ev.state, ev.detail
                    )
                };
                writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
            })
            .map_err(client_err)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::attaches;

    #[test]
    fn console_attaches_on_a_terminal_unless_the_log_is_asked_for() {
        assert!(attaches(false, false, None, false, true));
        assert!(attaches(true, false, None, false, false), "--attach");
        assert!(!attaches(false, false, None, false, false), "a pipe");
        assert!(!attaches(false, true, None, false, true), "--log");
        assert!(!attaches(false, false, None, true, true), "--json");
        // `vm console linux --lines 3` at the `rayos>` prompt: the e2e
        // polls it for the guest's output and must get its prompt back.
        assert!(!attaches(false, false, Some(3), false, true), "--lines");
    }
}

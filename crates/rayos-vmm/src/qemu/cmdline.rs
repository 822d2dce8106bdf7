//! The QEMU command line of a VM, built from its [`VmSpec`] (pure: no I/O,
//! so every profile is unit tested).
//!
//! Arguments are kept as (flag, value) pairs tagged with whether they belong
//! to the VM's *configuration* (what a saved state depends on) or only to
//! this *launch* (`-daemonize`, `-pidfile`, `-incoming`). The fingerprint
//! hashes the configuration part with the run directory replaced by a
//! placeholder, so moving `/run/rayos` does not invalidate saved states.
//!
//! Safety rules (see `docs/vm-profiles.md`):
//! - Every disk and medium is a `-blockdev` in JSON with its format given
//!   (disks: the registry's format; media: always `raw`, read-only) and,
//!   for qcow2, `"backing": null`: QEMU never probes a format and never
//!   follows a backing file named inside an image.
//! - Paths and names inside QEMU's `key=value,...` options have their
//!   commas doubled ([`opt`]), QEMU's escape; JSON needs none.
//! - The only other files QEMU is told to read are RayOS's own: OVMF,
//!   the VM's VARS copy, and the first-boot credentials `-fw_cfg` hands
//!   the guest, which are files in the VM's run directory
//!   ([`guest_config_file`]) with fixed names.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use rayos_state::VmKind;
use rayos_state::registry::{BootSpec, DiskFormat};

use super::Accel;
use super::media::{self, names};
use crate::VmSpec;

/// Files in a VM's run directory.
pub mod run {
    /// QEMU's QMP socket (the backend's control channel).
    pub const QMP: &str = "qmp.sock";
    /// QEMU's VNC server (the presenter connects here).
    pub const VNC: &str = "vnc.sock";
    /// The guest agent's channel (qemu-guest-agent in the guest).
    pub const QGA: &str = "qga.sock";
    /// The agent bridge's in-VM channel (only with `VmSpec::agent_bridge`).
    pub const BRIDGE: &str = "bridge.sock";
    /// The serial console, for `rayos vm console` (one client at a time).
    pub const CONSOLE: &str = "console.sock";
    /// First-boot settings handed to the guest, one file per credential.
    pub const GUEST_CONFIG: &str = "guest-config";
    /// swtpm's socket that QEMU's TPM device connects to.
    pub const SWTPM: &str = "swtpm.sock";
    /// QEMU's pid file (written when it daemonizes).
    pub const QEMU_PID: &str = "qemu.pid";
    /// swtpm's pid file.
    pub const SWTPM_PID: &str = "swtpm.pid";
    /// QEMU's stderr until it daemonizes (start-up errors land here).
    pub const QEMU_START_LOG: &str = "qemu-start.log";
}

/// Files in a VM's persistent directory (besides `rayos_state::layout::vm`).
pub mod vmdir {
    /// The serial console's output, appended across starts.
    pub const CONSOLE_LOG: &str = "logs/console.log";
    /// swtpm's log.
    pub const SWTPM_LOG: &str = "logs/swtpm.log";
}

/// Firmware images OVMF needs, resolved against a directory (normally
/// `/usr/share/OVMF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    /// The firmware code image (read-only, shared by every VM).
    pub code: PathBuf,
    /// Template copied once to the VM's `ovmf-vars.fd`.
    pub vars_template: PathBuf,
}

impl Ovmf {
    /// OVMF 4M builds: the Secure Boot code with Microsoft keys enrolled in
    /// the VARS template, or the plain code with empty VARS.
    pub fn for_secure_boot(dir: &Path, secure_boot: bool) -> Ovmf {
        if secure_boot {
            Ovmf {
                code: dir.join("OVMF_CODE_4M.secboot.fd"),
                vars_template: dir.join("OVMF_VARS_4M.ms.fd"),
            }
        } else {
            Ovmf {
                code: dir.join("OVMF_CODE_4M.fd"),
                vars_template: dir.join("OVMF_VARS_4M.fd"),
            }
        }
    }
}

/// Hyper-V enlightenments for Windows guests. Under TCG, QEMU 7.2 rejects
/// `hv-vpindex` ("kernel doesn't allow setting HyperV VP_INDEX"), and synic
/// and stimer depend on it, so TCG gets the subset that needs no in-kernel
/// support; the others are accepted but only take effect with KVM.
pub fn hyperv_flags(accel: Accel) -> &'static [&'static str] {
    match accel {
        Accel::Kvm => &[
            "hv-relaxed",
            "hv-vapic",
            "hv-spinlocks=0x1fff",
            "hv-vpindex",
            "hv-runtime",
            "hv-synic",
            "hv-stimer",
            "hv-time",
            "hv-reset",
            "hv-frequencies",
            "hv-tlbflush",
            "hv-ipi",
        ],
        Accel::Tcg => &[
            "hv-relaxed",
            "hv-vapic",
            "hv-spinlocks=0x1fff",
            "hv-runtime",
            "hv-time",
            "hv-reset",
            "hv-frequencies",
        ],
    }
}

/// `text` as a value inside a QEMU `key=value,...` option: a comma would
/// end the value (and let the rest be read as more options), so QEMU wants
/// it doubled.
pub fn opt(text: &str) -> String {
    text.replace(',', ",,")
}

fn opt_path(p: &Path) -> String {
    opt(&p.display().to_string())
}

/// The `-blockdev` of a VM disk: the registry's format, never probed, and
/// for qcow2 no backing chain whatever the image header says.
pub fn disk_blockdev(node: &str, path: &Path, format: DiskFormat) -> String {
    let mut v = json!({
        "node-name": node,
        "driver": match format {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        },
        "discard": "unmap",
        "file": {
            "driver": "file",
            "filename": path.to_string_lossy(),
            "discard": "unmap",
        },
    });
    if format == DiskFormat::Qcow2 {
        v["backing"] = Value::Null;
    }
    v.to_string()
}

/// The `-blockdev` of an installation medium: always raw and read-only, so
/// an "ISO" that is really a qcow2 (or anything else) is seen as bytes. A
/// stick (a `/dev` path, checked by `media::check`) is opened with QEMU's
/// `host_device` driver.
pub fn media_blockdev(node: &str, path: &Path) -> String {
    json!({
        "node-name": node,
        "driver": "raw",
        "read-only": true,
        "file": {
            "driver": if media::is_device_path(path) { "host_device" } else { "file" },
            "filename": path.to_string_lossy(),
            "read-only": true,
        },
    })
    .to_string()
}

/// The xHCI controller's id.
pub const XHCI: &str = "xhci";

/// The `-device` (and `device_add` arguments) of USB stick `i`: read-only
/// mass storage on a fixed port.
pub fn usb_stick_device(i: usize, bootindex: usize) -> String {
    format!(
        "usb-storage,bus={XHCI}.0,port={},id={},drive={},removable=on,bootindex={bootindex}",
        names::usb_port(i),
        names::usb_device(i),
        names::usb_node(i)
    )
}

/// Where the first-boot credential `name` is written before QEMU starts.
pub fn guest_config_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir
        .join(run::GUEST_CONFIG)
        .join(format!("rayos.{name}"))
}

/// How this launch differs from every other launch of the same VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchPart {
    /// Boots from the disks.
    Cold,
    /// Adds `-incoming defer`; the state is fed through QMP afterwards.
    Incoming,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg {
    flag: &'static str,
    value: Option<String>,
    /// Part of the configuration a saved state depends on.
    config: bool,
}

/// A VM's QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    args: Vec<Arg>,
    run_dir: PathBuf,
}

/// The virtio-serial port name of the agent bridge's in-VM channel; in a
/// Linux guest `/dev/virtio-ports/org.rayos.agent.0`.
pub const BRIDGE_PORT: &str = "org.rayos.agent.0";

/// Whether VMs of `kind` have an absolute pointer, which is what lets
/// injected clicks land at screen coordinates: Linux a virtio tablet,
/// Windows a USB tablet on xHCI (its in-box driver). Generic VMs have only
/// the board's PS/2 mouse, which takes relative motion; adding a device
/// changes the fingerprint, so saved states of existing VMs would no
/// longer restore (docs/agent-bridge.md).
pub fn has_absolute_pointer(kind: VmKind) -> bool {
    matches!(kind, VmKind::Linux | VmKind::Windows)
}

impl CommandLine {
    /// Builds the command line; `ovmf_dir` is where OVMF images live.
    pub fn build(spec: &VmSpec, accel: Accel, ovmf_dir: &Path, launch: LaunchPart) -> CommandLine {
        let mut c = CommandLine {
            args: Vec::new(),
            run_dir: spec.run_dir.clone(),
        };
        let def = &spec.def;
        // Run-directory paths as QEMU option values (commas doubled).
        let run = |f: &str| opt_path(&spec.run_dir.join(f));
        let uefi = match &def.boot {
            BootSpec::Uefi { secure_boot } => Some(*secure_boot),
            BootSpec::DirectKernel { .. } => None,
        };
        let secure_boot = uefi == Some(true);
        let windows = def.kind == VmKind::Windows;

        c.cfg(
            "-name",
            format!(
                "guest={},process=rayos-vm-{}",
                opt(&def.name),
                opt(&def.name)
            ),
        );
        c.cfg("-uuid", def.id.to_string());
        c.flag("-nodefaults");
        c.flag("-no-user-config");
        let mut machine = String::from("q35");
        if secure_boot {
            machine.push_str(",smm=on");
        }
        c.cfg("-machine", machine);
        c.cfg("-accel", accel.name().to_string());
        // Host CPU features under KVM (migratable: never invtsc, which blocks
        // saving); the full emulated feature set under TCG.
        let mut cpu = match accel {
            Accel::Kvm => String::from("host,migratable=on"),
            Accel::Tcg => String::from("max"),
        };
        if windows {
            for f in hyperv_flags(accel) {
                cpu.push(',');
                cpu.push_str(f);
            }
        }
        c.cfg("-cpu", cpu);
        c.cfg("-m", format!("{}M", spec.memory_mib));
        c.cfg("-smp", spec.cpus.max(1).to_string());
        // Windows keeps the RTC in local time unless told otherwise.
        c.cfg(
            "-rtc",
            if windows {
                "base=localtime"
            } else {
                "base=utc"
            }
            .to_string(),
        );

        // Control and display, on unix sockets only.
        c.cfg(
            "-chardev",
            format!("socket,id=qmp,path={},server=on,wait=off", run(run::QMP)),
        );
        c.cfg("-mon", "chardev=qmp,mode=control".into());
        c.cfg("-vnc", format!("unix:{}", run(run::VNC)));
        c.cfg(
            "-device",
            if windows { "VGA" } else { "virtio-vga" }.to_string(),
        );
        // An absolute pointer for Linux guests (virtio_input is in every
        // distribution's kernel), so the presenter's pointer lands where it
        // is drawn instead of through the guest's mouse acceleration.
        // Windows has no in-box virtio-input driver: a tablet it cannot
        // drive would take QEMU's pointer events from the PS/2 mouse.
        if def.kind == VmKind::Linux {
            c.cfg("-device", "virtio-tablet-pci".into());
        }
        // Windows drives xHCI and the USB tablet with in-box drivers: the
        // absolute pointer it needs, and the bus USB sticks are plugged
        // into. Other kinds get the controller only when a stick is
        // attached (their command line, and so their saved states, stay as
        // they were).
        if windows || !def.usb_media.is_empty() {
            c.cfg("-device", format!("qemu-xhci,id={XHCI}"));
        }
        if windows {
            c.cfg("-device", format!("usb-tablet,bus={XHCI}.0,port=1"));
        }

        // The serial console is a socket a person can attach to (`rayos vm
        // console`), and QEMU itself appends everything the guest writes to
        // the log file — connected or not, and while rayosd is not running.
        c.cfg(
            "-chardev",
            format!(
                "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
                run(run::CONSOLE),
                opt_path(&spec.vm_dir.join(vmdir::CONSOLE_LOG))
            ),
        );
        c.cfg("-device", "isa-serial,chardev=console".into());

        // Guest agent channel.
        c.cfg("-device", "virtio-serial-pci,id=vser0".into());
        c.cfg(
            "-chardev",
            format!("socket,id=qga,path={},server=on,wait=off", run(run::QGA)),
        );
        c.cfg(
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0".into(),
        );
        // The agent bridge's in-VM channel, only where the policy enables
        // it: with it off the device set is what it always was, so saved
        // states of existing VMs stay usable.
        if spec.agent_bridge {
            c.cfg(
                "-chardev",
                format!(
                    "socket,id=bridge,path={},server=on,wait=off",
                    run(run::BRIDGE)
                ),
            );
            c.cfg(
                "-device",
                format!("virtserialport,bus=vser0.0,chardev=bridge,name={BRIDGE_PORT}"),
            );
        }

        // Firmware.
        match &def.boot {
            BootSpec::DirectKernel {
                kernel,
                initrd,
                cmdline,
            } => {
                c.cfg("-kernel", kernel.display().to_string());
                if let Some(i) = initrd {
                    c.cfg("-initrd", i.display().to_string());
                }
                c.cfg("-append", cmdline.clone());
            }
            BootSpec::Uefi { secure_boot } => {
                let ovmf = Ovmf::for_secure_boot(ovmf_dir, *secure_boot);
                if *secure_boot {
                    // Only SMM code may write the variable store, or Secure
                    // Boot could be switched off from the guest.
                    c.cfg(
                        "-global",
                        "driver=cfi.pflash01,property=secure,value=on".into(),
                    );
                }
                c.cfg(
                    "-drive",
                    format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        opt_path(&ovmf.code)
                    ),
                );
                c.cfg(
                    "-drive",
                    format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        opt_path(&spec.vm_dir.join(rayos_state::layout::vm::OVMF_VARS))
                    ),
                );
            }
        }

        // First-boot settings as systemd credentials on fw_cfg, read by the
        // guest's systemd at boot. Files, not strings: values stay off the
        // process list.
        if let Some(g) = &def.guest {
            for (name, _) in g.credentials() {
                c.cfg(
                    "-fw_cfg",
                    format!(
                        "name=opt/io.systemd.credentials/rayos.{},file={}",
                        opt(name),
                        opt_path(&guest_config_file(&spec.run_dir, name))
                    ),
                );
            }
        }

        if def.tpm {
            c.cfg(
                "-chardev",
                format!("socket,id=chrtpm,path={}", run(run::SWTPM)),
            );
            c.cfg("-tpmdev", "emulator,id=tpm0,chardev=chrtpm".into());
            c.cfg("-device", "tpm-crb,tpmdev=tpm0".into());
        }

        // Disks: virtio for Linux and generic guests; the q35 board's AHCI
        // for Windows, whose installer has no virtio driver built in.
        // bootindex 0 is taken by `-kernel` (QEMU's linuxboot ROM), so disks
        // count from 1 and media follow them.
        let mut ahci_port = 0u32;
        for (i, disk) in def.disks.iter().enumerate() {
            let path = if disk.path.is_absolute() {
                disk.path.clone()
            } else {
                spec.vm_dir.join(&disk.path)
            };
            c.cfg(
                "-blockdev",
                disk_blockdev(&format!("disk{i}"), &path, disk.format),
            );
            if windows {
                c.cfg(
                    "-device",
                    format!(
                        "ide-hd,bus=ide.{ahci_port},drive=disk{i},bootindex={}",
                        i + 1
                    ),
                );
                ahci_port += 1;
            } else {
                c.cfg(
                    "-device",
                    format!("virtio-blk-pci,drive=disk{i},bootindex={}", i + 1),
                );
            }
        }
        // Media stay until ejected. CD-ROMs are `ide-cd` devices on AHCI
        // (`cd<i>`, node `media<i>`); a Windows VM always has the drive
        // `cd0`, empty when no CD is attached, so a CD can be inserted
        // while it runs (AHCI has no hot-plug). USB sticks are read-only
        // `usb-storage` devices on fixed xHCI ports, so a restored VM finds
        // each where it was.
        let first = def.disks.len() + 1;
        for (i, iso) in def.media.iter().enumerate() {
            c.cfg("-blockdev", media_blockdev(&names::cd_node(i), iso));
            c.cfg(
                "-device",
                format!(
                    "ide-cd,bus=ide.{ahci_port},id={},drive={},bootindex={}",
                    names::cd_device(i),
                    names::cd_node(i),
                    first + i
                ),
            );
            ahci_port += 1;
        }
        if windows && def.media.is_empty() {
            c.cfg(
                "-device",
                format!("ide-cd,bus=ide.{ahci_port},id={}", names::cd_device(0)),
            );
        }
        let first = first + def.media.len();
        for (i, stick) in def.usb_media.iter().enumerate() {
            c.cfg("-blockdev", media_blockdev(&names::usb_node(i), stick));
            c.cfg("-device", usb_stick_device(i, first + i));
        }

        if spec.network {
            c.cfg("-netdev", "user,id=net0".into());
            // Windows has a driver for e1000e built in, not for virtio-net.
            c.cfg(
                "-device",
                if windows {
                    "e1000e,netdev=net0"
                } else {
                    "virtio-net-pci,netdev=net0"
                }
                .into(),
            );
        }

        // Per-launch parts.
        // A guest that powers off leaves QEMU in the `shutdown` state
        // instead of exiting, so a clean shutdown (RunState::Shutdown) can
        // be told from a crash (RunState::Exited), even by a daemon that was
        // not running when it happened.
        c.launch("-no-shutdown", None);
        // A plain path argument: no option syntax, so no escaping.
        c.launch(
            "-pidfile",
            Some(spec.run_dir.join(run::QEMU_PID).display().to_string()),
        );
        c.launch("-daemonize", None);
        if launch == LaunchPart::Incoming {
            c.launch("-incoming", Some("defer".into()));
        }
        c
    }

    fn cfg(&mut self, flag: &'static str, value: String) {
        self.args.push(Arg {
            flag,
            value: Some(value),
            config: true,
        });
    }

    fn flag(&mut self, flag: &'static str) {
        self.args.push(Arg {
            flag,
            value: None,
            config: true,
        });
    }

    fn launch(&mut self, flag: &'static str, value: Option<String>) {
        self.args.push(Arg {
            flag,
            value,
            config: false,
        });
    }

    /// The arguments to pass to QEMU.
    pub fn argv(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.args.len() * 2);
        for a in &self.args {
            out.push(a.flag.to_string());
            if let Some(v) = &a.value {
                out.push(v.clone());
            }
        }
        out
    }

    /// The configuration part as text, one argument per line, with the run
    /// directory replaced by `$RUN`: the input of the fingerprint.
    pub fn config_text(&self) -> String {
        let run = self.run_dir.display().to_string();
        // Option values hold the run directory with its commas doubled.
        let run_opt = opt(&run);
        let mut out = String::new();
        for a in self.args.iter().filter(|a| a.config) {
            out.push_str(a.flag);
            if let Some(v) = &a.value {
                out.push(' ');
                if run.is_empty() {
                    out.push_str(v);
                } else {
                    out.push_str(&v.replace(&run_opt, "$RUN").replace(&run, "$RUN"));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayos_state::VmDefinition;
    use rayos_state::registry::DiskSpec;

    pub(crate) fn spec(kind: VmKind, boot: BootSpec, tpm: bool) -> VmSpec {
        VmSpec {
            def: VmDefinition {
                id: "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap(),
                name: "test".into(),
                kind,
                memory_mib: 512,
                cpus: 2,
                disks: vec![DiskSpec {
                    path: "disks/root.qcow2".into(),
                    format: DiskFormat::Qcow2,
                }],
                boot,
                tpm,
                media: vec!["/isos/win.iso".into(), "/isos/virtio.iso".into()],
                usb_media: vec![],
                provisioned: false,
                guest: None,
            },
            vm_dir: "/var/rayos/vm/x".into(),
            run_dir: "/run/rayos/vm/x".into(),
            network: false,
            cpus: 2,
            memory_mib: 512,
            agent_bridge: false,
        }
    }

    fn direct() -> BootSpec {
        BootSpec::DirectKernel {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0 quiet".into(),
        }
    }

    fn has(argv: &[String], flag: &str, value: &str) -> bool {
        argv.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn the_bridge_port_is_there_only_when_the_policy_enables_it() {
        let mut s = spec(VmKind::Linux, direct(), false);
        let build =
            |s: &VmSpec| CommandLine::build(s, Accel::Tcg, Path::new("/ovmf"), LaunchPart::Cold);
        let off = build(&s);
        assert!(!off.argv().iter().any(|a| a.contains("bridge")));
        s.agent_bridge = true;
        let on = build(&s);
        let argv = on.argv();
        assert!(has(
            &argv,
            "-chardev",
            "socket,id=bridge,path=/run/rayos/vm/x/bridge.sock,server=on,wait=off"
        ));
        assert!(has(
            &argv,
            "-device",
            "virtserialport,bus=vser0.0,chardev=bridge,name=org.rayos.agent.0"
        ));
        // A different device set: a saved state of the other is not loaded.
        assert_ne!(off.config_text(), on.config_text());
    }

    #[test]
    fn linux_profile() {
        let s = spec(VmKind::Linux, direct(), false);
        let argv = CommandLine::build(&s, Accel::Tcg, Path::new("/ovmf"), LaunchPart::Cold).argv();
        assert!(has(&argv, "-uuid", "67e55044-10b1-426f-9247-bb680e5fe0c8"));
        assert!(has(&argv, "-machine", "q35"));
        assert!(has(&argv, "-accel", "tcg"));
        assert!(has(&argv, "-append", "console=ttyS0 quiet"));
        assert!(has(&argv, "-vnc", "unix:/run/rayos/vm/x/vnc.sock"));
        assert!(has(&argv, "-device", "virtio-tablet-pci"));
        assert!(has(
            &argv,
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=1"
        ));
        assert!(has(
            &argv,
            "-chardev",
            "socket,id=console,path=/run/rayos/vm/x/console.sock,server=on,wait=off,logfile=/var/rayos/vm/x/logs/console.log,logappend=on"
        ));
        assert!(!argv.iter().any(|a| a == "-fw_cfg"), "no guest settings");
        assert!(argv.contains(&"-nodefaults".to_string()));
        assert!(argv.contains(&"-daemonize".to_string()));
        assert!(argv.contains(&"-no-shutdown".to_string()));
        // No network device at all without the policy allowing it.
        assert!(!argv.iter().any(|a| a.contains("netdev")));
        assert!(!argv.iter().any(|a| a.contains("-incoming")));
        // Media attached while not provisioned.
        assert!(
            argv.iter()
                .any(|a| a.contains("\"filename\":\"/isos/win.iso\""))
        );
        assert!(
            !argv
                .iter()
                .any(|a| a.contains("pflash") || a.contains("tpm"))
        );
    }

    fn guest() -> rayos_state::GuestConfig {
        rayos_state::GuestConfig {
            user: "alice".into(),
            password_hash: Some("$6$salt$hash".into()),
            ssh_authorized_key: None,
            hostname: "box".into(),
            timezone: "UTC".into(),
            locale: "C.UTF-8".into(),
            keyboard: "us".into(),
        }
    }

    #[test]
    fn guest_settings_go_on_fw_cfg_as_files() {
        let mut s = spec(VmKind::Linux, BootSpec::Uefi { secure_boot: false }, false);
        s.def.guest = Some(guest());
        let c = CommandLine::build(&s, Accel::Tcg, Path::new("/o"), LaunchPart::Cold);
        let argv = c.argv();
        assert!(has(
            &argv,
            "-fw_cfg",
            "name=opt/io.systemd.credentials/rayos.user,file=/run/rayos/vm/x/guest-config/rayos.user"
        ));
        assert!(has(
            &argv,
            "-fw_cfg",
            "name=opt/io.systemd.credentials/rayos.password-hash,file=/run/rayos/vm/x/guest-config/rayos.password-hash"
        ));
        assert_eq!(argv.iter().filter(|a| *a == "-fw_cfg").count(), 6);
        // QEMU reads only files of this VM's own run directory for fw_cfg.
        for w in argv.windows(2).filter(|w| w[0] == "-fw_cfg") {
            let file = w[1].split_once(",file=").unwrap().1;
            assert!(
                file.starts_with("/run/rayos/vm/x/guest-config/rayos."),
                "{file}"
            );
        }
        // The values themselves are not on the command line.
        assert!(!argv.iter().any(|a| a.contains("$6$")));
        // fw_cfg names are at most 55 bytes in QEMU.
        for a in argv.iter().filter(|a| a.starts_with("name=")) {
            let name = a.split(',').next().unwrap().trim_start_matches("name=");
            assert!(name.len() <= 55, "{name}");
        }
        // Part of the configuration: a saved state from before does not fit.
        let mut plain = s.clone();
        plain.def.guest = None;
        let p = CommandLine::build(&plain, Accel::Tcg, Path::new("/o"), LaunchPart::Cold);
        assert_ne!(c.config_text(), p.config_text());
    }

    #[test]
    fn windows_profile() {
        let mut s = spec(VmKind::Windows, BootSpec::Uefi { secure_boot: true }, true);
        s.network = true;
        let argv = CommandLine::build(&s, Accel::Tcg, Path::new("/ovmf"), LaunchPart::Cold).argv();
        assert!(has(&argv, "-machine", "q35,smm=on"));
        // The in-box absolute pointer: a USB tablet on xHCI.
        assert!(has(&argv, "-device", "qemu-xhci,id=xhci"));
        assert!(has(&argv, "-device", "usb-tablet,bus=xhci.0,port=1"));
        assert!(!argv.iter().any(|a| a.contains("virtio-tablet")));
        assert!(has(
            &argv,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/ovmf/OVMF_CODE_4M.secboot.fd"
        ));
        assert!(has(
            &argv,
            "-drive",
            "if=pflash,format=raw,unit=1,file=/var/rayos/vm/x/ovmf-vars.fd"
        ));
        assert!(has(&argv, "-device", "tpm-crb,tpmdev=tpm0"));
        assert!(has(
            &argv,
            "-chardev",
            "socket,id=chrtpm,path=/run/rayos/vm/x/swtpm.sock"
        ));
        assert!(has(
            &argv,
            "-device",
            "ide-hd,bus=ide.0,drive=disk0,bootindex=1"
        ));
        assert!(has(
            &argv,
            "-device",
            "ide-cd,bus=ide.1,id=cd0,drive=media0,bootindex=2"
        ));
        assert!(has(
            &argv,
            "-device",
            "ide-cd,bus=ide.2,id=cd1,drive=media1,bootindex=3"
        ));
        assert!(has(&argv, "-device", "e1000e,netdev=net0"));
        let cpu = &argv[argv.iter().position(|a| a == "-cpu").unwrap() + 1];
        assert!(
            cpu.contains("hv-relaxed") && cpu.contains("hv-time"),
            "{cpu}"
        );
        assert!(!cpu.contains("invtsc"), "{cpu}");
        assert!(!cpu.contains("hv-vpindex"), "TCG rejects vpindex: {cpu}");

        // Without media (ejected) the CD drive stays, empty, so a CD can
        // be inserted while the VM runs.
        s.def.media.clear();
        let argv = CommandLine::build(&s, Accel::Tcg, Path::new("/ovmf"), LaunchPart::Cold).argv();
        assert!(!argv.iter().any(|a| a.contains(".iso")));
        assert!(has(&argv, "-device", "ide-cd,bus=ide.1,id=cd0"));

        let s = spec(
            VmKind::Windows,
            BootSpec::Uefi { secure_boot: false },
            false,
        );
        let argv = CommandLine::build(&s, Accel::Kvm, Path::new("/ovmf"), LaunchPart::Cold).argv();
        assert!(has(&argv, "-machine", "q35"));
        assert!(argv.iter().any(|a| a.ends_with("/ovmf/OVMF_CODE_4M.fd")));
        assert!(argv.iter().any(|a| a.contains("hv-vpindex")));
    }

    fn blockdevs(argv: &[String]) -> Vec<serde_json::Value> {
        argv.windows(2)
            .filter(|w| w[0] == "-blockdev")
            .map(|w| serde_json::from_str(&w[1]).unwrap())
            .collect()
    }

    #[test]
    fn disks_and_media_have_explicit_formats_and_no_backing() {
        let mut s = spec(VmKind::Linux, direct(), false);
        s.def.disks.push(DiskSpec {
            path: "/abs/raw.img".into(),
            format: DiskFormat::Raw,
        });
        let argv = CommandLine::build(&s, Accel::Tcg, Path::new("/o"), LaunchPart::Cold).argv();
        assert!(
            !argv.iter().any(|a| a == "-drive"),
            "no -drive without pflash"
        );
        let b = blockdevs(&argv);
        assert_eq!(b.len(), 4, "{b:?}");
        assert_eq!(b[0]["node-name"], "disk0");
        assert_eq!(b[0]["driver"], "qcow2");
        assert!(b[0].get("backing").is_some_and(|v| v.is_null()));
        assert_eq!(b[0]["file"]["filename"], "/var/rayos/vm/x/disks/root.qcow2");
        assert_eq!(b[1]["driver"], "raw");
        assert!(b[1].get("backing").is_none(), "raw has no backing option");
        assert_eq!(b[1]["file"]["filename"], "/abs/raw.img");
        for (m, iso) in b[2..].iter().zip(["/isos/win.iso", "/isos/virtio.iso"]) {
            assert_eq!(m["driver"], "raw", "media are raw whatever they hold");
            assert_eq!(m["read-only"], true);
            assert_eq!(m["file"]["filename"], iso);
        }
        assert!(has(
            &argv,
            "-device",
            "virtio-blk-pci,drive=disk1,bootindex=2"
        ));
        assert!(has(
            &argv,
            "-device",
            "ide-cd,bus=ide.0,id=cd0,drive=media0,bootindex=3"
        ));
        // No xHCI for a Linux VM without sticks: its command line (and so
        // its saved states) stays as before.
        assert!(!argv.iter().any(|a| a.contains("xhci")));

        // A stick, a /dev path: host_device, raw, read-only, USB storage
        // on a fixed port, booting after the CDs.
        s.def.usb_media = vec!["/dev/sdb".into(), "/sticks/copy.img".into()];
        let argv = CommandLine::build(&s, Accel::Tcg, Path::new("/o"), LaunchPart::Cold).argv();
        let b = blockdevs(&argv);
        assert_eq!(b.len(), 6, "{b:?}");
        assert_eq!(b[4]["node-name"], "usbmedia0");
        assert_eq!(b[4]["driver"], "raw");
        assert_eq!(b[4]["read-only"], true);
        assert_eq!(b[4]["file"]["driver"], "host_device");
        assert_eq!(b[4]["file"]["read-only"], true);
        assert_eq!(b[5]["file"]["driver"], "file");
        assert!(has(&argv, "-device", "qemu-xhci,id=xhci"));
        assert!(has(
            &argv,
            "-device",
            "usb-storage,bus=xhci.0,port=2,id=usb0,drive=usbmedia0,removable=on,bootindex=5"
        ));
        assert!(has(
            &argv,
            "-device",
            "usb-storage,bus=xhci.0,port=3,id=usb1,drive=usbmedia1,removable=on,bootindex=6"
        ));
    }

    #[test]
    fn commas_in_paths_and_names_are_escaped() {
        let mut s = spec(VmKind::Windows, BootSpec::Uefi { secure_boot: false }, true);
        s.def.name = "a,b".into();
        s.vm_dir = "/d,1/vm".into();
        s.run_dir = "/r,2".into();
        s.def.media = vec!["/m,3/x.iso".into()];
        s.def.guest = Some(guest());
        let cmd = CommandLine::build(&s, Accel::Tcg, Path::new("/o,4"), LaunchPart::Cold);
        let argv = cmd.argv();
        assert!(has(&argv, "-name", "guest=a,,b,process=rayos-vm-a,,b"));
        assert!(has(
            &argv,
            "-chardev",
            "socket,id=qmp,path=/r,,2/qmp.sock,server=on,wait=off"
        ));
        assert!(has(&argv, "-vnc", "unix:/r,,2/vnc.sock"));
        assert!(has(&argv, "-pidfile", "/r,2/qemu.pid"), "a plain path");
        assert!(has(
            &argv,
            "-chardev",
            "socket,id=console,path=/r,,2/console.sock,server=on,wait=off,logfile=/d,,1/vm/logs/console.log,logappend=on"
        ));
        assert!(has(
            &argv,
            "-fw_cfg",
            "name=opt/io.systemd.credentials/rayos.user,file=/r,,2/guest-config/rayos.user"
        ));
        assert!(has(
            &argv,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/o,,4/OVMF_CODE_4M.fd"
        ));
        assert!(has(
            &argv,
            "-drive",
            "if=pflash,format=raw,unit=1,file=/d,,1/vm/ovmf-vars.fd"
        ));
        // JSON needs no escaping: the paths are verbatim.
        let b = blockdevs(&argv);
        assert_eq!(b[0]["file"]["filename"], "/d,1/vm/disks/root.qcow2");
        assert_eq!(b[1]["file"]["filename"], "/m,3/x.iso");
        // The fingerprint still ignores where the run directory is.
        assert!(!cmd.config_text().contains("/r,"), "{}", cmd.config_text());
    }

    #[test]
    fn fingerprint_input_ignores_launch_parts_and_run_dir() {
        let s = spec(VmKind::Linux, direct(), false);
        let cold = CommandLine::build(&s, Accel::Tcg, Path::new("/o"), LaunchPart::Cold);
        let inc = CommandLine::build(&s, Accel::Tcg, Path::new("/o"), LaunchPart::Incoming);
        assert!(
            inc.argv()
                .windows(2)
                .any(|w| w[0] == "-incoming" && w[1] == "defer")
        );
        assert_eq!(cold.config_text(), inc.config_text());
        let mut moved = s.clone();
        moved.run_dir = "/tmp/elsewhere".into();
        let m = CommandLine::build(&moved, Accel::Tcg, Path::new("/o"), LaunchPart::Cold);
        assert_eq!(cold.config_text(), m.config_text());
        assert!(!cold.config_text().contains("/run/rayos"));

        let mut bigger = s.clone();
        bigger.memory_mib = 1024;
        let b = CommandLine::build(&bigger, Accel::Tcg, Path::new("/o"), LaunchPart::Cold);
        assert_ne!(cold.config_text(), b.config_text());
        let mut net = s.clone();
        net.network = true;
        let n = CommandLine::build(&net, Accel::Tcg, Path::new("/o"), LaunchPart::Cold);
        assert_ne!(cold.config_text(), n.config_text());
        let k = CommandLine::build(&s, Accel::Kvm, Path::new("/o"), LaunchPart::Cold);
        assert_ne!(cold.config_text(), k.config_text());
    }
}

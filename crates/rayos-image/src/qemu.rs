//! A QEMU + OVMF harness for booting media in tests and in `cargo xtask e2e`:
//! q35 under TCG, OVMF with a VARS file (a fresh copy of the template unless
//! one is passed in, so Boot#### entries persist across boots of one test),
//! the serial console on a unix socket that the handle holds for the
//! machine's life (typing; a thread copies the output to a log file),
//! and a QMP socket.
//!
//! Protocol: `start` spawns QEMU; `wait_for` polls the serial log for a
//! marker until a deadline and fails early, with the log's tail, when QEMU
//! exits; `qmp` sends one command on a fresh QMP connection. Dropping the
//! handle kills QEMU, so a failing test never leaves it running.
//!
//! Display: none by default. With `Config::vga` the machine gets a
//! standard VGA (`-device VGA`: OVMF's GOP, so the guest kernel finds efifb,
//! later `bochs`), still shown nowhere on the host (`-display none`);
//! `screendump` reads it back (QMP `screendump`, PPM or PNG) and `send_keys`
//! types on the machine's PS/2 keyboard (QMP `input-send-event`, QEMU key
//! codes), standing in for a person at the machine.
//!
//! USB: [`Medium::Usb`] sticks sit on one xHCI controller (`xhci`);
//! [`Qemu::plug_usb_stick`] hot-plugs another while the machine runs.
//!
//! Limits: x86_64 only; one serial port; one display.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Why a QEMU machine could not be started, driven or waited on.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// An OVMF file is missing; holds its path.
    #[error("OVMF file {0} is missing: install the Debian package ovmf")]
    NoFirmware(PathBuf),
    /// The work directory or the VARS copy could not be made.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start qemu-system-x86_64 (install qemu-system-x86)")]
    Spawn(#[source] io::Error),
    /// QEMU started but did not open its serial socket (it exited, or a
    /// minute passed).
    #[error("QEMU did not open its serial socket {path}: {why}")]
    NoSerial {
        /// The socket.
        path: PathBuf,
        /// What happened, with QEMU's stderr.
        why: String,
    },
    /// A marker did not come on the serial console in time.
    #[error(
        "timed out after {secs}s waiting for [{marker}] on the serial console; last output:\n{tail}"
    )]
    Timeout {
        /// The marker waited for.
        marker: String,
        /// How long was waited, in seconds.
        secs: u64,
        /// The console's last lines.
        tail: String,
    },
    /// QEMU exited before the marker came.
    #[error(
        "QEMU exited ({status}) before [{marker}] appeared on the serial console; last output:\n{tail}"
    )]
    Exited {
        /// The marker waited for.
        marker: String,
        /// QEMU's exit status.
        status: ExitStatus,
        /// The console's last lines.
        tail: String,
    },
    /// QEMU did not exit in time; holds the seconds waited.
    #[error("QEMU did not exit within {0}s")]
    NoExit(u64),
    /// A QMP command could not be sent or its reply read.
    #[error("QMP command {command} failed")]
    Qmp {
        /// The command.
        command: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// QEMU answered a QMP command with an error.
    #[error("QMP command {command} returned an error: {error}")]
    QmpError {
        /// The command.
        command: String,
        /// QEMU's error.
        error: String,
    },
    /// A screen dump is not a binary PPM.
    #[error("{path} is not a binary PPM (P6, 8 bits per channel): {why}")]
    Ppm {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// UEFI firmware: the code image and the VARS template.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The firmware code image (read-only).
    pub code: PathBuf,
    /// The VARS template copied for each machine.
    pub vars_template: PathBuf,
}

impl Firmware {
    /// Debian's 4 MiB OVMF without Secure Boot keys.
    pub fn ovmf_4m() -> Result<Self, QemuError> {
        Self::from_dir(Path::new("/usr/share/OVMF"))
    }

    /// `OVMF_CODE_4M.fd` and `OVMF_VARS_4M.fd` from `dir` (the host's, or
    /// the ones staged into the RayOS image).
    pub fn from_dir(dir: &Path) -> Result<Self, QemuError> {
        let code = dir.join("OVMF_CODE_4M.fd");
        let vars_template = dir.join("OVMF_VARS_4M.fd");
        for p in [&code, &vars_template] {
            if !p.exists() {
                return Err(QemuError::NoFirmware(p.clone()));
            }
        }
        Ok(Self {
            code,
            vars_template,
        })
    }
}

/// A medium attached to the machine.
#[derive(Debug, Clone)]
pub enum Medium {
    /// A CD-ROM on the q35 AHCI controller (read-only).
    Cdrom(PathBuf),
    /// A virtio disk with the given logical sector size (512 or 4096).
    Disk {
        /// The image file.
        path: PathBuf,
        /// Its logical sector size (512 or 4096).
        sector_size: u32,
    },
    /// A removable USB stick on an xHCI controller.
    Usb(PathBuf),
}

/// How to start a machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// Receives the VARS copy, `serial.log` and `qmp.sock`.
    pub workdir: PathBuf,
    /// The UEFI firmware.
    pub firmware: Firmware,
    /// An existing VARS file to boot with (kept across boots); `None`: a fresh
    /// copy of the template in `workdir`, replacing any earlier one.
    pub vars: Option<PathBuf>,
    /// The media attached, in order.
    pub media: Vec<Medium>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Exit instead of rebooting when the guest reboots (`-no-reboot`).
    pub no_reboot: bool,
    /// A standard VGA display device (`-device VGA`); otherwise none.
    pub vga: bool,
    /// An xHCI controller (`xhci`) even without a [`Medium::Usb`], so a
    /// stick can be plugged in later ([`Qemu::plug_usb_stick`]).
    pub usb_controller: bool,
    /// Extra QEMU arguments, appended last.
    pub extra_args: Vec<String>,
}

impl Config {
    /// A machine with Debian's OVMF, 1 GiB and one CPU, working in `workdir`.
    pub fn new(workdir: &Path) -> Result<Self, QemuError> {
        Ok(Self {
            workdir: workdir.to_path_buf(),
            firmware: Firmware::ovmf_4m()?,
            vars: None,
            media: Vec::new(),
            memory_mib: 1024,
            cpus: 1,
            no_reboot: false,
            vga: false,
            usb_controller: false,
            extra_args: Vec::new(),
        })
    }

    /// Adds a medium.
    pub fn medium(mut self, m: Medium) -> Self {
        self.media.push(m);
        self
    }
}

/// A running QEMU; killed on drop.
pub struct Qemu {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
    /// The VARS file this machine writes its UEFI variables to.
    pub vars: PathBuf,
    /// Bytes of the serial log already matched by `wait_for`.
    consumed: usize,
    /// The serial console's one connection, made before the machine ran
    /// (see `start`); a thread copies its output into `serial`.
    serial_conn: UnixStream,
}

fn prep(path: &Path) -> impl FnOnce(io::Error) -> QemuError + '_ {
    move |source| QemuError::Prepare {
        path: path.to_path_buf(),
        source,
    }
}

impl Qemu {
    /// Starts a machine as `cfg` says.
    pub fn start(cfg: &Config) -> Result<Self, QemuError> {
        fs::create_dir_all(&cfg.workdir).map_err(prep(&cfg.workdir))?;
        let vars = match &cfg.vars {
            Some(v) => v.clone(),
            None => {
                let v = cfg.workdir.join("OVMF_VARS.fd");
                fs::copy(&cfg.firmware.vars_template, &v).map_err(prep(&v))?;
                v
            }
        };
        let serial = cfg.workdir.join("serial.log");
        let qmp = cfg.workdir.join("qmp.sock");
        let serial_sock = cfg.workdir.join("serial.sock");
        fs::write(&serial, b"").map_err(prep(&serial))?;
        let _ = fs::remove_file(&qmp);
        let _ = fs::remove_file(&serial_sock);

        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-machine", "q35,smm=off", "-accel", "tcg"])
            // The machine under test has no hardware virtualization, as a
            // PC with VT-x/AMD-V off in its firmware: QEMU's default CPU
            // (qemu64) offers SVM, which TCG emulates, and RayOS would then
            // load kvm_amd and try nested guests on emulated SVM. The
            // e2e expects `RAYOS_ACCEL:tcg` with the firmware reason.
            //
            // RDRAND, as every x86-64 PC of the last decade has: the
            // kernel then trusts it and its random pool is ready during
            // early boot. Without it the pool became ready seconds into
            // userspace, and the kernel's patching of its `crng_is_ready`
            // static key while another vCPU was at that very site (every
            // new process's first malloc calls getrandom) hung QEMU 7.2's
            // TCG: a soft lockup at `__x64_sys_getrandom` on a `66 90`
            // NOP (CI's net e2e install stuck 40 min): a known race of
            // TCG's with code another vCPU modifies, seen by other kernel
            // CIs on 7.2 (ClangBuiltLinux/boot-utils#111) and fixed in
            // QEMU's master in July 2023 (commits cb62bd15, deba7870);
            // Debian 12 ships 7.2. docs/kvm.md, Testing.
            .args(["-cpu", "qemu64,-svm,+rdrand"])
            .args([
                "-m",
                &cfg.memory_mib.to_string(),
                "-smp",
                &cfg.cpus.to_string(),
            ])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                cfg.firmware.code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            // The serial console is a socket that this handle connects to
            // before the machine runs (`wait=on`) and keeps for its whole
            // life: a thread copies the output into `serial.log`, input is
            // typed on it (`send_serial`). Not QEMU's own `logfile=`:
            // QEMU 7.2 logs a byte its UART could not send to the socket
            // (a client not reading fast enough, or just gone) and again
            // when the UART's retry sends it, which doubled bytes in the
            // wizard's screen (`Summmary`) and in `status` output; with no
            // log file a full socket only makes the UART wait.
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=on",
                serial_sock.display(),
            ))
            .args(["-serial", "chardev:ser0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=qmp,path={},server=on,wait=off",
                qmp.display()
            ))
            .args(["-mon", "chardev=qmp,mode=control"]);
        let mut have_xhci = false;
        for (i, m) in cfg.media.iter().enumerate() {
            match m {
                Medium::Cdrom(p) => {
                    cmd.arg("-drive")
                        .arg(format!(
                            "if=none,id=m{i},media=cdrom,readonly=on,format=raw,file={}",
                            p.display()
                        ))
                        .arg("-device")
                        .arg(format!("ide-cd,drive=m{i},bootindex={i}"));
                }
                Medium::Disk { path, sector_size } => {
                    cmd.arg("-drive")
                        .arg(format!("if=none,id=m{i},format=raw,cache=unsafe,file={}", path.display()))
                        .arg("-device")
                        .arg(format!(
                            "virtio-blk-pci,drive=m{i},bootindex={i},logical_block_size={sector_size},physical_block_size={sector_size}"
                        ));
                }
                Medium::Usb(p) => {
                    if !have_xhci {
                        cmd.args(["-device", "qemu-xhci,id=xhci"]);
                        have_xhci = true;
                    }
                    cmd.arg("-drive")
                        .arg(format!(
                            "if=none,id=m{i},format=raw,cache=unsafe,file={}",
                            p.display()
                        ))
                        .arg("-device")
                        .arg(format!(
                            "usb-storage,bus=xhci.0,drive=m{i},removable=on,bootindex={i}"
                        ));
                }
            }
        }
        if cfg.usb_controller && !have_xhci {
            cmd.args(["-device", "qemu-xhci,id=xhci"]);
        }
        if cfg.vga {
            cmd.args(["-device", "VGA"]);
        }
        if cfg.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.args(&cfg.extra_args);
        let log = cfg.workdir.join("qemu.stderr");
        let stderr = fs::File::create(&log).map_err(prep(&log))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(QemuError::Spawn)?;
        let conn = match connect_serial(&mut child, &serial_sock, &log) {
            Ok(c) => c,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuError::NoSerial {
                    path: serial_sock,
                    why,
                });
            }
        };
        let mut out = conn.try_clone().map_err(prep(&serial_sock))?;
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&serial)
            .map_err(prep(&serial))?;
        // Ends at EOF, when QEMU goes. Unbuffered: `wait_for` reads the
        // file while the guest runs.
        std::thread::spawn(move || io::copy(&mut out, &mut file));
        Ok(Self {
            child,
            serial,
            qmp,
            vars,
            consumed: 0,
            serial_conn: conn,
        })
    }

    /// The whole serial log so far (lossy UTF-8).
    pub fn serial_output(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Path of the serial log.
    pub fn serial_log(&self) -> &Path {
        &self.serial
    }

    /// Waits until `marker` appears in the serial output after the previous
    /// match; returns the line holding it.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, QemuError> {
        self.wait_for_any(&[marker], timeout).map(|(_, line)| line)
    }

    /// Waits until the first of `markers` appears after the previous match;
    /// returns its index and the line holding it. Lets a test stop at a
    /// failure marker instead of waiting out the timeout.
    pub fn wait_for_any(
        &mut self,
        markers: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String), QemuError> {
        let child = &mut self.child;
        let found = wait_in_log(&self.serial, &mut self.consumed, markers, timeout, || {
            child.try_wait().ok().flatten()
        });
        let marker = markers.join(" | ");
        match found {
            Ok(hit) => Ok(hit),
            Err(Some(status)) => Err(QemuError::Exited {
                marker,
                status,
                tail: self.tail(),
            }),
            Err(None) => Err(QemuError::Timeout {
                marker,
                secs: timeout.as_secs(),
                tail: self.tail(),
            }),
        }
    }

    /// The last 40 lines of the serial log (and QEMU's stderr if it wrote any).
    pub fn tail(&self) -> String {
        let text = self.serial_output();
        let lines: Vec<&str> = text.lines().collect();
        let mut tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let stderr = self.serial.with_file_name("qemu.stderr");
        if let Ok(e) = fs::read_to_string(stderr) {
            // QEMU's note that it waits for the serial client is not news.
            let e: Vec<&str> = e
                .lines()
                .filter(|l| !l.starts_with("QEMU waiting for connection"))
                .collect();
            let e = e.join("\n");
            if !e.trim().is_empty() {
                tail.push_str("\n[qemu stderr] ");
                tail.push_str(e.trim());
            }
        }
        tail
    }

    /// Types `text` on the serial console.
    pub fn send_serial(&self, text: &str) -> Result<(), QemuError> {
        let ioerr = |source| QemuError::Qmp {
            command: "serial input".into(),
            source,
        };
        // `&UnixStream` writes: no lock or `&mut self` needed.
        let mut s = &self.serial_conn;
        s.write_all(text.as_bytes()).map_err(ioerr)?;
        s.flush().map_err(ioerr)?;
        // Pace the typing: QEMU reads from the socket only as the guest
        // empties the UART's FIFO, and a busy guest takes a while per
        // FIFO-full; the callers' next step (often another key, where an
        // Esc followed at once by a key would read as Alt+key) expects this
        // text to have arrived.
        let linger = 300 + 25 * text.len() as u64;
        std::thread::sleep(Duration::from_millis(linger));
        Ok(())
    }

    /// Runs one QMP command and returns its `return` value.
    pub fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value, QemuError> {
        let ioerr = |source| QemuError::Qmp {
            command: command.to_string(),
            source,
        };
        let stream = UnixStream::connect(&self.qmp).map_err(ioerr)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(ioerr)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(ioerr)?);
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).map_err(ioerr)?; // greeting
        let mut send = |v: Value| -> Result<Value, QemuError> {
            writeln!(writer, "{v}").map_err(ioerr)?;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_err(ioerr)? == 0 {
                    return Err(ioerr(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "QMP closed",
                    )));
                }
                let reply: Value = serde_json::from_str(&line)
                    .map_err(|e| ioerr(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                if let Some(r) = reply.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = reply.get("error") {
                    return Err(QemuError::QmpError {
                        command: command.to_string(),
                        error: e.to_string(),
                    });
                }
                // An asynchronous event: keep reading for the reply.
            }
        };
        send(json!({"execute": "qmp_capabilities"}))?;
        let mut req = json!({"execute": command});
        if let Some(a) = arguments {
            req["arguments"] = a;
        }
        send(req)
    }

    /// Plugs a removable USB stick holding the raw image `path` into the
    /// running machine's xHCI controller (QMP `blockdev-add` + `device_add
    /// usb-storage`), as a person inserting a stick would. `id` names the
    /// stick's block node and device; needs a controller
    /// ([`Config::usb_controller`] or a [`Medium::Usb`]).
    pub fn plug_usb_stick(&self, id: &str, path: &Path) -> Result<(), QemuError> {
        let abs = std::path::absolute(path).map_err(prep(path))?;
        let node = format!("{id}-node");
        self.qmp(
            "blockdev-add",
            Some(json!({
                "driver": "raw",
                "node-name": node,
                "file": { "driver": "file", "filename": abs.display().to_string() },
            })),
        )?;
        self.qmp(
            "device_add",
            Some(json!({
                "driver": "usb-storage",
                "id": id,
                "bus": "xhci.0",
                "drive": node,
                "removable": true,
            })),
        )?;
        Ok(())
    }

    /// Saves the machine's display to `path`: PNG when the name ends in
    /// `.png`, PPM (P6) otherwise. Needs a display device (`Config::vga`).
    pub fn screendump(&self, path: &Path) -> Result<(), QemuError> {
        let abs = std::path::absolute(path).map_err(prep(path))?;
        let mut args = json!({ "filename": abs.display().to_string() });
        if abs
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        {
            args["format"] = json!("png");
        }
        self.qmp("screendump", Some(args)).map(|_| ())
    }

    /// The machine's display now, as `0x00RRGGBB` pixels; the PPM is kept
    /// at `path`.
    pub fn screen(&self, path: &Path) -> Result<Image, QemuError> {
        self.screendump(path)?;
        read_ppm(path)
    }

    /// Presses `keys` in order and releases them in reverse order: one key
    /// (`["a"]`) or a chord (`["ctrl", "alt", "home"]`). Names are QEMU
    /// key codes (`QKeyCode`: `a`, `ret`, `f1`, `ctrl`, `alt`, `home`, ...).
    /// Each event is its own command with a short pause after it, so the
    /// guest's keyboard driver sees them one by one, like typing.
    pub fn send_keys(&self, keys: &[&str]) -> Result<(), QemuError> {
        let downs = keys.iter().map(|k| (*k, true));
        let ups = keys.iter().rev().map(|k| (*k, false));
        for (key, down) in downs.chain(ups) {
            let event = json!({
                "type": "key",
                "data": { "down": down, "key": { "type": "qcode", "data": key } }
            });
            self.qmp("input-send-event", Some(json!({ "events": [event] })))?;
            std::thread::sleep(Duration::from_millis(60));
        }
        Ok(())
    }

    /// Waits for QEMU to exit by itself (guest power-off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::NoExit(timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to QEMU's serial socket, which it opens early in its start and
/// then waits on (`wait=on`) before running the machine; gives up when
/// QEMU exits or after a minute, with its stderr.
fn connect_serial(child: &mut Child, sock: &Path, stderr: &Path) -> Result<UnixStream, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let said = || fs::read_to_string(stderr).unwrap_or_default();
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("QEMU exited ({status}): {}", said().trim()));
                }
                if Instant::now() >= deadline {
                    return Err(format!("{e} after 60 s: {}", said().trim()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A screen image: `0x00RRGGBB` pixels, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels, row-major.
    pub pixels: Vec<u32>,
}

/// Reads a binary PPM (P6, maxval 255) such as QEMU's `screendump` writes.
pub fn read_ppm(path: &Path) -> Result<Image, QemuError> {
    let bytes = fs::read(path).map_err(prep(path))?;
    parse_ppm(&bytes).map_err(|why| QemuError::Ppm {
        path: path.to_path_buf(),
        why,
    })
}

fn parse_ppm(b: &[u8]) -> Result<Image, String> {
    // Header: "P6", width, height, maxval, separated by whitespace (and
    // `#` comments), then exactly one whitespace byte before the pixels.
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'#') {
            if b[i] == b'#' {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("truncated header".into());
        }
        fields.push(String::from_utf8_lossy(&b[start..i]).into_owned());
    }
    if fields[0] != "P6" {
        return Err(format!("magic {:?}", fields[0]));
    }
    let num = |s: &str| s.parse::<u32>().map_err(|_| format!("bad number {s:?}"));
    let (w, h, max) = (num(&fields[1])?, num(&fields[2])?, num(&fields[3])?);
    if max != 255 {
        return Err(format!("maxval {max}"));
    }
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(format!("size {w}x{h}"));
    }
    let data = b.get(i + 1..).ok_or("no pixel data")?;
    let n = w as usize * h as usize;
    if data.len() < n * 3 {
        return Err(format!("{} bytes of pixels for {w}x{h}", data.len()));
    }
    let pixels = data[..n * 3]
        .chunks_exact(3)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Ok(Image {
        width: w,
        height: h,
        pixels,
    })
}

/// How often a log is read while waiting for a marker.
const POLL: Duration = Duration::from_millis(200);
/// How long a marker's line may take to arrive in full.
const LINE_GRACE: Duration = Duration::from_secs(2);
/// How long the output must stand still before a line without a newline
/// (a prompt) counts as complete: longer than the gaps between the pieces
/// of one line seen under nested TCG.
const LINE_QUIET: Duration = Duration::from_millis(500);

/// Waits until the first of `markers` appears in the file `log` after
/// byte `consumed`; returns its index and the line holding it, and moves
/// `consumed` past it. `Err(Some(status))` when `exited` reports the writer
/// gone, `Err(None)` at the timeout.
fn wait_in_log(
    log: &Path,
    consumed: &mut usize,
    markers: &[&str],
    timeout: Duration,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) -> Result<(usize, String), Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    // While the hit's line is unfinished: when it was first seen, the
    // log's length at the last look, and when that length was reached.
    let mut unfinished: Option<(Instant, usize, Instant)> = None;
    loop {
        let bytes = fs::read(log).unwrap_or_default();
        let start = (*consumed).min(bytes.len());
        let hit = markers
            .iter()
            .enumerate()
            .filter_map(|(i, m)| find(&bytes[start..], m.as_bytes()).map(|p| (start + p, i)))
            .min();
        if let Some((at, i)) = hit {
            let line_start = bytes[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let newline = bytes[at..].iter().position(|&b| b == b'\n');
            // The UART delivers a line in pieces: one returned before its
            // newline lost its end (CI's net e2e read `FETCH failed: no n`).
            // Wait for the newline up to LINE_GRACE; a prompt, which never
            // gets one, is taken once the output stood still for
            // LINE_QUIET.
            if newline.is_none() {
                let now = Instant::now();
                let (first, len, grew) = match unfinished {
                    Some((first, len, grew)) if bytes.len() == len => (first, len, grew),
                    Some((first, _, _)) => (first, bytes.len(), now),
                    None => (now, bytes.len(), now),
                };
                if now < deadline
                    && now.duration_since(first) < LINE_GRACE
                    && now.duration_since(grew) < LINE_QUIET
                {
                    unfinished = Some((first, len, grew));
                    std::thread::sleep(POLL);
                    continue;
                }
            }
            let line_end = newline.map_or(bytes.len(), |p| at + p);
            *consumed = at + markers[i].len();
            let line = String::from_utf8_lossy(&bytes[line_start..line_end]);
            return Ok((i, line.trim_end().to_string()));
        }
        if let Some(status) = exited() {
            return Err(Some(status));
        }
        if Instant::now() >= deadline {
            return Err(None);
        }
        std::thread::sleep(POLL);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log holding `first` already, to which `pieces` are appended one
    /// every 100 ms, as a UART delivers a line.
    fn log_written_in_pieces(
        first: &str,
        pieces: &'static [&'static str],
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        fs::write(&log, format!("boot\n{first}")).unwrap();
        let at = log.clone();
        std::thread::spawn(move || {
            for p in pieces {
                std::thread::sleep(Duration::from_millis(100));
                let mut f = fs::OpenOptions::new().append(true).open(&at).unwrap();
                f.write_all(p.as_bytes()).unwrap();
            }
        });
        (dir, log)
    }

    /// [`wait_in_log`] on a log whose writer never exits.
    fn wait(
        log: &Path,
        consumed: &mut usize,
        markers: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String), Option<ExitStatus>> {
        wait_in_log(log, consumed, markers, timeout, || None)
    }

    #[test]
    fn a_line_arriving_in_pieces_is_returned_whole() {
        let (_dir, log) =
            log_written_in_pieces("FETCH failed: no n", &["etwork ", "device\nCOUNTER 1\n"]);
        let mut consumed = 0;
        let got = wait(
            &log,
            &mut consumed,
            &["FETCH ok ", "FETCH failed"],
            Duration::from_secs(30),
        );
        assert_eq!(got, Ok((1, "FETCH failed: no network device".to_string())));
        // The next wait starts after the marker.
        let next = wait(&log, &mut consumed, &["COUNTER"], Duration::from_secs(30));
        assert_eq!(next, Ok((0, "COUNTER 1".to_string())));
    }

    #[test]
    fn a_prompt_without_newline_is_taken_once_the_output_stands_still() {
        let (_dir, log) = log_written_in_pieces("rayos> ", &[]);
        let mut consumed = 0;
        let got = wait(&log, &mut consumed, &["rayos>"], Duration::from_secs(30));
        assert_eq!(got, Ok((0, "rayos>".to_string())));
        assert_eq!(
            wait(&log, &mut consumed, &["rayos>"], Duration::from_millis(300)),
            Err(None),
            "one prompt, one match"
        );
    }

    #[test]
    fn ppm_header_comments_and_pixels() {
        let mut b = b"P6\n# QEMU\n2 1\n255\n".to_vec();
        b.extend_from_slice(&[0x12, 0x34, 0x56, 0xff, 0x00, 0x80]);
        let img = parse_ppm(&b).unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.pixels, vec![0x123456, 0xff0080]);
    }

    #[test]
    fn ppm_rejects_short_or_foreign_data() {
        assert!(parse_ppm(b"P6 2 2 255\n\x00\x00\x00").is_err());
        assert!(parse_ppm(b"P5 1 1 255\n\x00").is_err());
        assert!(parse_ppm(b"P6 1 1 65535\n\x00\x00\x00\x00\x00\x00").is_err());
        assert!(parse_ppm(b"P6 1").is_err());
    }
}

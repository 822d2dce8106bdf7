//! The [`Platform`] of a running machine: system calls through
//! [`crate::sys`], disks through `rayos-disk`, EFI variables through
//! efivarfs, children through [`Services`], rayosd through its API socket,
//! power requests from a signalfd and the power-button input devices.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayos_base::error::chain;
use rayos_base::marker::{self, Marker};
use rayos_base::{efivar, paths};

use super::platform::{Coldplug, CountdownEnd, Mount, Platform, PowerRequest, Unmount};
use crate::bless;
use crate::control::{self, ServiceStatus};
use crate::log::{self, RotatingLog};
use crate::modules::{self, ModuleIndex};
use crate::service::{Services, Spec};
use crate::sys::{self, Exited, PowerAction, SignalFd, SysError};
use crate::unattended::{Countdown, Keys};
use crate::usb::{self, UsbSnapshot};
use crate::volumes;

/// How often the input devices are looked at for a power button.
const BUTTON_SCAN_EVERY: Duration = Duration::from_secs(10);
/// Bounded coldplug: bus drivers create devices that want more drivers.
const COLDPLUG_PASSES: usize = 6;
/// Most threads `RAYOS_COLDPLUG_THREADS` may ask for.
const COLDPLUG_THREADS: usize = 8;

/// Threads for coldplug: `RAYOS_COLDPLUG_THREADS` (a kernel command-line
/// word `RAYOS_COLDPLUG_THREADS=N` reaches PID 1's environment), else one.
///
/// Measured, not assumed: on the QEMU/TCG test machine (2 vCPUs) loading
/// the same 45 modules took 2.4–4.2 s on one thread and 4.9–7.6 s on four
/// (docs/init.md): module loading serialises in the kernel (symbol
/// resolution under `module_mutex`, text and page-attribute changes that
/// interrupt every CPU), so threads add contention. The knob stays for
/// measuring real hardware, whose drivers wait on devices.
fn coldplug_threads(env: Option<&str>) -> usize {
    env.and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, COLDPLUG_THREADS))
}

/// The running machine: system calls, supervised services, the real disks and
/// rayosd's socket.
pub struct Real {
    services: Services,
    sigfd: SignalFd,
    buttons: Vec<File>,
    buttons_scanned: Option<Instant>,
    /// `kernel.log`, written by the kmsg collector thread; taken (closed)
    /// before the data volume is unmounted, or the open file would keep it
    /// busy and the power-off would leave its journal dirty.
    kernel_log: Arc<Mutex<Option<RotatingLog>>>,
}

/// The kernel log's lock; a panicked writer leaves a usable log behind.
fn lock_log(l: &Mutex<Option<RotatingLog>>) -> std::sync::MutexGuard<'_, Option<RotatingLog>> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

impl Real {
    /// Blocks the signals PID 1 handles (before any thread exists).
    pub fn new() -> Result<Real, SysError> {
        Ok(Real {
            services: Services::new(),
            sigfd: SignalFd::new()?,
            buttons: Vec::new(),
            buttons_scanned: None,
            kernel_log: Arc::new(Mutex::new(None)),
        })
    }

    fn client(&self) -> rayos_api::Client {
        rayos_api::Client::new(paths::API_SOCKET).with_timeout(Some(Duration::from_secs(3)))
    }

    fn scan_power_buttons(&mut self) {
        self.buttons_scanned = Some(Instant::now());
        if !self.buttons.is_empty() {
            return;
        }
        let Ok(rd) = fs::read_dir("/sys/class/input") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("event") {
                continue;
            }
            let dev_name = fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
            if dev_name.trim() != "Power Button" {
                continue;
            }
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(f) = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(Path::new("/dev/input").join(&name))
            {
                log::detail(format!("watching the power button on /dev/input/{name}"));
                self.buttons.push(f);
            }
        }
    }
}

fn signal_request(sig: i32) -> Option<PowerRequest> {
    let action = control::action_for(sig)?;
    let reason = match sig {
        libc::SIGINT => "Ctrl-Alt-Del",
        libc::SIGTERM => "reboot request (SIGTERM)",
        _ => "power-off request",
    };
    Some(PowerRequest {
        action,
        reason: reason.into(),
    })
}

impl Platform for Real {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn path(&self, p: &Path) -> PathBuf {
        p.to_path_buf()
    }

    fn marker(&mut self, m: &Marker) {
        log::marker(m);
    }

    fn attach_console(&mut self) {
        sys::ensure_stdio_console();
        log::attach_devices();
    }

    fn attach_log_file(&mut self, dir: &Path) -> io::Result<()> {
        log::attach_file(dir)
    }

    fn start_kernel_log(&mut self, dir: &Path, boot_id: &str) {
        let Ok(f) = File::open("/dev/kmsg") else {
            return;
        };
        let Ok(mut kernel) =
            RotatingLog::open(dir, "kernel", log::DEFAULT_MAX_BYTES, log::DEFAULT_KEEP)
        else {
            return;
        };
        let _ = kernel.write_line(&format!("=== boot {boot_id} ==="));
        *lock_log(&self.kernel_log) = Some(kernel);
        let shared = self.kernel_log.clone();
        let _ = std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || copy_kmsg(f, &shared));
    }

    fn close_logs(&mut self) {
        log::detach_file();
        if let Some(mut k) = lock_log(&self.kernel_log).take() {
            let _ = k.sync();
        }
    }

    fn show_on_terminals(&mut self, ttys: &[PathBuf], text: &str) {
        Keys::open(ttys).show(text);
    }

    /// Any key on a terminal cancels; signals and exited children are
    /// handled meanwhile (a power request ends the countdown).
    fn countdown(&mut self, secs: u32, target: &str, ttys: &[PathBuf]) -> CountdownEnd {
        let mut keys = Keys::open(ttys);
        let cd = Countdown::new(secs, Instant::now());
        if keys.is_empty() {
            log::warn(
                "no console terminal to read a key from: the countdown cannot be cancelled here",
            );
        }
        let mut shown = None;
        loop {
            let now = Instant::now();
            let left = cd.remaining(now);
            if left == 0 {
                keys.show("\r\n");
                return CountdownEnd::Expired;
            }
            if shown != Some(left) {
                shown = Some(left);
                keys.show(&format!(
                    "\rRayOS will be installed onto {target} in {left:>2} s - press any key to cancel. "
                ));
            }
            let mut fds = vec![self.sigfd.raw()];
            fds.extend(keys.fds());
            let wait = i32::try_from(cd.until_next(now).as_millis().min(1000)).unwrap_or(1000);
            let ready = sys::poll_readable(&fds, wait);
            if ready.contains(&self.sigfd.raw())
                && let Some(a) = self.sigfd.read().into_iter().find_map(control::action_for)
            {
                return CountdownEnd::Power(PowerRequest {
                    action: a,
                    reason: "power request during the install countdown".into(),
                });
            }
            if let Some(tty) = keys.pressed(&ready) {
                keys.show("\r\n");
                return CountdownEnd::Cancelled(tty);
            }
            // No install runs yet: every exit is a service's.
            for e in sys::reap() {
                self.services.exited(e.pid, e.code);
            }
        }
    }

    fn is_mounted(&self, target: &Path) -> bool {
        sys::is_mounted(target)
    }

    fn mount(&mut self, m: Mount<'_>) -> Result<(), SysError> {
        sys::mount(m.source, m.target, m.fstype, m.flags, m.data)
    }

    fn unmount(&mut self, target: &Path) -> Result<(), Unmount> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(|e| Unmount {
            busy: e == rustix::io::Errno::BUSY,
            error: SysError::Unmount {
                target: target.display().to_string(),
                source: e.into(),
            },
        })
    }

    fn remount_read_only(&mut self, target: &Path) -> Result<(), SysError> {
        rustix::mount::mount_remount(
            target,
            rustix::mount::MountFlags::RDONLY
                | rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV,
            "",
        )
        .map_err(|e| SysError::Remount {
            target: target.display().to_string(),
            source: e.into(),
        })
    }

    fn detach(&mut self, target: &Path) -> Result<(), SysError> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH).map_err(|e| {
            SysError::Unmount {
                target: target.display().to_string(),
                source: e.into(),
            }
        })
    }

    fn sync(&mut self) {
        sys::sync();
    }

    fn ctrl_alt_del_to_signal(&mut self) {
        sys::disable_ctrl_alt_del();
    }

    fn coldplug(
        &mut self,
        always: &[&str],
        late: &[&str],
        debug: bool,
    ) -> Result<Coldplug, String> {
        let (release, index) = ModuleIndex::running().map_err(|e| chain(&e))?;
        let loader = modules::Loader::new(&index).hold(late);
        let threads = coldplug_threads(std::env::var("RAYOS_COLDPLUG_THREADS").ok().as_deref());
        let mut loaded = 0;
        // The fixed list and the devices' modaliases in one pass, then
        // again for the devices the new drivers created, until a pass
        // finds nothing new (bounded).
        let mut wanted: Vec<String> = always.iter().map(|m| m.to_string()).collect();
        let mut seen = std::collections::HashSet::new();
        for pass in 0..COLDPLUG_PASSES {
            if pass > 0 {
                // Let drivers that probe asynchronously add their devices.
                std::thread::sleep(Duration::from_millis(50));
            }
            wanted.extend(
                modules::collect_modaliases(Path::new("/sys/devices"))
                    .into_iter()
                    .filter(|a| seen.insert(a.clone())),
            );
            if wanted.is_empty() {
                break;
            }
            for (a, n) in loader.load_all(&wanted, threads) {
                if debug {
                    log::info(format!("{a}: loaded {}", n.join(", ")));
                }
                loaded += n.len();
            }
            wanted.clear();
        }
        // Last: nothing after these may wait for their probing.
        let newly = loader.load_held();
        loaded += newly.len();
        // Named in the step's message: the held drivers, not their
        // dependencies (those loaded and probed nothing).
        let late: Vec<String> = newly.into_iter().filter(|m| loader.is_held(m)).collect();
        let refused = loader.refused();
        // rayosd reads why a KVM module is missing from here.
        let text: String = refused
            .iter()
            .map(|(n, why)| format!("{n}: {why}\n"))
            .collect();
        if let Err(e) = fs::write(rayos_base::paths::MODULES_REFUSED, text) {
            log::warn(format!("{}: {e}", rayos_base::paths::MODULES_REFUSED));
        }
        let refused = refused.len();
        Ok(Coldplug {
            loaded,
            refused,
            release,
            late,
        })
    }

    fn load_later(&mut self, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|m| m.to_string()).collect();
        let work = move || {
            let started = Instant::now();
            let index = match ModuleIndex::running() {
                Ok((_, index)) => index,
                Err(e) => {
                    log::warn(format!("modules {}: {}", names.join(", "), chain(&e)));
                    return;
                }
            };
            let loader = modules::Loader::new(&index);
            let loaded: Vec<String> = names.iter().flat_map(|m| loader.load(m)).collect();
            log::detail(format!(
                "modules after RAYOS_READY: {} loaded ({}) in {} ms",
                loaded.len(),
                loaded.join(", "),
                started.elapsed().as_millis()
            ));
        };
        if let Err(e) = std::thread::Builder::new()
            .name("modules-later".into())
            .spawn(work)
        {
            log::warn(format!(
                "cannot start the thread that loads the removable-media drivers: {e}"
            ));
        }
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        sys::sethostname(name)
    }

    fn load_keymap(&mut self, entries: &[crate::keymap::Entry]) -> Result<(), String> {
        sys::load_keymap(Path::new("/dev/tty0"), entries).map_err(|e| format!("/dev/tty0: {e}"))
    }

    fn link_up(&mut self, name: &str) -> Result<(), String> {
        rayos_net::link::set_up(name, true).map_err(|e| rayos_base::error::chain(&e))
    }

    fn set_timezone(&mut self, tz: &str) {
        // SAFETY: set_var; the only other threads (log pumps, kmsg, the
        // event follower) never read the environment.
        unsafe { std::env::set_var("TZ", tz) };
    }

    fn power(&mut self, action: PowerAction) -> io::Error {
        sys::power(action)
    }

    fn list_disks(&mut self) -> Result<Vec<rayos_disk::report::Disk>, String> {
        rayos_disk::list_block_devices().map_err(|e| chain(&e))
    }

    fn on_usb(&self, disk: &Path) -> bool {
        volumes::usb_attached(disk)
    }

    fn block_names(&self) -> BTreeSet<String> {
        usb::block_names(Path::new("/sys/block"))
    }

    fn usb_snapshot(&self) -> UsbSnapshot {
        let (sys_root, dev_root) = usb::roots();
        UsbSnapshot::read(&sys_root, &dev_root)
    }

    fn uefi(&self) -> bool {
        Path::new(efivar::FIRMWARE_DIR).is_dir()
    }

    fn running_uki(&self) -> Option<String> {
        bless::running_uki(Path::new(efivar::EFIVARS_DIR))
    }

    fn loader_esp(&self) -> Option<uuid::Uuid> {
        volumes::loader_device_part_uuid(Path::new(efivar::EFIVARS_DIR))
    }

    fn run(&mut self, program: &Path, args: &[String]) -> io::Result<Output> {
        let mut cmd = Command::new(program);
        sys::reset_signals_in_child(&mut cmd);
        cmd.args(args).stdin(Stdio::null()).output()
    }

    fn spawn_relayed(&mut self, program: &Path, args: &[String]) -> io::Result<i32> {
        // Relayed line by line through init's log: inherited stdio would
        // reach only /dev/console (the last `console=`), not the serial
        // console the e2e tests and a person on a serial line read, and
        // nothing would land in the log file.
        let mut cmd = Command::new(program);
        sys::reset_signals_in_child(&mut cmd);
        let relay = match std::io::pipe() {
            Ok((r, w)) => match w.try_clone() {
                Ok(w2) => {
                    cmd.stdout(w).stderr(w2);
                    Some(r)
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        let child = cmd.args(args).stdin(Stdio::null()).spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // Dropping the Child neither waits nor kills; PID 1 reaps it. Our
        // copies of the write ends (held by `cmd`) go too, so the relay
        // sees end-of-file when the installer exits.
        drop(child);
        drop(cmd);
        if let Some(r) = relay {
            std::thread::spawn(move || relay_output(r));
        }
        Ok(pid)
    }

    fn start_service(&mut self, spec: Spec) {
        self.services.add(spec);
    }

    fn service_pid(&self, name: &str) -> Option<i32> {
        self.services.pid_of(name)
    }

    fn service_names(&self) -> Vec<String> {
        self.services.names()
    }

    fn signal_service(&mut self, name: &str, sig: i32) -> Option<i32> {
        self.services.signal(name, sig)
    }

    fn remove_service(&mut self, name: &str) {
        self.services.remove(name);
    }

    fn service_exited(&mut self, pid: i32, code: i32) -> bool {
        self.services.exited(pid, code)
    }

    fn services_tick(&mut self) {
        self.services.tick();
    }

    fn services_status(&self) -> Vec<ServiceStatus> {
        self.services.status()
    }

    fn kill(&mut self, pid: i32, sig: i32) -> bool {
        sys::kill(pid, sig)
    }

    fn reap(&mut self) -> Vec<Exited> {
        sys::reap()
    }

    fn has_children(&mut self) -> bool {
        // SAFETY: waitpid with WNOHANG and a null status pointer; ECHILD
        // (-1) means nothing is left to wait for.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        r >= 0
    }

    fn session_members(&self, sid: i32) -> Vec<i32> {
        sys::session_members(Path::new("/proc"), sid)
    }

    fn pause(&mut self, d: Duration) {
        let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        sys::poll_readable(&[self.sigfd.raw()], ms);
        let _ = self.sigfd.read();
    }

    fn wait_power_request(&mut self, d: Duration) -> Option<PowerRequest> {
        if self
            .buttons_scanned
            .is_none_or(|t| t.elapsed() > BUTTON_SCAN_EVERY)
        {
            self.scan_power_buttons();
        }
        let mut fds = vec![self.sigfd.raw()];
        fds.extend(self.buttons.iter().map(|b| b.as_raw_fd()));
        let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let ready = sys::poll_readable(&fds, ms);
        let mut request = None;
        if ready.contains(&self.sigfd.raw()) {
            // Every pending signal is read; the first request wins.
            for sig in self.sigfd.read() {
                if request.is_none() {
                    request = signal_request(sig);
                }
            }
        }
        if request.is_some() {
            return request;
        }
        let mut pressed = false;
        for b in &mut self.buttons {
            if ready.contains(&b.as_raw_fd()) && power_key_pressed(b) {
                pressed = true;
            }
        }
        pressed.then(|| PowerRequest {
            action: PowerAction::PowerOff,
            reason: "power button".into(),
        })
    }

    fn health(&mut self) -> Result<rayos_api::Health, String> {
        self.client().health().map_err(|e| e.to_string())
    }

    fn vms(&mut self) -> Result<Vec<rayos_api::VmInfo>, String> {
        self.client().list().map_err(|e| e.to_string())
    }

    fn follow_vm_starts(&mut self) -> Receiver<String> {
        follow_vm_starts(self.client())
    }
}

/// Copies `/dev/kmsg` records into the kernel log until it is taken away.
fn copy_kmsg(mut f: File, shared: &Mutex<Option<RotatingLog>>) {
    let mut buf = vec![0u8; 8192];
    let mut n_since_sync = 0;
    loop {
        // One read returns one record: "prio,seq,usec,flags;text\n".
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let (head, text) = rec.split_once(';').unwrap_or(("", &rec));
                let usec: u64 = head
                    .split(',')
                    .nth(2)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let first = text.lines().next().unwrap_or("");
                let mut guard = lock_log(shared);
                // Gone: the data volume is being unmounted.
                let Some(log) = guard.as_mut() else { break };
                let _ = log.write_line(&format!("[{:>9.3}] {first}", usec as f64 / 1e6));
                n_since_sync += 1;
                if n_since_sync >= 200 {
                    let _ = log.sync();
                    n_since_sync = 0;
                }
            }
            // EPIPE: records were overwritten before we read them.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
}

/// True when the evdev device reported a KEY_POWER press.
fn power_key_pressed(f: &mut File) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    // struct input_event on 64-bit: timeval (16) + type u16 + code u16 + value i32.
    let mut buf = [0u8; 24 * 16];
    let mut pressed = false;
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        for ev in buf[..n].chunks_exact(24) {
            let ty = u16::from_le_bytes([ev[16], ev[17]]);
            let code = u16::from_le_bytes([ev[18], ev[19]]);
            let value = i32::from_le_bytes([ev[20], ev[21], ev[22], ev[23]]);
            if ty == EV_KEY && code == KEY_POWER && value == 1 {
                pressed = true;
            }
        }
    }
    pressed
}

/// Copies a child's output to the console, the kernel log and the log
/// file; `RAYOS_*` markers stay lines of their own, exactly as printed.
fn relay_output(r: std::io::PipeReader) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(r).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        // A progress bar on a terminal redraws with \r: keep the last frame.
        let text = text.rsplit('\r').next().unwrap_or_default().trim_end();
        if text.is_empty() {
            continue;
        }
        if text.starts_with(marker::PREFIX) {
            log::relay_marker(text);
        } else {
            log::info(format!("install: {text}"));
        }
    }
}

/// Follows rayosd's event stream on a thread and sends the name of every
/// VM that started (`EventKind::Started`). Reconnects a second after the
/// stream ends (rayosd restarted); ends when the receiver is dropped and
/// the next start comes.
fn follow_vm_starts(client: rayos_api::Client) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("vm-events".into())
        .spawn(move || {
            // The first time, also the events kept from before we connected
            // (an autostart right after rayosd came up).
            let mut since = Some(0);
            loop {
                let mut open = true;
                let _ = client.events(since.take(), |ev| {
                    if ev.event == rayos_api::EventKind::Started {
                        open = tx.send(ev.vm).is_ok();
                    }
                    open
                });
                if !open {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coldplug_threads_from_the_environment_else_one() {
        assert_eq!(coldplug_threads(Some("1")), 1);
        assert_eq!(coldplug_threads(Some(" 4\n")), 4);
        assert_eq!(coldplug_threads(Some("0")), 1);
        assert_eq!(coldplug_threads(Some("999")), COLDPLUG_THREADS);
        assert_eq!(coldplug_threads(None), 1);
        assert_eq!(coldplug_threads(Some("many")), 1);
    }

    /// rayosd's event stream, faked: each connection gets the events of
    /// one list, then the stream ends (as when rayosd restarts).
    fn fake_event_streams(
        sock: &Path,
        streams: Vec<Vec<(rayos_api::EventKind, &'static str)>>,
    ) -> std::thread::JoinHandle<Vec<Option<String>>> {
        use rayos_api::http;
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        std::thread::spawn(move || {
            let mut since = Vec::new();
            let mut seq = 0;
            for events in streams {
                let (s, _) = listener.accept().unwrap();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let req = http::read_request(&mut r, http::Limits::default()).unwrap();
                assert_eq!(req.path, "/v1/events");
                since.push(req.query_param("since").map(String::from));
                let mut w = s;
                http::write_chunked_head(&mut w, 200, "application/x-ndjson").unwrap();
                for (event, vm) in events {
                    seq += 1;
                    let ev = rayos_api::Event {
                        seq,
                        time_ms: 0,
                        vm: vm.into(),
                        event,
                        state: rayos_api::VmState::Running,
                        detail: String::new(),
                    };
                    let mut line = serde_json::to_vec(&ev).unwrap();
                    line.push(b'\n');
                    http::write_chunk(&mut w, &line).unwrap();
                }
                http::write_chunk(&mut w, b"").unwrap();
            }
            since
        })
    }

    #[test]
    fn vm_starts_are_learnt_from_the_event_stream_across_reconnects() {
        use rayos_api::EventKind as E;
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let server = fake_event_streams(
            &sock,
            vec![
                vec![(E::Starting, "lin"), (E::Started, "lin"), (E::Saved, "win")],
                vec![(E::Started, "win")],
            ],
        );
        let rx = follow_vm_starts(rayos_api::Client::new(&sock));
        let t = Duration::from_secs(20);
        assert_eq!(rx.recv_timeout(t).as_deref(), Ok("lin"));
        assert_eq!(rx.recv_timeout(t).as_deref(), Ok("win"));
        // The first connection asks for the events kept from before it
        // (an autostart right after rayosd came up); reconnects do not.
        assert_eq!(server.join().unwrap(), vec![Some("0".to_string()), None]);
    }
}

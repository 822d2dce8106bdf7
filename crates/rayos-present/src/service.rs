//! The presenter service: follows rayosd, draws the presented VM or the
//! home screen, and routes input.
//!
//! Threads (no async runtime):
//! - main loop: owns the state below and handles [`Msg`]s one at a time;
//! - rayosd watcher: follows `GET /v1/events` (reconnecting each second
//!   while rayosd is away) and asks the main loop to refresh on every event;
//! - ticker: once a second (the clock; retries after failures; a refresh
//!   every 10 s as a safety net should an event be missed);
//! - input hub ([`crate::input`]), blocked in poll(2) until a device speaks;
//! - one VNC reader per presented VM: applies the VM's updates and draws
//!   the changed regions straight to the display (no hop through the main
//!   loop), as long as its session is the active one.
//!
//! Which VM is presented is rayosd's decision (`presented` in
//! `GET /v1/vms`): hotkeys call the API (`present`, `hide`, and `start`
//! first for a VM that is not running) and the display follows the API's
//! answer, so keys and `rayos vm present/hide` behave the same. A hidden VM
//! has no VNC connection at all, hence no input and no drawing cost.
//!
//! `present_on_boot` is rayosd's: it presents that VM once its autostart is
//! done (docs/supervisor.md), and the presenter follows.
//!
//! A person's input to the presented VM is reported to rayosd (`POST
//! /v1/input/physical`, at most every 0.5 s, on a short-lived thread), so
//! an agent's injected input pauses while a person types
//! (docs/agent-bridge.md).
//!
//! Markers (stdout, relayed to the console by init):
//! `RAYOS_PRESENTATION:on:<vm>` once the VM's first frame is on the screen,
//! `RAYOS_PRESENTATION:off` when the home screen is drawn (also at start).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rayos_api::{Client, VmInfo, VmState};
use rayos_base::error::chain;
use rayos_base::marker::Marker;

use crate::display::Display;
use crate::home::{self, HomeVm, Model};
use crate::input::{InputControl, InputEvent, InputHub, PointerReport};
use crate::keymap::code;
use crate::rfb::{ServerEvent, button};
use crate::router::{Action, Mode, Router};
use crate::scale::{self, Scaler};
use crate::vnc::{self, VncWriter};

/// How the presenter reports: markers go to stdout (the console), logs to
/// stderr (the service log) in the command; tests capture both.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;
/// Where the presenter's console markers go.
pub type MarkerSink = Arc<dyn Fn(&Marker) + Send + Sync>;

/// How the presenter runs: where rayosd, input and the terminal are, and where
/// its output goes.
pub struct Options {
    /// rayosd's API socket.
    pub api_socket: PathBuf,
    /// `/dev/input`; None = no physical input (tests inject events).
    pub input_dir: Option<PathBuf>,
    /// The console terminal switched to graphics mode while the presenter
    /// draws (`/dev/tty0`); None leaves the terminal alone.
    pub tty: Option<PathBuf>,
    /// The RayOS version, shown on the home screen.
    pub version: String,
    /// Where the presenter's console markers go.
    pub marker: MarkerSink,
    /// Where its log lines go.
    pub log: Sink,
}

/// Messages to the main loop.
pub enum Msg {
    /// Look at rayosd's VMs now.
    Refresh,
    /// The clock's once-a-second beat (home screen time, retries).
    Tick,
    /// A physical input event.
    Input(InputEvent),
    /// A VM's VNC session is up.
    VncConnected {
        /// Which session (a newer one replaces an older).
        session: u64,
        /// Where input for the VM goes.
        writer: VncWriter,
    },
    /// A VM's first frame arrived.
    FirstFrame {
        /// Which session.
        session: u64,
    },
    /// A VM's VNC session ended.
    VncDown {
        /// Which session.
        session: u64,
        /// Why.
        error: String,
    },
    /// An API call made off the main loop ended.
    ApiDone {
        /// What was asked (`present <vm>`, …).
        what: String,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// End the presenter.
    Stop,
}

/// A running presenter (for `rayos present`, tests and the benchmark).
pub struct Handle {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Feeds an input event as if a device had sent it.
    pub fn input(&self, ev: InputEvent) {
        let _ = self.tx.send(Msg::Input(ev));
    }

    /// Asks for an immediate look at rayosd.
    pub fn refresh(&self) {
        let _ = self.tx.send(Msg::Refresh);
    }

    /// Stops the presenter and waits for its main loop to end.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Whether the presenter's main loop has ended (stopped, or panicked).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits until the presenter ends (it ends only when stopped).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A way to send the main loop messages from elsewhere.
    pub fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts the presenter on `display`.
pub fn spawn(opts: Options, display: Box<dyn Display>) -> Handle {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("present-main".into())
            .spawn(move || {
                let mut p = Presenter::new(opts, display, tx, stop);
                p.run(rx);
            })
            .ok()
    };
    Handle { tx, thread }
}

struct Session {
    id: u64,
    vm: String,
    socket: PathBuf,
    writer: Option<VncWriter>,
    /// Set when the session is over: its reader stops drawing and only
    /// drains the connection until the server closes it.
    ended: Arc<AtomicBool>,
}

struct Presenter {
    opts: Options,
    client: Client,
    display: Arc<Mutex<Box<dyn Display>>>,
    display_size: (u32, u32),
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    /// The session allowed to draw (0: none; the home screen is up).
    active: Arc<AtomicU64>,
    /// Tells the active VNC reader to redraw everything (after the text
    /// console or a switch back).
    force_full: Arc<AtomicBool>,
    seq: u64,
    current: Option<Session>,
    vms: Vec<VmInfo>,
    api_error: Option<String>,
    /// Last problem from a hotkey's API call or a VNC session.
    problem: Option<String>,
    router: Router,
    input: Option<InputControl>,
    home_shown: Option<Model>,
    presentation_on: bool,
    /// A VM whose VNC session failed is retried from this time.
    retry: Option<(String, Instant)>,
    ticks: u64,
    /// The last failure to reopen the display (logged once).
    display_error: Option<String>,
    tty: Option<std::fs::File>,
    buttons: u8,
    pos: (f64, f64),
    /// When rayosd was last told of physical input (see `physical`).
    physical_told: Option<Instant>,
}

/// How often, at most, rayosd hears of physical input: well under its
/// quiet time (2 s), so injected input stays paused while a person types.
const PHYSICAL_EVERY: Duration = Duration::from_millis(500);

impl Presenter {
    fn new(
        opts: Options,
        display: Box<dyn Display>,
        tx: Sender<Msg>,
        stop: Arc<AtomicBool>,
    ) -> Presenter {
        let client = Client::new(&opts.api_socket).with_timeout(Some(Duration::from_secs(10)));
        let display_size = display.size();
        Presenter {
            client,
            display: Arc::new(Mutex::new(display)),
            display_size,
            tx,
            stop,
            active: Arc::new(AtomicU64::new(0)),
            force_full: Arc::new(AtomicBool::new(false)),
            seq: 0,
            current: None,
            vms: Vec::new(),
            api_error: None,
            problem: None,
            router: Router::new(),
            input: None,
            home_shown: None,
            presentation_on: false,
            retry: None,
            ticks: 0,
            display_error: None,
            tty: None,
            buttons: 0,
            pos: (0.0, 0.0),
            physical_told: None,
            opts,
        }
    }

    /// A person's key or pointer event went to the presented VM: tells
    /// rayosd (at most every [`PHYSICAL_EVERY`], off the main loop), which
    /// pauses an agent's injected input so the person wins
    /// (docs/agent-bridge.md).
    fn physical(&mut self) {
        if self.router.mode != Mode::Vm || self.current.is_none() {
            return;
        }
        if self
            .physical_told
            .is_some_and(|t| t.elapsed() < PHYSICAL_EVERY)
        {
            return;
        }
        self.physical_told = Some(Instant::now());
        let client = self.client.clone();
        let _ = std::thread::Builder::new()
            .name("present-physical".into())
            .spawn(move || {
                let _ = client.physical_input();
            });
    }

    fn log(&self, m: &str) {
        (self.opts.log)(m);
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        self.start_threads();
        self.set_graphics(true);
        self.log(&format!(
            "display {}x{}; rayosd at {}",
            self.display_size.0,
            self.display_size.1,
            self.opts.api_socket.display()
        ));
        self.refresh();
        self.show_home(true);
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Stop => break,
                Msg::Refresh => self.refresh(),
                Msg::Tick => self.tick(),
                Msg::Input(ev) => self.input(ev),
                Msg::VncConnected { session, writer } => match self.current.as_mut() {
                    Some(s) if s.id == session => s.writer = Some(writer),
                    _ => writer.shutdown(),
                },
                Msg::FirstFrame { session } => {
                    if let Some(s) = self.current.as_ref().filter(|s| s.id == session) {
                        let vm = s.vm.clone();
                        self.presentation_on = true;
                        self.home_shown = None;
                        (self.opts.marker)(&Marker::PresentationOn { vm: vm.clone() });
                        self.log(&format!("presenting {vm}"));
                    }
                }
                Msg::VncDown { session, error } => {
                    if self.current.as_ref().is_some_and(|s| s.id == session) {
                        let vm = self
                            .current
                            .as_ref()
                            .map(|s| s.vm.clone())
                            .unwrap_or_default();
                        self.log(&format!("display of {vm} lost: {error}"));
                        self.problem = Some(format!("cannot show {vm}: {error}; retrying"));
                        self.retry = Some((vm, Instant::now() + Duration::from_secs(2)));
                        self.go_home();
                    }
                }
                Msg::ApiDone { what, error } => {
                    match error {
                        Some(e) => {
                            self.log(&format!("{what} failed: {e}"));
                            self.problem = Some(format!("{what} failed: {e}"));
                        }
                        None => self.log(&format!("{what}: done")),
                    }
                    self.refresh();
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.end_session(Mode::Home);
        if let Some(i) = &self.input {
            i.stop();
        }
        self.set_graphics(false);
    }

    fn start_threads(&mut self) {
        // rayosd events.
        {
            let tx = self.tx.clone();
            let client =
                Client::new(&self.opts.api_socket).with_timeout(Some(Duration::from_secs(10)));
            let stop = self.stop.clone();
            let _ = std::thread::Builder::new()
                .name("present-events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = client.events(None, |_| {
                            tx.send(Msg::Refresh).is_ok() && !stop.load(Ordering::Relaxed)
                        });
                        if tx.send(Msg::Refresh).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                });
        }
        // Clock.
        {
            let tx = self.tx.clone();
            let stop = self.stop.clone();
            let _ = std::thread::Builder::new()
                .name("present-tick".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_secs(1));
                        if tx.send(Msg::Tick).is_err() {
                            return;
                        }
                    }
                });
        }
        // Physical input.
        if let Some(dir) = self.opts.input_dir.clone() {
            match InputHub::new(&dir) {
                Ok(hub) => {
                    self.input = Some(hub.control());
                    let (itx, irx) = mpsc::channel::<InputEvent>();
                    let log = self.opts.log.clone();
                    let _ = std::thread::Builder::new()
                        .name("present-input".into())
                        .spawn(move || hub.run(itx, &move |m: String| log(&m)));
                    let tx = self.tx.clone();
                    let _ = std::thread::Builder::new()
                        .name("present-input-fwd".into())
                        .spawn(move || {
                            for ev in irx {
                                if tx.send(Msg::Input(ev)).is_err() {
                                    return;
                                }
                            }
                        });
                }
                Err(e) => self.log(&format!("no input: {}", chain(&e))),
            }
        }
    }

    /// KD_GRAPHICS on the console terminal stops fbcon drawing over us (and
    /// its cursor blinking); KD_TEXT gives the screen back.
    fn set_graphics(&mut self, on: bool) {
        const KDSETMODE: libc::c_ulong = 0x4B3A;
        let Some(path) = self.opts.tty.clone() else {
            return;
        };
        if self.tty.is_none() {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(f) => self.tty = Some(f),
                Err(e) => {
                    self.log(&format!(
                        "cannot open {}: {e}; the text console may draw over the presenter",
                        path.display()
                    ));
                    return;
                }
            }
        }
        if let Some(f) = &self.tty {
            use std::os::fd::AsRawFd;
            // SAFETY: KDSETMODE takes an int mode by value.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), KDSETMODE, libc::c_int::from(on)) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                self.log(&format!("KDSETMODE on {}: {e}", path.display()));
            }
        }
    }

    fn refresh(&mut self) {
        match self.client.list() {
            Ok(mut vms) => {
                vms.sort_by(|a, b| a.name.cmp(&b.name));
                self.vms = vms;
                if self.api_error.take().is_some() {
                    self.log("rayosd answers again");
                }
            }
            Err(e) => {
                let msg = format!(
                    "rayosd at {} does not answer ({}); retrying",
                    self.opts.api_socket.display(),
                    e
                );
                if self.api_error.as_deref() != Some(&msg) {
                    self.log(&msg);
                }
                self.api_error = Some(msg);
            }
        }
        if self.router.mode == Mode::Console {
            return;
        }
        if self.api_error.is_none() {
            let want = self
                .vms
                .iter()
                .find(|v| v.presented && v.state == VmState::Running && v.vnc_socket.is_some())
                .map(|v| (v.name.clone(), v.vnc_socket.clone().unwrap_or_default()));
            match (want, &self.current) {
                (Some((name, sock)), Some(s)) if s.vm == name && s.socket == sock => {}
                (Some((name, sock)), _) => {
                    let waiting = self
                        .retry
                        .as_ref()
                        .is_some_and(|(n, t)| *n == name && Instant::now() < *t);
                    if !waiting {
                        self.present(name, sock);
                    }
                }
                (None, Some(_)) => {
                    self.retry = None;
                    self.go_home();
                }
                (None, None) => self.retry = None,
            }
        }
        if self.current.is_none() {
            self.show_home(false);
        }
    }

    /// A replaced or re-moded framebuffer: redraw everything on the new one.
    fn check_display(&mut self) {
        let r = {
            let mut d = self.display.lock().unwrap_or_else(|p| p.into_inner());
            d.revalidate().map(|changed| (changed, d.size()))
        };
        match r {
            Ok((false, _)) => {}
            Ok((true, size)) => {
                self.log(&format!("display changed: now {}x{}", size.0, size.1));
                self.display_size = size;
                self.display_error = None;
                if self.router.mode == Mode::Console {
                    return;
                }
                self.force_full.store(true, Ordering::SeqCst);
                match self.current.as_ref().and_then(|s| s.writer.as_ref()) {
                    Some(w) => {
                        let _ = w.refresh();
                    }
                    None => self.show_home(true),
                }
            }
            Err(e) => {
                let msg = chain(&e);
                if self.display_error.as_deref() != Some(&msg) {
                    self.log(&format!("display lost: {msg}; retrying"));
                    self.display_error = Some(msg);
                }
            }
        }
    }

    fn tick(&mut self) {
        self.check_display();
        self.ticks += 1;
        let retry_due = self
            .retry
            .as_ref()
            .is_some_and(|(_, t)| Instant::now() >= *t);
        if retry_due || self.api_error.is_some() || self.ticks.is_multiple_of(10) {
            self.refresh();
        } else if self.current.is_none() && self.router.mode == Mode::Home {
            self.show_home(false);
        }
    }

    fn model(&self) -> Model {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Model {
            version: self.opts.version.clone(),
            time: home::local_time(now),
            vms: self.vms.iter().map(HomeVm::from_info).collect(),
            status: self.api_error.clone().or_else(|| self.problem.clone()),
            accel_warning: home::accel_warning(&self.vms),
        }
    }

    /// Draws the home screen when it changed (or `force`).
    fn show_home(&mut self, force: bool) {
        if self.router.mode == Mode::Console {
            return;
        }
        let m = self.model();
        if !force && self.home_shown.as_ref() == Some(&m) {
            return;
        }
        {
            let mut d = self.display.lock().unwrap_or_else(|p| p.into_inner());
            let r = home::render(&mut d.canvas(), &m);
            d.flush(r);
        }
        let first = self.home_shown.is_none();
        self.home_shown = Some(m);
        if first || self.presentation_on {
            self.presentation_on = false;
            (self.opts.marker)(&Marker::PresentationOff);
        }
    }

    /// Ends the current VNC session: the VM gets releases for the keys it
    /// saw pressed, then its connection is closed.
    fn end_session(&mut self, next: Mode) {
        self.active.store(0, Ordering::SeqCst);
        let releases = self.router.switch(next);
        if let Some(s) = self.current.take() {
            s.ended.store(true, Ordering::SeqCst);
            if let Some(w) = &s.writer {
                for (c, _) in releases {
                    let _ = w.key(c, false);
                }
                if self.buttons != 0 {
                    let _ = w.pointer_rel(0, 0, 0);
                }
                w.shutdown();
            }
            self.log(&format!("{} hidden from the display", s.vm));
        }
        self.buttons = 0;
    }

    fn go_home(&mut self) {
        self.end_session(Mode::Home);
        self.show_home(true);
    }

    fn present(&mut self, vm: String, socket: PathBuf) {
        self.end_session(Mode::Vm);
        self.seq += 1;
        let id = self.seq;
        let ended = Arc::new(AtomicBool::new(false));
        self.active.store(id, Ordering::SeqCst);
        self.problem = None;
        self.log(&format!(
            "presenting {vm}: connecting to {}",
            socket.display()
        ));
        self.current = Some(Session {
            id,
            vm: vm.clone(),
            socket: socket.clone(),
            writer: None,
            ended: ended.clone(),
        });
        let (w, h) = self.display_size;
        self.pos = (f64::from(w) / 2.0, f64::from(h) / 2.0);
        let ctx = ReaderCtx {
            id,
            socket,
            display: self.display.clone(),
            active: self.active.clone(),
            ended,
            force_full: self.force_full.clone(),
            tx: self.tx.clone(),
        };
        let _ = std::thread::Builder::new()
            .name(format!("present-vnc-{vm}"))
            .spawn(move || ctx.run());
    }

    fn input(&mut self, ev: InputEvent) {
        self.physical();
        match ev {
            InputEvent::Key { code, value } => {
                let step = self.router.key(code, value);
                if let Some(w) = self.current.as_ref().and_then(|s| s.writer.as_ref()) {
                    for (c, down) in &step.forward {
                        let _ = w.key(*c, *down);
                    }
                }
                if let Some(a) = step.action {
                    self.action(a);
                }
            }
            InputEvent::Pointer(r) => {
                if self.router.mode == Mode::Vm {
                    self.pointer(r);
                }
            }
        }
    }

    fn action(&mut self, a: Action) {
        match (self.router.mode, a) {
            (Mode::Console, Action::Home) | (Mode::Console, Action::Console) => {
                self.log("leaving the text console");
                self.set_graphics(true);
                if let Some(i) = &self.input {
                    i.set_grab(true);
                }
                self.router.switch(Mode::Home);
                self.home_shown = None;
                // Whatever the API says is presented comes back.
                self.refresh();
                if let Some(s) = &self.current {
                    self.router.switch(Mode::Vm);
                    self.active.store(s.id, Ordering::SeqCst);
                    self.force_full.store(true, Ordering::SeqCst);
                    if let Some(w) = &s.writer {
                        let _ = w.refresh();
                    }
                } else {
                    self.show_home(true);
                }
            }
            (Mode::Console, _) => {}
            (_, Action::Console) => {
                self.log("text console: input released; Ctrl+Alt+Home comes back");
                let releases = self.router.switch(Mode::Console);
                if let Some(w) = self.current.as_ref().and_then(|s| s.writer.as_ref()) {
                    for (c, _) in releases {
                        let _ = w.key(c, false);
                    }
                }
                self.active.store(0, Ordering::SeqCst);
                if let Some(i) = &self.input {
                    i.set_grab(false);
                }
                self.set_graphics(false);
            }
            (_, Action::Home) => {
                let vm = self.current.as_ref().map(|s| s.vm.clone());
                self.retry = None;
                self.go_home();
                if let Some(vm) = vm {
                    self.api_call(format!("hide {vm}"), vm, false);
                }
            }
            (_, Action::Present(i)) => {
                let Some(v) = self.vms.get(i) else {
                    self.log(&format!("no VM number {}", i + 1));
                    return;
                };
                if self.current.as_ref().is_some_and(|s| s.vm == v.name) {
                    return;
                }
                let name = v.name.clone();
                let start = matches!(
                    v.state,
                    VmState::Stopped | VmState::Saved | VmState::Crashed
                );
                self.retry = None;
                self.api_call(format!("present {name}"), name, start);
            }
        }
    }

    /// Calls the API off the main loop (a start can take seconds).
    fn api_call(&self, what: String, vm: String, start_first: bool) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let present = what.starts_with("present");
        let _ = std::thread::Builder::new()
            .name("present-api".into())
            .spawn(move || {
                let r = (|| {
                    if start_first {
                        client.start(&vm, false)?;
                    }
                    let action = if present { "present" } else { "hide" };
                    client.action(&vm, action, None::<&()>)
                })();
                let _ = tx.send(Msg::ApiDone {
                    what,
                    error: r.err().map(|e| chain(&e)),
                });
            });
    }

    fn pointer(&mut self, r: PointerReport) {
        let Some(w) = self.current.as_ref().and_then(|s| s.writer.clone()) else {
            return;
        };
        for (c, down) in &r.buttons {
            let bit = match *c {
                code::BTN_LEFT | code::BTN_TOUCH => button::LEFT,
                code::BTN_RIGHT => button::RIGHT,
                code::BTN_MIDDLE => button::MIDDLE,
                _ => 0,
            };
            if *down {
                self.buttons |= bit;
            } else {
                self.buttons &= !bit;
            }
        }
        let b = self.buttons;
        if w.relative_pointer() {
            let _ = w.pointer_rel(b, r.dx, r.dy);
            for (n, up, down) in [
                (r.wheel, button::WHEEL_UP, button::WHEEL_DOWN),
                (r.hwheel, button::WHEEL_RIGHT, button::WHEEL_LEFT),
            ] {
                for _ in 0..n.unsigned_abs().min(16) {
                    let m = if n > 0 { up } else { down };
                    let _ = w.pointer_rel(b | m, 0, 0);
                    let _ = w.pointer_rel(b, 0, 0);
                }
            }
            return;
        }
        let Some((vx, vy)) = move_pointer(&mut self.pos, &r, self.display_size, w.size()) else {
            return;
        };
        let _ = w.pointer_abs(b, vx, vy);
        for (n, up, down) in [
            (r.wheel, button::WHEEL_UP, button::WHEEL_DOWN),
            (r.hwheel, button::WHEEL_RIGHT, button::WHEEL_LEFT),
        ] {
            for _ in 0..n.unsigned_abs().min(16) {
                let m = if n > 0 { up } else { down };
                let _ = w.pointer_abs(b | m, vx, vy);
                let _ = w.pointer_abs(b, vx, vy);
            }
        }
    }
}

/// Moves the on-screen pointer position `pos` (display pixels) by a report
/// — relative motion adds, an absolute device sets it — keeps it on the VM's
/// image (not the bars around it), and returns it in VM pixels.
pub fn move_pointer(
    pos: &mut (f64, f64),
    r: &PointerReport,
    display: (u32, u32),
    vm: (u32, u32),
) -> Option<(u32, u32)> {
    let (dw, dh) = display;
    let (sw, sh) = vm;
    let dest = scale::fit(sw, sh, dw, dh);
    if dest.is_empty() {
        return None;
    }
    if let Some((fx, fy)) = r.abs {
        *pos = (
            fx * f64::from(dw.saturating_sub(1)),
            fy * f64::from(dh.saturating_sub(1)),
        );
    } else {
        pos.0 += f64::from(r.dx);
        pos.1 += f64::from(r.dy);
    }
    pos.0 = pos
        .0
        .clamp(f64::from(dest.x), f64::from(dest.x + dest.w - 1));
    pos.1 = pos
        .1
        .clamp(f64::from(dest.y), f64::from(dest.y + dest.h - 1));
    let vx = ((pos.0 - f64::from(dest.x)) * f64::from(sw) / f64::from(dest.w)) as u32;
    let vy = ((pos.1 - f64::from(dest.y)) * f64::from(sh) / f64::from(dest.h)) as u32;
    Some((vx.min(sw - 1), vy.min(sh - 1)))
}

/// What a VNC reader thread needs.
struct ReaderCtx {
    id: u64,
    socket: PathBuf,
    display: Arc<Mutex<Box<dyn Display>>>,
    active: Arc<AtomicU64>,
    ended: Arc<AtomicBool>,
    force_full: Arc<AtomicBool>,
    tx: Sender<Msg>,
}

impl ReaderCtx {
    fn run(self) {
        let down = |error: String| {
            let _ = self.tx.send(Msg::VncDown {
                session: self.id,
                error,
            });
        };
        let (mut reader, writer) = match vnc::connect(&self.socket, Duration::from_secs(5)) {
            Ok(c) => c,
            Err(e) => return down(chain(&e)),
        };
        if self.ended.load(Ordering::SeqCst) {
            // Switched away while connecting; nothing was sent on it.
            writer.shutdown();
            return;
        }
        let _ = self.tx.send(Msg::VncConnected {
            session: self.id,
            writer,
        });
        let mut scaler: Option<Scaler> = None;
        let mut first = true;
        loop {
            let ev = match reader.next_event() {
                Ok(ev) => ev,
                Err(e) => {
                    if !self.ended.load(Ordering::SeqCst) {
                        down(chain(&e));
                    }
                    return;
                }
            };
            // An ended session drains until the server closes (see
            // VncWriter::shutdown); it never draws again.
            if self.ended.load(Ordering::SeqCst) {
                continue;
            }
            let ServerEvent::Update { damage, resized } = ev else {
                continue;
            };
            let mut d = self.display.lock().unwrap_or_else(|p| p.into_inner());
            if self.active.load(Ordering::SeqCst) != self.id {
                // The text console has the screen: keep the session, draw
                // nothing (a full redraw is forced on return).
                continue;
            }
            let (dw, dh) = d.size();
            let (fw, fh) = (reader.fb.width, reader.fb.height);
            let full = resized
                || first
                || self.force_full.swap(false, Ordering::SeqCst)
                || scaler.as_ref().is_none_or(|s| s.source_size() != (fw, fh));
            if full {
                let s = Scaler::new(fw, fh, dw, dh);
                let mut c = d.canvas();
                s.draw_bars(&mut c);
                s.draw(&reader.fb, reader.fb.full(), &mut c);
                let all = c.full();
                d.flush(all);
                scaler = Some(s);
            } else if let Some(s) = &scaler {
                let out = s.draw(&reader.fb, damage, &mut d.canvas());
                if !out.is_empty() {
                    d.flush(out);
                }
            }
            drop(d);
            if first {
                first = false;
                let _ = self.tx.send(Msg::FirstFrame { session: self.id });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(dx: i32, dy: i32) -> PointerReport {
        PointerReport {
            dx,
            dy,
            ..PointerReport::default()
        }
    }

    #[test]
    fn pointer_moves_on_the_vm_image_and_maps_to_vm_pixels() {
        // 1024x768 VM on 1920x1080: image at x 240..1680, full height.
        let (d, v) = ((1920, 1080), (1024, 768));
        let mut pos = (960.0, 540.0);
        assert_eq!(move_pointer(&mut pos, &rel(0, 0), d, v), Some((512, 384)));
        // 1.40625 display pixels per VM pixel.
        assert_eq!(move_pointer(&mut pos, &rel(45, 0), d, v), Some((544, 384)));
        // Far right or down: the image's last pixel, never the bars.
        assert_eq!(
            move_pointer(&mut pos, &rel(10_000, 10_000), d, v),
            Some((1023, 767))
        );
        assert_eq!(pos, (1679.0, 1079.0));
        assert_eq!(
            move_pointer(&mut pos, &rel(-10_000, -10_000), d, v),
            Some((0, 0))
        );
        assert_eq!(pos.0, 240.0);
        // An absolute device (tablet) covers the whole display; its corner
        // in the bar lands on the image's edge.
        let abs = |x, y| PointerReport {
            abs: Some((x, y)),
            ..PointerReport::default()
        };
        assert_eq!(move_pointer(&mut pos, &abs(0.0, 0.0), d, v), Some((0, 0)));
        assert_eq!(
            move_pointer(&mut pos, &abs(0.5, 0.5), d, v),
            Some((511, 383))
        );
        assert_eq!(
            move_pointer(&mut pos, &abs(1.0, 1.0), d, v),
            Some((1023, 767))
        );
        assert_eq!(move_pointer(&mut pos, &rel(1, 1), (0, 0), v), None);
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let e = crate::vnc::VncError::Connect {
            path: "/x/vnc.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            chain(&e),
            "cannot connect to the VNC socket /x/vnc.sock: entity not found"
        );
    }
}

//! `rayos present`: the presenter service (`crates/rayos-present`, see
//! docs/present.md). Draws the presented VM or the home screen on the
//! framebuffer, owns the keyboards and mice, and follows rayosd. Runs until
//! SIGTERM/SIGINT, then gives the console and the input devices back.
//!
//! Markers on stdout (init copies them to the console):
//! `RAYOS_PRESENTATION:on:<vm>`, `RAYOS_PRESENTATION:off`. Logs on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rayos_present::display::{Display, FbDisplay, MemoryDisplay};
use rayos_present::service::{self, Options};

use super::{Exit, exit};

#[derive(clap::Args)]
pub struct Args {
    /// rayosd's API socket.
    #[arg(long, env = "RAYOS_SOCKET", default_value = rayos_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The framebuffer to draw on. Waited for while it does not exist yet
    /// (display drivers load during boot).
    #[arg(long, default_value = "/dev/fb0")]
    fb: PathBuf,
    /// Draw into memory instead (WIDTHxHEIGHT, e.g. 1024x768): runs the
    /// presenter on a machine without a framebuffer, for trying it out.
    #[arg(long, value_name = "WxH", conflicts_with = "fb")]
    memory: Option<String>,
    /// Directory of the evdev devices to grab; "none" leaves input alone.
    #[arg(long, default_value = "/dev/input")]
    input: String,
    /// Console terminal switched to graphics mode while drawing; "none"
    /// leaves it alone.
    #[arg(long, default_value = "/dev/tty0")]
    tty: String,
}

fn none_or(s: &str) -> Option<PathBuf> {
    match s {
        "" | "none" => None,
        p => Some(PathBuf::from(p)),
    }
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h) = (w.parse().ok()?, h.parse().ok()?);
    ((16..=8192).contains(&w) && (16..=8192).contains(&h)).then_some((w, h))
}

/// Blocks SIGTERM and SIGINT in this thread (and the threads it starts
/// later), so `sigwait` can take them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask with a
    // valid set pointer and a null old-set pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `t` for one of the blocked signals.
fn wait_signal(set: &libc::sigset_t, t: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    };
    // SAFETY: valid set and timeout pointers; no siginfo wanted (null).
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let signals = block_signals();
    let display: Box<dyn Display> = match &args.memory {
        Some(s) => {
            let (w, h) = parse_size(s).ok_or_else(|| {
                Exit::new(
                    exit::BAD_INPUT,
                    format!("--memory {s:?}: give WIDTHxHEIGHT, e.g. 1024x768"),
                )
            })?;
            Box::new(MemoryDisplay::new(w, h))
        }
        None => {
            let mut said = false;
            loop {
                match FbDisplay::open(&args.fb) {
                    Ok(fb) => {
                        let (w, h) = fb.size();
                        eprintln!(
                            "rayos present: {} ({}) {w}x{h} {:?}",
                            args.fb.display(),
                            fb.id,
                            fb.format()
                        );
                        break Box::new(fb);
                    }
                    Err(e) if !args.fb.exists() => {
                        if !said {
                            eprintln!(
                                "rayos present: {}; waiting for it",
                                rayos_base::error::chain(&e)
                            );
                            said = true;
                        }
                        if let Some(sig) = wait_signal(&signals, Duration::from_secs(1)) {
                            eprintln!("rayos present: signal {sig} before any display appeared");
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e))
                            .context(Exit::new(exit::FAILED, "the presenter has no display"));
                    }
                }
            }
        }
    };
    let opts = Options {
        api_socket: args.socket.clone(),
        input_dir: none_or(&args.input),
        tty: if args.memory.is_some() {
            None
        } else {
            none_or(&args.tty)
        },
        version: env!("CARGO_PKG_VERSION").to_string(),
        marker: Arc::new(|m| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{m}");
            let _ = out.flush();
        }),
        log: Arc::new(|m| eprintln!("rayos present: {m}")),
    };
    let tty = opts.tty.clone();
    let handle = service::spawn(opts, display);
    loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_secs(1)) {
            eprintln!("rayos present: signal {sig}: giving the console and input back");
            handle.stop();
            return Ok(ExitCode::SUCCESS);
        }
        if handle.is_finished() {
            // It only ends by itself on a bug (a panic, already printed):
            // give the screen back to the text console and let init
            // restart the service. The grabs end with the process.
            if let Some(t) = tty {
                text_mode(&t);
            }
            return Err(anyhow::Error::new(Exit::new(
                exit::FAILED,
                "the presenter stopped unexpectedly (see the panic above); init restarts it",
            )));
        }
    }
}

/// KD_TEXT on the console terminal, so the text console shows again.
fn text_mode(tty: &std::path::Path) {
    const KDSETMODE: libc::c_ulong = 0x4B3A;
    const KD_TEXT: libc::c_int = 0;
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(tty) {
        use std::os::fd::AsRawFd;
        // SAFETY: KDSETMODE takes an int mode by value.
        unsafe { libc::ioctl(f.as_raw_fd(), KDSETMODE, KD_TEXT) };
    }
}

//! The terminal side of the wizard: raw mode and the alternate screen
//! (restored by a guard, also on errors and panics in the loop), keys from
//! crossterm, and `apply` on a thread whose progress comes back over a
//! channel so the screen keeps redrawing while the disk is written.
//!
//! When the wizard offers every disk of the machine, `/sys/block` is looked
//! at every [`DISK_POLL`]; when a disk appears or goes (or changes size: a
//! card put into a reader), the disks are read again and handed to
//! [`Wizard::on_disks_changed`].

use std::io::{Stdout, stdout};
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

use rayos_base::error::chain;
use rayos_install::apply::{self, Event};
use rayos_install::plan::make_plan;

use crate::wizard::{Effect, Screen, Wizard};
use crate::{Config, Outcome, Planned, WizardError};

enum Msg {
    Event(Event),
    Done(Result<(), String>),
}

/// Leaves raw mode and the alternate screen when dropped.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
    }
}

/// How often the wizard looks for disks that appeared or went.
const DISK_POLL: Duration = Duration::from_secs(1);

/// What `/sys/block` shows: each disk's name and size (sectors).
fn disk_signature(sys_block: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let size = std::fs::read_to_string(e.path().join("size")).unwrap_or_default();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        size.trim().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn spawn_apply(planned: &Planned, config: &Config, tx: Sender<Msg>) {
    let plan = planned.plan.clone();
    let opts = config.apply.clone();
    let guard = config.writing_guard.map(|g| g());
    std::thread::spawn(move || {
        let _writing = guard;
        let events = tx.clone();
        // A panic in the engine must end on the error screen, not leave the
        // person waiting on a bar that never moves.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply::apply(&plan, &opts, &mut |ev| {
                let _ = events.send(Msg::Event(ev.clone()));
            })
            .map(|_| ())
            .map_err(|e| chain(&e))
        }))
        .unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("the installer crashed: {what}"))
        });
        let _ = tx.send(Msg::Done(r));
    });
}

/// The plan for a retry: the same one if nothing was written, else the
/// engine's plan for the disk as it is now (an unfinished install, which
/// the engine redoes).
fn retry_plan(w: &Wizard, planned: &Planned) -> Result<Planned, String> {
    if w.progress.done() == 0 {
        return Ok(planned.clone());
    }
    let target = &planned.plan.target;
    let ss = planned.plan.image_file.then_some(planned.plan.sector_size);
    let disk = rayos_disk::probe_path(target, ss)
        .map_err(|e| format!("cannot read {}: {}", target.display(), chain(&e)))?;
    let facts = rayos_install::facts::gather(&disk).map_err(|e| chain(&e))?;
    let plan =
        make_plan(&disk, &planned.answers, &facts, &w.setup.opts).map_err(|e| e.to_string())?;
    Ok(Planned {
        plan,
        ..planned.clone()
    })
}

/// A serial console reports its size as 0x0 (nobody set it with stty):
/// then draw on a fixed area of `COLUMNS`x`LINES`, or 80x24.
fn fallback_size() -> Option<Rect> {
    let (cols, rows) = crossterm::terminal::size().unwrap_or((0, 0));
    if cols > 0 && rows > 0 {
        return None;
    }
    let env = |k: &str, d: u16| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(d)
    };
    Some(Rect::new(0, 0, env("COLUMNS", 80), env("LINES", 24)))
}

/// The sector size to read an image file with again (block devices say
/// their own).
fn image_sector_size(d: &rayos_disk::Disk) -> Option<u32> {
    (d.kind == rayos_disk::DiskKind::ImageFile).then_some(d.logical_sector_size)
}

/// The chosen disk, read again.
fn rescan(w: &Wizard) -> Result<crate::DiskChoice, String> {
    let d = w.chosen_disk().ok_or("no disk was chosen")?;
    let disk =
        rayos_disk::probe_path(&d.disk.path, image_sector_size(&d.disk)).map_err(|e| chain(&e))?;
    let facts = rayos_install::facts::gather(&disk).map_err(|e| chain(&e))?;
    Ok(crate::DiskChoice {
        refusal: crate::wizard::refusal(&disk, &facts),
        disk,
        facts,
    })
}

pub(crate) fn run(config: &Config, mut w: Wizard) -> Result<Outcome, WizardError> {
    enable_raw_mode().map_err(WizardError::Terminal)?;
    let guard = Guard;
    execute!(stdout(), EnterAlternateScreen).map_err(WizardError::Terminal)?;
    let backend = CrosstermBackend::new(stdout());
    let mut term: Terminal<CrosstermBackend<Stdout>> = match fallback_size() {
        Some(area) => Terminal::with_options(
            backend,
            TerminalOptions {
                viewport: Viewport::Fixed(area),
            },
        ),
        None => Terminal::new(backend),
    }
    .map_err(WizardError::Terminal)?;
    let (tx, rx): (Sender<Msg>, Receiver<Msg>) = channel();
    let sys_block = Path::new("/sys/block");
    let watch_disks = config.disks.is_empty();
    let mut disks_seen = disk_signature(sys_block);
    let mut disks_checked = Instant::now();
    let outcome = loop {
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Event(ev) => w.on_event(&ev),
                Msg::Done(r) => w.on_finished(r),
            }
        }
        if watch_disks && disks_checked.elapsed() >= DISK_POLL {
            disks_checked = Instant::now();
            let now = disk_signature(sys_block);
            if now != disks_seen
                && w.screen != Screen::Progress
                && let Ok(disks) = crate::disk_choices(config)
            {
                disks_seen = now;
                w.on_disks_changed(disks);
            }
        }
        term.draw(|f| crate::view::draw(f, &w))
            .map_err(WizardError::Terminal)?;
        if !event::poll(Duration::from_millis(100)).map_err(WizardError::Terminal)? {
            continue;
        }
        let TermEvent::Key(k) = event::read().map_err(WizardError::Terminal)? else {
            continue;
        };
        let Some(key) = crate::key::from_crossterm(&k) else {
            continue;
        };
        match w.handle(key) {
            Effect::None => {}
            Effect::Quit => break Outcome::Cancelled,
            Effect::Install(planned) => {
                let saved = match &config.save_answers {
                    Some(path) => crate::save_answers(path, &planned),
                    None => Ok(()),
                };
                if let Err(e) = saved {
                    // Nothing is written to the disk when its answers
                    // cannot be kept as asked.
                    w.screen = Screen::Summary;
                    w.status = Some(chain(&e));
                    continue;
                }
                if config.dry_run {
                    break Outcome::DryRun {
                        plan: Box::new(planned.plan),
                    };
                }
                spawn_apply(&planned, config, tx.clone());
            }
            Effect::Retry(planned) => match retry_plan(&w, &planned) {
                Ok(p) => {
                    w.on_retry_plan(p.clone());
                    spawn_apply(&p, config, tx.clone());
                }
                Err(e) => {
                    w.on_finished(Err(format!("cannot plan the retry: {e}")));
                }
            },
            Effect::Rescan => match rescan(&w) {
                Ok(d) => w.on_rescanned(d),
                Err(e) => w.status = Some(format!("cannot read the disk again: {e}")),
            },
            Effect::Finish(after) => match &w.planned {
                Some(p) => {
                    break Outcome::Installed {
                        plan: Box::new(p.plan.clone()),
                        after,
                    };
                }
                None => break Outcome::Cancelled,
            },
        }
    };
    drop(term);
    drop(guard);
    Ok(outcome)
}

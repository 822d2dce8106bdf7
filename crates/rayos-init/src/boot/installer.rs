//! Installer mode, finding things: the installer medium (the system image
//! to install), the answer file (on the medium, else removable media once
//! USB storage has settled; never an internal disk unless named by
//! label), and answer sticks plugged in later (docs/init.md).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use rayos_base::paths;

use super::data::{DISK_WAIT, list_disks};
use super::platform::{Mount, release};
use super::state::AnswerWatch;
use super::{Platform, State, StepResult};
use crate::log;
use crate::usb::{self, Settle, Verdict};
use crate::volumes::{self, Volume};

/// How often the installer looks for disks that appeared.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// The answer file looked for when `rayos.answers=` names none.
const DEFAULT_ANSWERS: &str = "/rayos-answers.toml";

/// The FAT and ISO volumes, removable ones marked (USB counts).
fn volumes_of(p: &dyn Platform, disks: &[rayos_disk::report::Disk]) -> Vec<Volume> {
    volumes::fat_and_iso_volumes(disks, |d| p.on_usb(d))
}

/// The FAT/ISO volume with `/EFI/Linux/rayos-*.efi` (the ESP the loader ran
/// from first, then the installer ISO's label), kept mounted read-only at
/// `/run/rayos/medium`.
pub fn find_medium(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let boot_esp = p.loader_esp();
    let at = Path::new(paths::MEDIUM);
    let deadline = p.now() + DISK_WAIT;
    loop {
        let disks = list_disks(p);
        let mut vols = volumes_of(p, &disks);
        // The ESP the loader ran from, then the ISO label, then any.
        let esp_dev = boot_esp.and_then(|g| {
            disks
                .iter()
                .flat_map(|d| d.partitions.iter())
                .find(|part| part.unique_guid == Some(g))
                .and_then(|part| part.device.clone())
        });
        vols.sort_by_key(|v| {
            (
                Some(&v.device) != esp_dev.as_ref(),
                v.label.as_deref() != Some(volumes::INSTALLER_LABEL),
            )
        });
        for v in &vols {
            let source = v.device.to_string_lossy();
            if p.mount(Mount::read_only(&source, at, v.fstype)).is_err() {
                continue;
            }
            if let Some(uki) = volumes::uki_on(&p.path(at)) {
                // The image as the running system names it.
                let uki = at.join(uki.strip_prefix(p.path(at)).unwrap_or(&uki));
                st.medium_disk = Some(v.disk.clone());
                st.uki = Some(uki.clone());
                return StepResult::Ok(format!(
                    "installer medium {} ({}), system image {}",
                    v.device.display(),
                    v.label.as_deref().unwrap_or("no label"),
                    uki.display()
                ));
            }
            let _ = release(p, at);
        }
        if p.now() >= deadline {
            st.fault(
                "the installer medium was not found (no FAT or ISO volume with /EFI/Linux/rayos-*.efi): \
                 the install needs it as the system image. Re-write the USB stick or CD.",
            );
            return StepResult::Fail("no installer medium".into());
        }
        p.sleep(Duration::from_millis(300));
    }
}

/// The answer file's path on a volume and the label it must carry
/// (`rayos.answers=`), or the default `/rayos-answers.toml`.
pub fn answers_ref(st: &State) -> (String, Option<String>) {
    let want = st.params.answers.as_ref();
    (
        want.map(|a| a.path.clone())
            .unwrap_or_else(|| DEFAULT_ANSWERS.into()),
        want.and_then(|a| a.label.clone()),
    )
}

/// The answer file, copied to `/run/rayos/answers.toml`: on the medium at
/// once, else after USB storage settled on removable media (or on the
/// volumes with the label `rayos.answers=` names).
pub fn find_answers(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let (rel, label) = answers_ref(st);
    let dest = p.at(paths::ANSWERS);
    // The medium is already mounted: look there first.
    if label.is_none()
        && st.uki.is_some()
        && let Some(f) = volumes::file_on(&p.at(paths::MEDIUM), &rel)
        && fs::copy(&f, &dest).is_ok()
    {
        st.answers = Some(paths::ANSWERS.into());
        st.answers_source = Some("the installer medium".into());
        st.watch = Some(AnswerWatch {
            known: p.block_names(),
            ..AnswerWatch::default()
        });
        return StepResult::Ok(format!("answer file {rel} on the installer medium"));
    }
    // A stick plugged in at boot may still be enumerating (issue 17).
    let settled = settle_usb(p);
    // Disks present from here on were searched; later ones are watched.
    let known = p.block_names();
    let disks = list_disks(p);
    let found = search_answers(st, p, &disks, None);
    st.watch = Some(AnswerWatch {
        known,
        ..AnswerWatch::default()
    });
    if let Some(source) = found {
        st.answers = Some(paths::ANSWERS.into());
        st.answers_source = Some(source.clone());
        return StepResult::Ok(format!("answer file {rel} on {source} ({settled})"));
    }
    if st.params.answers.is_some() {
        st.fault(format!(
            "rayos.answers= names {}{rel}, which is on no {}FAT or ISO volume ({settled}): falling back to the \
             interactive installer",
            label.as_deref().map(|l| format!("{l}:")).unwrap_or_default(),
            if label.is_some() { "" } else { "removable " }
        ));
        return StepResult::Fail("answer file not found".into());
    }
    StepResult::Skip(format!(
        "no rayos-answers.toml on the installer medium or removable media ({settled}): interactive install \
         on the console; a stick with one plugged in later is offered"
    ))
}

/// Waits, at most [`usb::SETTLE_TIMEOUT`], until USB storage has
/// settled (docs/init.md), saying on the console what it waits for.
/// Returns a note for the step's message.
fn settle_usb(p: &mut dyn Platform) -> String {
    let t0 = p.now();
    let mut settle = Settle::new(t0, usb::SETTLE_TIMEOUT, usb::QUIET);
    let mut told: Option<std::time::Instant> = None;
    loop {
        let now = p.now();
        match settle.observe(p.usb_snapshot(), now) {
            Verdict::Settled { disks } => {
                let secs = settle.elapsed(now).as_secs_f64();
                return if disks.is_empty() {
                    format!("USB settled in {secs:.1} s, no USB disk")
                } else {
                    format!("USB settled in {secs:.1} s: {}", disks.join(", "))
                };
            }
            Verdict::TimedOut(what) => {
                log::warn(format!(
                    "USB storage did not settle within {} s ({}): going on without it",
                    usb::SETTLE_TIMEOUT.as_secs(),
                    what.join("; ")
                ));
                return format!(
                    "USB did not settle within {} s",
                    usb::SETTLE_TIMEOUT.as_secs()
                );
            }
            Verdict::Waiting(what) => {
                if told.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(2)) {
                    told = Some(now);
                    log::info(format!(
                        "waiting up to {} s for USB storage to settle ({:.0} s so far): {}",
                        usb::SETTLE_TIMEOUT.as_secs(),
                        settle.elapsed(now).as_secs_f64(),
                        what.join("; ")
                    ));
                }
                p.sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Looks for the answer file on the volumes answer files may come from
/// (the medium, removable media, or the label `rayos.answers=` names;
/// docs/answer-file.md) among `disks` — only disks named in `only`, when
/// given. Copies it to [`paths::ANSWERS`]; returns the volume's device.
pub fn search_answers(
    st: &State,
    p: &mut dyn Platform,
    disks: &[rayos_disk::report::Disk],
    only: Option<&BTreeSet<String>>,
) -> Option<String> {
    let (rel, label) = answers_ref(st);
    let wanted =
        |v: &Volume| only.is_none_or(|o| usb::kernel_name(&v.disk).is_some_and(|n| o.contains(&n)));
    let vols: Vec<Volume> = volumes_of(p, disks).into_iter().filter(wanted).collect();
    let (used, skipped) =
        volumes::answer_sources(&vols, label.as_deref(), st.medium_disk.as_deref());
    let probe = Path::new(paths::PROBE);
    let _ = fs::create_dir_all(p.path(probe));
    for v in &skipped {
        // Looked at only to say why a file there is not used.
        let source = v.device.to_string_lossy();
        if p.mount(Mount::read_only(&source, probe, v.fstype)).is_ok() {
            let there = volumes::file_on(&p.path(probe), &rel).is_some();
            let _ = release(p, probe);
            if there {
                log::warn(format!(
                    "{rel} on {} is not used: it is on an internal disk, and answer files are read only from \
                     the installer medium and removable media (name it with rayos.answers=LABEL:PATH to use it)",
                    v.device.display()
                ));
            }
        }
    }
    let dest = p.at(paths::ANSWERS);
    for v in used {
        let source = v.device.to_string_lossy();
        if p.mount(Mount::read_only(&source, probe, v.fstype)).is_err() {
            continue;
        }
        let found = volumes::file_on(&p.path(probe), &rel).and_then(|f| fs::copy(&f, &dest).ok());
        let _ = release(p, probe);
        if found.is_some() {
            return Some(v.device.display().to_string());
        }
    }
    None
}

/// Looks at the kernel's disks once a second; a new one is searched for
/// an answer file once USB has settled. Returns the volume an answer file
/// was found on (copied to [`paths::ANSWERS`]), to be offered.
pub fn watch_tick(st: &mut State, p: &mut dyn Platform) -> Option<String> {
    if st.installer_pid.is_some() {
        return None;
    }
    let now = p.now();
    let w = st.watch.as_mut()?;
    if w.last_scan
        .is_some_and(|t| now.duration_since(t) < WATCH_EVERY)
    {
        return None;
    }
    w.last_scan = Some(now);
    let names = p.block_names();
    for gone in w.known.difference(&names) {
        log::info(format!("disk /dev/{gone} was removed"));
    }
    w.known.retain(|n| names.contains(n));
    w.fresh.retain(|n| names.contains(n));
    let added: Vec<String> = names.difference(&w.known).cloned().collect();
    if !added.is_empty() {
        log::info(format!(
            "new disk {}: looking for an answer file once USB storage has settled",
            added
                .iter()
                .map(|n| format!("/dev/{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        w.known.extend(added.iter().cloned());
        w.fresh.extend(added);
        if w.settle.is_none() {
            w.settle = Some(Settle::new(now, usb::SETTLE_TIMEOUT, usb::QUIET));
        }
    }
    let settle = w.settle.as_mut()?;
    match settle.observe(p.usb_snapshot(), now) {
        Verdict::Waiting(_) => return None,
        Verdict::TimedOut(what) => log::warn(format!(
            "USB storage did not settle within {} s ({}): looking at the new disks as they are",
            usb::SETTLE_TIMEOUT.as_secs(),
            what.join("; ")
        )),
        Verdict::Settled { .. } => {}
    }
    w.settle = None;
    let fresh = std::mem::take(&mut w.fresh);
    if fresh.is_empty() {
        return None;
    }
    let disks = list_disks(p);
    search_answers(st, p, &disks, Some(&fresh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fake::{self, Call, Fake};

    /// The mounts a step made, as (device, read-only).
    fn mounts(p: &Fake) -> Vec<(String, bool)> {
        p.calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source, read_only, ..
                } => Some((source.clone(), *read_only)),
                _ => None,
            })
            .collect()
    }

    /// An internal disk, a USB stick (no removable flag) and an SD card
    /// (removable flag): the answer file comes from the stick, the one on
    /// the internal disk is looked at only to say it is not used.
    #[test]
    fn find_answers_takes_only_removable_media() {
        let mut p = Fake::new();
        p.disk("/dev/sda", false, Some("DATA"));
        p.volume("/dev/sda", &[("rayos-answers.toml", "internal")]);
        p.disk("/dev/sdb", false, Some("STICK"));
        p.usb.insert("/dev/sdb".into());
        p.volume("/dev/sdb", &[("rayos-answers.toml", "stick")]);
        p.disk("/dev/mmcblk0", true, Some("CARD"));
        p.volume("/dev/mmcblk0", &[("other.txt", "x")]);
        let mut st = fake::state();
        let r = find_answers(&mut st, &mut p);
        assert!(matches!(r, StepResult::Ok(_)), "{r:?}");
        assert_eq!(st.answers_source.as_deref(), Some("/dev/sdb"));
        assert_eq!(st.answers.as_deref(), Some(Path::new(paths::ANSWERS)));
        assert_eq!(fs::read_to_string(p.at(paths::ANSWERS)).unwrap(), "stick");
        // Every volume read-only, none left mounted.
        assert!(mounts(&p).iter().all(|(_, ro)| *ro), "{:?}", p.calls);
        assert!(!p.is_mounted_now(paths::PROBE));
        // Later sticks are watched from here.
        assert!(st.watch.as_ref().unwrap().known.contains("sdb"));
    }

    #[test]
    fn find_answers_ignores_an_answer_file_on_an_internal_disk() {
        let mut p = Fake::new();
        p.disk("/dev/sda", false, Some("DATA"));
        p.volume("/dev/sda", &[("rayos-answers.toml", "internal")]);
        p.disk("/dev/sdb", true, Some("STICK"));
        p.volume("/dev/sdb", &[]);
        let mut st = fake::state();
        let r = find_answers(&mut st, &mut p);
        assert!(matches!(r, StepResult::Skip(_)), "{r:?}");
        assert_eq!(st.answers, None);
        assert!(!p.at(paths::ANSWERS).exists(), "nothing copied");
        assert!(
            st.status.faults.is_empty(),
            "nothing was asked for: no fault"
        );
        // The internal disk was mounted only to say why its file is unused.
        assert_eq!(
            mounts(&p),
            vec![
                ("/dev/sda".to_string(), true),
                ("/dev/sdb".to_string(), true)
            ]
        );
    }

    /// `rayos.answers=LABEL:PATH` reaches an internal disk by its label,
    /// and a named file that is nowhere is a fault.
    #[test]
    fn find_answers_by_label_reaches_any_disk_and_a_missing_one_is_a_fault() {
        let mut p = Fake::new();
        p.disk("/dev/sda", false, Some("SEED"));
        p.volume("/dev/sda", &[("auto/a.toml", "seeded")]);
        let mut st = fake::state();
        st.params = crate::cmdline::BootParams::parse("rayos.answers=SEED:/auto/a.toml");
        assert!(matches!(find_answers(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(st.answers_source.as_deref(), Some("/dev/sda"));
        assert_eq!(fs::read_to_string(p.at(paths::ANSWERS)).unwrap(), "seeded");

        let mut p = Fake::new();
        p.disk("/dev/sda", false, Some("SEED"));
        p.volume("/dev/sda", &[]);
        let mut st = fake::state();
        st.params = crate::cmdline::BootParams::parse("rayos.answers=SEED:/auto/a.toml");
        assert!(matches!(find_answers(&mut st, &mut p), StepResult::Fail(_)));
        assert!(
            st.status.faults[0].contains("SEED:/auto/a.toml"),
            "{:?}",
            st.status.faults
        );
    }

    /// The medium's own answer file wins at once, without searching disks.
    #[test]
    fn find_answers_uses_the_medium_first() {
        let mut p = Fake::new();
        p.disk("/dev/sr0", true, Some(volumes::INSTALLER_LABEL));
        p.volume(
            "/dev/sr0",
            &[
                ("EFI/Linux/rayos-0.2.0.efi", "uki"),
                ("rayos-answers.toml", "medium"),
            ],
        );
        p.disk("/dev/sdb", true, Some("STICK"));
        p.volume("/dev/sdb", &[("rayos-answers.toml", "stick")]);
        let mut st = fake::state();
        assert!(matches!(find_medium(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(
            st.uki.as_deref(),
            Some(Path::new("/run/rayos/medium/EFI/Linux/rayos-0.2.0.efi"))
        );
        assert!(p.is_mounted_now(paths::MEDIUM), "the medium stays mounted");
        assert!(matches!(find_answers(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(st.answers_source.as_deref(), Some("the installer medium"));
        assert_eq!(fs::read_to_string(p.at(paths::ANSWERS)).unwrap(), "medium");
        assert_eq!(mounts(&p), vec![("/dev/sr0".to_string(), true)]);
    }
}

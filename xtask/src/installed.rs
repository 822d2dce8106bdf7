//! RayOS installed on the host: the answer files xtask's runs install with
//! (`demo`, `e2e`, `e2e-update`, `bench boot`) and the `rayos install`
//! call that writes a disk image with one.
//!
//! The runs differ only in a few lines (hostname, countdown, target disk,
//! the Linux VM), so one writer keeps the rest of the file in one place.
//! The e2e variants that change more edit `e2e::ANSWERS` as text
//! (`e2e_debian`, `e2e_windows`, the `4k` and `answers-safety` variants).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Result;

/// The lines of an answer file that differ between xtask's runs; the
/// rest (a whole-disk install, 2 GiB system, data on the rest, UTC, the
/// Linux VM autostarted and not presented, Windows off, no network) is
/// the same for all.
pub struct AnswerFile<'a> {
    /// `[machine] hostname`.
    pub hostname: &'a str,
    /// `[unattended] countdown` in seconds (installer media only).
    pub countdown: Option<u32>,
    /// `[target] disk`.
    pub disk: Option<&'a str>,
    /// Spell out what a reader of the file should see although it is the
    /// default: the mode's choices, `[vm_storage]` on the data partition,
    /// the locale and keyboard.
    pub spelled_out: bool,
    /// `[linux] system = "test-guest"`: the small test guest, not Debian.
    pub test_guest: bool,
}

impl AnswerFile<'_> {
    /// The file's text.
    pub fn text(&self) -> String {
        let mut t = String::from("version = 1\n");
        if let Some(c) = self.countdown {
            let _ = write!(t, "[unattended]\ncountdown = {c}\n");
        }
        t.push_str("[target]\n");
        if let Some(d) = self.disk {
            let _ = writeln!(t, "disk = \"{d}\"");
        }
        t.push_str(if self.spelled_out {
            "mode = \"whole-disk\"        # whole-disk | free-space | reuse\n"
        } else {
            "mode = \"whole-disk\"\n"
        });
        t.push_str("[sizes]\nsystem = \"2GiB\"\ndata = \"rest\"\n");
        if self.spelled_out {
            t.push_str("[vm_storage]\nlinux = \"data\"\nwindows = \"data\"\n");
        }
        let _ = write!(
            t,
            "[machine]\nhostname = \"{}\"\ntimezone = \"UTC\"\n",
            self.hostname
        );
        if self.spelled_out {
            t.push_str("locale = \"en_US.UTF-8\"\nkeyboard = \"us\"\n");
        }
        t.push_str(
            "[policy]\nlinux_autostart = true\nlinux_present_on_boot = false\n\
             windows_enabled = false\nnetworking = \"off\"\n",
        );
        if self.test_guest {
            t.push_str("[linux]\nsystem = \"test-guest\"\n");
        }
        t
    }
}

/// Installs RayOS onto a fresh 16 GiB sparse image `disk` with `rayos`
/// (the host build): the answer file `answers` written into `work`, no
/// UEFI boot entry, the system UKI and, when given, the recovery UKI.
/// `quiet` drops the installer's stdout (its plan) for runs that print
/// their own summary.
pub fn install_image(
    rayos: &Path,
    work: &Path,
    disk: &Path,
    answers: &str,
    system_image: &Path,
    recovery_image: Option<&Path>,
    quiet: bool,
) -> Result<()> {
    fs::File::create(disk)?.set_len(16 << 30)?;
    let answers_file = work.join("answers.toml");
    fs::write(&answers_file, answers)?;
    let mut cmd = Command::new(rayos);
    cmd.args(["install", "--yes", "--no-nvram", "--target"])
        .arg(disk)
        .arg("--answers")
        .arg(&answers_file)
        .arg("--system-image")
        .arg(system_image);
    if let Some(r) = recovery_image {
        cmd.arg("--recovery-image").arg(r);
    }
    if quiet {
        cmd.stdout(Stdio::null());
    }
    crate::run_cmd(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::AnswerFile;

    /// Every shape the runs use parses, and the spelled-out defaults are
    /// the engine's defaults (so leaving them out changes nothing).
    #[test]
    fn answer_files_parse_and_spell_out_only_defaults() {
        use rayos_install::answers::Answers;
        let mut f = AnswerFile {
            hostname: "h",
            countdown: Some(2),
            disk: Some("/dev/vda"),
            spelled_out: true,
            test_guest: true,
        };
        let full = Answers::parse("full", &f.text()).unwrap();
        assert_eq!(full.countdown_secs, 2);
        f.spelled_out = false;
        let short = Answers::parse("short", &f.text()).unwrap();
        assert_eq!(full, short);
        f.countdown = None;
        f.disk = None;
        f.test_guest = false;
        Answers::parse("bare", &f.text()).unwrap();
    }
}

//! Writing [`Answers`] back as an answer file (`--save-answers`), in the
//! format `rayos_install::answers` parses (docs/answer-file.md), so an
//! install made with the wizard can be repeated unattended.
//!
//! The engine's `Answers` derives `Serialize`, but its shape (located
//! values, enums) is not the file's; this writer produces the file's form
//! and is checked by parsing its output back with `Answers::parse`.

use std::fmt::Write;

use rayos_install::answers::{
    Answers, DataSize, GIB, KIB, MIB, PartRef, TIB, VmStorage, human_size,
};
use rayos_state::Networking;

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A size the parser reads back exactly: a unit when it divides, else bytes.
fn size(b: u64) -> String {
    for (m, u) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if b.checked_rem(m) == Some(0) {
            return quote(&format!("{}{u}", b / m));
        }
    }
    b.to_string()
}

fn part(r: &PartRef) -> String {
    match r {
        PartRef::Number(n) => n.to_string(),
        PartRef::Path(p) => quote(p),
    }
}

fn storage(s: &VmStorage) -> String {
    match s {
        VmStorage::Data => quote("data"),
        VmStorage::Create(b) => format!("{{ create = {} }}", size(*b)),
        VmStorage::Reuse(r) => format!("{{ reuse = {} }}", part(&r.value)),
    }
}

/// The answer file for `a`. `comment` lines are written first, as `#`
/// comments (what the file cannot express, who wrote it).
pub fn to_toml(a: &Answers, comment: &[String]) -> String {
    let mut s = String::new();
    for c in comment {
        let _ = writeln!(s, "# {c}");
    }
    let _ = writeln!(s, "version = {}", rayos_install::answers::ANSWERS_VERSION);
    let t = &a.target;
    let _ = writeln!(s, "\n[target]");
    if let Some(d) = &t.disk {
        let _ = writeln!(s, "disk = {}", quote(&d.display().to_string()));
    }
    let _ = writeln!(s, "mode = {}", quote(&t.mode.to_string()));
    for (k, v) in [("esp", &t.esp), ("system", &t.system), ("data", &t.data)] {
        if let Some(v) = v {
            let _ = writeln!(s, "{k} = {}", part(&v.value));
        }
    }
    if !t.format.is_empty() {
        let list: Vec<String> = t.format.iter().map(|f| part(&f.value)).collect();
        let _ = writeln!(s, "format = [{}]", list.join(", "));
    }
    if t.reinstall {
        let _ = writeln!(s, "reinstall = true");
    }
    let _ = writeln!(s, "\n[sizes]");
    let _ = writeln!(s, "esp = {}", size(a.sizes.esp));
    let _ = writeln!(s, "system = {}", size(a.sizes.system));
    let _ = writeln!(
        s,
        "data = {}",
        match a.sizes.data {
            DataSize::Rest => quote("rest"),
            DataSize::Bytes(b) => size(b),
        }
    );
    let _ = writeln!(s, "\n[vm_storage]");
    let _ = writeln!(s, "linux = {}", storage(&a.vm_storage.linux));
    let _ = writeln!(s, "windows = {}", storage(&a.vm_storage.windows));
    let m = &a.machine;
    let _ = writeln!(s, "\n[machine]");
    let _ = writeln!(s, "hostname = {}", quote(&m.hostname));
    let _ = writeln!(s, "timezone = {}", quote(&m.timezone));
    let _ = writeln!(s, "locale = {}", quote(&m.locale));
    let _ = writeln!(s, "keyboard = {}", quote(&m.keyboard));
    let p = &a.policy;
    let _ = writeln!(s, "\n[policy]");
    let _ = writeln!(s, "linux_autostart = {}", p.linux_autostart);
    let _ = writeln!(s, "linux_present_on_boot = {}", p.linux_present_on_boot);
    let _ = writeln!(s, "windows_enabled = {}", p.windows_enabled);
    let _ = writeln!(s, "windows_autostart = {}", p.windows_autostart);
    let _ = writeln!(s, "networking = {}", quote(networking(p.networking)));
    let l = &a.linux;
    if let Some(user) = &l.user {
        // Only the hash is ever written, never a password.
        let _ = writeln!(s, "\n[linux]");
        let _ = writeln!(s, "user = {}", quote(user));
        if let Some(h) = &l.password_hash {
            let _ = writeln!(s, "password_hash = {}", quote(h));
        }
        if let Some(k) = &l.ssh_key {
            let _ = writeln!(s, "ssh_key = {}", quote(k));
        }
        let _ = writeln!(s, "disk_size = {}", quote(&size(l.disk_size)));
    }
    s
}

pub fn networking(n: Networking) -> &'static str {
    match n {
        Networking::Off => "off",
        Networking::On => "on",
        Networking::ProvisioningOnly => "provisioning_only",
    }
}

/// `human_size` re-exported for the screens.
pub fn human(b: u64) -> String {
    human_size(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayos_install::answers::{Located, Mode};

    fn strip_lines(mut a: Answers) -> Answers {
        let z = |l: &mut Option<Located<PartRef>>| {
            if let Some(v) = l {
                v.line = 0;
            }
        };
        z(&mut a.target.esp);
        z(&mut a.target.system);
        z(&mut a.target.data);
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

    #[test]
    fn written_answers_parse_back_to_the_same_answers() {
        let mut a = Answers::defaults(Mode::Reuse);
        let at = |n| Located {
            value: PartRef::Number(n),
            line: 0,
        };
        a.target.disk = Some("/tmp/disk \"one\".img".into());
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
        a.policy.windows_enabled = true;
        a.policy.windows_autostart = true;
        a.policy.networking = Networking::ProvisioningOnly;
        let text = to_toml(&a, &["made by a test".into()]);
        assert!(
            text.starts_with("# made by a test\nversion = 1\n"),
            "{text}"
        );
        let back = Answers::parse("saved.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(strip_lines(back), a);

        let d = Answers::defaults(Mode::WholeDisk);
        let back = Answers::parse("d.toml", &to_toml(&d, &[])).unwrap();
        assert_eq!(back, d);
    }
}

//! The home screen: what the display shows when no VM is presented.
//!
//! It lists the VMs with their state and the key that presents each, the
//! RayOS version, the time, the reserved keys, and the last problem (for
//! example rayosd not answering). The content is plain lines of text
//! ([`lines`]) drawn with the built-in font ([`render`]), so tests can
//! check the screen by reading the text back ([`read_screen`]).

use rayos_api::{AccelKind, VmInfo, VmState};

use crate::display::Canvas;
use crate::font;
use crate::rfb::Rect;

/// The home screen's background colour (0x00RRGGBB).
pub const BACKGROUND: u32 = 0x0014_1a24;
const TEXT: u32 = 0x00e6_e6e6;
const ACCENT: u32 = 0x006c_b6ff;
const DIM: u32 = 0x0090_98a4;
const WARN: u32 = 0x00ff_b454;

/// How many VMs get a direct key (Ctrl+Alt+F1 … F10).
pub const MAX_KEYED: usize = 10;

/// What the home screen shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Model {
    /// The RayOS version, shown on the home screen.
    pub version: String,
    /// Already formatted (local time).
    pub time: String,
    /// In key order: the first is Ctrl+Alt+F1.
    pub vms: Vec<HomeVm>,
    /// The last problem, shown at the bottom.
    pub status: Option<String>,
    /// Under TCG: why the VMs run without hardware virtualization (shown
    /// under the VM list).
    pub accel_warning: Option<String>,
}

/// The warning line for the VMs' accelerator, `None` under KVM.
pub fn accel_warning(vms: &[VmInfo]) -> Option<String> {
    let a = vms.iter().find_map(|v| v.accel.as_ref())?;
    (a.accel == AccelKind::Tcg).then(|| {
        format!(
            "! VMs run without hardware virtualization (TCG): {}",
            a.reason.as_deref().unwrap_or("reason unknown")
        )
    })
}

/// One VM as the home screen lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeVm {
    /// The VM's name.
    pub name: String,
    /// Its kind (`linux`, `windows`, `generic`).
    pub kind: String,
    /// Its state as shown (`running (presented)`, `stopped`, …).
    pub state: String,
    /// What the person does next with this VM, shown under it (a Windows
    /// VM still to be installed).
    pub next: Option<String>,
}

impl HomeVm {
    /// The line for `v`, with what the person does next when there is
    /// something.
    pub fn from_info(v: &VmInfo) -> HomeVm {
        let state = match v.state {
            VmState::Running if v.presented => "running (presented)".to_string(),
            VmState::Running => "running (hidden)".to_string(),
            s => s.as_str().to_string(),
        };
        HomeVm {
            name: v.name.clone(),
            kind: v.kind.to_string(),
            state,
            next: next_step(v),
        }
    }
}

/// The next step of a Windows VM that is not installed yet (docs/windows.md).
fn next_step(v: &VmInfo) -> Option<String> {
    if v.kind.to_string() != "windows" || v.provisioned {
        return None;
    }
    Some(if v.media.is_empty() && v.usb_media.is_empty() {
        format!(
            "Windows: attach installation media: rayos vm media {} attach SOURCE (`rayos media` lists them)",
            v.name
        )
    } else {
        format!(
            "Windows: install from the attached media; when Setup is done: rayos vm provisioned {}",
            v.name
        )
    })
}

/// One line of the screen and its colour.
pub type Line = (String, u32);

/// The screen as text lines, top to bottom, for a screen `cols` wide.
pub fn lines(m: &Model, cols: usize) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let title = format!("RayOS {}", m.version);
    let pad = cols.saturating_sub(title.len() + m.time.len()).max(2);
    out.push((format!("{title}{}{}", " ".repeat(pad), m.time), ACCENT));
    out.push((String::new(), TEXT));
    out.push(("Virtual machines".into(), TEXT));
    out.push((String::new(), TEXT));
    if m.vms.is_empty() {
        out.push((
            "  No VMs yet: create one with `rayos vm create` (see `rayos vm --help`).".into(),
            DIM,
        ));
    }
    for (i, v) in m.vms.iter().enumerate() {
        let key = if i < MAX_KEYED {
            format!("Ctrl+Alt+F{}", i + 1)
        } else {
            String::new()
        };
        out.push((
            format!("  {key:<14}{:<34}{:<22}{}", v.name, v.state, v.kind),
            TEXT,
        ));
        if let Some(n) = &v.next {
            out.push((format!("  {:<14}{n}", ""), DIM));
        }
    }
    if let Some(w) = &m.accel_warning {
        out.push((String::new(), TEXT));
        out.push((w.clone(), WARN));
    }
    out.push((String::new(), TEXT));
    out.push((
        "Ctrl+Alt+F<n> (F<n> alone on this screen) presents VM n; a stopped or saved VM is started first.".into(),
        DIM,
    ));
    out.push((
        "Ctrl+Alt+Home returns here from any VM (and from the text console, which Ctrl+Alt+F12 shows).".into(),
        DIM,
    ));
    if let Some(s) = &m.status {
        out.push((String::new(), TEXT));
        out.push((s.clone(), WARN));
    }
    out
}

/// Text scale and margin for a display size: 2× from 1600 pixels wide.
pub fn layout(width: u32) -> (u32, u32) {
    let scale = if width >= 1600 { 2 } else { 1 };
    (scale, 16 * scale)
}

/// Draws the home screen on the whole canvas.
pub fn render(c: &mut Canvas<'_>, m: &Model) -> Rect {
    let (scale, margin) = layout(c.width);
    let (cw, ch) = font::cell(scale);
    c.fill(c.full(), BACKGROUND);
    let cols = (c.width.saturating_sub(2 * margin) / cw) as usize;
    for (i, (text, colour)) in lines(m, cols).iter().enumerate() {
        let y = margin + i as u32 * ch;
        if y + ch > c.height {
            break;
        }
        let shown: String = text.chars().take(cols).collect();
        font::draw_text(c, margin, y, &shown, *colour, BACKGROUND, scale);
    }
    c.full()
}

/// Reads the home screen's text back from displayed pixels.
pub fn read_screen(pixels: &[u32], width: u32, height: u32) -> Vec<String> {
    let (scale, margin) = layout(width);
    let (cw, ch) = font::cell(scale);
    let cols = width.saturating_sub(2 * margin) / cw;
    let mut out = Vec::new();
    let mut y = margin;
    while y + ch <= height {
        out.push(font::read_text(
            pixels, width, margin, y, cols, scale, BACKGROUND,
        ));
        y += ch;
    }
    while out.last().is_some_and(String::is_empty) {
        out.pop();
    }
    out
}

/// Local time as `YYYY-MM-DD HH:MM` (the C library applies `TZ` or
/// `/etc/localtime`; UTC without either).
pub fn local_time(unix: i64) -> String {
    let t = unix as libc::time_t;
    // SAFETY: all-zero is a valid `tm`; localtime_r fills it and only reads
    // `t`; both live for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
    if !ok {
        return String::new();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::{Display, MemoryDisplay};

    fn model() -> Model {
        Model {
            version: "0.1.0".into(),
            time: "2026-11-26 14:20".into(),
            vms: vec![
                HomeVm {
                    name: "dev".into(),
                    kind: "linux".into(),
                    state: "running (hidden)".into(),
                    next: None,
                },
                HomeVm {
                    name: "win11".into(),
                    kind: "windows".into(),
                    state: "saved".into(),
                    next: None,
                },
            ],
            status: Some("rayosd at /run/rayos/api.sock does not answer; retrying".into()),
            accel_warning: None,
        }
    }

    #[test]
    fn home_screen_reads_back_as_its_text() {
        for (w, h) in [(1024, 768), (1920, 1080)] {
            let mut d = MemoryDisplay::new(w, h);
            let r = render(&mut d.canvas(), &model());
            d.flush(r);
            let px = d.visible.lock().unwrap().clone();
            let text = read_screen(&px, w, h);
            let (scale, margin) = layout(w);
            let cols = ((w - 2 * margin) / font::cell(scale).0) as usize;
            let want: Vec<String> = lines(&model(), cols)
                .into_iter()
                .map(|(t, _)| {
                    t.chars()
                        .take(cols)
                        .collect::<String>()
                        .trim_end()
                        .to_string()
                })
                .collect();
            assert_eq!(text, want, "{w}x{h}");
            assert!(text[0].starts_with("RayOS 0.1.0") && text[0].ends_with("2026-11-26 14:20"));
            assert!(text[4].contains("Ctrl+Alt+F1") && text[4].contains("dev"));
            assert!(text[4].contains("running (hidden)"));
            assert!(
                text[5].contains("Ctrl+Alt+F2")
                    && text[5].contains("win11")
                    && text[5].contains("saved")
            );
            assert!(text.last().unwrap().contains("does not answer"));
        }
    }

    #[test]
    fn tcg_shows_a_warning_line_under_the_vms_and_kvm_none() {
        let info = |accel: Option<rayos_api::Accelerator>| {
            serde_json::from_value::<VmInfo>(serde_json::json!({
                "name": "linux", "id": "00000000-0000-0000-0000-000000000001",
                "kind": "linux", "state": "running", "presented": false,
                "cpus": 2, "memory_mib": 2048, "network": false,
                "provisioned": true, "tpm": false, "vm_dir": "/var/rayos/vm/x",
                "disks": [], "media": [], "pid": null, "vnc_socket": null,
                "last_boot": null, "saved_state": null, "unusable_states": [],
                "last_error": null, "crash_console": [], "crash_count": 0,
                "enabled": true, "autostart": true, "accel": accel,
            }))
            .unwrap()
        };
        let tcg = rayos_api::Accelerator {
            accel: AccelKind::Tcg,
            reason: Some(
                "virtualization is off in the firmware setup (VT-x/AMD-V); VMs run much slower"
                    .into(),
            ),
        };
        let w = accel_warning(&[info(Some(tcg))]).unwrap();
        assert_eq!(
            w,
            "! VMs run without hardware virtualization (TCG): virtualization is off in the firmware setup (VT-x/AMD-V); VMs run much slower"
        );
        let kvm = rayos_api::Accelerator {
            accel: AccelKind::Kvm,
            reason: None,
        };
        assert_eq!(accel_warning(&[info(Some(kvm))]), None);
        assert_eq!(accel_warning(&[info(None)]), None);
        assert_eq!(accel_warning(&[]), None);
        // On the screen: right after the VM list, in the warning colour.
        let mut m = model();
        m.accel_warning = Some(w.clone());
        let l = lines(&m, 200);
        let at = l.iter().position(|(t, _)| *t == w).expect("warning shown");
        assert!(l[at - 2].0.contains("win11"), "{l:?}");
        assert_eq!(l[at].1, WARN);
        assert!(lines(&model(), 200).iter().all(|(t, _)| !t.contains("TCG")));
    }

    #[test]
    fn a_windows_vm_to_install_says_what_to_do_next() {
        let mut v: VmInfo = serde_json::from_value(serde_json::json!({
            "name": "windows", "id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "kind": "windows", "state": "stopped", "presented": false, "cpus": 2,
            "memory_mib": 4096, "network": false, "provisioned": false, "tpm": true,
            "vm_dir": "/var/rayos/vm/x", "disks": [], "media": [], "pid": null,
            "vnc_socket": null, "last_boot": null, "last_error": null,
            "saved_state": null, "unusable_states": [], "crash_console": [],
            "crash_count": 0, "enabled": true, "autostart": false
        }))
        .unwrap();
        let m = |v: &VmInfo| Model {
            vms: vec![HomeVm::from_info(v)],
            ..Model::default()
        };
        let text = |v: &VmInfo| {
            lines(&m(v), 160)
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(text(&v).contains("rayos vm media windows attach SOURCE"));
        v.usb_media = vec!["/dev/sdb".into()];
        assert!(text(&v).contains("rayos vm provisioned windows"));
        v.provisioned = true;
        assert!(!text(&v).contains("Windows:"));
    }

    #[test]
    fn empty_list_says_how_to_create_a_vm() {
        let m = Model {
            version: "0.1.0".into(),
            ..Model::default()
        };
        let l = lines(&m, 120);
        assert!(l.iter().any(|(t, _)| t.contains("No VMs yet")));
    }

    #[test]
    fn pixel_snapshot_is_stable() {
        // FNV-1a of the rendered pixels: a change to font, layout or colours
        // shows up here; update the value only for an intended change.
        let mut d = MemoryDisplay::new(640, 480);
        render(&mut d.canvas(), &model());
        let mut h: u64 = 0xcbf29ce484222325;
        for p in d.canvas().pixels.iter() {
            for b in p.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        assert_eq!(format!("{h:016x}"), "5f96304cf34e2f4c");
    }

    #[test]
    fn time_formats() {
        let t = local_time(0);
        assert_eq!(t.len(), 16, "{t}");
    }
}

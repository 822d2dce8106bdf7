//! Installation media of a VM: `attach` and `eject` (`POST
//! /v1/vms/{name}/media`), and ejecting everything when a VM is
//! provisioned.
//!
//! Rules (docs/supervisor.md, "Media"):
//! - The registry is the truth: a medium stays attached until ejected, and
//!   every launch puts the registry's media on the command line. A change
//!   to a running VM is made through QMP first and written to the registry
//!   only when QEMU took it, so the next launch (and a restore of a state
//!   saved after the change) has exactly the devices the guest had.
//! - While a VM runs, only changes that keep its command line reproducible
//!   are made: a Windows VM's one CD drive (`cd0`, always present) takes a
//!   CD, USB sticks are plugged at the next free port and unplugged last
//!   first. Other changes wait for the VM to be stopped.
//! - A saved VM's media are not changed: its state holds the devices it
//!   had, and a different command line would make the state unusable.
//! - `copy` copies an image file into `vm/<id>/media/` (0600) with
//!   `copying` events, so the stick can be removed; the copy is deleted
//!   when the medium is ejected.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rayos_api::{ActionReply, EventKind, MediaAction, MediaForm, MediaRequest, VmState};
use rayos_state::{VmDefinition, VmKind};
use rayos_vmm::VmHandle;
use rayos_vmm::qemu::media::{self, Change, Form, MAX_USB};

use super::{OpError, Slot, Supervisor, chain, lock};

/// Where copied media live inside a VM's directory.
pub const MEDIA_DIR: &str = "media";

impl Supervisor {
    /// Attaches or ejects a medium, at once when the VM runs, and records it.
    pub fn media(&self, name: &str, req: &MediaRequest) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let (state, def) = {
            let st = lock(&slot.status);
            (st.state, st.def.clone())
        };
        let running = match state {
            VmState::Stopped | VmState::Crashed => false,
            VmState::Running | VmState::Paused => true,
            VmState::Saved => {
                return Err(OpError::Invalid(format!(
                    "VM {name} is saved: its saved state holds the devices it had; start it first (or start --fresh), then change its media"
                )));
            }
            other => {
                return Err(OpError::Busy {
                    vm: name.to_string(),
                    state: other,
                });
            }
        };
        let handle = if running { op.as_deref_mut() } else { None };
        let message = match req.action {
            MediaAction::Attach => self.attach(&slot, &def, req, handle)?,
            MediaAction::Eject => self.eject(&slot, &def, req.source.as_deref(), handle, "")?,
        };
        drop(op);
        Ok(self.reply(&slot, message, None))
    }

    fn attach(
        &self,
        slot: &Slot,
        def: &VmDefinition,
        req: &MediaRequest,
        handle: Option<&mut (dyn VmHandle + 'static)>,
    ) -> Result<String, OpError> {
        let src = req.source.as_deref().ok_or_else(|| {
            OpError::Invalid("attach needs a source (a file or /dev path)".into())
        })?;
        let invalid = |e: rayos_vmm::qemu::image::ImageError| OpError::Invalid(chain(&e));
        let kind = media::check(src).map_err(invalid)?;
        let form = match req.form {
            Some(MediaForm::Cdrom) => Form::Cdrom,
            Some(MediaForm::Usb) => Form::Usb,
            None => media::detect_form(src).map_err(invalid)?,
        };
        if def.media.iter().chain(&def.usb_media).any(|m| m == src) {
            return Err(OpError::Invalid(format!(
                "{} is already attached to VM {}",
                src.display(),
                def.name
            )));
        }
        let windows = def.kind == VmKind::Windows;
        let running = handle.is_some();
        match form {
            Form::Cdrom if windows && !def.media.is_empty() => {
                return Err(OpError::Invalid(format!(
                    "VM {} has one CD drive and it holds {}: eject it first (rayos vm media {} eject)",
                    def.name,
                    def.media[0].display(),
                    def.name
                )));
            }
            Form::Usb if def.usb_media.len() >= MAX_USB => {
                return Err(OpError::Invalid(format!(
                    "VM {} already has {MAX_USB} USB sticks: eject one first",
                    def.name
                )));
            }
            _ if running && !windows => {
                return Err(OpError::Invalid(format!(
                    "VM {} runs: a {} VM's media change while it is stopped (rayos vm stop {}, attach, start)",
                    def.name, def.kind, def.name
                )));
            }
            _ => {}
        }
        if req.copy && kind != media::Source::File {
            return Err(OpError::Invalid(format!(
                "--copy copies image files; {} is a device: attach it as it is, or make an image of it first",
                src.display()
            )));
        }
        let path = if req.copy {
            self.copy_medium(slot, def, src)?
        } else {
            src.to_path_buf()
        };
        let change = match form {
            Form::Cdrom => Change::InsertCd {
                index: def.media.len(),
                path: path.clone(),
            },
            Form::Usb => Change::PlugUsb {
                index: def.usb_media.len(),
                path: path.clone(),
            },
        };
        if let Some(h) = handle
            && let Err(e) = h.change_media(&change)
        {
            if req.copy {
                let _ = fs::remove_file(&path);
            }
            return Err(OpError::vmm("attach media to", &def.name, e));
        }
        self.update_def(slot, |d| match form {
            Form::Cdrom => d.media.push(path.clone()),
            Form::Usb => d.usb_media.push(path.clone()),
        })?;
        let how = match form {
            Form::Cdrom => "cdrom",
            Form::Usb => "usb",
        };
        let detail = format!("{} as {how}", path.display());
        let state = lock(&slot.status).state;
        self.events
            .emit(&slot.name, EventKind::MediaAttached, state, detail.clone());
        Ok(format!(
            "VM {}: attached {detail}{}",
            def.name,
            if running {
                ""
            } else {
                " (from its next start)"
            }
        ))
    }

    /// Ejects `which` (all media when `None`). `why` is added to the event
    /// (empty when the person asked).
    pub(super) fn eject(
        &self,
        slot: &Slot,
        def: &VmDefinition,
        which: Option<&Path>,
        mut handle: Option<&mut (dyn VmHandle + 'static)>,
        why: &str,
    ) -> Result<String, OpError> {
        // (form, index) of every medium to take away, USB sticks last
        // first so the remaining ones keep their ports.
        let mut gone: Vec<(Form, usize)> = Vec::new();
        for (i, m) in def.media.iter().enumerate() {
            if which.is_none_or(|w| w == m) {
                gone.push((Form::Cdrom, i));
            }
        }
        for (i, m) in def.usb_media.iter().enumerate().rev() {
            if which.is_none_or(|w| w == m) {
                gone.push((Form::Usb, i));
            }
        }
        if gone.is_empty() {
            return match which {
                Some(w) => Err(OpError::Invalid(format!(
                    "{} is not attached to VM {}: `rayos vm show {}` lists its media",
                    w.display(),
                    def.name,
                    def.name
                ))),
                None => Ok(format!("VM {} has no media", def.name)),
            };
        }
        if handle.is_some() {
            // Only a suffix of the USB sticks can go while the VM runs:
            // the others keep their ports, as the next command line has them.
            let usb_gone = gone.iter().filter(|(f, _)| *f == Form::Usb).count();
            let suffix = gone
                .iter()
                .filter(|(f, _)| *f == Form::Usb)
                .all(|&(_, i)| i + usb_gone >= def.usb_media.len());
            if def.kind != VmKind::Windows || !suffix {
                return Err(OpError::Invalid(format!(
                    "VM {} runs and this medium can only be ejected while it is stopped{}",
                    def.name,
                    if def.kind == VmKind::Windows {
                        " or after the USB sticks attached after it"
                    } else {
                        ""
                    }
                )));
            }
        }
        let mut done: Vec<PathBuf> = Vec::new();
        let mut failure = None;
        for &(form, i) in &gone {
            if let Some(h) = handle.as_deref_mut() {
                let change = match form {
                    Form::Cdrom => Change::EjectCd { index: i },
                    Form::Usb => Change::UnplugUsb { index: i },
                };
                if let Err(e) = h.change_media(&change) {
                    failure = Some(OpError::vmm("eject media from", &def.name, e));
                    break;
                }
            }
            done.push(match form {
                Form::Cdrom => def.media[i].clone(),
                Form::Usb => def.usb_media[i].clone(),
            });
        }
        // What QEMU let go of leaves the registry, even when a later
        // change failed.
        if !done.is_empty() {
            self.update_def(slot, |d| {
                d.media.retain(|m| !done.contains(m));
                d.usb_media.retain(|m| !done.contains(m));
            })?;
        }
        let vm_media = self.layout.vm_dir(def.id).join(MEDIA_DIR);
        let state = lock(&slot.status).state;
        for m in &done {
            // A copy RayOS made is RayOS's to delete.
            if m.starts_with(&vm_media) {
                let _ = fs::remove_file(m);
            }
            let detail = if why.is_empty() {
                m.display().to_string()
            } else {
                format!("{} ({why})", m.display())
            };
            self.events
                .emit(&slot.name, EventKind::MediaEjected, state, detail);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(format!(
            "VM {}: ejected {}",
            def.name,
            done.iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Writes a change of the VM's definition to the registry, then to
    /// the VM's status.
    pub(super) fn update_def(
        &self,
        slot: &Slot,
        f: impl FnOnce(&mut VmDefinition),
    ) -> Result<VmDefinition, OpError> {
        let id = lock(&slot.status).def.id;
        let def = {
            let mut reg = lock(&self.registry);
            let mut new = reg.get().clone();
            let Some(def) = new.vms.iter_mut().find(|v| v.id == id) else {
                return Err(OpError::NotFound(slot.name.clone()));
            };
            f(def);
            let def = def.clone();
            reg.replace(new)?;
            def
        };
        lock(&slot.status).def = def.clone();
        Ok(def)
    }

    /// Copies an image file into `vm/<id>/media/` with `copying` events
    /// every 10%; written under a temporary name and renamed when complete.
    fn copy_medium(&self, slot: &Slot, def: &VmDefinition, src: &Path) -> Result<PathBuf, OpError> {
        let dir = self.layout.vm_dir(def.id).join(MEDIA_DIR);
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| OpError::Io { what, path, source }
        };
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let file_name = src
            .file_name()
            .map(|n| n.to_string_lossy().replace(['/', '\0'], "_"))
            .unwrap_or_else(|| "medium.iso".into());
        let to = dir.join(&file_name);
        if to.exists() {
            return Err(OpError::Invalid(format!(
                "{} was copied before and is still attached or kept: eject it first",
                to.display()
            )));
        }
        let part = dir.join(format!(".{file_name}.partial"));
        let total = fs::metadata(src).map_err(io("read", src))?.len().max(1);
        let mut input = fs::File::open(src).map_err(io("read", src))?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(io("create", &part))?;
        let result = (|| -> Result<(), OpError> {
            let mut buf = vec![0u8; 1 << 20];
            let mut copied = 0u64;
            let mut last = None;
            loop {
                let n = input.read(&mut buf).map_err(io("read", src))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(io("write", &part))?;
                copied += n as u64;
                let step = copied * 10 / total;
                if last != Some(step) {
                    last = Some(step);
                    self.events.emit(
                        &slot.name,
                        EventKind::Copying,
                        lock(&slot.status).state,
                        format!("{}: {}%", src.display(), step * 10),
                    );
                }
            }
            out.sync_all().map_err(io("write", &part))?;
            fs::rename(&part, &to).map_err(io("rename", &part))?;
            // fsync the directory so the name survives a power cut.
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync", &dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        result.map(|()| to)
    }
}

//! The operations that change the registry: `create` (definition, disks
//! and boot files through [`crate::create`]), `delete` (the VM's directory
//! kept unless purged) and `provisioned`. The registry lock is held for a
//! whole creation, so two requests for one name cannot both succeed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayos_api::{ActionReply, CreateRequest, EventKind, VmInfo, VmState};

use super::{OpError, Slot, Supervisor, lock};
use crate::create;
use crate::lifecycle::Op;
use crate::store::StoreError;

impl Supervisor {
    /// Defines a new VM: checks the request against policy, makes its directory
    /// and disks, and registers it.
    pub fn create(&self, req: &CreateRequest) -> Result<VmInfo, OpError> {
        self.refuse_if_shutting_down()?;
        let create_err = |source| OpError::Create {
            vm: req.name.clone(),
            source,
        };
        create::validate(req).map_err(create_err)?;
        // Every image is inspected before anything is created or copied.
        let imports = create::inspect_imports(req).map_err(create_err)?;
        // Holding the registry lock for the whole creation serialises
        // creations, so two requests for one name cannot both succeed.
        let mut reg = lock(&self.registry);
        if !reg.writable() {
            return Err(StoreError::ReadOnly(reg.path().to_path_buf()).into());
        }
        if reg.get().by_name(&req.name).is_some() {
            return Err(OpError::Exists(req.name.clone()));
        }
        let id = uuid::Uuid::new_v4();
        let vm_dir = self.layout.vm_dir(id);
        let mut progress = self.import_progress(&req.name);
        let def = match create::build(req, id, &vm_dir, &imports, &mut progress) {
            Ok(d) => d,
            Err(source) => {
                // vm_dir is new (fresh UUID): nothing of the user's is in it.
                let _ = fs::remove_dir_all(&vm_dir);
                return Err(create_err(source));
            }
        };
        let mut new = reg.get().clone();
        new.vms.push(def.clone());
        if let Err(e) = reg.replace(new) {
            let _ = fs::remove_dir_all(&vm_dir);
            return Err(e.into());
        }
        drop(reg);
        let slot = Arc::new(Slot::new(&def, VmState::Stopped));
        lock(&self.slots).insert(def.name.clone(), slot.clone());
        self.events.emit(
            &def.name,
            EventKind::Created,
            VmState::Stopped,
            format!("id {}", def.id),
        );
        Ok(self.info(&slot))
    }

    /// Progress of a new VM's image imports: an `importing` event (and log
    /// line) per 10% of each file.
    fn import_progress<'a>(&'a self, vm: &'a str) -> impl FnMut(&Path, u32) + 'a {
        let mut last_step: Option<(PathBuf, u32)> = None;
        move |src: &Path, pct: u32| {
            let step = pct / 10;
            if last_step.as_ref() != Some(&(src.to_path_buf(), step)) {
                last_step = Some((src.to_path_buf(), step));
                self.events.emit(
                    vm,
                    EventKind::Importing,
                    VmState::Stopped,
                    format!("{}: {pct}%", src.display()),
                );
            }
        }
    }

    /// Removes a VM that has no device model from the registry; `purge` deletes
    /// its directory too.
    pub fn delete(&self, name: &str, purge: bool) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let _op = self.try_op(&slot)?;
        let mut st = lock(&slot.status);
        self.require(&slot, Op::Delete, st.state)?;
        let info = self.info_of(&slot, &st, false, None);
        {
            let mut reg = lock(&self.registry);
            let mut new = reg.get().clone();
            new.vms.retain(|v| v.id != st.def.id);
            reg.replace(new)?;
        }
        st.removed = true;
        lock(&self.slots).remove(name);
        let vm_dir = self.layout.vm_dir(st.def.id);
        let run_dir = self.spec(&st.def).run_dir;
        let _ = fs::remove_dir_all(run_dir);
        self.leave_cgroup(name);
        let message = if purge {
            fs::remove_dir_all(&vm_dir).map_err(|source| OpError::Io {
                what: "remove",
                path: vm_dir.clone(),
                source,
            })?;
            format!("deleted VM {name} and its directory {}", vm_dir.display())
        } else {
            format!(
                "deleted VM {name}; its disks and state are kept in {} (delete with --purge to remove them)",
                vm_dir.display()
            )
        };
        self.events
            .emit(name, EventKind::Deleted, st.state, message.clone());
        Ok(ActionReply {
            vm: info,
            message,
            boot: None,
        })
    }

    /// Marks installation done: every medium is ejected (at once when
    /// the VM runs) and `provisioning_only` networking goes off at the
    /// next start.
    pub fn provisioned(&self, name: &str) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let running = matches!(lock(&slot.status).state, VmState::Running | VmState::Paused);
        let handle = if running { op.as_deref_mut() } else { None };
        let changed = self.mark_provisioned(&slot, handle)?;
        drop(op);
        let message = if changed {
            format!(
                "VM {name} is provisioned: its media are ejected and provisioning-only networking is off from its next start"
            )
        } else {
            format!("VM {name} was already provisioned")
        };
        Ok(self.reply(&slot, message, None))
    }

    /// Ejects the VM's media (through `handle` when it runs) and records
    /// it provisioned. `Ok(false)` when it already was.
    pub(super) fn mark_provisioned(
        &self,
        slot: &Slot,
        handle: Option<&mut (dyn rayos_vmm::VmHandle + 'static)>,
    ) -> Result<bool, OpError> {
        let def = lock(&slot.status).def.clone();
        if def.provisioned {
            // Media attached since (drivers) still go when asked.
            if !def.media.is_empty() || !def.usb_media.is_empty() {
                self.eject(slot, &def, None, handle, "provisioned")?;
            }
            return Ok(false);
        }
        if handle.is_some() && def.kind != rayos_state::VmKind::Windows && !def.media.is_empty() {
            // Its CD drives cannot be emptied while it runs; they go at
            // its next start.
            self.update_def(slot, |d| {
                d.provisioned = true;
                d.media.clear();
                d.usb_media.clear();
            })?;
        } else {
            self.eject(slot, &def, None, handle, "provisioned")?;
            self.update_def(slot, |d| d.provisioned = true)?;
        }
        let state = lock(&slot.status).state;
        self.events
            .emit(&slot.name, EventKind::Provisioned, state, "");
        Ok(true)
    }
}

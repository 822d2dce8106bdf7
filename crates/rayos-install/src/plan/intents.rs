//! Partition intents: where RayOS goes on a disk, said before the disk is
//! looked at — the input of the planner's stages.
//!
//! An answer file's mode means one ([`Intents::from_answers`]); the
//! wizard's partition manager builds one directly, adding what answer files
//! cannot say (partitions deleted, partitions placed by hand). Both are
//! planned by [`super::plan_intents`] with the same rules: nothing here is
//! checked against a disk (the stages do that), so a wrong reference or a
//! missing consent is refused there with the same message whoever wrote
//! the intents.

use crate::answers::{Answers, DataSize, Located, Mode, PartRef, VmStorage};

use super::Role;

/// Where one role of the install goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// An existing partition, formatted for the role (for the ESP role:
    /// reused, RayOS only adds files), named by number or device path with
    /// the answer-file line that named it (0: not from a file).
    Existing(Located<PartRef>),
    /// A new partition of this many bytes (rounded up to 1 MiB), laid out
    /// by the planner in the largest free region.
    New(u64),
    /// A new partition taking the rest of that region (the data role).
    Rest,
    /// A new partition exactly here, in table slot `number` (the wizard's
    /// partitions placed by hand).
    At {
        /// The table slot.
        number: u32,
        /// The first sector.
        first_lba: u64,
        /// Inclusive.
        last_lba: u64,
    },
}

/// What an install does with a disk, before sizes and places are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intents {
    /// How the table is treated (and what the plan records): `whole-disk`
    /// writes a new one (every partition is deleted); `free-space` edits
    /// the GPT (a blank disk gets a new one) and redoes the partitions of
    /// an unfinished RayOS install that no role names; `reuse` edits the
    /// GPT.
    pub mode: Mode,
    /// Existing partitions removed from an edited table.
    pub delete: Vec<u32>,
    /// `None`: the first ESP the disk keeps is reused; a disk without one
    /// gets a new ESP of `esp_size` bytes.
    pub esp: Option<Place>,
    /// The size of a new ESP, in bytes.
    pub esp_size: u64,
    /// Where the RayOS system partition goes.
    pub system: Place,
    /// Where the data volume goes.
    pub data: Place,
    /// `None`: the VM kind keeps its disks on the data volume.
    pub vm_linux: Option<Place>,
    /// Where the Windows VMs' storage partition goes (`None`: the data volume).
    pub vm_windows: Option<Place>,
    /// Consent to erase these partitions although they hold another
    /// system's data (`[target] format`, or the wizard's typed
    /// confirmation).
    pub format: Vec<Located<PartRef>>,
    /// Consent to replace a complete RayOS install.
    pub reinstall: bool,
}

impl Intents {
    /// What an answer file means: `[target]` esp, system and data name
    /// partitions in `reuse` mode only; the roles no partition is named for
    /// get new partitions of the `[sizes]` and `[vm_storage]` sizes.
    pub fn from_answers(a: &Answers) -> Intents {
        let named = |r: &Option<Located<PartRef>>| {
            r.clone()
                .filter(|_| a.target.mode == Mode::Reuse)
                .map(Place::Existing)
        };
        let vm = |st: &VmStorage| match st {
            VmStorage::Data => None,
            VmStorage::Create(b) => Some(Place::New(*b)),
            VmStorage::Reuse(r) => Some(Place::Existing(r.clone())),
        };
        Intents {
            mode: a.target.mode,
            delete: Vec::new(),
            esp: named(&a.target.esp),
            esp_size: a.sizes.esp,
            system: named(&a.target.system).unwrap_or(Place::New(a.sizes.system)),
            data: named(&a.target.data).unwrap_or(match a.sizes.data {
                DataSize::Rest => Place::Rest,
                DataSize::Bytes(b) => Place::New(b),
            }),
            vm_linux: vm(&a.vm_storage.linux),
            vm_windows: vm(&a.vm_storage.windows),
            format: a.target.format.clone(),
            reinstall: a.target.reinstall,
        }
    }

    /// Puts `role` at `place`.
    pub fn set(&mut self, role: Role, place: Place) {
        match role {
            Role::Esp => self.esp = Some(place),
            Role::System => self.system = place,
            Role::Data => self.data = place,
            Role::VmLinux => self.vm_linux = Some(place),
            Role::VmWindows => self.vm_windows = Some(place),
        }
    }

    /// Where `role` goes (`None`: the ESP's default, or VM storage on the
    /// data volume).
    pub fn place(&self, role: Role) -> Option<&Place> {
        match role {
            Role::Esp => self.esp.as_ref(),
            Role::System => Some(&self.system),
            Role::Data => Some(&self.data),
            Role::VmLinux => self.vm_linux.as_ref(),
            Role::VmWindows => self.vm_windows.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(text: &str) -> Answers {
        Answers::parse("a.toml", &format!("version = 1\n{text}")).unwrap()
    }

    #[test]
    fn partitions_are_named_in_reuse_mode_only() {
        let a = answers(
            "[target]\nmode = \"reuse\"\nesp = 1\nsystem = 2\ndata = \"/dev/vda3\"\nformat = [2]\nreinstall = true\n",
        );
        // The parser refuses these keys in other modes; answers built in
        // code may still carry them, and they mean nothing there.
        let mut free = a.clone();
        free.target.mode = Mode::FreeSpace;
        let free = Intents::from_answers(&free);
        assert_eq!(free.esp, None);
        assert_eq!(free.system, Place::New(2 << 30));
        assert_eq!(free.data, Place::Rest);
        let reuse = Intents::from_answers(&a);
        let at = |p: &Place| match p {
            Place::Existing(r) => (r.value.clone(), r.line),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(reuse.esp.as_ref().unwrap()), (PartRef::Number(1), 4));
        assert_eq!(at(&reuse.system), (PartRef::Number(2), 5));
        assert_eq!(at(&reuse.data), (PartRef::Path("/dev/vda3".into()), 6));
        assert_eq!(reuse.format.len(), 1);
        assert!(reuse.reinstall && reuse.delete.is_empty());
    }

    #[test]
    fn sizes_and_vm_storage_become_new_partitions() {
        let i = Intents::from_answers(&answers(
            "[target]\nmode = \"whole-disk\"\n[sizes]\nesp = \"600MiB\"\ndata = \"3GiB\"\n[vm_storage]\nlinux = { create = \"2GiB\" }\nwindows = { reuse = 4 }\n",
        ));
        assert_eq!(i.esp_size, 600 << 20);
        assert_eq!(i.data, Place::New(3 << 30));
        assert_eq!(i.place(Role::VmLinux), Some(&Place::New(2 << 30)));
        // Kept as said: the whole-disk conflict is the roles stage's to refuse.
        assert!(matches!(i.place(Role::VmWindows), Some(Place::Existing(_))));
        let mut i = i;
        i.set(
            Role::Esp,
            Place::At {
                number: 1,
                first_lba: 2048,
                last_lba: 4095,
            },
        );
        assert!(matches!(
            i.place(Role::Esp),
            Some(Place::At { number: 1, .. })
        ));
    }
}

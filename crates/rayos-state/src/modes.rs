//! File modes of the VM directories on the data volume.
//!
//! A VM's directory holds its disks, its UEFI variables, its TPM state and
//! its saved memory (`state/vm.state`: guest RAM, which can hold keys), so
//! `vm/<id>/` and everything below it is root's alone: directories 0700,
//! files at most 0600. New files are created that way (rayosd's `create`,
//! the QEMU backend, `saved::write_meta`); [`tighten_vm_dirs`] brings
//! directories of older installs, or files a tool created with the default
//! umask, in line when rayosd starts, and the installer runs it on its
//! staging tree, whose modes `mkfs.ext4 -d` copies.
//!
//! Limits: only permission bits are changed (never owners); symlinks are
//! neither followed nor changed; `vm/registry.json` (no secrets) is left as
//! it is.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How deep below `vm/<id>/` the walk goes (`state/unusable-<t>/` is 2).
const MAX_DEPTH: usize = 8;

/// What [`tighten_vm_dirs`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tightened {
    /// How many directories and files lost group/other permissions.
    pub changed: usize,
    /// What could not be changed, one line each.
    pub failed: Vec<String>,
}

impl Tightened {
    /// Notes for a log: how much was tightened under `vm_root`, and what
    /// could not be.
    pub fn notes(&self, vm_root: &Path) -> Vec<String> {
        let mut notes = Vec::new();
        if self.changed > 0 {
            notes.push(format!(
                "made {} VM directories and files under {} private to root (they were readable by others)",
                self.changed,
                vm_root.display()
            ));
        }
        notes.extend(self.failed.iter().cloned());
        notes
    }
}

/// Removes group and other permissions from every VM directory under
/// `vm_root` (each `vm/<id>/` directory, whether registered or not) and
/// from everything in it.
pub fn tighten_vm_dirs(vm_root: &Path) -> Tightened {
    let mut t = Tightened::default();
    for e in fs::read_dir(vm_root).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            tighten(&e.path(), 0, &mut t.changed, &mut t.failed);
        }
    }
    t
}

fn tighten(path: &Path, depth: usize, changed: &mut usize, failed: &mut Vec<String>) {
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    let ft = md.file_type();
    if ft.is_symlink() || !(ft.is_dir() || ft.is_file()) {
        return;
    }
    let mode = md.permissions().mode() & 0o7777;
    let want = mode & 0o700;
    if mode != want {
        match fs::set_permissions(path, fs::Permissions::from_mode(want)) {
            Ok(()) => *changed += 1,
            Err(e) => failed.push(format!(
                "cannot make {} private (mode {mode:o}): {e}",
                path.display()
            )),
        }
    }
    if ft.is_dir() && depth < MAX_DEPTH {
        for e in fs::read_dir(path).into_iter().flatten().flatten() {
            tighten(&e.path(), depth + 1, changed, failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn old_world_readable_vm_dirs_are_tightened() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vm");
        let vm = root.join("67e55044-10b1-426f-9247-bb680e5fe0c8");
        fs::create_dir_all(vm.join("state/unusable-1")).unwrap();
        fs::create_dir_all(vm.join("disks")).unwrap();
        let files = [
            vm.join("state/vm.state"),
            vm.join("state/unusable-1/vm.state"),
            vm.join("disks/disk0.qcow2"),
            vm.join("ovmf-vars.fd"),
        ];
        for f in &files {
            fs::write(f, b"x").unwrap();
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        for dir in [&vm, &vm.join("state"), &vm.join("disks")] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let outside = d.path().join("outside");
        fs::write(&outside, b"y").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, vm.join("link")).unwrap();
        fs::write(root.join("registry.json"), b"{}").unwrap();
        fs::set_permissions(
            root.join("registry.json"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let t = tighten_vm_dirs(&root);
        assert_eq!(t.changed, 8, "{t:?}");
        assert!(t.notes(&root)[0].starts_with("made 8 "), "{t:?}");
        for f in &files {
            assert_eq!(mode(f), 0o600, "{f:?}");
        }
        for dir in [&vm, &vm.join("state"), &vm.join("state/unusable-1")] {
            assert_eq!(mode(dir), 0o700, "{dir:?}");
        }
        assert_eq!(mode(&outside), 0o644, "symlinks are not followed");
        assert_eq!(mode(&root.join("registry.json")), 0o644);
        assert_eq!(
            tighten_vm_dirs(&root),
            Tightened::default(),
            "nothing left to do"
        );
    }
}

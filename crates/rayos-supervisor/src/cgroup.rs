//! CPU weight of VMs through cgroup v2: `<root>/<vm>/cpu.weight`, with the
//! device model's pid moved into `<root>/<vm>/cgroup.procs`.
//!
//! The presented VM gets [`PRESENTED_WEIGHT`], hidden ones
//! [`HIDDEN_WEIGHT`] (the kernel default is 100), so the VM a person looks
//! at wins when CPUs are contended and hidden VMs still progress.
//!
//! Limits: needs a cgroup v2 hierarchy whose parent of `<root>` offers the
//! `cpu` controller and is writable. Where that is not so (cgroup v1 hosts,
//! containers), [`Cgroups::open`] returns the reason and rayosd runs without
//! weights, reporting it as a note.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `cpu.weight` of the presented VM: it gets most of the CPU when busy.
pub const PRESENTED_WEIGHT: u32 = 400;
/// `cpu.weight` of every hidden VM (the cgroup default is 100).
pub const HIDDEN_WEIGHT: u32 = 50;

/// Why VM CPU weights cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 with the cpu controller at this directory.
    #[error("cgroup v2 with the cpu controller is not available at {0}")]
    Unavailable(PathBuf),
    /// A cgroup file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The VMs' cgroups under one root: one child group a VM, weighted by whether
/// it is presented.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<(), CgroupError> {
    fs::write(path, text).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

impl Cgroups {
    /// Sets up `root` (e.g. `/sys/fs/cgroup/rayos`) with the cpu controller
    /// enabled for its children.
    pub fn open(root: &Path) -> Result<Cgroups, CgroupError> {
        let parent = root
            .parent()
            .ok_or_else(|| CgroupError::Unavailable(root.to_path_buf()))?;
        let controllers = fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(|_| CgroupError::Unavailable(parent.to_path_buf()))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err(CgroupError::Unavailable(parent.to_path_buf()));
        }
        let subtree = parent.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&subtree).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == "cpu") {
            write(&subtree, "+cpu")?;
        }
        fs::create_dir_all(root).map_err(|source| CgroupError::Write {
            path: root.to_path_buf(),
            source,
        })?;
        write(&root.join("cgroup.subtree_control"), "+cpu")?;
        Ok(Cgroups {
            root: root.to_path_buf(),
        })
    }

    /// Moves `pid` into the VM's group and sets its weight.
    pub fn place(&self, vm: &str, pid: u32, presented: bool) -> Result<(), CgroupError> {
        let dir = self.root.join(vm);
        fs::create_dir_all(&dir).map_err(|source| CgroupError::Write {
            path: dir.clone(),
            source,
        })?;
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
        self.set_presented(vm, presented)
    }

    /// Sets VM `vm`'s weight for presented or hidden.
    pub fn set_presented(&self, vm: &str, presented: bool) -> Result<(), CgroupError> {
        let w = if presented {
            PRESENTED_WEIGHT
        } else {
            HIDDEN_WEIGHT
        };
        write(&self.root.join(vm).join("cpu.weight"), &w.to_string())
    }

    /// VM `vm`'s current weight, if its group exists.
    pub fn weight(&self, vm: &str) -> Option<u32> {
        fs::read_to_string(self.root.join(vm).join("cpu.weight"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Removes the VM's (empty) group; a group with processes stays.
    pub fn remove(&self, vm: &str) {
        let _ = fs::remove_dir(self.root.join(vm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a directory tree shaped like cgroup v2 (regular files stand
    /// in for the kernel's), so the protocol is checked on any host.
    #[test]
    fn weights_follow_presentation() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path();
        fs::write(
            parent.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(parent.join("cgroup.subtree_control"), "memory\n").unwrap();
        let root = parent.join("rayos");
        let c = Cgroups::open(&root).unwrap();
        assert_eq!(
            fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+cpu"
        );
        c.place("lin", 4242, false).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("lin/cgroup.procs")).unwrap(),
            "4242"
        );
        assert_eq!(c.weight("lin"), Some(HIDDEN_WEIGHT));
        c.set_presented("lin", true).unwrap();
        assert_eq!(c.weight("lin"), Some(PRESENTED_WEIGHT));
        const { assert!(PRESENTED_WEIGHT > 100 && HIDDEN_WEIGHT < 100) };
    }

    #[test]
    fn no_cpu_controller_is_unavailable() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        assert!(matches!(
            Cgroups::open(&d.path().join("rayos")),
            Err(CgroupError::Unavailable(_))
        ));
        // cgroup v1 hosts have no cgroup.controllers at all.
        let e = tempfile::tempdir().unwrap();
        assert!(Cgroups::open(&e.path().join("rayos")).is_err());
    }
}

//! What an operation on a VM can fail with, and the HTTP status each
//! failure is answered with. The messages are the API's error bodies: they
//! say what failed and what to do next.

use std::path::PathBuf;

use rayos_api::VmState;
use rayos_vmm::VmmError;

use crate::create::CreateError;
use crate::lifecycle::{Refusal, Step};
use crate::saved::SavedError;
use crate::store::StoreError;

/// Why an operation on a VM failed; [`OpError::status`] is the HTTP status it
/// is answered with.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// No VM has this name (404).
    #[error("no VM named {0:?}: `rayos vm list` shows the VMs")]
    NotFound(String),
    /// The VM's state does not allow the operation ([`crate::lifecycle::require`]).
    #[error("VM {vm} is {}: {refusal}", refusal.state)]
    WrongState {
        /// The VM's name.
        vm: String,
        /// The operation and the state that refused it.
        refusal: Refusal,
    },
    /// A step the lifecycle table refuses although the operation was
    /// allowed: a bug guard, answered like a refusal.
    #[error("VM {vm} is {from}: the lifecycle does not allow {step:?} now")]
    Transition {
        /// The VM's name.
        vm: String,
        /// The state it was in.
        from: VmState,
        /// The step the table refused.
        step: Step,
    },
    /// Another operation on the VM holds it longer than a request waits
    /// (409).
    #[error("VM {vm} is busy ({state}): try again when that is done")]
    Busy {
        /// The VM's name.
        vm: String,
        /// Its state at the time.
        state: VmState,
    },
    /// The request is wrong; the message says how (400).
    #[error("{0}")]
    Invalid(String),
    /// Policy does not allow it; the message says which setting (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request is fine but the VM is not in a position to take it now
    /// (hidden, a person typing, no guest agent, no absolute pointer).
    #[error("{0}")]
    Refused(String),
    /// The name is taken (409).
    #[error("a VM named {0:?} already exists: choose another name or delete it first")]
    Exists(String),
    /// The daemon is shutting down and takes no new operations (503).
    #[error("rayosd is shutting down")]
    ShuttingDown,
    /// The VM's files are on a VM-storage partition that is not mounted (409).
    #[error(
        "VM {vm} keeps its files on the VM-storage partition {label}, which is not mounted at {}: it is not started, so nothing is recreated on the data volume (`rayos status` shows the boot fault; reconnect the disk and reboot)",
        dir.display()
    )]
    StorageMissing {
        /// The VM's name.
        vm: String,
        /// The partition's label.
        label: String,
        /// Where the partition should be mounted.
        dir: PathBuf,
    },
    /// The backend failed at an action on the VM.
    #[error("cannot {action} VM {vm}")]
    Vmm {
        /// What was being done, as a verb (`start`, `send input to`, …).
        action: &'static str,
        /// The VM's name.
        vm: String,
        /// The backend's error.
        #[source]
        source: VmmError,
    },
    /// Defining the VM or making its files failed.
    #[error("cannot create VM {vm}")]
    Create {
        /// The VM's name.
        vm: String,
        /// What went wrong.
        #[source]
        source: CreateError,
    },
    /// The registry could not be changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A saved state could not be recorded, kept aside or removed.
    #[error(transparent)]
    Saved(#[from] SavedError),
    /// A file of the VM could not be read or written.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done (`read`, `remove`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            OpError::NotFound(_) => 404,
            OpError::WrongState { .. }
            | OpError::Transition { .. }
            | OpError::Busy { .. }
            | OpError::Exists(_)
            | OpError::Refused(_) => 409,
            OpError::StorageMissing { .. } => 409,
            OpError::Store(StoreError::ReadOnly(_)) => 409,
            OpError::Invalid(_) => 400,
            OpError::Create {
                source: CreateError::Invalid(_),
                ..
            } => 400,
            OpError::Forbidden(_) => 403,
            // The guest refused (a program that cannot run): the request
            // was understood and cannot be carried out as it is.
            OpError::Vmm {
                source: VmmError::Guest { .. },
                ..
            } => 422,
            // Not a fault of the daemon: the volume is too full for the
            // state; the VM keeps running and the body says what to free.
            OpError::Vmm {
                source: VmmError::NoSpace { .. },
                ..
            } => 507,
            OpError::ShuttingDown => 503,
            _ => 500,
        }
    }

    /// The device model failed to `action` VM `vm`.
    pub(crate) fn vmm(action: &'static str, vm: &str, source: VmmError) -> OpError {
        OpError::Vmm {
            action,
            vm: vm.to_string(),
            source,
        }
    }
}

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

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no VM named {0:?}: `rayos vm list` shows the VMs")]
    NotFound(String),
    /// The VM's state does not allow the operation ([`crate::lifecycle::require`]).
    #[error("VM {vm} is {}: {refusal}", refusal.state)]
    WrongState { vm: String, refusal: Refusal },
    /// A step the lifecycle table refuses although the operation was
    /// allowed: a bug guard, answered like a refusal.
    #[error("VM {vm} is {from}: the lifecycle does not allow {step:?} now")]
    Transition {
        vm: String,
        from: VmState,
        step: Step,
    },
    #[error("VM {vm} is busy ({state}): try again when that is done")]
    Busy { vm: String, state: VmState },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    /// The request is fine but the VM is not in a position to take it now
    /// (hidden, a person typing, no guest agent, no absolute pointer).
    #[error("{0}")]
    Refused(String),
    #[error("a VM named {0:?} already exists: choose another name or delete it first")]
    Exists(String),
    #[error("rayosd is shutting down")]
    ShuttingDown,
    #[error(
        "VM {vm} keeps its files on the VM-storage partition {label}, which is not mounted at {}: it is not started, so nothing is recreated on the data volume (`rayos status` shows the boot fault; reconnect the disk and reboot)",
        dir.display()
    )]
    StorageMissing {
        vm: String,
        label: String,
        dir: PathBuf,
    },
    #[error("cannot {action} VM {vm}")]
    Vmm {
        action: &'static str,
        vm: String,
        #[source]
        source: VmmError,
    },
    #[error("cannot create VM {vm}")]
    Create {
        vm: String,
        #[source]
        source: CreateError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Saved(#[from] SavedError),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
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

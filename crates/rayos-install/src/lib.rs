//! The installer engine: answer files, plans and their validation, and the
//! steps that apply a plan to a disk. The wizard and the unattended mode only
//! build plans for this engine.
//!
//! Flow: [`answers::Answers::parse`] → [`facts::gather`] (reads the target:
//! is a complete install there?) → [`plan::make_plan`] (pure) →
//! [`apply::apply`] (writes). See `docs/install.md` for the decisions.

pub mod answers;
pub mod fatview;
pub mod placed;
pub mod plan;
pub mod qcow2;
pub mod sample;
pub mod seekable;
pub mod tools;
pub mod vmdisk;

pub use answers::{Answers, Mode};
pub use plan::{Action, Facts, Plan, PlanError, PlanOptions, Role, make_plan};
pub mod apply;
pub mod facts;
pub mod manifest;

pub use apply::{ApplyError, ApplyOptions, Event, apply};

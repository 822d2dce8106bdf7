//! The installer engine: answer files, plans and their validation, and the
//! steps that apply a plan to a disk. The wizard and the unattended mode only
//! build plans for this engine.

pub mod answers;
pub mod efivar;
pub mod sha256;
pub mod tools;

//! Test infrastructure shared by the integration and end-to-end tests:
//! tiny Linux guests (`guest`) and disk images with other systems on them
//! (`disks`). Nothing here is used by RayOS itself.

pub mod disks;
pub mod guest;

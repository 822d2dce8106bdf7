//! Test infrastructure shared by the integration and end-to-end tests:
//! tiny Linux guests (`guest`), disk images with other systems on them
//! (`disks`), a real rayosd on a temporary data volume driven through
//! the `rayos` CLI (`daemon`) and two network namespaces joined by a veth
//! pair for DHCP labs (`netns`), and QEMU's screendumps read as pixels
//! (`ppm`). Nothing here is used by RayOS itself.

pub mod daemon;
pub mod disks;
pub mod guest;
pub mod netns;
pub mod ppm;

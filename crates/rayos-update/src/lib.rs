//! Signed A/B updates of RayOS, rollback, and the data volume's schema.
//!
//! - [`bundle`]: the update bundle format (header, signed JSON manifest,
//!   payloads), building and checking one — it parses untrusted bytes;
//! - [`keys`]: key files, the keys a build trusts, signing;
//! - [`entries`]: `rayos-<version>[+N-M].efi` on the system partition and
//!   systemd-boot 252's ordering and default choice;
//! - [`mod@apply`]: installing a bundle beside the running version (power-cut
//!   safe, nothing written before every check passed);
//! - [`rollback`]: going back by hand, and detecting at boot that
//!   systemd-boot went back;
//! - [`schema`]: the data volume's schema check and migrations;
//! - [`state`]: the update record on the system partition;
//! - [`status`]: what `rayos update status` shows;
//! - [`version`]: version syntax and systemd's version ordering.
//!
//! Everything works on a directory (the mounted system partition, the data
//! volume), so it is tested without root, loop devices or firmware. See
//! `docs/update.md`.

pub mod apply;
pub mod bundle;
pub mod entries;
pub mod keys;
pub mod rollback;
pub mod schema;
pub mod state;
pub mod status;
pub mod version;

pub use apply::{Applied, ApplyError, ApplyOptions, apply};
pub use bundle::{Bundle, BundleError, Manifest, PayloadName};
pub use keys::{PublicKey, SecretKey};

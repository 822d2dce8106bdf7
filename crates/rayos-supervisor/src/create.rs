//! Turning a `POST /v1/vms` request into a VM: its definition and its
//! directory `vm/<id>/` with disks and boot files.
//!
//! Decisions (see `docs/supervisor.md`):
//! - `{"size": "8G"}` creates an empty qcow2 with `qemu-img create`.
//! - `{"import": "/path"}` *converts* the image into a fresh qcow2 in
//!   `vm/<id>/disks/` with `qemu-img convert` (qcow2, raw, VMDK, VHDX or
//!   VDI, detected by `qemu-img info` and passed on explicitly): the VM
//!   then owns its disk for its whole life and the user's file is never
//!   written. Every import is inspected ([`inspect_imports`]) before
//!   anything is created: an image that names other files (a backing file,
//!   an external data file, VMDK extents) or a block device is refused, so
//!   no image can hand a guest a host disk (`rayos_vmm::qemu::image`).
//! - `vm/<id>/` and its directories are 0700, disks and boot files 0600.
//! - `kernel`/`initrd` are copied to `vm/<id>/boot/` for the same reason
//!   (they are small); installation media are referenced, not copied (ISOs
//!   are large and are detached once the VM is provisioned).
//! - A Windows VM, and any VM with media, starts unprovisioned; others are
//!   provisioned.
//! - Windows: UEFI with Secure Boot (unless `secure_boot: false`), TPM 2.0,
//!   no direct kernel boot.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rayos_api::{CreateRequest, DiskRequest};
use rayos_state::registry::{BootSpec, DiskFormat, DiskSpec};
use rayos_state::{VmDefinition, VmKind, layout::vm as vmdirs};
use rayos_vmm::qemu::image::{self, ImageError, ImageInfo};
use rayos_vmm::qemu::media;
use uuid::Uuid;

/// Why a VM could not be defined or its files made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request is wrong; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// A file or directory of the VM could not be made.
    #[error("cannot create {path}")]
    Io {
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A tool (qemu-img) failed.
    #[error("{what} failed: {detail}")]
    Tool {
        /// What was run.
        what: String,
        /// Its stderr, or why it could not run.
        detail: String,
    },
}

/// At most this many disks per VM.
pub const MAX_DISKS: usize = 8;

/// `8G`, `512M`, `1T`, `1048576` (bytes) → bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mul).filter(|&b| b > 0)
}

fn defaults(kind: VmKind) -> (u64, u32) {
    match kind {
        VmKind::Linux => (1024, 2),
        VmKind::Windows => (4096, 2),
        VmKind::Generic => (512, 1),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The program that creates and converts disk images.
const QEMU_IMG: &str = "qemu-img";

fn need_file(what: &str, p: &Path) -> Result<(), CreateError> {
    if !p.is_absolute() {
        return Err(CreateError::Invalid(format!(
            "{what} {} must be an absolute path",
            p.display()
        )));
    }
    match fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        // A host disk is never given to a guest, not even read-only.
        Ok(m) if m.file_type().is_block_device() => Err(CreateError::Invalid(format!(
            "{what} {} is a block device: RayOS takes image files only, so a guest never gets a host disk; make an image of it first (e.g. qemu-img convert -O qcow2 {} disk.qcow2)",
            p.display(),
            p.display()
        ))),
        Ok(_) => Err(CreateError::Invalid(format!(
            "{what} {} is not a file",
            p.display()
        ))),
        Err(e) => Err(CreateError::Invalid(format!(
            "{what} {} cannot be read ({e}): check the path",
            p.display()
        ))),
    }
}

/// Checks a definition read back from the registry by the rules a new VM
/// is created with (the file may have been edited by hand or damaged): its
/// name, and disks that stay inside the VM's directory. The name reaches
/// QEMU's command line, cgroup paths and the API; a disk path outside
/// `vm/<id>/` could be any host file.
pub fn check_registered(def: &VmDefinition) -> Result<(), String> {
    VmDefinition::validate_name(&def.name)?;
    for d in &def.disks {
        let inside = !d.path.as_os_str().is_empty()
            && d.path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(format!(
                "disk {} is not a path inside the VM's directory (relative, without '..')",
                d.path.display()
            ));
        }
    }
    Ok(())
}

/// Checks the request without touching the disk (beyond reading metadata).
pub fn validate(req: &CreateRequest) -> Result<(), CreateError> {
    VmDefinition::validate_name(&req.name).map_err(CreateError::Invalid)?;
    if let Some(m) = req.memory_mib
        && !(64..=1 << 20).contains(&m)
    {
        return Err(CreateError::Invalid(format!(
            "memory {m} MiB is out of range: use 64 to 1048576"
        )));
    }
    if let Some(c) = req.cpus
        && !(1..=256).contains(&c)
    {
        return Err(CreateError::Invalid(format!(
            "{c} CPUs is out of range: use 1 to 256"
        )));
    }
    if req.disks.len() > MAX_DISKS {
        return Err(CreateError::Invalid(format!(
            "{} disks is too many: at most {MAX_DISKS}",
            req.disks.len()
        )));
    }
    for d in &req.disks {
        match d {
            DiskRequest::Size(s) => {
                parse_size(s).ok_or_else(|| {
                    CreateError::Invalid(format!(
                        "disk size {s:?} is not valid: use a number with K, M, G or T, e.g. 8G"
                    ))
                })?;
            }
            DiskRequest::Import(p) => need_file("disk image", p)?,
        }
    }
    if req.kernel.is_none() && (req.initrd.is_some() || req.cmdline.is_some()) {
        return Err(CreateError::Invalid(
            "--initrd and --cmdline need --kernel".into(),
        ));
    }
    if let Some(k) = &req.kernel {
        if req.kind == VmKind::Windows {
            return Err(CreateError::Invalid(
                "a windows VM boots through UEFI: drop --kernel/--initrd/--cmdline".into(),
            ));
        }
        need_file("kernel", k)?;
        if req.secure_boot.is_some() {
            return Err(CreateError::Invalid(
                "--secure-boot is for UEFI VMs: drop it or drop --kernel".into(),
            ));
        }
    }
    if let Some(i) = &req.initrd {
        need_file("initrd", i)?;
    }
    if let Some(c) = &req.cmdline
        && (c.len() > 4096 || c.contains('\n') || c.contains('\0'))
    {
        return Err(CreateError::Invalid(
            "--cmdline must be one line of at most 4096 bytes".into(),
        ));
    }
    for m in req.media.iter().chain(&req.usb_media) {
        media::check(m)
            .map_err(|e| CreateError::Invalid(format!("media {}", crate::supervisor::chain(&e))))?;
    }
    if req.kind == VmKind::Windows && req.media.len() > 1 {
        return Err(CreateError::Invalid(
            "a windows VM has one CD drive: give one CD medium (--media); attach driver media as a USB stick or after Setup".into(),
        ));
    }
    if req.usb_media.len() > media::MAX_USB {
        return Err(CreateError::Invalid(format!(
            "at most {} USB sticks",
            media::MAX_USB
        )));
    }
    if let Some(g) = &req.guest {
        if req.kind == VmKind::Windows {
            return Err(CreateError::Invalid(
                "first-boot guest settings (--user ...) are read by Linux guests only: drop them for a windows VM".into(),
            ));
        }
        g.validate().map_err(CreateError::Invalid)?;
    }
    Ok(())
}

/// Inspects every image the request imports (`qemu-img info`), in order,
/// before anything is created: an image that may not be imported is bad
/// input and nothing is copied.
pub fn inspect_imports(req: &CreateRequest) -> Result<Vec<ImageInfo>, CreateError> {
    req.disks
        .iter()
        .filter_map(|d| match d {
            DiskRequest::Import(p) => Some(p),
            DiskRequest::Size(_) => None,
        })
        .map(|p| {
            image::inspect(Path::new(QEMU_IMG), p).map_err(|e| match e {
                ImageError::Refused(m) => CreateError::Invalid(m),
                // An image qemu-img cannot read is the user's to fix too.
                other => CreateError::Invalid(crate::supervisor::chain(&other)),
            })
        })
        .collect()
}

/// Creates a directory (and its parents) 0700, tightening an existing one.
fn private_dir(d: &Path) -> Result<(), CreateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(io_err(d))?;
    fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(io_err(d))
}

/// Makes a file the VM owns readable by root only (disks hold the guest's
/// data; `qemu-img` and `fs::copy` create files with the default umask).
fn private_file(f: &Path) -> Result<(), CreateError> {
    fs::set_permissions(f, fs::Permissions::from_mode(0o600)).map_err(io_err(f))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), CreateError> {
    let out = cmd.output().map_err(|e| CreateError::Tool {
        what: what.to_string(),
        detail: if e.kind() == io::ErrorKind::NotFound {
            "the program is not installed (scripts/install-deps.sh lists it)".into()
        } else {
            e.to_string()
        },
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CreateError::Tool {
            what: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The disk a Windows VM gets when none is asked for, and the one the
/// installer's seeded `windows` VM names (created at its first start).
pub const WINDOWS_DISK: &str = "disks/system.qcow2";
/// Its size: 64 GiB, the least Windows 11 accepts; thin, so it takes only
/// what the guest writes.
pub const WINDOWS_DISK_BYTES: u64 = 64 << 30;

/// A new empty thin qcow2 (0600).
fn new_qcow2(path: &Path, bytes: u64) -> Result<(), CreateError> {
    run(
        Command::new(QEMU_IMG)
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg(bytes.to_string()),
        "qemu-img create",
    )?;
    private_file(path)
}

/// Creates the missing disks of a Windows VM before its start: the
/// installer seeds the `windows` VM naming [`WINDOWS_DISK`] without
/// creating it, so the data volume holds no 64 GiB file nobody asked for.
/// Only a qcow2 inside the VM's `disks/` is created, never anything an
/// edited registry could point elsewhere. Returns the disks created.
pub fn create_missing_disks(
    def: &VmDefinition,
    vm_dir: &Path,
) -> Result<Vec<PathBuf>, CreateError> {
    let mut made = Vec::new();
    if def.kind != VmKind::Windows {
        return Ok(made);
    }
    for d in &def.disks {
        let inside = d.path.starts_with(vmdirs::DISKS)
            && d.path.components().count() == 2
            && d.path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        let path = vm_dir.join(&d.path);
        if !inside || d.format != DiskFormat::Qcow2 || fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        private_dir(vm_dir)?;
        for sub in [vmdirs::DISKS, vmdirs::STATE, vmdirs::LOGS] {
            private_dir(&vm_dir.join(sub))?;
        }
        new_qcow2(&path, WINDOWS_DISK_BYTES)?;
        made.push(path);
    }
    Ok(made)
}

/// Creates `vm_dir` and everything in it, and returns the definition.
/// `imports` are [`inspect_imports`]' results for the request; `progress`
/// gets (source, percent) while an image is converted. On error the caller
/// removes `vm_dir` (it did not exist before).
pub fn build(
    req: &CreateRequest,
    id: Uuid,
    vm_dir: &Path,
    imports: &[ImageInfo],
    progress: &mut dyn FnMut(&Path, u32),
) -> Result<VmDefinition, CreateError> {
    private_dir(vm_dir)?;
    for sub in [vmdirs::DISKS, vmdirs::STATE, vmdirs::LOGS] {
        private_dir(&vm_dir.join(sub))?;
    }
    let mut imports = imports.iter();
    let mut disks = Vec::new();
    for (i, d) in req.disks.iter().enumerate() {
        match d {
            DiskRequest::Size(s) => {
                let rel = PathBuf::from(vmdirs::DISKS).join(format!("disk{i}.qcow2"));
                let bytes = parse_size(s).unwrap_or(0);
                run(
                    Command::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(vm_dir.join(&rel))
                        .arg(bytes.to_string()),
                    "qemu-img create",
                )?;
                private_file(&vm_dir.join(&rel))?;
                disks.push(DiskSpec {
                    path: rel,
                    format: DiskFormat::Qcow2,
                });
            }
            DiskRequest::Import(src) => {
                let info = imports.next().ok_or_else(|| {
                    CreateError::Invalid(format!("{} was not inspected", src.display()))
                })?;
                let rel = PathBuf::from(vmdirs::DISKS).join(format!("disk{i}.qcow2"));
                let dest = vm_dir.join(&rel);
                image::convert(Path::new(QEMU_IMG), src, info, &dest, |p| progress(src, p))
                    .map_err(|e| CreateError::Tool {
                        what: format!("importing {}", src.display()),
                        detail: crate::supervisor::chain(&e),
                    })?;
                private_file(&dest)?;
                disks.push(DiskSpec {
                    path: rel,
                    format: DiskFormat::Qcow2,
                });
            }
        }
    }
    if req.kind == VmKind::Windows && disks.is_empty() {
        let rel = PathBuf::from(WINDOWS_DISK);
        new_qcow2(&vm_dir.join(&rel), WINDOWS_DISK_BYTES)?;
        disks.push(DiskSpec {
            path: rel,
            format: DiskFormat::Qcow2,
        });
    }
    let boot = match &req.kernel {
        Some(k) => {
            let dir = vm_dir.join("boot");
            private_dir(&dir)?;
            let kernel = dir.join("vmlinuz");
            fs::copy(k, &kernel).map_err(io_err(k))?;
            private_file(&kernel)?;
            let initrd = match &req.initrd {
                Some(i) => {
                    let to = dir.join("initrd.img");
                    fs::copy(i, &to).map_err(io_err(i))?;
                    private_file(&to)?;
                    Some(to)
                }
                None => None,
            };
            BootSpec::DirectKernel {
                kernel,
                initrd,
                cmdline: req
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| "console=ttyS0".to_string()),
            }
        }
        None => BootSpec::Uefi {
            secure_boot: req.secure_boot.unwrap_or(req.kind == VmKind::Windows),
        },
    };
    let (mem, cpus) = defaults(req.kind);
    Ok(VmDefinition {
        id,
        name: req.name.clone(),
        kind: req.kind,
        memory_mib: req.memory_mib.unwrap_or(mem),
        cpus: req.cpus.unwrap_or(cpus),
        disks,
        boot,
        tpm: req.kind == VmKind::Windows,
        media: req.media.clone(),
        usb_media: req.usb_media.clone(),
        // Windows always needs installing (media may come later, `vm
        // media attach`); other kinds with no media are ready as they are.
        provisioned: req.kind != VmKind::Windows
            && req.media.is_empty()
            && req.usb_media.is_empty(),
        guest: req.guest.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, kind: VmKind) -> CreateRequest {
        CreateRequest::new(name, kind)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "G", "-1G", "1.5G", "0", "99999999999T", "8GB", "/tmp/x"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_messages() {
        let mut r = req("Bad Name", VmKind::Linux);
        assert!(validate(&r).unwrap_err().to_string().contains("not valid"));
        r.name = "ok".into();
        r.cmdline = Some("x".into());
        assert!(
            validate(&r)
                .unwrap_err()
                .to_string()
                .contains("need --kernel")
        );
        r.cmdline = None;
        r.disks = vec![DiskRequest::Import("relative.img".into())];
        assert!(validate(&r).unwrap_err().to_string().contains("absolute"));
        r.disks = vec![DiskRequest::Import("/nonexistent/x.img".into())];
        assert!(
            validate(&r)
                .unwrap_err()
                .to_string()
                .contains("cannot be read")
        );
        r.disks = vec![DiskRequest::Size("lots".into())];
        assert!(validate(&r).is_err());
        let mut w = req("win", VmKind::Windows);
        w.kernel = Some("/bin/sh".into());
        assert!(validate(&w).unwrap_err().to_string().contains("UEFI"));
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn windows_profile_and_imported_disk() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src.img");
        fs::write(&src, vec![7u8; 4096]).unwrap();
        let iso = d.path().join("win.iso");
        fs::write(&iso, b"iso").unwrap();
        let mut r = req("win", VmKind::Windows);
        r.disks = vec![DiskRequest::Import(src.clone())];
        r.media = vec![iso.clone()];
        validate(&r).unwrap();
        let infos = inspect_imports(&r).unwrap();
        assert_eq!(infos[0].format, "raw");
        let vm_dir = d.path().join("vm");
        let mut seen = Vec::new();
        let def = build(&r, Uuid::new_v4(), &vm_dir, &infos, &mut |p, pct| {
            seen.push((p.to_path_buf(), pct))
        })
        .unwrap();
        assert_eq!(def.boot, BootSpec::Uefi { secure_boot: true });
        assert!(def.tpm && !def.provisioned);
        assert_eq!(def.media, vec![iso]);
        // Converted into the VM's own qcow2, same bytes.
        assert_eq!(def.disks[0].format, DiskFormat::Qcow2);
        let disk = vm_dir.join(&def.disks[0].path);
        let back = d.path().join("back.raw");
        let st = Command::new(QEMU_IMG)
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&disk)
            .arg(&back)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(fs::read(&back).unwrap(), vec![7u8; 4096]);
        assert_eq!(fs::read(&src).unwrap(), vec![7u8; 4096], "source untouched");
        assert_eq!(seen.last(), Some(&(src.clone(), 100)), "{seen:?}");
        assert_eq!((def.memory_mib, def.cpus), (4096, 2));
        // Private to root.
        assert_eq!(mode(&vm_dir), 0o700);
        for sub in ["disks", "state", "logs"] {
            assert_eq!(mode(&vm_dir.join(sub)), 0o700, "{sub}");
        }
        assert_eq!(mode(&disk), 0o600);
    }

    #[test]
    fn block_devices_and_chained_images_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let blk = d.path().join("blk");
        let st = Command::new("mknod")
            .arg(&blk)
            .args(["b", "7", "0"])
            .status()
            .unwrap();
        assert!(st.success(), "mknod needs root (tests run as root in CI)");
        for (what, set) in [("import", 0), ("kernel", 1), ("media", 2)] {
            let mut r = req("x", VmKind::Linux);
            match set {
                0 => r.disks = vec![DiskRequest::Import(blk.clone())],
                1 => r.kernel = Some(blk.clone()),
                _ => r.media = vec![blk.clone()],
            }
            let e = validate(&r).unwrap_err();
            assert!(
                matches!(e, CreateError::Invalid(_)) && e.to_string().contains("block device"),
                "{what}: {e}"
            );
        }
        // A qcow2 with a backing file: refused by inspection, before build.
        let base = d.path().join("base.raw");
        fs::write(&base, b"host bytes").unwrap();
        let over = d.path().join("over.qcow2");
        let st = Command::new(QEMU_IMG)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&over)
            .status()
            .unwrap();
        assert!(st.success());
        let mut r = req("x", VmKind::Linux);
        r.disks = vec![DiskRequest::Import(over)];
        validate(&r).unwrap();
        let e = inspect_imports(&r).unwrap_err();
        assert!(
            matches!(&e, CreateError::Invalid(m) if m.contains("backing file")),
            "{e}"
        );
    }
}

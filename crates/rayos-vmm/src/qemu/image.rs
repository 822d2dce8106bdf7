//! Disk images from outside RayOS: what they are, whether they may be
//! used, and turning them into a VM's own qcow2.
//!
//! Threat: an image format can name other files. A qcow2 has a backing
//! file and an external data file, a VMDK descriptor lists extent files
//! (and a parent). QEMU and qemu-img open those when they open the image,
//! so an image downloaded from anywhere could hand a guest `/dev/nvme0n1`
//! or a file on the data volume. RayOS therefore:
//! - imports ([`inspect`] then [`convert`]) only qcow2, raw, VMDK, VHDX
//!   and VDI files that name no other file, and refuses block devices;
//! - converts every import into a fresh qcow2 without a backing file
//!   (`qemu-img convert` reads the source with the detected format and
//!   `"backing": null`, so nothing is probed twice and no chain is read);
//! - checks the qcow2 header of a VM's disk before each launch
//!   ([`check_disk`]): an external data file is refused (QEMU would open
//!   it whatever the command line says). Backing files are switched off on
//!   the command line instead (`"backing": null`, see `cmdline`).
//!
//! Limits: `qemu-img info` and `convert` parse the untrusted image (in
//! their own process, not in rayosd). A source file changed between
//! [`inspect`] and [`convert`] is read with the format detected first and
//! still without a backing chain.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rayos_state::registry::DiskFormat;
use serde_json::{Value, json};

/// Formats `import` accepts (qemu-img's names).
pub const IMPORT_FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "vhdx", "vdi"];

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// qcow2 v3 incompatible feature bit 2: the guest data lives in an
/// external file named in the header.
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Why an image cannot be imported or inspected.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image must not be used; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The image could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A tool (qemu-img) failed on the image.
    #[error("{tool} failed on {path}: {detail}")]
    Tool {
        /// The tool's name.
        tool: &'static str,
        /// The image.
        path: PathBuf,
        /// What the tool said.
        detail: String,
    },
}

/// What `qemu-img info` found in an image that may be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// qemu-img's format name, one of [`IMPORT_FORMATS`].
    pub format: String,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
}

fn refused(path: &Path, why: String) -> ImageError {
    ImageError::Refused(format!("{}: {why}", path.display()))
}

/// Reads `qemu-img info` of `src` and decides whether it may be imported.
/// Refused: anything that is not a regular file (block devices included),
/// formats outside [`IMPORT_FORMATS`], a backing file, a qcow2 external
/// data file, VMDK extents in other files.
pub fn inspect(qemu_img: &Path, src: &Path) -> Result<ImageInfo, ImageError> {
    let md = std::fs::metadata(src).map_err(|source| ImageError::Io {
        path: src.to_path_buf(),
        source,
    })?;
    if !md.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if md.file_type().is_block_device() {
            "is a block device"
        } else {
            "is not a regular file"
        };
        return Err(refused(
            src,
            format!(
                "{what}: RayOS imports image files only, so a guest never gets a host disk; \
                 make an image of it first (qemu-img convert -O qcow2 {} disk.qcow2)",
                src.display()
            ),
        ));
    }
    let out = Command::new(qemu_img)
        .args(["info", "--output=json"])
        .arg(src)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "qemu-img info",
            path: src.to_path_buf(),
            detail: not_installed(e),
        })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool: "qemu-img info",
            path: src.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| ImageError::Tool {
        tool: "qemu-img info",
        path: src.to_path_buf(),
        detail: format!("unreadable JSON: {e}"),
    })?;
    check_info(src, &v)
}

/// The rules of [`inspect`] on `qemu-img info --output=json` output.
pub fn check_info(src: &Path, v: &Value) -> Result<ImageInfo, ImageError> {
    let format = v["format"].as_str().unwrap_or("").to_string();
    if !IMPORT_FORMATS.contains(&format.as_str()) {
        return Err(refused(
            src,
            format!(
                "is a {format:?} image; RayOS imports {}",
                IMPORT_FORMATS.join(", ")
            ),
        ));
    }
    if let Some(b) = v
        .get("full-backing-filename")
        .or_else(|| v.get("backing-filename"))
        .and_then(Value::as_str)
    {
        return Err(refused(
            src,
            format!(
                "has a backing file ({b}), so its contents come partly from another file; \
                 RayOS refuses it so that no image can reach a host file. If you trust \
                 that chain, flatten it yourself (qemu-img convert -O qcow2 {} flat.qcow2) \
                 and import the result",
                src.display()
            ),
        ));
    }
    let specific = &v["format-specific"]["data"];
    if let Some(d) = specific.get("data-file").and_then(Value::as_str) {
        return Err(refused(
            src,
            format!(
                "keeps its data in an external data file ({d}); RayOS refuses it so that \
                 no image can reach a host file. Convert it into a plain image yourself \
                 (qemu-img convert -O qcow2 {} plain.qcow2) if you trust it",
                src.display()
            ),
        ));
    }
    if format == "vmdk" {
        let own = v["filename"].as_str().unwrap_or("");
        let create = specific["create-type"].as_str().unwrap_or("");
        let others: Vec<&str> = specific["extents"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|x| x["filename"].as_str().unwrap_or(""))
                    .filter(|f| *f != own)
                    .collect()
            })
            .unwrap_or_default();
        if !others.is_empty() || !matches!(create, "monolithicSparse" | "streamOptimized") {
            return Err(refused(
                src,
                format!(
                    "is a VMDK of type {create:?} whose data is in other files ({}); \
                     RayOS imports single-file VMDKs (monolithicSparse, streamOptimized) \
                     only. Convert it yourself (qemu-img convert -O qcow2 {} disk.qcow2) \
                     if you trust it",
                    others.join(", "),
                    src.display()
                ),
            ));
        }
    }
    let virtual_size = v["virtual-size"].as_u64().unwrap_or(0);
    Ok(ImageInfo {
        format,
        virtual_size,
    })
}

fn not_installed(e: io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        "qemu-img is not installed (package qemu-utils; scripts/install-deps.sh)".into()
    } else {
        e.to_string()
    }
}

/// The `json:` source qemu-img reads: the detected format, the file
/// protocol, and (for formats that have one) no backing chain.
fn source_spec(src: &Path, format: &str) -> String {
    let mut spec = json!({
        "driver": format,
        "file": { "driver": "file", "filename": src.to_string_lossy() },
    });
    if format != "raw" {
        spec["backing"] = Value::Null;
    }
    format!("json:{spec}")
}

/// Converts `src` (inspected as `info`) into a new qcow2 `dest`, calling
/// `progress` with whole percents as `qemu-img convert -p` reports them.
/// `dest` must not exist; on error it may be left partly written.
pub fn convert(
    qemu_img: &Path,
    src: &Path,
    info: &ImageInfo,
    dest: &Path,
    mut progress: impl FnMut(u32),
) -> Result<(), ImageError> {
    let tool_err = |detail: String| ImageError::Tool {
        tool: "qemu-img convert",
        path: src.to_path_buf(),
        detail,
    };
    let mut child = Command::new(qemu_img)
        .args(["convert", "-p", "-O", "qcow2"])
        .arg(source_spec(src, &info.format))
        .arg(dest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_err(not_installed(e)))?;
    // stderr is drained on its own thread so a chatty qemu-img never
    // blocks on a full pipe while we read its progress.
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; 512];
        let mut pending = Vec::new();
        let mut last = None;
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            // qemu-img rewrites "    (12.34/100%)" with '\r'.
            while let Some(end) = pending.iter().position(|&b| b == b'\r' || b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Some(p) = parse_progress(&String::from_utf8_lossy(&line))
                    && last != Some(p)
                {
                    last = Some(p);
                    progress(p);
                }
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| tool_err(format!("cannot wait for it: {e}")))?;
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(tool_err(format!("{status}: {}", err.trim())));
    }
    Ok(())
}

/// `"    (42.17/100%)"` → 42.
fn parse_progress(line: &str) -> Option<u32> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    let pct: f64 = inner.parse().ok()?;
    (0.0..=100.0).contains(&pct).then_some(pct.floor() as u32)
}

/// Checks a VM's disk before QEMU opens it: it must be a regular file (not
/// a symlink, not a device) and, when registered as qcow2, must not keep
/// its data in an external file. A backing file is fine here: the command
/// line opens every disk with `"backing": null`.
pub fn check_disk(path: &Path, format: DiskFormat) -> Result<(), ImageError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !md.is_file() {
        return Err(refused(
            path,
            "is not a regular file (a symlink or a device): a VM's disks are files in its own \
             directory, so a guest never gets a host disk"
                .into(),
        ));
    }
    if format != DiskFormat::Qcow2 {
        return Ok(());
    }
    let mut head = [0u8; 80];
    let n = File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let head = &head[..n];
    if head.len() < 8 || head[..4] != QCOW2_MAGIC {
        return Err(refused(
            path,
            "is registered as qcow2 but has no qcow2 header".into(),
        ));
    }
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if version >= 3 && head.len() >= 80 {
        let mut f = [0u8; 8];
        f.copy_from_slice(&head[72..80]);
        if u64::from_be_bytes(f) & QCOW2_EXTERNAL_DATA_FILE != 0 {
            return Err(refused(
                path,
                "keeps its data in an external data file, which QEMU would open: \
                 RayOS does not start a VM with such a disk"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(v: Value) -> Result<ImageInfo, ImageError> {
        check_info(Path::new("/img"), &v)
    }

    #[test]
    fn info_rules() {
        let ok = info(json!({"format": "qcow2", "virtual-size": 1048576,
            "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}))
        .unwrap();
        assert_eq!((ok.format.as_str(), ok.virtual_size), ("qcow2", 1048576));
        let e = info(json!({"format": "qcow2", "backing-filename": "/dev/sda"})).unwrap_err();
        assert!(e.to_string().contains("backing file (/dev/sda)"), "{e}");
        let e = info(json!({"format": "qcow2",
            "format-specific": {"data": {"data-file": "/var/rayos/x"}}}))
        .unwrap_err();
        assert!(e.to_string().contains("external data file"), "{e}");
        let e = info(json!({"format": "luks"})).unwrap_err();
        assert!(e.to_string().contains("\"luks\""), "{e}");
        let single = json!({"format": "vmdk", "filename": "/img",
            "format-specific": {"data": {"create-type": "monolithicSparse",
                "extents": [{"filename": "/img"}]}}});
        assert!(info(single).is_ok());
        let flat = json!({"format": "vmdk", "filename": "/img",
            "format-specific": {"data": {"create-type": "monolithicFlat",
                "extents": [{"filename": "/dev/sda"}]}}});
        let e = info(flat).unwrap_err();
        assert!(e.to_string().contains("other files (/dev/sda)"), "{e}");
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (42.17/100%)\r"), Some(42));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100));
        assert_eq!(parse_progress("garbage"), None);
        assert_eq!(parse_progress("(400.00/100%)"), None);
    }

    #[test]
    fn source_spec_names_format_and_no_backing() {
        let s = source_spec(Path::new("/a,b/\"x\".img"), "qcow2");
        let v: Value = serde_json::from_str(s.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["driver"], "qcow2");
        assert_eq!(v["file"]["filename"], "/a,b/\"x\".img");
        assert!(v["backing"].is_null() && v.get("backing").is_some());
        let r: Value = serde_json::from_str(
            source_spec(Path::new("/r"), "raw")
                .strip_prefix("json:")
                .unwrap(),
        )
        .unwrap();
        assert!(r.get("backing").is_none(), "raw has no backing option");
    }

    #[test]
    fn disk_header_checks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.qcow2");
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        std::fs::write(&p, &h).unwrap();
        check_disk(&p, DiskFormat::Qcow2).unwrap();
        h[72..80].copy_from_slice(&QCOW2_EXTERNAL_DATA_FILE.to_be_bytes());
        std::fs::write(&p, &h).unwrap();
        let e = check_disk(&p, DiskFormat::Qcow2).unwrap_err();
        assert!(e.to_string().contains("external data file"), "{e}");
        // Raw disks are bytes: any content is fine.
        check_disk(&p, DiskFormat::Raw).unwrap();
        let e = check_disk(&d.path().join("x"), DiskFormat::Raw).unwrap_err();
        assert!(matches!(e, ImageError::Io { .. }));
        std::fs::write(d.path().join("raw.img"), b"not qcow2").unwrap();
        assert!(check_disk(&d.path().join("raw.img"), DiskFormat::Qcow2).is_err());
        let link = d.path().join("link.qcow2");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = check_disk(&link, DiskFormat::Raw).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}

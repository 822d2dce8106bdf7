//! `cargo xtask linux-vm`: the Debian VM image alone (`cargo xtask media`
//! builds it too). The recipe and its cache live in
//! `rayos_image::linux_vm`; this module picks the options, writes the
//! compressed image that ships (`linux-vm.qcow2.zst`: the raw disk image
//! as a thin qcow2 of its own size, zstd in the seekable format, 64 MiB
//! frames; the installer decompresses the frames in place on every core
//! and grows the result to the chosen size) and
//! its manifest into the output directory, and prints what was built.
//! Decisions: docs/linux-vm.md.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayos_image::linux_vm::{self, BuildOptions, Image};

#[derive(clap::Args, Clone, Default)]
pub struct Args {
    /// Output directory (the compressed image goes to `<out>/linux-vm.qcow2.zst`).
    #[arg(long, default_value = "build")]
    pub out: PathBuf,
    /// Debian mirror instead of <http://deb.debian.org/> (for example
    /// `http://snapshot.debian.org/archive/debian/<time>/` to rebuild an old image).
    #[arg(long)]
    pub linux_vm_mirror: Option<String>,
    /// Install exactly the package versions of this image manifest
    /// (`build/linux-vm.json` of an earlier build).
    #[arg(long)]
    pub linux_vm_pins: Option<PathBuf>,
}

/// The shipped image and its manifest, below the output directory.
pub const SHIPPED: &str = "linux-vm.qcow2.zst";
/// The shipped image in the image's cache directory, named for its form so
/// a cache from before the seekable format is not taken for one.
pub const CACHED: &str = "linux-vm.qcow2.frames.zst";
/// zstd level and window of the shipped image: level 12 with a 128 MiB
/// window is within 8 % of level 19 in a tenth of its time; the window
/// must be given to the decompressor too (`zstd -d --long=27`). Each frame
/// is compressed alone ([`FRAME_BYTES`]), so the window is at most a frame.
pub const ZSTD_ARGS: &[&str] = &["-12", "--long=27"];
/// Input bytes per frame of the shipped image, which is in zstd's seekable
/// format so the installer decodes its frames on every core
/// (docs/install.md, "Sixth pass").
pub const FRAME_BYTES: u32 = 64 << 20;
pub const SHIPPED_MANIFEST: &str = "linux-vm.json";

pub fn run(args: Args) -> Result<()> {
    crate::deps::ensure()?;
    let (img, shipped) = build(&args)?;
    let m = &img.manifest;
    println!();
    println!("Debian VM image {} (recipe {}):", m.suite, m.key);
    println!("  kernel      {}", m.kernel);
    println!("  packages    {}", m.packages.len());
    println!(
        "  raw disk    {:>8.1} MiB  {}",
        mib(m.disk_bytes),
        img.disk.display()
    );
    println!(
        "  shipped     {:>8.1} MiB  {}",
        mib(fs::metadata(&shipped)?.len()),
        shipped.display()
    );
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

pub fn options(args: &Args) -> Result<BuildOptions> {
    let pins = match &args.linux_vm_pins {
        None => Vec::new(),
        Some(p) => {
            let text =
                fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let m: linux_vm::Manifest = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a Debian VM image manifest", p.display()))?;
            m.packages
        }
    };
    Ok(BuildOptions {
        mirror: args.linux_vm_mirror.clone(),
        pins,
    })
}

/// Builds (or takes from `.cache/`) the image and writes the shipped
/// compressed qcow2 and its manifest into `args.out`.
pub fn build(args: &Args) -> Result<(Image, PathBuf)> {
    let root = crate::root();
    let cache = root.join(".cache");
    let opts = options(args)?;
    let img = linux_vm::ensure(&cache, &opts, &mut |s| println!("    {s}"))
        .context("cannot build the Debian VM image")?;
    let out = root.join(&args.out);
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let shipped = out.join(SHIPPED);
    compress(&img, &shipped)?;
    fs::copy(
        img.dir.join(linux_vm::MANIFEST_FILE),
        out.join(SHIPPED_MANIFEST),
    )
    .context("cannot copy the image manifest")?;
    Ok((img, shipped))
}

/// The shipped image, made once per cached image (`<cache dir>/`[`CACHED`])
/// and copied to `dest`: the raw disk as a qcow2 (the installer's own
/// writer; zero clusters left out), then zstd in the seekable format.
/// Shipping the qcow2 rather than the raw disk spares the installer
/// decompressing 1.6 GiB of zeros (docs/install.md) and is 13 % smaller.
fn compress(img: &Image, dest: &Path) -> Result<()> {
    let cached = img.dir.join(CACHED);
    if !cached.is_file() {
        let qcow2 = img.dir.join("linux-vm.qcow2.partial");
        let mut raw = fs::File::open(&img.disk)
            .with_context(|| format!("cannot open {}", img.disk.display()))?;
        let size = raw.metadata()?.len();
        let mut out = fs::File::create(&qcow2)
            .with_context(|| format!("cannot create {}", qcow2.display()))?;
        rayos_install::qcow2::write_from_stream(&mut raw, &mut out, size, &mut |_| {})
            .context("cannot write the Debian VM image as qcow2")?;
        drop(out);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let zstd =
            rayos_install::seekable::compress(&qcow2, &cached, FRAME_BYTES, ZSTD_ARGS, threads)
                .context("cannot compress the Debian VM image (zstd)");
        let _ = fs::remove_file(&qcow2);
        zstd?;
    }
    let _ = fs::remove_file(dest);
    fs::copy(&cached, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}

//! `cargo xtask fuzz --make-seeds`: regenerates the committed seed corpora
//! in `fuzz/seeds/<target>/` from the real producers of each input, so the
//! fuzzers start from what RayOS meets instead of from nothing:
//!
//! - `gpt`: tables written by sgdisk (512-byte sectors on an image file,
//!   4096-byte sectors through a loop device), an MBR from sfdisk, FAT from
//!   mkfs.fat, an ext4 superblock from mkfs.ext4;
//! - `answers`, `plan`: the issue's answer file, the reference file of
//!   docs/answer-file.md, one file per mode;
//! - `policy`: policy, machine.toml and registry.json as RayOS writes them;
//! - `qmp_reply`, `rfb`: what QEMU 7.2 sends over QMP and VNC while a PC
//!   with a VGA card is started, boots SeaBIOS (the display switches to
//!   text mode), is stopped, reset and quit;
//! - `media_parsers`: the headers of a UKI assembled by rayos-image from
//!   Debian's stub, the head of the host kernel, an OVMF VARS store after
//!   OVMF booted once, a small qcow2 from `qemu-img create`; `pe`: that whole UKI (a recovery-mode one);
//! - `bundle`: bundles built by `rayos_update::bundle::build` (what `cargo
//!   xtask bundle` calls), signed with the fuzz target's trusted key;
//! - `dhcp_reply`: dnsmasq's OFFER, ACK and NAK to RayOS's own DHCP
//!   client messages, in network namespaces (`dhcp_lab.rs`);
//! - `api_request`: the requests `rayos vm` sends (rayos-api's client);
//! - `mcp_message`: an MCP client's handshake, tool list and tool calls,
//!   one message per line as the specification's stdio transport sends
//!   them (no MCP client is at hand to record).
//!
//! Files not written here (the `regress-*` crash inputs) are left alone.
//! Seeds are capped at [`MAX_SEED`] bytes: libFuzzer's default `-max_len`
//! is the largest seed, and every input it tries costs time in proportion.
//!
//! Needs root (loop device) and the packages of `scripts/install-deps.sh`.
//! Regenerated seeds differ from the committed ones in GUIDs, timestamps
//! and signatures; that is expected.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rayos_image::uki::{self, UkiParts};
use rayos_present::rfb::{self, Rect};
use rayos_update::bundle::{self, BuildSpec, PayloadName, SchemaRange};
use rayos_update::keys::SecretKey;

/// Largest seed written.
const MAX_SEED: usize = 128 * 1024;

/// The key `fuzz_targets/bundle.rs` trusts: bundles signed with it reach
/// the manifest and payload checks.
const FUZZ_KEY_SEED: [u8; 32] = [7; 32];

struct Seeds {
    dir: PathBuf,
    work: PathBuf,
}

impl Seeds {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        ensure!(
            bytes.len() <= MAX_SEED,
            "seed {target}/{name} is {} bytes, over the {MAX_SEED}-byte limit",
            bytes.len()
        );
        let d = self.dir.join(target);
        fs::create_dir_all(&d)?;
        fs::write(d.join(name), bytes)?;
        println!("  {target}/{name} ({} bytes)", bytes.len());
        Ok(())
    }
}

pub fn make(root: &Path) -> Result<()> {
    // Outside the tree: QEMU's events name the socket paths, and the
    // seeds should not carry a checkout's location.
    let work = std::env::temp_dir().join("rayos-fuzz-seeds");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let s = Seeds {
        dir: root.join("fuzz/seeds"),
        work,
    };
    println!("fuzz: writing seeds to {}", s.dir.display());
    answer_files(&s, root)?;
    state_files(&s)?;
    disks(&s)?;
    let uki_head = media(&s)?;
    bundles(&s, &uki_head)?;
    api_requests(&s)?;
    mcp_messages(&s)?;
    qemu_session(&s)?;
    ovmf_vars(&s)?;
    for (name, bytes) in super::dhcp_lab::record(&s.work)? {
        s.put("dhcp_reply", &name, &bytes)?;
    }
    let _ = fs::remove_dir_all(&s.work);
    check(&s.dir)
}

/// Each seed reaches past its parser's first checks: a seed that a
/// harmless change turned into a rejected one would silently leave the
/// fuzzer where it starts from nothing.
fn check(dir: &Path) -> Result<()> {
    use rayos_disk::gpt::{self, TableState};
    let read = |t: &str, f: &str| fs::read(dir.join(t).join(f)).with_context(|| format!("{t}/{f}"));
    let text = |t: &str, f: &str| -> Result<String> { Ok(String::from_utf8(read(t, f)?)?) };

    for f in [
        "issue.toml",
        "docs-reference-reuse.toml",
        "whole-disk-vm-storage.toml",
        "reuse-linux.toml",
        "reinstall.toml",
        "sizes-in-bytes.toml",
        "free-space-sizes.toml",
    ] {
        rayos_install::answers::Answers::parse(f, &text("answers", f)?)?;
    }
    for f in [
        "policy-default.toml",
        "policy-closed.toml",
        "policy-windows.toml",
    ] {
        rayos_state::Policy::parse(f, &text("policy", f)?)?;
    }
    rayos_state::MachineConfig::parse("machine.toml", &text("policy", "machine.toml")?)?;
    rayos_state::Registry::parse("registry.json", &text("policy", "registry.json")?)?;

    for (f, ss) in [("sgdisk-512.img", 512), ("sgdisk-4096.img", 4096)] {
        let st = gpt::inspect(&mut std::io::Cursor::new(read("gpt", f)?), ss)?;
        ensure!(
            matches!(st, TableState::Gpt(_)),
            "gpt/{f} is not read as a GPT: {st:?}"
        );
    }
    let st = gpt::inspect(
        &mut std::io::Cursor::new(read("gpt", "sfdisk-mbr.img")?),
        512,
    )?;
    ensure!(
        matches!(st, TableState::Mbr(_)),
        "gpt/sfdisk-mbr.img is not an MBR: {st:?}"
    );

    let trusted = [SecretKey::from_seed(FUZZ_KEY_SEED).public("fuzz")];
    for f in ["signed.bundle", "signed-with-recovery.bundle"] {
        bundle::Bundle::open(&dir.join("bundle").join(f), &trusted)?.verify_payloads()?;
    }

    for f in files(&dir.join("api_request"))? {
        let bytes = read("api_request", &f)?;
        rayos_api::http::read_request(&mut &bytes[..], rayos_api::http::Limits::default())
            .with_context(|| format!("api_request/{f}"))?;
    }

    for f in files(&dir.join("mcp_message"))? {
        let v: serde_json::Value = serde_json::from_slice(&read("mcp_message", &f)?)
            .with_context(|| format!("mcp_message/{f} is not JSON"))?;
        ensure!(v["jsonrpc"] == "2.0", "mcp_message/{f} is not JSON-RPC 2.0");
    }

    for f in files(&dir.join("dhcp_reply"))? {
        let r = rayos_net::dhcp::parse(&read("dhcp_reply", &f)?)
            .with_context(|| format!("dhcp_reply/{f}"))?;
        ensure!(
            !r.routers.is_empty() || f.contains("nak"),
            "dhcp_reply/{f} has no router option: {r:?}"
        );
    }

    // The RFB session replays to the end: the handshake, QEMU's
    // pseudo-encoding acknowledgements, a raw update, the mode change.
    let bytes = read("rfb", "qemu-vga-boot.rfb")?;
    let mut input = &bytes[..];
    let init = rfb::handshake(&mut ReadOnly(&mut input))?;
    let mut fb = rfb::Framebuffer::new(init.width, init.height);
    let mut events = 0;
    while !input.is_empty() {
        rfb::read_message(&mut input, &mut fb).context("rfb/qemu-vga-boot.rfb does not replay")?;
        events += 1;
    }
    ensure!(
        events >= 4 && (fb.width, fb.height) == (720, 400),
        "rfb/qemu-vga-boot.rfb: {events} messages, ends at {}x{}",
        fb.width,
        fb.height
    );
    Ok(())
}

fn files(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// A reader posing as a stream (the handshake's replies go nowhere).
struct ReadOnly<'a, 'b>(&'a mut &'b [u8]);

impl Read for ReadOnly<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadOnly<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- answer files and state files ----

fn answer_files(s: &Seeds, root: &Path) -> Result<()> {
    let doc = fs::read_to_string(root.join("docs/answer-file.md"))?;
    let reference = doc
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .context("docs/answer-file.md has no ```toml block")?;
    // The reference lists the reuse-only keys under mode = "free-space"
    // (it shows every key); as written it is refused at [target], so a
    // copy in reuse mode carries the parser through every section.
    let reference_reuse = reference.replacen("mode = \"free-space\"", "mode = \"reuse\"     ", 1);
    let files: [(&str, &str); 8] = [
        ("issue.toml", rayos_install::answers::ISSUE_EXAMPLE),
        ("docs-reference.toml", reference),
        ("docs-reference-reuse.toml", &reference_reuse),
        (
            "whole-disk-vm-storage.toml",
            "version = 1\n[target]\nmode = \"whole-disk\"\n[sizes]\nesp = \"1GiB\"\nsystem = \"1.5GiB\"\ndata = \"20GiB\"\n[vm_storage]\nlinux = { create = \"4GiB\" }\nwindows = { create = \"8 GiB\" }\n[policy]\nwindows_enabled = true\nwindows_autostart = true\n",
        ),
        (
            "reuse-linux.toml",
            "version = 1\n[target]\ndisk = \"/dev/nvme0n1\"\nmode = \"reuse\"\nsystem = \"/dev/nvme0n1p2\"\ndata = 3\nesp = 1\nformat = [\"/dev/nvme0n1p2\", 3]\n[machine]\nhostname = \"desk\"\ntimezone = \"Europe/Berlin\"\nlocale = \"de_DE.UTF-8\"\nkeyboard = \"de\"\n",
        ),
        (
            "reinstall.toml",
            "version = 1\n[target]\ndisk = \"/dev/vda\"\nmode = \"free-space\"\nreinstall = true\n[sizes]\nsystem = \"2GiB\"\ndata = \"rest\"\n[vm_storage]\nlinux = \"data\"\nwindows = { reuse = \"/dev/vda3\" }\n[finish]\naction = \"poweroff\"\n",
        ),
        (
            "sizes-in-bytes.toml",
            "version = 1\n[target]\nmode = \"whole-disk\"\n[sizes]\nesp = \"1073741824\"\nsystem = \"2147483648B\"\ndata = \"1099511627776\"\n[vm_storage]\nwindows = { create = \"68719476736\" }\n",
        ),
        (
            "free-space-sizes.toml",
            "version = 1\n[target]\nmode = \"free-space\"\n[sizes]\nesp = 536870912\nsystem = \"512MiB\"\ndata = \"1.5TB\"\n[policy]\nlinux_autostart = false\nlinux_present_on_boot = true\nnetworking = \"provisioning_only\"\n",
        ),
    ];
    for (name, text) in files {
        for target in ["answers", "plan"] {
            s.put(target, name, text.as_bytes())?;
        }
    }
    Ok(())
}

fn state_files(s: &Seeds) -> Result<()> {
    use rayos_state::{MachineConfig, Policy};
    s.put(
        "policy",
        "policy-default.toml",
        Policy::default().to_toml().as_bytes(),
    )?;
    s.put(
        "policy",
        "policy-closed.toml",
        Policy::closed().to_toml().as_bytes(),
    )?;
    let answers = rayos_install::answers::Answers::parse(
        "seed",
        "version = 1\n[target]\nmode = \"free-space\"\n[policy]\nwindows_enabled = true\nwindows_autostart = true\nnetworking = \"provisioning_only\"\n",
    )?;
    s.put(
        "policy",
        "policy-windows.toml",
        answers.policy.to_policy().to_toml().as_bytes(),
    )?;
    let machine = MachineConfig::new("rayos-desk", "Europe/Berlin", "de_DE.UTF-8", "de");
    s.put("policy", "machine.toml", machine.to_toml().as_bytes())?;
    s.put(
        "policy",
        "registry.json",
        rayos_install::plan::seed_registry(true)
            .to_json()
            .as_bytes(),
    )?;
    Ok(())
}

// ---- disks ----

fn tool(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn blank_image(path: &Path, size: u64) -> Result<()> {
    let _ = fs::remove_file(path);
    fs::File::create(path)?.set_len(size)?;
    Ok(())
}

fn disks(s: &Seeds) -> Result<()> {
    // 512-byte sectors: 128 sectors hold both table copies and two
    // sector-aligned partitions (sgdisk -a 1).
    let img = s.work.join("gpt512.img");
    blank_image(&img, 128 * 512)?;
    tool(
        Command::new("sgdisk")
            .args(["-a", "1"])
            .args([
                "-n",
                "1:34:63",
                "-t",
                "1:ef00",
                "-c",
                "1:EFI system partition",
                "-n",
                "2:64:93",
                "-t",
                "2:8300",
                "-c",
                "2:rayos-data",
            ])
            .arg(&img),
    )?;
    tool(Command::new("sgdisk").arg("-v").arg(&img))?;
    let bytes = fs::read(&img)?;
    s.put("gpt", "sgdisk-512.img", &bytes)?;
    // The first 34 sectors only: the backup copy lies past the end.
    s.put("gpt", "sgdisk-512-primary-only.img", &bytes[..34 * 512])?;

    // 4096-byte sectors: sgdisk takes the sector size from the device, so
    // the image goes through a loop device with 4096-byte sectors.
    let img = s.work.join("gpt4k.img");
    blank_image(&img, 20 * 4096)?;
    let out = Command::new("losetup")
        .args(["--find", "--show", "--sector-size", "4096"])
        .arg(&img)
        .output()
        .context("cannot run losetup")?;
    ensure!(
        out.status.success(),
        "losetup failed (seeds need root for a 4096-byte-sector loop device): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let made = tool(Command::new("sgdisk").args([
        "-a",
        "1",
        "-n",
        "1:6:9",
        "-t",
        "1:ef00",
        "-n",
        "2:10:14",
        "-t",
        "2:ea00",
        "-c",
        "2:rayos-system",
        &loopdev,
    ]));
    tool(Command::new("losetup").args(["-d", &loopdev]))?;
    made?;
    s.put("gpt", "sgdisk-4096.img", &fs::read(&img)?)?;

    let img = s.work.join("mbr.img");
    blank_image(&img, 64 * 512)?;
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot run sfdisk")?;
    sfdisk.stdin.take().context("sfdisk stdin")?.write_all(
        b"label: dos\nstart=2, size=30, type=c, bootable\nstart=32, size=31, type=83\n",
    )?;
    ensure!(sfdisk.wait()?.success(), "sfdisk failed");
    s.put("gpt", "sfdisk-mbr.img", &fs::read(&img)?)?;

    let img = s.work.join("fat.img");
    let _ = fs::remove_file(&img);
    tool(
        Command::new("mkfs.fat")
            .args(["-C", "-n", "RAYOS-SYS"])
            .arg(&img)
            .arg("64"),
    )?;
    s.put("gpt", "mkfs-fat.img", &fs::read(&img)?)?;

    // ext4 needs more room than a seed may hold; its superblock lies in
    // the first 4 KiB, which is all the probe reads.
    let img = s.work.join("ext4.img");
    blank_image(&img, 1 << 20)?;
    tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "rayos-data"])
            .arg(&img),
    )?;
    s.put("gpt", "mkfs-ext4-head.img", &fs::read(&img)?[..4096])?;
    Ok(())
}

// ---- boot media ----

/// Writes the `media_parsers` seeds; returns the UKI's header bytes.
fn media(s: &Seeds) -> Result<Vec<u8>> {
    let kernel = uki::host_kernel().context("no /boot/vmlinuz-* (package linux-image-amd64)")?;
    let bz = fs::read(&kernel)?;
    // The setup header and the version string it points to.
    let ver_at = bz
        .get(0x20e..0x210)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) + 0x200)
        .context("kernel too short")?;
    let ver_end = bz[ver_at..]
        .iter()
        .position(|&c| c == 0)
        .map(|n| ver_at + n + 1)
        .context("kernel version string not terminated")?;
    let head = &bz[..ver_end.div_ceil(512) * 512];
    s.put("media_parsers", "bzimage-head.bin", head)?;

    let kernel_head = s.work.join("vmlinuz-head");
    fs::write(&kernel_head, head)?;
    let initrd = s.work.join("initrd.cpio");
    let mut w = rayos_image::cpio::CpioWriter::new(fs::File::create(&initrd)?);
    w.dir("etc", 0o755)?;
    let hello = b"RayOS fuzz seed\n";
    w.file("etc/motd", 0o644, hello.len() as u64, &mut &hello[..])?;
    w.finish()?;
    let efi = s.work.join("seed.efi");
    uki::assemble(
        &UkiParts {
            stub: PathBuf::from(uki::DEBIAN_STUB),
            kernel: kernel_head,
            initrd,
            // As `cargo xtask media` writes the recovery UKI.
            cmdline: format!("{} rayos.mode=recovery", crate::media::CONSOLE),
            osrel: uki::os_release("0.1.0"),
            uname: None,
        },
        &efi,
    )?;
    // The headers (section table included) lie in the first 4 KiB.
    let efi_bytes = fs::read(&efi)?;
    let uki_head = efi_bytes[..4096].to_vec();
    // Parsed as the head of the whole file: the sections' data lies past
    // the 4 KiB, inside the file.
    let sections = rayos_state::pe::parse(&uki_head, efi_bytes.len() as u64)
        .context("the UKI's section table does not fit in its first 4 KiB")?
        .sections;
    ensure!(
        sections.iter().any(|s| s.name == ".osrel"),
        "the UKI's first 4 KiB name no .osrel section: {sections:?}"
    );
    s.put("media_parsers", "uki-head.efi", &uki_head)?;
    // A qcow2 as qemu-img makes it (512-byte clusters keep it small; the
    // installer's own writer uses 64 KiB): what `qcow2::grow` reads.
    let qcow2 = s.work.join("small.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=512"])
        .arg(&qcow2)
        .arg("1M")
        .status()
        .context("qemu-img (qemu-utils)")?;
    ensure!(st.success(), "qemu-img create failed");
    s.put("media_parsers", "qcow2-small.qcow2", &fs::read(&qcow2)?)?;
    // That qcow2 in the seekable format as the media ship the Linux VM
    // image (frames of 512 bytes here, so it has four): what
    // `seekable::SeekTable` reads.
    let seekable = s.work.join("small.qcow2.zst");
    rayos_install::seekable::compress(&qcow2, &seekable, 512, &["-3"], 1).context("zstd")?;
    s.put(
        "media_parsers",
        "qcow2-small-seekable.zst",
        &fs::read(&seekable)?,
    )?;
    // The whole UKI (Debian's stub is most of it) for the PE reader that
    // recovery uses (target `pe`, from the safety-install branch).
    s.put("pe", "recovery-uki-small.efi", &efi_bytes)?;
    Ok(uki_head)
}

fn bundles(s: &Seeds, uki_head: &[u8]) -> Result<()> {
    let uki = s.work.join("payload-uki.efi");
    fs::write(&uki, uki_head)?;
    let recovery = s.work.join("payload-recovery.efi");
    fs::write(&recovery, &uki_head[..1024])?;
    let key = SecretKey::from_seed(FUZZ_KEY_SEED);
    // The values `cargo xtask bundle` uses (xtask/src/bundle.rs).
    let spec = |payloads, key| BuildSpec {
        version: "0.2.0".into(),
        architecture: bundle::ARCH.to_string(),
        install_layout: SchemaRange { min: 1, max: 1 },
        data_schema: SchemaRange {
            min: 0,
            max: rayos_state::DATA_SCHEMA_VERSION,
        },
        created: rayos_update::state::now_rfc3339(),
        payloads,
        key,
    };
    // (file, with a recovery UKI, signed)
    let cases = [
        ("signed.bundle", false, true),
        ("signed-with-recovery.bundle", true, true),
        ("unsigned.bundle", false, false),
    ];
    for (name, with_recovery, signed) in cases {
        let mut payloads = vec![(PayloadName::Uki, uki.as_path())];
        if with_recovery {
            payloads.push((PayloadName::RecoveryUki, recovery.as_path()));
        }
        let out = s.work.join(name);
        bundle::build(&spec(payloads, signed.then_some(&key)), &out)?;
        s.put("bundle", name, &fs::read(&out)?)?;
    }
    Ok(())
}

// ---- rayosd API requests ----

/// Records the requests rayos-api's client sends to a socket that answers
/// every one with 404.
fn api_requests(s: &Seeds) -> Result<()> {
    use rayos_api::client::Client;
    use rayos_api::{CreateRequest, StopRequest};

    let sock = s.work.join("api.sock");
    let listener = UnixListener::bind(&sock)?;
    let server = std::thread::spawn(move || -> Result<Vec<Vec<u8>>> {
        let mut seen = Vec::new();
        for conn in listener.incoming() {
            let mut conn = conn?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut tee = Tee::new(conn.try_clone()?);
            let mut r = std::io::BufReader::new(&mut tee);
            let req = rayos_api::http::read_request(&mut r, rayos_api::http::Limits::default());
            drop(r);
            let done = matches!(&req, Ok(q) if q.path == "/v1/done");
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 24\r\nConnection: close\r\n\r\n{\"error\":\"no such seed\"}",
            )?;
            if done {
                break;
            }
            seen.push(tee.log);
        }
        Ok(seen)
    });
    let c = Client::new(&sock).with_timeout(Some(Duration::from_secs(10)));
    let create: CreateRequest = serde_json::from_str(
        r#"{"name":"debian","kind":"linux","memory_mib":2048,"cpus":2,"disks":[{"size":"8G"},{"import":"/var/rayos/images/debian.qcow2"}],"media":["/var/rayos/iso/debian-12.iso"],"secure_boot":false}"#,
    )?;
    let names = [
        "health",
        "list",
        "show",
        "create",
        "start",
        "stop",
        "suspend",
        "delete",
        "console",
        "screenshot",
        "events",
        "input",
        "console-write",
        "exec",
    ];
    let _ = c.health();
    let _ = c.list();
    let _ = c.show("linux");
    let _ = c.create(&create);
    let _ = c.start("windows", true);
    let _ = c.stop(
        "linux",
        &StopRequest {
            force: false,
            timeout_secs: Some(90),
        },
    );
    let _ = c.action("linux", "suspend", None::<&()>);
    let _ = c.delete("old vm", true);
    let _ = c.console("linux", 200);
    let _ = c.screenshot("windows");
    let _ = c.events(Some(41), |_| false);
    let _ = c.input(
        "linux",
        &serde_json::from_str(
            r#"{"actions":[{"type":"key","keys":"ctrl+alt+delete"},{"type":"text","text":"Hello, World!\n"},{"type":"click","x":100,"y":50,"button":"right"}],"hidden":true}"#,
        )?,
    );
    let _ = c.console_write("linux", "root\n");
    let _ = c.exec(
        "linux",
        &serde_json::from_str(r#"{"path":"/bin/ls","args":["-l","/"],"timeout_secs":10}"#)?,
    );
    let _ = c.raw("GET", "/v1/done", None);
    let seen = server
        .join()
        .map_err(|_| anyhow::anyhow!("API recorder panicked"))??;
    ensure!(
        seen.len() == names.len(),
        "recorded {} requests, expected {}",
        seen.len(),
        names.len()
    );
    for (name, bytes) in names.iter().zip(&seen) {
        s.put("api_request", &format!("{name}.http"), bytes)?;
    }
    Ok(())
}

/// MCP messages as a client sends them on stdio (one JSON-RPC message per
/// line): the handshake, the tool list, calls of tools with arguments.
fn mcp_messages(s: &Seeds) -> Result<()> {
    let lines = [
        (
            "initialize",
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"agent","version":"1"}}}"#,
        ),
        (
            "initialized",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ),
        (
            "tools-list",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        ),
        (
            "call-type-text",
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"type_text","arguments":{"vm":"windows","text":"notepad\n","hidden":true}}}"#,
        ),
        (
            "call-click",
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"click","arguments":{"vm":"windows","x":10,"y":20,"button":"left"}}}"#,
        ),
        (
            "call-exec",
            r#"{"jsonrpc":"2.0","id":"e","method":"tools/call","params":{"name":"exec","arguments":{"vm":"linux","path":"/bin/ls","args":["/"],"timeout_secs":5}}}"#,
        ),
        (
            "call-events",
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"events","arguments":{"since":3}}}"#,
        ),
    ];
    for (name, line) in lines {
        s.put(
            "mcp_message",
            &format!("{name}.json"),
            format!("{line}\n").as_bytes(),
        )?;
    }
    Ok(())
}

// ---- QEMU: QMP and VNC ----

/// A stream whose incoming bytes are kept.
struct Tee<S> {
    inner: S,
    log: Vec<u8>,
}

impl<S> Tee<S> {
    fn new(inner: S) -> Self {
        Tee {
            inner,
            log: Vec::new(),
        }
    }
}

impl<S: Read> Read for Tee<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.log.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl<S: Write> Write for Tee<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Tee<UnixStream> {
    /// Reads until `done` holds for the bytes received since `from`, the
    /// peer closes, or `limit` passes. Returns whether `done` held.
    fn read_until(
        &mut self,
        from: usize,
        limit: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> Result<bool> {
        let end = Instant::now() + limit;
        self.inner
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 64 * 1024];
        loop {
            if done(&self.log[from.min(self.log.len())..]) {
                return Ok(true);
            }
            if Instant::now() > end {
                return Ok(false);
            }
            match self.read(&mut buf) {
                Ok(0) => return Ok(done(&self.log[from.min(self.log.len())..])),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(done(&self.log[from.min(self.log.len())..]));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads until nothing arrives for `quiet`, or `limit` passes.
    fn read_quiet(&mut self, quiet: Duration, limit: Duration) -> Result<()> {
        let end = Instant::now() + limit;
        self.inner.set_read_timeout(Some(quiet))?;
        let mut buf = [0u8; 64 * 1024];
        while Instant::now() < end {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends a QMP command and waits for its reply.
    fn qmp(&mut self, cmd: &str) -> Result<()> {
        let from = self.log.len();
        self.inner.write_all(cmd.as_bytes())?;
        self.inner.write_all(b"\r\n")?;
        let replied = self.read_until(from, Duration::from_secs(30), |b| {
            b.split(|&c| c == b'\n').any(|l| {
                l.ends_with(b"\r")
                    && (l.starts_with(b"{\"return\"") || l.starts_with(b"{\"error\""))
            })
        })?;
        ensure!(replied, "QEMU did not answer {cmd}");
        Ok(())
    }
}

/// Kills and reaps a child when dropped (error paths included).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn wait_for_sockets(paths: &[&Path], child: &mut Child) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    while !paths.iter().all(|p| p.exists()) {
        if let Some(st) = child.try_wait()? {
            bail!("QEMU exited before opening its sockets: {st}");
        }
        ensure!(
            Instant::now() < end,
            "QEMU did not open its sockets in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One QEMU run recorded from both sides: a PC with a VGA card, started
/// paused, so the VNC client sees the "not initialized" display first and
/// then SeaBIOS's switch to text mode (a DesktopSize rectangle).
fn qemu_session(s: &Seeds) -> Result<()> {
    let vnc = s.work.join("vnc.sock");
    let qmp = s.work.join("qmp.sock");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "64",
            "-S",
            "-nodefaults",
            "-vga",
            "std",
            "-display",
            "none",
        ])
        .arg("-vnc")
        .arg(format!("unix:{}", vnc.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .spawn()
        .context("cannot run qemu-system-x86_64")?;
    let mut qemu = Reap(child);
    wait_for_sockets(&[&vnc, &qmp], &mut qemu.0)?;

    let mut q = Tee::new(UnixStream::connect(&qmp)?);
    ensure!(
        q.read_until(0, Duration::from_secs(30), |b| b.ends_with(b"\r\n"))?,
        "no QMP greeting"
    );
    q.qmp(r#"{"execute":"qmp_capabilities"}"#)?;
    q.qmp(r#"{"execute":"query-status"}"#)?;

    let mut v = Tee::new(UnixStream::connect(&vnc)?);
    v.inner.set_read_timeout(Some(Duration::from_secs(30)))?;
    let init = rfb::handshake(&mut v).context("RFB handshake with QEMU")?;
    println!(
        "  (QEMU's VNC: {}x{} {:?})",
        init.width, init.height, init.name
    );
    // QEMU answers SetEncodings with its pseudo-encoding acknowledgements;
    // a small non-incremental request gets a raw update (QEMU sends whole
    // dirty bands, about 24 KiB here).
    v.inner
        .write_all(&rfb::update_request(false, Rect::new(0, 0, 32, 16)))?;
    v.read_quiet(Duration::from_secs(2), Duration::from_secs(20))?;

    let from = v.log.len();
    q.qmp(r#"{"execute":"cont"}"#)?;
    let desktop_size = rfb::ENC_DESKTOP_SIZE.to_be_bytes();
    ensure!(
        v.read_until(from, Duration::from_secs(60), |b| b
            .windows(4)
            .any(|w| w == desktop_size))?,
        "SeaBIOS did not change the display mode within 60 s"
    );
    // No more update requests: after a mode change QEMU would send the
    // whole screen (over 1 MiB), too much for a seed.
    q.qmp(r#"{"execute":"query-status","id":7}"#)?;
    q.qmp(r#"{"execute":"query-name"}"#)?;
    q.qmp(r#"{"execute":"query-block"}"#)?;
    q.qmp(r#"{"execute":"no-such-command"}"#)?;
    q.qmp(r#"{"execute":"human-monitor-command","arguments":{"command-line":"info version"}}"#)?;
    q.qmp(r#"{"execute":"stop"}"#)?;
    q.qmp(r#"{"execute":"system_reset"}"#)?;
    q.qmp(r#"{"execute":"cont"}"#)?;
    q.qmp(r#"{"execute":"quit"}"#)?;
    q.read_quiet(Duration::from_secs(5), Duration::from_secs(30))?;
    v.read_quiet(Duration::from_secs(2), Duration::from_secs(10))?;
    let st = qemu.0.wait()?;
    ensure!(st.success(), "QEMU exited with {st}");

    s.put("rfb", "qemu-vga-boot.rfb", &v.log)?;
    // qmp_reply's first byte: the chunk size the rest is fed in, and
    // (odd) whether a guest-agent 0xFF delimiter comes first.
    let mut chunked = vec![64u8];
    chunked.extend_from_slice(&q.log);
    s.put("qmp_reply", "qemu-session-chunk64.bin", &chunked)?;
    let mut bytewise = vec![2u8];
    bytewise.extend_from_slice(&q.log);
    s.put("qmp_reply", "qemu-session-chunk2.bin", &bytewise)?;
    let mut delimited = vec![33u8, b'{', 0xff];
    delimited.extend_from_slice(&q.log);
    s.put("qmp_reply", "qemu-session-delimited.bin", &delimited)?;
    Ok(())
}

/// OVMF's variable store after one boot without a disk (OVMF writes its
/// `Boot####` entries, `BootOrder` and console variables, then starts its
/// shell), cut after the last variable.
fn ovmf_vars(s: &Seeds) -> Result<()> {
    let vars = s.work.join("OVMF_VARS.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars)
        .context("no /usr/share/OVMF/OVMF_VARS.fd (package ovmf)")?;
    let serial = s.work.join("ovmf-serial.log");
    let qmp = s.work.join("ovmf-qmp.sock");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-drive")
        .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .context("cannot run qemu-system-x86_64")?;
    let mut qemu = Reap(child);
    wait_for_sockets(&[&qmp], &mut qemu.0)?;
    let end = Instant::now() + Duration::from_secs(180);
    while !fs::read(&serial).is_ok_and(|b| b.windows(6).any(|w| w == b"Shell>")) {
        ensure!(
            Instant::now() < end,
            "OVMF did not reach its shell in 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut q = Tee::new(UnixStream::connect(&qmp)?);
    q.read_until(0, Duration::from_secs(30), |b| b.ends_with(b"\r\n"))?;
    q.qmp(r#"{"execute":"qmp_capabilities"}"#)?;
    q.qmp(r#"{"execute":"quit"}"#)?;
    qemu.0.wait()?;

    let b = fs::read(&vars)?;
    let u16_at = |at: usize| b.get(at..at + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u32_at = |at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    // Walk the variables as ovmf_vars.rs does (60-byte headers, 4-aligned).
    let fv_len = usize::from(u16_at(0x30).context("VARS too short")?);
    let mut at = fv_len + 28;
    while u16_at(at) == Some(0x55aa) {
        let name = u32_at(at + 36).context("truncated variable")? as usize;
        let data = u32_at(at + 40).context("truncated variable")? as usize;
        at = (at + 60 + name + data).div_ceil(4) * 4;
    }
    let store = &b[..at.min(b.len())];
    let found = rayos_image::ovmf_vars::boot_vars(store)?;
    ensure!(
        !found.entries.is_empty() && !found.order.is_empty(),
        "OVMF wrote no boot entries"
    );
    s.put("media_parsers", "ovmf-vars-after-boot.fd", store)?;
    Ok(())
}

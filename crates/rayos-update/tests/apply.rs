//! `apply` against a system partition directory: the round trip, every
//! refusal with nothing written, a full partition (a small tmpfs), and a
//! power cut after each step (the test re-runs itself as a child process
//! that aborts through the `RAYOS_UPDATE_FAIL_AFTER` hook).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rayos_update::bundle::{self, BuildSpec, PayloadName, SchemaRange};
use rayos_update::entries::{self, LINUX_DIR};
use rayos_update::{ApplyError, ApplyOptions, BundleError, SecretKey, apply};

const CHILD_ENV: &str = "RAYOS_UPDATE_TEST_CHILD";

fn key() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

/// Pseudo-random bytes (a UKI stand-in; incompressible like the real one).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
    system: PathBuf,
    running_uki: Vec<u8>,
}

/// A system partition with RayOS 0.1.0 installed and blessed.
fn system(root: Option<&Path>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let system = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.path().join("system"));
    fs::create_dir_all(system.join(LINUX_DIR)).unwrap();
    fs::create_dir_all(system.join("rayos")).unwrap();
    fs::write(
        system.join("rayos/install-manifest.json"),
        r#"{"schema":1,"rayos_version":"0.1.0"}"#,
    )
    .unwrap();
    let running_uki = noise(1 << 20, 1);
    fs::write(system.join(LINUX_DIR).join("rayos-0.1.0.efi"), &running_uki).unwrap();
    Fixture {
        dir,
        system,
        running_uki,
    }
}

struct Built {
    path: PathBuf,
    uki: Vec<u8>,
}

fn build_bundle(
    dir: &Path,
    version: &str,
    arch: &str,
    key: Option<&SecretKey>,
    recovery: bool,
) -> Built {
    let uki = noise(3 << 20, 7);
    let uki_path = dir.join(format!("uki-{version}.efi"));
    fs::write(&uki_path, &uki).unwrap();
    let rec_path = dir.join(format!("recovery-{version}.efi"));
    fs::write(&rec_path, noise(1 << 20, 9)).unwrap();
    let mut payloads = vec![(PayloadName::Uki, uki_path.as_path())];
    if recovery {
        payloads.push((PayloadName::RecoveryUki, rec_path.as_path()));
    }
    let path = dir.join(format!(
        "rayos-update-{version}-{arch}-{}.bundle",
        key.is_some()
    ));
    bundle::build(
        &BuildSpec {
            version: version.into(),
            architecture: arch.into(),
            install_layout: SchemaRange { min: 1, max: 1 },
            data_schema: SchemaRange { min: 0, max: 1 },
            created: "2026-11-26T00:00:00Z".into(),
            payloads,
            key,
        },
        &path,
    )
    .unwrap();
    Built { path, uki }
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        trusted: vec![key().public("test key")],
        running: Some("0.1.0".into()),
        allow_downgrade: false,
        data_schema: Some(1),
        progress: None,
    }
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    fn walk(base: &Path, d: &Path, m: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, m);
            } else {
                m.insert(
                    p.strip_prefix(base).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut m);
    m
}

fn linux_names(system: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(system.join(LINUX_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_installs_beside_the_running_version() {
    let f = system(None);
    let b = build_bundle(f.dir.path(), "0.2.0", bundle::ARCH, Some(&key()), true);
    let done = apply(&b.path, &f.system, &opts()).unwrap();
    assert_eq!(done.file, "rayos-0.2.0+3.efi");
    assert_eq!(
        linux_names(&f.system),
        vec!["rayos-0.1.0.efi", "rayos-0.2.0+3.efi"]
    );
    assert_eq!(
        fs::read(f.system.join(LINUX_DIR).join("rayos-0.2.0+3.efi")).unwrap(),
        b.uki
    );
    assert_eq!(
        fs::read(f.system.join(LINUX_DIR).join("rayos-0.1.0.efi")).unwrap(),
        f.running_uki
    );
    assert_eq!(done.next_default.as_deref(), Some("rayos-0.2.0+3.efi"));
    assert_eq!(done.fallback.as_deref(), Some("rayos-0.1.0.efi"));
    // Recovery UKI and its entry.
    assert_eq!(done.recovery.as_deref(), Some("rayos-recovery-0.2.0.efi"));
    let conf = fs::read_to_string(f.system.join("loader/entries/rayos-recovery.conf")).unwrap();
    assert!(
        conf.contains("efi /rayos/rayos-recovery-0.2.0.efi"),
        "{conf}"
    );
    assert!(f.system.join("rayos/rayos-recovery-0.2.0.efi").is_file());
    // Status mimics systemd-boot.
    let st = rayos_update::status::status(&f.system, Some("0.1.0"), "test", "rayos-*").unwrap();
    assert_eq!(st.default.as_deref(), Some("rayos-0.2.0+3.efi"));
    assert!(st.entries.iter().any(|e| e.running && e.version == "0.1.0"));
    assert_eq!(st.last.as_ref().unwrap().version, "0.2.0");
    assert!(st.render().contains("3 tries left"));

    // 0.2.0 boots (systemd-boot counts), gets blessed; then 0.3.0 comes:
    // 0.2.0 runs, 0.1.0 is the previous good one, nothing older to prune.
    fs::rename(
        f.system.join(LINUX_DIR).join("rayos-0.2.0+3.efi"),
        f.system.join(LINUX_DIR).join("rayos-0.2.0.efi"),
    )
    .unwrap();
    let b3 = build_bundle(f.dir.path(), "0.3.0", bundle::ARCH, Some(&key()), false);
    let o = ApplyOptions {
        running: Some("0.2.0".into()),
        ..opts()
    };
    apply(&b3.path, &f.system, &o).unwrap();
    // 0.3.0 blessed; 0.4.0 prunes 0.1.0 (older than the previous good).
    fs::rename(
        f.system.join(LINUX_DIR).join("rayos-0.3.0+3.efi"),
        f.system.join(LINUX_DIR).join("rayos-0.3.0.efi"),
    )
    .unwrap();
    let b4 = build_bundle(f.dir.path(), "0.4.0", bundle::ARCH, Some(&key()), false);
    let o = ApplyOptions {
        running: Some("0.3.0".into()),
        ..opts()
    };
    let done = apply(&b4.path, &f.system, &o).unwrap();
    assert_eq!(done.pruned, vec!["rayos-0.1.0.efi"]);
    assert_eq!(
        linux_names(&f.system),
        vec!["rayos-0.2.0.efi", "rayos-0.3.0.efi", "rayos-0.4.0+3.efi"]
    );
    // The recovery UKI of 0.2.0 stays: 0.3.0 and 0.4.0 did not change it.
    assert!(f.system.join("rayos/rayos-recovery-0.2.0.efi").is_file());
}

/// Applies and expects a refusal that left the partition byte-identical.
fn refused(f: &Fixture, bundle: &Path, o: &ApplyOptions) -> ApplyError {
    let before = snapshot(&f.system);
    let e = apply(bundle, &f.system, o).expect_err("must be refused");
    assert_eq!(snapshot(&f.system), before, "nothing may be written: {e}");
    e
}

#[test]
fn bad_bundles_are_refused_with_nothing_written() {
    let f = system(None);
    let d = f.dir.path();
    let good = build_bundle(d, "0.2.0", bundle::ARCH, Some(&key()), false);
    let bytes = fs::read(&good.path).unwrap();
    let header = bundle::Header::parse(&bytes).unwrap();
    let variant = |name: &str, b: &[u8]| {
        let p = d.join(name);
        fs::write(&p, b).unwrap();
        p
    };

    // Tampered manifest: the version changed after signing.
    let mut t = bytes.clone();
    let text = String::from_utf8_lossy(&t[32..32 + header.manifest_len as usize]).into_owned();
    let at = text.find("0.2.0").unwrap();
    t[32 + at + 2] = b'9';
    let e = refused(&f, &variant("manifest.bundle", &t), &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::BadSignature { .. })),
        "{e}"
    );

    // Tampered payload: one byte in the middle of the UKI.
    let mut t = bytes.clone();
    let mid = header.payload_offset() as usize + (3 << 19);
    t[mid] ^= 0xff;
    let e = refused(&f, &variant("payload.bundle", &t), &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::PayloadHash { .. })),
        "{e}"
    );

    // Truncated (a download cut short) and padded.
    let e = refused(
        &f,
        &variant("short.bundle", &bytes[..bytes.len() - 10]),
        &opts(),
    );
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::Length { .. })),
        "{e}"
    );
    let e = refused(&f, &variant("short2.bundle", &bytes[..20]), &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::Length { .. })),
        "{e}"
    );
    let mut t = bytes.clone();
    t.extend_from_slice(b"extra");
    let e = refused(&f, &variant("long.bundle", &t), &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::Length { .. })),
        "{e}"
    );

    // Not a bundle at all.
    let e = refused(&f, &variant("junk.bundle", &noise(4096, 3)), &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::BadMagic)),
        "{e}"
    );

    // Unsigned, and signed by a key the system does not trust.
    let unsigned = build_bundle(d, "0.2.0", bundle::ARCH, None, false);
    let e = refused(&f, &unsigned.path, &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::Unsigned)),
        "{e}"
    );
    let stranger = SecretKey::from_seed([9; 32]);
    let other = build_bundle(
        &d.join("."),
        "0.2.0",
        "x86_64-other",
        Some(&stranger),
        false,
    );
    let e = refused(&f, &other.path, &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::BadSignature { .. })),
        "{e}"
    );

    // Wrong architecture, correctly signed.
    let arm = build_bundle(d, "0.2.0", "aarch64", Some(&key()), false);
    let e = refused(&f, &arm.path, &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::WrongArchitecture { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("aarch64"));

    // Downgrade and re-applying the running version.
    let old = build_bundle(d, "0.0.9", bundle::ARCH, Some(&key()), false);
    let e = refused(&f, &old.path, &opts());
    assert!(matches!(e, ApplyError::Downgrade { .. }), "{e}");
    assert!(e.to_string().contains("--allow-downgrade"));
    let same = build_bundle(d, "0.1.0", bundle::ARCH, Some(&key()), false);
    let e = refused(&f, &same.path, &opts());
    assert!(matches!(e, ApplyError::AlreadyRunning(_)), "{e}");

    // Incompatible install layout or data schema.
    fs::write(
        f.system.join("rayos/install-manifest.json"),
        r#"{"schema":2,"rayos_version":"0.1.0"}"#,
    )
    .unwrap();
    let e = refused(&f, &good.path, &opts());
    assert!(matches!(e, ApplyError::Layout { found: 2, .. }), "{e}");
    fs::write(
        f.system.join("rayos/install-manifest.json"),
        r#"{"schema":1,"rayos_version":"0.1.0"}"#,
    )
    .unwrap();
    let o = ApplyOptions {
        data_schema: Some(5),
        ..opts()
    };
    let e = refused(&f, &good.path, &o);
    assert!(matches!(e, ApplyError::DataSchema { found: 5, .. }), "{e}");

    // Not a system partition.
    let empty = tempfile::tempdir().unwrap();
    let e = apply(&good.path, empty.path(), &opts()).unwrap_err();
    assert!(matches!(e, ApplyError::NotInstalled(_)), "{e}");
    assert_eq!(fs::read_dir(empty.path()).unwrap().count(), 0);

    // The good bundle still applies after all that.
    apply(&good.path, &f.system, &opts()).unwrap();
}

/// A bundle's bytes with one byte of payload `index` (0: the UKI, 1: the
/// recovery UKI) flipped in its middle, written beside it.
fn tampered(b: &Built, index: usize, name: &str) -> PathBuf {
    let mut bytes = fs::read(&b.path).unwrap();
    let header = bundle::Header::parse(&bytes).unwrap();
    let manifest_end = 32 + header.manifest_len as usize;
    let manifest: bundle::Manifest = serde_json::from_slice(&bytes[32..manifest_end]).unwrap();
    let start = header.payload_offset()
        + manifest.payloads[..index]
            .iter()
            .map(|p| p.size)
            .sum::<u64>();
    let at = (start + manifest.payloads[index].size / 2) as usize;
    bytes[at] ^= 0x01;
    let p = b.path.with_file_name(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// Adds what an apply would prune to a [`system`]: an older good version
/// beyond the previous good one, a failed one, a leftover temporary, and
/// the current recovery UKI with its entry.
fn add_prunable(system: &Path) {
    let linux = system.join(LINUX_DIR);
    fs::write(linux.join("rayos-0.0.5.efi"), noise(4096, 11)).unwrap();
    fs::write(linux.join("rayos-0.0.4.efi"), noise(3 << 20, 12)).unwrap();
    fs::write(linux.join("rayos-0.0.9+0-3.efi"), noise(4096, 13)).unwrap();
    fs::write(linux.join("rayos-0.1.5+3.efi.tmp"), noise(4096, 14)).unwrap();
    fs::write(
        system.join("rayos/rayos-recovery-0.1.0.efi"),
        noise(4096, 15),
    )
    .unwrap();
    rayos_update::apply::write_recovery_entry(system, "0.1.0", "/rayos/rayos-recovery-0.1.0.efi")
        .unwrap();
}

#[test]
fn a_payload_hash_mismatch_found_while_copying_leaves_the_partition_as_it_was() {
    // The hashes are checked while the payloads are copied (one read):
    // whichever payload turns out wrong, its temporary and any written
    // before it are removed, and nothing was pruned or renamed.
    let f = system(None);
    add_prunable(&f.system);
    let b = build_bundle(f.dir.path(), "0.2.0", bundle::ARCH, Some(&key()), true);
    for (index, what) in [(0, "uki"), (1, "recovery-uki")] {
        let bad = tampered(&b, index, &format!("bad-{what}.bundle"));
        let e = refused(&f, &bad, &opts());
        match e {
            ApplyError::Bundle(BundleError::PayloadHash { name }) => assert_eq!(name, what),
            other => panic!("{what}: expected a hash mismatch, got {other}"),
        }
    }
    // The good bundle applies and prunes what it may.
    let done = apply(&b.path, &f.system, &opts()).unwrap();
    let mut pruned = done.pruned.clone();
    pruned.sort();
    assert_eq!(
        pruned,
        vec![
            "rayos-0.0.4.efi",
            "rayos-0.0.9+0-3.efi",
            "rayos-0.1.5+3.efi.tmp"
        ]
    );
    assert_eq!(
        linux_names(&f.system),
        vec!["rayos-0.0.5.efi", "rayos-0.1.0.efi", "rayos-0.2.0+3.efi"]
    );
    assert_eq!(
        fs::read(f.system.join(LINUX_DIR).join("rayos-0.2.0+3.efi")).unwrap(),
        b.uki
    );
    assert!(!f.system.join("rayos/rayos-recovery-0.1.0.efi").exists());
    assert!(f.system.join("rayos/rayos-recovery-0.2.0.efi").is_file());
}

#[test]
fn downgrade_only_when_allowed_and_then_it_boots_first() {
    let f = system(None);
    let old = build_bundle(f.dir.path(), "0.0.9", bundle::ARCH, Some(&key()), false);
    let o = ApplyOptions {
        allow_downgrade: true,
        ..opts()
    };
    let done = apply(&old.path, &f.system, &o).unwrap();
    assert_eq!(done.demoted, vec!["0.1.0"]);
    assert_eq!(
        linux_names(&f.system),
        vec!["rayos-0.0.9+3.efi", "rayos-0.1.0+0.efi"]
    );
    assert_eq!(done.next_default.as_deref(), Some("rayos-0.0.9+3.efi"));
    // Once 0.0.9 runs, PID 1 reports the demoted 0.1.0 with the reason.
    let found = rayos_update::rollback::detect(&f.system, "0.0.9", None).unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].reason.contains("downgrade"), "{:?}", found[0]);
}

/// Unmounts the tmpfs on drop.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `size` mounted at `<dir>/system`, unmounted when the guard
/// is dropped.
fn small_system_partition(dir: &Path, size: &str) -> (PathBuf, Mounted) {
    let mnt = dir.join("system");
    fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size}"))
        .arg("tmpfs")
        .arg(&mnt)
        .status()
        .expect("cannot run mount(8): this test needs util-linux and root (CI runs as root)");
    assert!(
        st.success(),
        "mounting a tmpfs failed: this test needs root (CI runs as root)"
    );
    (mnt.clone(), Mounted(mnt))
}

#[test]
fn full_partition_is_reported_before_writing() {
    // A 4 MiB tmpfs holds the 1 MiB running UKI but not a 3 MiB new one.
    let d = tempfile::tempdir().unwrap();
    let (mnt, _guard) = small_system_partition(d.path(), "4m");
    let f = system(Some(&mnt));
    let filler = noise(1 << 20, 5);
    fs::write(mnt.join("filler"), &filler).unwrap();
    let b = build_bundle(d.path(), "0.2.0", bundle::ARCH, Some(&key()), false);
    let e = refused(&f, &b.path, &opts());
    match e {
        ApplyError::NoSpace { need, free, .. } => {
            assert!(need > 3 << 20 && free < need, "need {need} free {free}")
        }
        other => panic!("expected NoSpace, got {other}"),
    }
    assert!(e_message_mentions_recovery(&b.path, &f));
}

#[test]
fn a_partition_with_room_only_after_pruning_checks_hashes_before_pruning() {
    // 8 MiB: the running 0.1.0 (1 MiB), the previous good 0.0.5 and the
    // prunable 3 MiB 0.0.4 leave less than the new 3 MiB UKI + 1 MiB
    // margin; once 0.0.4 is gone it fits.
    let d = tempfile::tempdir().unwrap();
    let (mnt, _guard) = small_system_partition(d.path(), "8m");
    let f = system(Some(&mnt));
    add_prunable(&mnt);
    let b = build_bundle(d.path(), "0.2.0", bundle::ARCH, Some(&key()), false);
    let free = rayos_update::apply::free_bytes(&mnt).unwrap();
    assert!(
        free < (4 << 20) && free + (3 << 20) >= 4 << 20,
        "the fixture must fit only after pruning: {free} bytes free"
    );
    // A bad payload is found before anything is pruned.
    let e = refused(&f, &tampered(&b, 0, "bad.bundle"), &opts());
    assert!(
        matches!(e, ApplyError::Bundle(BundleError::PayloadHash { .. })),
        "{e}"
    );
    let done = apply(&b.path, &f.system, &opts()).unwrap();
    assert!(done.pruned.contains(&"rayos-0.0.4.efi".to_string()));
    assert_eq!(
        fs::read(mnt.join(LINUX_DIR).join("rayos-0.2.0+3.efi")).unwrap(),
        b.uki
    );
}

fn e_message_mentions_recovery(bundle: &Path, f: &Fixture) -> bool {
    apply(bundle, &f.system, &opts())
        .unwrap_err()
        .to_string()
        .contains("recovery mode")
}

/// The child half of the power-cut test: apply with the hook set by the
/// parent (does nothing in a normal test run).
#[test]
fn child_apply() {
    let (Ok(bundle), Ok(system)) = (
        std::env::var(CHILD_ENV),
        std::env::var("RAYOS_UPDATE_TEST_SYSTEM"),
    ) else {
        return;
    };
    let _ = apply(Path::new(&bundle), Path::new(&system), &opts());
    // Reached only when the hook did not fire.
    std::process::exit(3);
}

#[test]
fn power_cut_at_every_step_leaves_the_running_version_bootable() {
    let exe = std::env::current_exe().unwrap();
    for step in rayos_update::apply::STEPS {
        let f = system(None);
        let b = build_bundle(f.dir.path(), "0.2.0", bundle::ARCH, Some(&key()), true);
        let out = Command::new(&exe)
            .args(["--exact", "child_apply", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &b.path)
            .env("RAYOS_UPDATE_TEST_SYSTEM", &f.system)
            .env(rayos_update::apply::FAIL_AFTER_ENV, step)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "step {step}: the child must abort there: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The running version is intact and still bootable.
        let linux = f.system.join(LINUX_DIR);
        assert_eq!(
            fs::read(linux.join("rayos-0.1.0.efi")).unwrap(),
            f.running_uki,
            "step {step}"
        );
        let list = entries::list(&linux).unwrap();
        let def = entries::default_entry(&list, entries::DEFAULT_PATTERN).unwrap();
        // Whatever systemd-boot would boot is complete: the old UKI, or the
        // new one with every byte.
        let bytes = fs::read(linux.join(&def.file)).unwrap();
        assert!(
            bytes == f.running_uki || bytes == b.uki,
            "step {step}: default {} is incomplete",
            def.file
        );
        for e in &list {
            let b2 = fs::read(linux.join(&e.file)).unwrap();
            assert!(
                b2 == f.running_uki || b2 == b.uki,
                "step {step}: {} incomplete",
                e.file
            );
        }
        // Running apply again finishes the job.
        let done = apply(&b.path, &f.system, &opts()).unwrap();
        assert_eq!(
            linux_names(&f.system),
            vec!["rayos-0.1.0.efi", "rayos-0.2.0+3.efi"],
            "step {step}"
        );
        assert_eq!(fs::read(linux.join(&done.file)).unwrap(), b.uki);
        assert!(
            !fs::read_dir(f.system.join("rayos"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")),
            "step {step}: temporaries cleaned up"
        );
    }
}

/// std::process::abort raises SIGABRT (6 on Linux).
const SIGABRT: i32 = 6;

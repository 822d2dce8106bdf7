//! The answer-file planner end to end: answer-file bytes → `Answers::parse`
//! → `make_plan` on four made-up disks (Windows at 512-byte sectors, blank
//! at 4096, a complete RayOS install with its manifest, a small Linux disk)
//! → `validate`, `render` and a JSON round trip of every plan it accepts.
//! Sizes, partition references and consent all come from the input, so the
//! planner's arithmetic sees every value an answer file can hold; nothing
//! may panic (overflow checks are on in `cargo xtask fuzz`).
//!
//! Mutation: byte-level mutation mostly breaks the TOML, and the coverage it
//! finds is the parser's refusals; a number of the right size (a size near
//! 2^64 bytes) is almost never produced. So half of the mutations are
//! value-level ([`mutate_values`]): the file is read as TOML, one to three
//! values are replaced by values of the same kind (sizes across the whole
//! u64 range in every unit, partition numbers and paths, modes, booleans)
//! and it is written back. The other half are libFuzzer's own.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::{fuzz_mutator, fuzz_target};
use rayos_disk::{Disk, DiskKind, Filesystem, Table, types};
use rayos_install::answers::{Answers, GIB, MIB, parse_size};
use rayos_install::plan::{self, Facts, Plan, PlanOptions};
use rayos_install::sample::{FakePartition, fake_disk, sample_disk};

/// The disks every accepted answer file is planned on, with their facts.
static DISKS: LazyLock<Vec<(Disk, Facts)>> = LazyLock::new(|| {
    let mut blank = fake_disk("/tmp/blank.img", 32 * GIB, 4096, DiskKind::ImageFile, &[]);
    blank.table = Table::None;
    let installed = fake_disk(
        "/dev/vda",
        16 * GIB,
        512,
        DiskKind::BlockDevice,
        &[
            FakePartition::at(1, MIB, GIB, 512, types::ESP, plan::NAME_ESP)
                .fs(Filesystem::Fat32, Some("EFI")),
            FakePartition::at(
                2,
                MIB + GIB,
                2 * GIB,
                512,
                types::XBOOTLDR,
                plan::NAME_SYSTEM,
            )
            .fs(Filesystem::Fat32, Some(plan::FAT_LABEL_SYSTEM)),
            FakePartition::at(
                3,
                MIB + 3 * GIB,
                12 * GIB,
                512,
                types::RAYOS_DATA,
                plan::NAME_DATA,
            )
            .fs(Filesystem::Ext4, Some(plan::NAME_DATA)),
        ],
    );
    let installed_facts = Facts {
        manifest: Some("RayOS 0.1.0".into()),
        ..Facts::default()
    };
    let linux = fake_disk(
        "/dev/nvme0n1",
        8 * GIB,
        512,
        DiskKind::BlockDevice,
        &[
            FakePartition::at(1, MIB, 512 * MIB, 512, types::ESP, "EFI")
                .fs(Filesystem::Fat32, None),
            FakePartition::at(2, 513 * MIB, 4 * GIB, 512, types::LINUX_FS, "root")
                .fs(Filesystem::Ext4, Some("debian")),
            FakePartition::at(3, 513 * MIB + 4 * GIB, GIB, 512, types::LINUX_SWAP, "swap"),
        ],
    );
    vec![
        (sample_disk(), Facts::default()),
        (blank, Facts::default()),
        (installed, installed_facts),
        (linux, Facts::default()),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(answers) = Answers::parse("fuzz.toml", text) else {
        return;
    };
    let opts = PlanOptions::default();
    for (disk, facts) in DISKS.iter() {
        let Ok(p) = plan::make_plan(disk, &answers, facts, &opts) else {
            continue;
        };
        if let Err(e) = plan::validate(&p) {
            panic!("make_plan returned a plan that fails validation: {e}");
        }
        assert!(!plan::render(&p).is_empty());
        let back: Plan = serde_json::from_str(&p.to_json()).expect("plan JSON does not parse");
        assert_eq!(back, p);
    }
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut rng = Rng(u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    if rng.below(2) == 0 {
        let text = std::str::from_utf8(&data[..size])
            .ok()
            .and_then(|t| mutate_values(t, &mut rng));
        if let Some(t) = text.filter(|t| t.len() <= max_size) {
            data[..t.len()].copy_from_slice(t.as_bytes());
            return t.len();
        }
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max_size)
});

/// xorshift64*: the mutation must follow from libFuzzer's seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Replaces one to three values of a TOML document; `None` when `text` is
/// not TOML or holds no values.
fn mutate_values(text: &str, rng: &mut Rng) -> Option<String> {
    let mut doc = toml::Value::Table(text.parse::<toml::Table>().ok()?);
    let n = leaves(&doc);
    if n == 0 {
        return None;
    }
    for _ in 0..=rng.below(3) {
        let mut k = rng.below(n);
        replace_leaf(&mut doc, &mut k, rng);
    }
    toml::to_string(doc.as_table()?).ok()
}

fn leaves(v: &toml::Value) -> usize {
    match v {
        toml::Value::Table(t) => t.values().map(leaves).sum(),
        toml::Value::Array(a) => a.iter().map(leaves).sum(),
        _ => 1,
    }
}

/// Replaces the `k`-th leaf (depth first); true once done.
fn replace_leaf(v: &mut toml::Value, k: &mut usize, rng: &mut Rng) -> bool {
    match v {
        toml::Value::Table(t) => t.iter_mut().any(|(_, c)| replace_leaf(c, k, rng)),
        toml::Value::Array(a) => a.iter_mut().any(|c| replace_leaf(c, k, rng)),
        leaf if *k == 0 => {
            *leaf = new_value(leaf, rng);
            true
        }
        _ => {
            *k -= 1;
            false
        }
    }
}

/// Words and paths the answer file uses (modes, "rest"/"data", partitions
/// of the made-up disks, finish actions, networking).
const WORDS: &[&str] = &[
    "whole-disk",
    "free-space",
    "reuse",
    "rest",
    "data",
    "reboot",
    "poweroff",
    "off",
    "on",
    "provisioning_only",
    "/dev/sample",
    "/dev/sample1",
    "/dev/sample3",
    "/dev/vda2",
    "/dev/vda3",
    "/dev/nvme0n1p2",
    "/dev/nvme0n1p3",
    "/tmp/blank.img1",
];

fn new_value(old: &toml::Value, rng: &mut Rng) -> toml::Value {
    use toml::Value;
    match old {
        Value::String(s) if parse_size(s).is_ok() || rng.below(4) == 0 => Value::String(size(rng)),
        Value::String(_) => Value::String(WORDS[rng.below(WORDS.len())].into()),
        Value::Integer(_) => Value::Integer(match rng.below(3) {
            0 => rng.below(131) as i64,
            1 => i64::MAX - rng.below(1 << 20) as i64,
            _ => (rng.next() >> 1) as i64,
        }),
        Value::Boolean(b) => Value::Boolean(!b),
        other => other.clone(),
    }
}

/// A size string the parser accepts: small, near half or all of the u64
/// range, or anywhere, in a random unit, sometimes with a fraction.
fn size(rng: &mut Rng) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("", 1),
        ("B", 1),
        ("K", 1 << 10),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("G", 1 << 30),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("MB", 1_000_000),
        ("TB", 1_000_000_000_000),
    ];
    let (unit, mult) = UNITS[rng.below(UNITS.len())];
    let max = u64::MAX / mult;
    let n = match rng.below(4) {
        0 => 1 + rng.below(4096) as u64,
        1 => max - (rng.next() % (1 << 20)).min(max - 1),
        2 => max / 2 + rng.next() % (1 << 20),
        _ => 1 + rng.next() % max,
    };
    let frac = match rng.below(4) {
        0 => format!(".{}", rng.below(1000)),
        _ => String::new(),
    };
    format!("{n}{frac}{unit}")
}

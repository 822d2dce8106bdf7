//! Kernel module loading without udev or kmod: coldplug by modalias.
//!
//! Protocol (what `modprobe` does, reduced to what RayOS needs):
//! 1. read `/lib/modules/$(uname -r)/modules.dep` (module paths and their
//!    dependencies), `modules.alias` (glob pattern → module name),
//!    `modules.softdep` (`pre:` modules) and `modules.builtin`;
//! 2. collect the `modalias` files under `/sys/devices`, match each against
//!    the alias patterns (`*`, `?`, `[…]` globs, like fnmatch);
//! 3. load every matched module after its dependencies (depth first) with
//!    `finit_module(2)`; `EEXIST` means already loaded;
//! 4. repeat, because loading a bus driver (virtio_pci, ahci, xhci) creates
//!    new devices with new modaliases; stop when a pass finds nothing new;
//! 5. then the modules held back ([`Loader::hold`]: on the installed system
//!    `ahci` and the wired Ethernet drivers), after their dependencies, with
//!    the kernel's `async_probe` parameter, so their slow probing (empty
//!    SATA ports, NIC resets) goes on beside the rest of the boot.
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the
//! kernel with `MODULE_INIT_COMPRESSED_FILE`, which works when the kernel
//! was built with `CONFIG_MODULE_DECOMPRESS`; Debian 12's kernel ships plain
//! `.ko` files, so the common path needs no decompressor at all.
//!
//! Limits: no module options but `async_probe`, no blacklist, no
//! `install`/`remove` commands;
//! no hotplug: a device that appears after the boot's `modules` step gets a
//! driver only if its module is already loaded (docs/init.md, Limits).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CStr;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Why kernel modules could not be read or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A file of the module index could not be read.
    #[error("cannot read the module index {path}")]
    ReadIndex {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `modules.dep` has a dependency loop; holds the module where it was
    /// found.
    #[error("module dependency loop at {0}")]
    DependencyLoop(String),
    /// A module file could not be read or handed to the kernel.
    #[error("cannot load kernel module {path}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Module names compare with `-` and `_` equal; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Aliases compare like names (`crypto-crc32c` is `crypto_crc32c`), except
/// inside `[...]` classes of a pattern, as kmod does.
pub fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The module tree of one kernel, parsed.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    root: PathBuf,
    /// name → (path relative to root, dependency names)
    deps: HashMap<String, (String, Vec<String>)>,
    /// (pattern, module name), in file order
    aliases: Vec<(String, String)>,
    softdeps: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

fn name_of_path(p: &str) -> String {
    let base = p.rsplit('/').next().unwrap_or(p);
    let stem = base.split(".ko").next().unwrap_or(base);
    normalize(stem)
}

impl ModuleIndex {
    /// The running kernel's release and its index
    /// (`/lib/modules/$(uname -r)`).
    pub fn running() -> Result<(String, ModuleIndex), ModulesError> {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let index = ModuleIndex::load(&Path::new("/lib/modules").join(&release))?;
        Ok((release, index))
    }

    /// Reads the index under `root` (`/lib/modules/<release>`).
    pub fn load(root: &Path) -> Result<ModuleIndex, ModulesError> {
        let read = |name: &str, required: bool| -> Result<String, ModulesError> {
            let path = root.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(ModulesError::ReadIndex { path, source }),
            }
        };
        let mut idx = ModuleIndex::parse(
            &read("modules.dep", true)?,
            &read("modules.alias", false)?,
            &read("modules.softdep", false)?,
            &read("modules.builtin", false)?,
        );
        idx.root = root.to_path_buf();
        Ok(idx)
    }

    /// Builds an index from the texts of the four files.
    pub fn parse(dep: &str, alias: &str, softdep: &str, builtin: &str) -> ModuleIndex {
        let mut idx = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let d = rest.split_whitespace().map(name_of_path).collect();
            idx.deps.insert(name_of_path(path), (path.to_string(), d));
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pat), Some(m)) = (w.next(), w.next(), w.next()) {
                idx.aliases.push((normalize_alias(pat), normalize(m)));
            }
        }
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(m) = w.next() else { continue };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for t in w {
                match t {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    t if in_pre => pre.push(normalize(t)),
                    _ => {}
                }
            }
            idx.softdeps.entry(normalize(m)).or_default().extend(pre);
        }
        for line in builtin.lines() {
            let line = line.trim();
            if !line.is_empty() {
                idx.builtin.insert(name_of_path(line));
            }
        }
        idx
    }

    /// Whether module `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Whether module `name` is a loadable module of this kernel.
    pub fn has_module(&self, name: &str) -> bool {
        self.deps.contains_key(&normalize(name))
    }

    /// Module names whose alias pattern matches `modalias` (all of them,
    /// like `modprobe` does), or `modalias` itself when it names a module.
    pub fn resolve(&self, modalias: &str) -> Vec<String> {
        let n = normalize(modalias);
        if self.deps.contains_key(&n) || self.builtin.contains(&n) {
            return vec![n];
        }
        let mut out: Vec<String> = Vec::new();
        let wanted = normalize_alias(modalias);
        for (pat, m) in &self.aliases {
            if glob_match(pat.as_bytes(), wanted.as_bytes()) && !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    /// The modules to load for `name`, dependencies (and `pre:` soft
    /// dependencies) first, each once; built-in ones left out. `name` must
    /// be a module name, not an alias.
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, ModulesError> {
        let mut order = Vec::new();
        let mut visiting = Vec::new();
        self.visit(&normalize(name), &mut order, &mut visiting)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<String>,
        visiting: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        if order.iter().any(|o| o == name) || self.builtin.contains(name) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            return Err(ModulesError::DependencyLoop(name.to_string()));
        }
        let Some((_, deps)) = self.deps.get(name) else {
            return Ok(()); // not in this kernel's tree: nothing to load
        };
        visiting.push(name.to_string());
        if let Some(pre) = self.softdeps.get(name) {
            for p in pre {
                // A soft dependency may be an alias (`crc32c`); a missing
                // one is not an error, as with modprobe.
                for m in self.resolve(p) {
                    if m != name {
                        self.visit(&m, order, visiting)?;
                    }
                }
            }
        }
        for d in deps {
            self.visit(d, order, visiting)?;
        }
        visiting.pop();
        order.push(name.to_string());
        Ok(())
    }

    /// Module `name`'s file relative to the tree's root
    /// (`kernel/drivers/...`), if it is a loadable module.
    pub fn rel_path(&self, name: &str) -> Option<&str> {
        self.deps.get(&normalize(name)).map(|(p, _)| p.as_str())
    }

    /// The path of module `name`'s file, if it is a loadable module.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        self.deps
            .get(&normalize(name))
            .map(|(p, _)| self.root.join(p))
    }
}

/// Shell-style glob match as fnmatch(3) without flags: `*`, `?`, `[abc]`,
/// `[a-z]`, `[!x]`/`[^x]`.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`: linear enough for
    // the short modalias strings and immune to pathological patterns.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pat[p..], s[i]) {
                        if matched {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at the start of `pat`;
/// returns (matched, length of the expression) or `None` if unterminated.
fn class_match(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() {
        let a = pat[j];
        if a == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        if pat.get(j + 1) == Some(&b'-') && pat.get(j + 2).is_some_and(|&b| b != b']') {
            let b = pat[j + 2];
            if a <= c && c <= b {
                matched = true;
            }
            j += 3;
        } else {
            if a == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

/// Every `modalias` under `sysfs_devices` (non-empty, deduplicated, sorted).
pub fn collect_modaliases(sysfs_devices: &Path) -> Vec<String> {
    let mut out = HashSet::new();
    let mut stack = vec![sysfs_devices.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            // sysfs is full of symlinks back up the tree: follow none.
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && e.file_name() == "modalias"
                && let Ok(s) = fs::read_to_string(e.path())
            {
                let s = s.trim();
                if !s.is_empty() {
                    out.insert(s.to_string());
                }
            }
        }
    }
    let mut v: Vec<String> = out.into_iter().collect();
    v.sort();
    v
}

/// What happened to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadResult {
    /// The kernel took it.
    Loaded,
    /// It was loaded already.
    AlreadyLoaded,
    /// The kernel refused it (no such device, wrong CPU vendor…); harmless
    /// for modalias matches, which overshoot.
    Refused(String),
}

/// Where one module stands while a [`Loader`] works.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// A thread is loading it; others needing it wait.
    Loading,
    Done(LoadResult),
}

/// Hands one module file to the kernel, with its parameters.
pub type Insert = dyn Fn(&Path, &CStr) -> LoadResult + Sync;

/// Loads modules into the running kernel, remembering what it did. Shared
/// by threads: each module is loaded once, by whichever thread gets to it
/// first, and a thread that needs a module another thread is loading waits
/// for it (a module links against its dependencies, so they must be live).
pub struct Loader<'a> {
    /// The kernel's modules.
    pub index: &'a ModuleIndex,
    state: Mutex<HashMap<String, Slot>>,
    changed: Condvar,
    insert: Box<Insert>,
    /// Modules [`Loader::load`] holds back for [`Loader::load_held`]: names,
    /// and directories of the tree (ending in `/`) for every module in them.
    held: Vec<String>,
    /// Those of them something asked for.
    asked: Mutex<BTreeSet<String>>,
}

const MODULE_INIT_COMPRESSED_FILE: libc::c_int = 4;

impl<'a> Loader<'a> {
    /// A loader that calls `finit_module(2)`.
    pub fn new(index: &'a ModuleIndex) -> Self {
        Loader::with_insert(index, Box::new(finit))
    }

    /// A loader that hands module files to `insert` (tests).
    pub fn with_insert(index: &'a ModuleIndex, insert: Box<Insert>) -> Self {
        Loader {
            index,
            state: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            insert,
            held: Vec::new(),
            asked: Mutex::new(BTreeSet::new()),
        }
    }

    /// Holds modules back: [`Loader::load`] notes that something asked for
    /// them and loads neither them nor their dependencies;
    /// [`Loader::load_held`] loads them last, probing in the background.
    /// `what` names modules, or directories of the module tree with a
    /// trailing `/` (`kernel/drivers/net/ethernet/`: every module in it).
    pub fn hold(mut self, what: &[&str]) -> Self {
        self.held = what
            .iter()
            .map(|w| {
                if w.ends_with('/') {
                    w.to_string()
                } else {
                    normalize(w)
                }
            })
            .collect();
        self
    }

    /// Whether [`Loader::hold`] holds module `m` back.
    pub fn is_held(&self, m: &str) -> bool {
        self.held.iter().any(|h| {
            if h.ends_with('/') {
                self.index
                    .rel_path(m)
                    .is_some_and(|p| p.starts_with(h.as_str()))
            } else {
                h == m
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panicking loader thread leaves a usable map behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What happened to every module tried so far.
    pub fn results(&self) -> HashMap<String, LoadResult> {
        self.lock()
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Done(r) => Some((n.clone(), r.clone())),
                Slot::Loading => None,
            })
            .collect()
    }

    /// The modules the kernel refused, with its error, sorted by name.
    pub fn refused(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .results()
            .into_iter()
            .filter_map(|(n, r)| match r {
                LoadResult::Refused(why) => Some((n, why)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// Loads `name` (module or alias) and its dependencies. Returns the
    /// modules newly loaded by this call.
    pub fn load(&self, name: &str) -> Vec<String> {
        let mut newly = Vec::new();
        for m in self.index.resolve(name) {
            if self.is_held(&m) {
                self.asked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(m);
                continue;
            }
            let order = match self.index.load_order(&m) {
                Ok(o) => o,
                Err(e) => {
                    crate::log::warn(format!("module {m}: {e}"));
                    continue;
                }
            };
            for dep in order {
                if let Some(r) = self.claim(&dep) {
                    if r == LoadResult::Loaded {
                        newly.push(dep);
                    } else if let LoadResult::Refused(why) = &r {
                        crate::log::detail(format!("module {dep} not loaded: {why}"));
                    }
                }
            }
        }
        newly
    }

    /// Loads the held modules something asked for: first every dependency
    /// of theirs that is not held itself, then them, in dependency order,
    /// each with the kernel's `async_probe` parameter: such a load returns
    /// before the driver has probed its devices, which appear while the
    /// boot goes on. The kernel makes any load of a module without
    /// `async_probe` wait for all such probing, hence this order, and this
    /// must come after every other load of the boot's coldplug. Returns the
    /// modules newly loaded.
    pub fn load_held(&self) -> Vec<String> {
        let asked = std::mem::take(&mut *self.asked.lock().unwrap_or_else(|p| p.into_inner()));
        let mut orders = Vec::new();
        for m in asked {
            match self.index.load_order(&m) {
                Ok(o) => orders.push(o),
                Err(e) => crate::log::warn(format!("module {m}: {e}")),
            }
        }
        let mut newly = Vec::new();
        for held in [false, true] {
            for dep in orders.iter().flatten() {
                if self.is_held(dep) != held {
                    continue;
                }
                let params = if held { c"async_probe" } else { c"" };
                match self.claim_with(dep, params) {
                    Some(LoadResult::Loaded) => newly.push(dep.clone()),
                    Some(LoadResult::Refused(why)) => {
                        crate::log::detail(format!("module {dep} not loaded: {why}"))
                    }
                    _ => {}
                }
            }
        }
        newly
    }

    /// Loads `name` unless it was tried or another thread is at it (then
    /// waits until it is done). Returns what this call did, if anything.
    fn claim(&self, name: &str) -> Option<LoadResult> {
        self.claim_with(name, c"")
    }

    /// [`Loader::claim`] with module parameters.
    fn claim_with(&self, name: &str, params: &CStr) -> Option<LoadResult> {
        let mut state = self.lock();
        loop {
            match state.get(name) {
                Some(Slot::Done(_)) => return None,
                Some(Slot::Loading) => {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                None => break,
            }
        }
        state.insert(name.to_string(), Slot::Loading);
        drop(state);
        let r = match self.index.path_of(name) {
            Some(path) => (self.insert)(&path, params),
            None => LoadResult::Refused("not in modules.dep".into()),
        };
        self.lock().insert(name.to_string(), Slot::Done(r.clone()));
        self.changed.notify_all();
        Some(r)
    }

    /// Loads every one of `names` (modules or aliases) on up to `threads`
    /// threads. Returns, per name that loaded anything, what it loaded.
    pub fn load_all(&self, names: &[String], threads: usize) -> Vec<(String, Vec<String>)> {
        let next = AtomicUsize::new(0);
        let out = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, names.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else { break };
                        let n = self.load(name);
                        if !n.is_empty() {
                            out.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((name.clone(), n));
                        }
                    }
                });
            }
        });
        out.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// `finit_module(2)` of one file; `EEXIST` means already loaded.
fn finit(path: &Path, params: &CStr) -> LoadResult {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return LoadResult::Refused(format!("{}: {e}", path.display())),
    };
    let compressed = path
        .extension()
        .is_some_and(|e| e == "xz" || e == "zst" || e == "gz");
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match rustix::system::finit_module(&file, params, flags) {
        Ok(()) => LoadResult::Loaded,
        Err(rustix::io::Errno::EXIST) => LoadResult::AlreadyLoaded,
        Err(e) => LoadResult::Refused(e.to_string()),
    }
}

/// The kernel's module requests (`request_module`: `fs-vfat`,
/// `crypto-crc32c`, `net-pf-10`, ...). PID 1 points
/// `/proc/sys/kernel/modprobe` at a link named `modprobe` to the `rayos`
/// binary; the kernel runs it as `modprobe -q -- NAME`. Returns the exit
/// status: 0 when something matching was loaded or already there.
pub fn kernel_modprobe(args: &[String]) -> i32 {
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if names.is_empty() {
        return 1;
    }
    let Ok((_, index)) = ModuleIndex::running() else {
        return 1;
    };
    let loader = Loader::new(&index);
    let mut ok = true;
    for n in names {
        if index.resolve(n).is_empty() {
            ok = false;
            continue;
        }
        loader.load(n);
    }
    if ok && loader.refused().is_empty() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio-ring.ko
kernel/drivers/virtio/virtio-ring.ko:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko
kernel/drivers/ptp/ptp.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias fs-ext4 ext4
alias crc32c crc32c_generic
alias crypto-crc32c crc32c_generic
alias virtio:d00000002v* virtio_blk
alias pci:v00008086d*sv*sd*bc01sc06i01* ahci
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias acpi*:LNXPWRBN:* button
alias dmi*:svn[Ll][Ee][Nn]OVO*:* thinkpad_acpi
";
    // As depmod writes it for Debian 12's ext4: the alias, with a dash.
    const SOFTDEP: &str = "softdep ext4 pre: crypto-crc32c post: zzz\n";
    const BUILTIN: &str = "kernel/drivers/ata/ahci.ko\n";

    fn idx() -> ModuleIndex {
        ModuleIndex::parse(DEP, ALIAS, SOFTDEP, BUILTIN)
    }

    /// The CPU's modalias (`/sys/devices/system/cpu/modalias`) brings the
    /// KVM module for its vendor's flag, as in Debian 12's modules.alias:
    /// feature 0x85 is VMX, 0xC2 is SVM.
    #[test]
    fn cpu_modalias_selects_the_kvm_module() {
        let index = ModuleIndex::parse(
            "kernel/arch/x86/kvm/kvm.ko:\n\
             kernel/arch/x86/kvm/kvm-intel.ko: kernel/arch/x86/kvm/kvm.ko\n\
             kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko\n",
            "alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_intel\n\
             alias cpu:type:x86,ven*fam*mod*:feature:*00C2* kvm_amd\n",
            "",
            "",
        );
        let intel = "cpu:type:x86,ven0000fam0006mod008C:feature:,0000,0001,0085,0089,00C0";
        assert_eq!(index.resolve(intel), vec!["kvm_intel"]);
        assert_eq!(
            index.load_order("kvm_intel").unwrap(),
            vec!["kvm", "kvm_intel"]
        );
        let amd = "cpu:type:x86,ven0002fam0019mod0021:feature:,0000,0001,00C0,00C2,00C3";
        assert_eq!(index.resolve(amd), vec!["kvm_amd"]);
        // No VT-x/AMD-V (switched off in the firmware): nothing to load.
        let off = "cpu:type:x86,ven0000fam0006mod008C:feature:,0000,0001,0089,00C0,00C3";
        assert!(index.resolve(off).is_empty());
    }

    /// Many threads over requests that share dependencies: every module
    /// is handed to the kernel once, only after all of its dependencies
    /// finished loading, and refusals are remembered with their error.
    #[test]
    fn parallel_loading_keeps_dependency_order_and_loads_once() {
        use std::time::Duration;
        let index = idx();
        // (module, started) and (module, finished) events, in order.
        let events = std::sync::Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
        let ev = std::sync::Arc::clone(&events);
        let loader = Loader::with_insert(
            &index,
            Box::new(move |path: &Path, _: &CStr| {
                let name = name_of_path(&path.to_string_lossy());
                ev.lock().unwrap().push((name.clone(), true));
                // Slow enough that the threads overlap.
                std::thread::sleep(Duration::from_millis(20));
                ev.lock().unwrap().push((name.clone(), false));
                if name == "virtio_ring" {
                    LoadResult::Refused("No such device (os error 19)".into())
                } else {
                    LoadResult::Loaded
                }
            }),
        );
        let names: Vec<String> = ["ext4", "fs-ext4", "jbd2", "crc32c", "mbcache", "ext4"]
            .iter()
            .chain(["virtio:d00000002v00001AF4", "nothing:here"].iter())
            .map(|s| s.to_string())
            .collect();
        let loaded = loader.load_all(&names, 4);
        let events = events.lock().unwrap().clone();
        let started: Vec<&String> = events.iter().filter(|e| e.1).map(|e| &e.0).collect();
        let mut once = started.clone();
        once.sort();
        once.dedup();
        assert_eq!(
            once.len(),
            started.len(),
            "a module loaded twice: {started:?}"
        );
        for m in ["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"] {
            assert!(started.iter().any(|s| *s == m), "{m} not loaded");
        }
        let at = |name: &str, start: bool| {
            events
                .iter()
                .position(|e| e.0 == name && e.1 == start)
                .unwrap()
        };
        for dep in ["crc32c_generic", "crc16", "mbcache", "jbd2"] {
            assert!(at(dep, false) < at("ext4", true), "{dep} after ext4");
        }
        // virtio_blk was still tried after its dependency was refused (the
        // kernel decides), and the refusal is reported with its error.
        assert_eq!(
            loader.refused(),
            vec![(
                "virtio_ring".to_string(),
                "No such device (os error 19)".to_string()
            )]
        );
        let total: usize = loaded.iter().map(|(_, n)| n.len()).sum();
        assert_eq!(total, started.len() - 1, "{loaded:?}");
        // Loading again does nothing.
        assert!(loader.load_all(&names, 4).is_empty());
    }

    /// A held module (by name, or by its directory in the tree) is only
    /// noted while the passes load; `load_held` loads the held modules
    /// last, after all of their dependencies, with `async_probe`.
    #[test]
    fn held_modules_load_last_with_async_probe() {
        let index = idx();
        let calls = std::sync::Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let c = std::sync::Arc::clone(&calls);
        let loader = Loader::with_insert(
            &index,
            Box::new(move |path: &Path, params: &CStr| {
                let name = name_of_path(&path.to_string_lossy());
                let params = params.to_string_lossy().into_owned();
                c.lock().unwrap().push((name, params));
                LoadResult::Loaded
            }),
        )
        .hold(&["virtio-blk", "kernel/drivers/net/ethernet/"]);
        let names: Vec<String> = [
            "virtio:d00000002v00001AF4",
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
            "fs-ext4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        loader.load_all(&names, 2);
        let loaded: Vec<String> = calls.lock().unwrap().iter().map(|c| c.0.clone()).collect();
        assert!(loaded.contains(&"ext4".to_string()), "{loaded:?}");
        assert!(
            !loaded
                .iter()
                .any(|m| m.starts_with("virtio") || m == "e1000e" || m == "ptp"),
            "held, or a held module's dependency, loaded early: {loaded:?}"
        );
        calls.lock().unwrap().clear();
        // Every dependency before any held module: loading a module
        // without `async_probe` would wait for the probing already begun.
        assert_eq!(
            loader.load_held(),
            vec!["ptp", "virtio_ring", "e1000e", "virtio_blk"]
        );
        let with = |m: &str, p: &str| (m.to_string(), p.to_string());
        assert_eq!(
            *calls.lock().unwrap(),
            vec![
                with("ptp", ""),
                with("virtio_ring", ""),
                with("e1000e", "async_probe"),
                with("virtio_blk", "async_probe"),
            ]
        );
        // Nothing asked for twice, nothing loaded twice.
        assert!(loader.load_held().is_empty());
    }

    #[test]
    fn dependencies_and_softdeps_load_first_once() {
        let order = idx().load_order("ext4").unwrap();
        assert_eq!(
            order,
            vec!["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"]
        );
    }

    #[test]
    fn names_are_normalized_and_compressed_paths_parsed() {
        let i = idx();
        assert_eq!(
            i.load_order("virtio-blk").unwrap(),
            vec!["virtio_ring", "virtio_blk"]
        );
        assert!(
            i.path_of("virtio_blk")
                .unwrap()
                .ends_with("virtio_blk.ko.xz")
        );
    }

    #[test]
    fn modalias_resolution_and_builtins() {
        let i = idx();
        assert_eq!(i.resolve("virtio:d00000002v00001AF4"), vec!["virtio_blk"]);
        assert_eq!(i.resolve("acpi:LNXPWRBN:"), vec!["button"]);
        assert_eq!(i.resolve("fs-ext4"), vec!["ext4"]);
        assert_eq!(i.resolve("dmi:bvnX:svnLENOVO:pn1"), vec!["thinkpad_acpi"]);
        assert!(i.resolve("dmi:bvnX:svnDell:pn1").is_empty());
        // ahci is built in: matched, but nothing to load.
        let m = i.resolve("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01");
        assert_eq!(m, vec!["ahci"]);
        assert!(i.load_order("ahci").unwrap().is_empty());
        assert!(i.resolve("usb:v1234p5678").is_empty());
        assert_eq!(i.resolve("crypto_crc32c"), vec!["crc32c_generic"]);
        assert_eq!(normalize_alias("a-b[x-z]-c"), "a_b[x-z]_c");
    }

    #[test]
    fn dependency_loop_is_an_error_not_a_hang() {
        assert!(matches!(
            idx().load_order("a"),
            Err(ModulesError::DependencyLoop(_))
        ));
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"[!x]y", b"zy"));
        assert!(!glob_match(b"[!x]y", b"xy"));
        assert!(glob_match(b"v[0-9]*", b"v7abc"));
        assert!(glob_match(b"a[", b"a["));
        assert!(glob_match(b"***a", b"a"));
    }

    #[test]
    fn index_from_directory_and_modalias_walk() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("modules.dep"), DEP).unwrap();
        fs::write(d.path().join("modules.alias"), ALIAS).unwrap();
        let i = ModuleIndex::load(d.path()).unwrap();
        assert!(i.has_module("ext4"));
        assert!(
            !i.is_builtin("ahci"),
            "no modules.builtin file: nothing built in"
        );

        let sys = d.path().join("sys");
        fs::create_dir_all(sys.join("pci0000:00/0000:00:03.0/virtio0")).unwrap();
        fs::write(
            sys.join("pci0000:00/0000:00:03.0/modalias"),
            "pci:v00001AF4d00001001\n",
        )
        .unwrap();
        fs::write(
            sys.join("pci0000:00/0000:00:03.0/virtio0/modalias"),
            "virtio:d00000002v00001AF4\n",
        )
        .unwrap();
        fs::write(sys.join("pci0000:00/modalias"), "\n").unwrap();
        assert_eq!(
            collect_modaliases(&sys),
            vec!["pci:v00001AF4d00001001", "virtio:d00000002v00001AF4"]
        );
        assert!(matches!(
            ModuleIndex::load(&d.path().join("nope")),
            Err(ModulesError::ReadIndex { .. })
        ));
    }
}

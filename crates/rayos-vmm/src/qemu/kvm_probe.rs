//! The KVM probe: does `/dev/kvm` really run a guest? Needs no kernel.
//!
//! Protocol: open `/dev/kvm`, check the API version (12, the only one
//! there has ever been) and the capabilities QEMU 7.2 refuses to start
//! without (`kvm_required_capabilites` and the x86 ones), create a VM with
//! one page of memory and one vCPU in real mode, and run `GUEST_CODE`:
//! into protected mode as firmware does, a busy loop, then
//! `out 0xe9, 0x2a; hlt`. It must exit with that port write (KVM_EXIT_IO)
//! and then halt (KVM_EXIT_HLT) within the bound. No in-kernel irqchip or
//! PIT is created, so both exits come to us.
//!
//! The guest runs on a thread of its own and the caller waits at most its
//! bound: on a host where the device exists but guests do not run at
//! hardware speed (a paravirtual KVM without VT-x/AMD-V, a nested setup
//! without VMX) the run fails at once or does not finish in time, and
//! either way the answer is `"probe failed: <what>"` in time. Past the bound
//! the vCPU thread is interrupted with a real-time signal (`KVM_RUN`
//! returns `EINTR`), so no emulated guest keeps a CPU busy afterwards.
//!
//! Limits: it proves that the CPU enters guest mode and exits cleanly,
//! not that every feature a full OS uses works; the decision
//! (`super::accel`) still honours `RAYOS_ACCEL=tcg|kvm`.
//!
//! Rejected design: booting a real kernel under QEMU (the earlier probe)
//! needs a kernel on the host, which an installed RayOS does not have.

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc;
use std::time::Duration;

use kvm_bindings::{KVM_API_VERSION, KVM_CAP_IOEVENTFD_ANY_LENGTH, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VcpuExit};

/// How long the test guest may take to reach its port write and halt.
/// With working KVM it takes well under a millisecond.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Guest physical address of the code page (and its size).
const GUEST_ADDR: u64 = 0x1000;
const GUEST_SIZE: usize = 0x1000;
/// The port and byte the guest writes.
pub const PROBE_PORT: u16 = 0xe9;
const PROBE_BYTE: u8 = 0x2a;
/// Iterations of the guest's busy loop: about 10 ms of guest time in
/// hardware guest mode; where every instruction is emulated it does not
/// finish within the bound (on the build machines' paravirtual KVM it had
/// not after 3 s).
const LOOP_ITERATIONS: u32 = 10_000_000;
const LOOP: [u8; 4] = LOOP_ITERATIONS.to_le_bytes();

/// The guest, loaded at [`GUEST_ADDR`] and entered in real mode there
/// (CS = 0), as firmware starts: load a flat GDT, set CR0.PE, far jump
/// into 32-bit protected mode, load a data segment, count
/// [`LOOP_ITERATIONS`] down, then `out 0xe9, 0x2a; hlt`. Assembled with
/// GNU as (`.code16`/`.code32`).
///
/// Why the loop: a KVM without hardware virtualization (PVM-style
/// paravirtual KVM, as on these build machines) runs this code through
/// KVM's instruction emulator. A few instructions pass there, so a guest
/// of five bytes "works", yet firmware and kernels crawl so slowly that
/// they look hung (QEMU with `-accel kvm` never gets SeaBIOS to print).
/// Ten million iterations finish in milliseconds in real guest mode and
/// miss the bound when emulated.
const GUEST_CODE: [u8; 78] = [
    0xfa, // cli
    0x66,
    0x0f,
    0x01,
    0x16,
    0x48,
    0x10, // lgdtl [0x1048]
    0x0f,
    0x20,
    0xc0, // mov eax, cr0
    0x0c,
    0x01, // or al, 1 (PE)
    0x0f,
    0x22,
    0xc0, // mov cr0, eax
    0x66,
    0xea,
    0x17,
    0x10,
    0x00,
    0x00,
    0x08,
    0x00, // ljmpl 0x08:0x1017
    // 0x1017, 32-bit code:
    0x66,
    0xb8,
    0x10,
    0x00, // mov ax, 0x10
    0x8e,
    0xd8, // mov ds, ax
    0xb9,
    LOOP[0],
    LOOP[1],
    LOOP[2],
    LOOP[3], // mov ecx, LOOP_ITERATIONS
    0x49,    // 1: dec ecx
    0x75,
    0xfd, // jnz 1b
    0xb0,
    PROBE_BYTE, // mov al, 0x2a
    0xe6,
    PROBE_PORT as u8, // out 0xe9, al
    0xf4,             // hlt
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00, // padding to 8 bytes
    // 0x1030, GDT: null, flat 4 GiB code (0x08), flat 4 GiB data (0x10)
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00,
    0x00, //
    0xff,
    0xff,
    0x00,
    0x00,
    0x00,
    0x9a,
    0xcf,
    0x00, //
    0xff,
    0xff,
    0x00,
    0x00,
    0x00,
    0x92,
    0xcf,
    0x00, //
    // 0x1048, GDT descriptor: limit 23, base 0x1030
    0x17,
    0x00,
    0x30,
    0x10,
    0x00,
    0x00,
];

/// Capabilities QEMU 7.2 checks before it accepts `-accel kvm` on x86.
const REQUIRED: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (
        Cap::DestroyMemoryRegionWorks,
        "KVM_CAP_DESTROY_MEMORY_REGION_WORKS",
    ),
    (
        Cap::JoinMemoryRegionsWorks,
        "KVM_CAP_JOIN_MEMORY_REGIONS_WORKS",
    ),
    (Cap::InternalErrorData, "KVM_CAP_INTERNAL_ERROR_DATA"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
];

/// Why the probe says KVM does not run guests here. The message completes
/// "probe failed: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// `/dev/kvm` cannot be opened; holds the error.
    #[error("cannot open /dev/kvm: {0}")]
    Open(String),
    /// The kernel's KVM API version is not the one QEMU needs; holds it.
    #[error("/dev/kvm speaks KVM API version {0}, QEMU needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// The kernel's KVM lacks a capability QEMU needs; names it.
    #[error("the kernel's KVM lacks {0}, which QEMU needs")]
    MissingCapability(&'static str),
    /// Setting up the test VM failed.
    #[error("cannot {step}: {detail}")]
    Setup {
        /// What was being done ("map the guest's memory", …).
        step: &'static str,
        /// The error.
        detail: String,
    },
    /// `KVM_RUN` failed; holds the error.
    #[error("running the test guest failed: {0}")]
    Run(String),
    /// The test guest exited for another reason than its port write; holds the
    /// exit.
    #[error("the test guest stopped with {0} instead of its port write")]
    UnexpectedExit(String),
    /// The test guest did not reach its port write in time; holds the limit.
    #[error("the test guest did not reach its port write within {0:?}")]
    Timeout(Duration),
}

/// Runs the probe on `/dev/kvm`, waiting at most `timeout` for the guest.
pub fn probe(timeout: Duration) -> Result<(), ProbeError> {
    install_kick_handler()?;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            only_the_kick_signal();
            // The receiver may be gone after a timeout; nothing to tell then.
            let _ = tx.send(run_guest());
        })
        .map_err(|e| ProbeError::Setup {
            step: "start the probe thread",
            detail: e.to_string(),
        })?;
    if let Ok(r) = rx.recv_timeout(timeout) {
        let _ = thread.join();
        return r;
    }
    // Past the bound: interrupt KVM_RUN (it returns EINTR and the thread
    // ends). A kick that lands between two runs is lost, so kick again
    // until the thread answers; a thread that never does is left behind.
    for _ in 0..KICKS {
        // SAFETY: the thread is neither joined nor detached (we hold its
        // handle), so its pthread_t is valid even if it has ended; the
        // signal's handler was installed above and does nothing.
        unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        if rx.recv_timeout(KICK_WAIT).is_ok() {
            let _ = thread.join();
            break;
        }
    }
    Err(ProbeError::Timeout(timeout))
}

/// How often and how long a vCPU past the bound is kicked.
const KICKS: u32 = 20;
const KICK_WAIT: Duration = Duration::from_millis(50);

/// The signal that interrupts the probe's `KVM_RUN` past the bound: the
/// first real-time signal the C library leaves to programs (nothing else
/// in RayOS uses real-time signals).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// A handler that does nothing, without `SA_RESTART`: the signal's only
/// effect is that `KVM_RUN` returns `EINTR` (with the default action, a
/// real-time signal would end the process).
fn install_kick_handler() -> Result<(), ProbeError> {
    // SAFETY: `sa` is zeroed then filled as sigaction(2) requires; the
    // handler is async-signal-safe (it does nothing); the old action is not
    // read. Installing it is idempotent.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(kick_signal(), &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(ProbeError::Setup {
            step: "install the probe's signal handler",
            detail: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// On the probe thread: every signal blocked but the kick, so that no
/// stray signal (a child's SIGCHLD) interrupts the guest and fails the
/// probe, and the kick gets through even where the spawning thread
/// blocked it.
fn only_the_kick_signal() {
    // SAFETY: the set is initialised by sigfillset before use and only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigdelset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn setup(step: &'static str) -> impl Fn(kvm_ioctls::Error) -> ProbeError {
    move |e| ProbeError::Setup {
        step,
        detail: e.to_string(),
    }
}

/// The probe itself, blocking (its caller bounds it).
fn run_guest() -> Result<(), ProbeError> {
    let kvm = Kvm::new().map_err(|e| ProbeError::Open(e.to_string()))?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION as i32 {
        return Err(ProbeError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED {
        if !kvm.check_extension(*cap) {
            return Err(ProbeError::MissingCapability(name));
        }
    }
    if kvm.check_extension_raw(u64::from(KVM_CAP_IOEVENTFD_ANY_LENGTH)) <= 0 {
        return Err(ProbeError::MissingCapability(
            "KVM_CAP_IOEVENTFD_ANY_LENGTH",
        ));
    }
    // Declared before the VM so that it is dropped after it.
    let mem = GuestPage::new()?;
    mem.write(&GUEST_CODE);
    let vm = kvm
        .create_vm()
        .map_err(setup("create a VM (KVM_CREATE_VM)"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: GUEST_SIZE as u64,
        userspace_addr: mem.addr(),
        flags: 0,
    };
    // SAFETY: `mem` is a private anonymous mapping of GUEST_SIZE bytes that
    // is dropped after the VM and its vCPU (declared after it), so the guest
    // never sees freed memory.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(setup("give the VM memory (KVM_SET_USER_MEMORY_REGION)"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(setup("create a vCPU"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(setup("read the vCPU's segments"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(setup("set the vCPU's segments"))?;
    let mut regs = vcpu
        .get_regs()
        .map_err(setup("read the vCPU's registers"))?;
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(setup("set the vCPU's registers"))?;

    let mut wrote = false;
    // Two exits are expected; a few more allow for spurious ones
    // (a signal interrupting KVM_RUN).
    for _ in 0..8 {
        let exit = vcpu.run().map_err(|e| ProbeError::Run(e.to_string()))?;
        match exit {
            VcpuExit::IoOut(port, data) if port == PROBE_PORT && data == [PROBE_BYTE] => {
                wrote = true
            }
            VcpuExit::Hlt if wrote => return Ok(()),
            VcpuExit::Intr => {}
            other => return Err(ProbeError::UnexpectedExit(exit_name(&other))),
        }
    }
    Err(ProbeError::UnexpectedExit("too many exits".into()))
}

/// A short name for an exit, with the hardware reason where KVM gives one.
fn exit_name(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::IoOut(port, data) => format!("a write to port {port:#x} ({data:x?})"),
        VcpuExit::IoIn(port, _) => format!("a read of port {port:#x}"),
        VcpuExit::FailEntry(reason, cpu) => {
            format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})")
        }
        VcpuExit::InternalError => "KVM_EXIT_INTERNAL_ERROR".to_string(),
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN (triple fault)".to_string(),
        VcpuExit::Hlt => "a halt before its port write".to_string(),
        other => format!("{other:?}"),
    }
}

/// One page of anonymous memory for the guest, unmapped on drop.
struct GuestPage {
    ptr: *mut libc::c_void,
}

impl GuestPage {
    fn new() -> Result<GuestPage, ProbeError> {
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing touches no existing memory; the result is
        // checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                GUEST_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::Setup {
                step: "map the guest's memory",
                detail: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(GuestPage { ptr })
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }

    fn write(&self, code: &[u8]) {
        assert!(code.len() <= GUEST_SIZE);
        // SAFETY: the mapping is GUEST_SIZE bytes, writable, and only this
        // thread uses it before the guest runs.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.ptr.cast::<u8>(), code.len()) };
    }
}

impl Drop for GuestPage {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the mapping made in `new`, GUEST_SIZE bytes,
        // unmapped once; the VM using it was dropped before (see run_guest).
        unsafe { libc::munmap(self.ptr, GUEST_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The guest's bytes are what the comments say: the far jump and the
    /// GDT descriptor point at the offsets they name.
    #[test]
    fn guest_code_layout() {
        let at = |a: u64| (a - GUEST_ADDR) as usize;
        assert_eq!(&GUEST_CODE[1..5], &[0x66, 0x0f, 0x01, 0x16]);
        let gdt_desc = u16::from_le_bytes([GUEST_CODE[5], GUEST_CODE[6]]) as u64;
        assert_eq!(at(gdt_desc), GUEST_CODE.len() - 6);
        let gdt = u32::from_le_bytes(GUEST_CODE[at(gdt_desc) + 2..][..4].try_into().unwrap());
        assert_eq!(at(u64::from(gdt)) % 8, 0);
        assert_eq!(GUEST_CODE[at(u64::from(gdt))..][..8], [0; 8]);
        let pm32 = u32::from_le_bytes(GUEST_CODE[17..21].try_into().unwrap());
        assert_eq!(&GUEST_CODE[at(u64::from(pm32))..][..2], &[0x66, 0xb8]);
        let out = GUEST_CODE
            .windows(3)
            .position(|w| w == [0xe6, PROBE_PORT as u8, 0xf4]);
        assert!(out.is_some(), "no out/hlt at the end of the guest");
    }

    /// Threads of this process named `kvm-probe`.
    fn probe_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "kvm-probe")
            })
            .count()
    }

    /// The real probe on this machine's /dev/kvm. Where the CPU shows no
    /// VT-x/AMD-V (these build machines: /dev/kvm exists but is a
    /// paravirtual KVM that emulates the guest's instructions; or no
    /// /dev/kvm at all) it must fail and say why; anywhere it must answer
    /// within its bound (plus the kicks) and leave no vCPU thread behind.
    #[test]
    fn probe_answers_within_its_bound_and_fails_without_hardware_support() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let hardware = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let bound = Duration::from_secs(2);
        let t = Instant::now();
        let r = probe(bound);
        let took = t.elapsed();
        eprintln!("probe: {r:?} after {took:?}");
        assert!(
            took < bound + KICK_WAIT * KICKS + Duration::from_millis(500),
            "{took:?}"
        );
        if !hardware {
            let err = r
                .clone()
                .expect_err("the probe passed on a CPU without VT-x/AMD-V");
            assert!(!err.to_string().is_empty());
        }
        // The timed-out vCPU was kicked out of KVM_RUN and its thread ended.
        let deadline = Instant::now() + Duration::from_secs(2);
        while probe_threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(probe_threads(), 0, "a vCPU thread was left running");
        // A second probe works the same (the handler is installed again).
        let again = probe(Duration::from_millis(200));
        assert_eq!(again.is_ok(), r.is_ok(), "{again:?}");
    }
}

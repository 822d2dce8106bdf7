//! Tiny Linux guests for VM tests: Debian's kernel plus a busybox
//! initramfs whose `/init` prints a ready marker and then a counter on the
//! serial console.
//!
//! What the guest proves: the counter (`COUNTER <n>` every 0.25 s) lives in
//! guest RAM only, so after a restore it continues above the last value
//! seen before the save, and after a cold boot it starts again at 0.
//! Optional behaviour, switched on by the kernel command line:
//! - always: the ACPI power button powers the guest off (`POWER button
//!   pressed`), so `powerdown` ends it.
//! - `rayos.agent=1`: a shell loop on the `org.qemu.guest_agent.0`
//!   virtio-serial port answers `guest-sync`, `guest-sync-delimited` and
//!   `guest-set-time` (enough for `sync_guest_time`; prints `AGENT ...`),
//!   and `guest-exec` / `guest-exec-status` with captured output (the
//!   program runs in the background; arguments must not contain spaces,
//!   quotes or commas, and `input-data` is ignored).
//! - `rayos.tty=1`: reads lines typed on the keyboard from `/dev/tty1`
//!   (the kernel's VT, with its US keymap unless `rayos.keymap=` says
//!   otherwise) and prints `TYPED <line>` on the serial console, after
//!   `TTY ready` (agent-bridge tests).
//! - `rayos.keymap=de` (or `uk`, `fr`, `es`, `it`): loads that console
//!   keymap with busybox `loadkmap` before anything reads the keyboard and
//!   prints `KEYMAP <layout>` (`KEYMAP failed` if it cannot). The keymaps
//!   are Debian's console-data ones, compiled by kbd's `loadkeys -b` when
//!   the initrd is built ([`KEYMAPS`]), the files RayOS's own consoles
//!   load (`rayos_init::keymap::LAYOUTS`).
//! - `rayos.pointer=1`: prints `POINTER ready`, then `POINTER ABS <axis>
//!   <value>` and `POINTER BTN <code> <1|0>` for every event of the
//!   virtio tablet (absolute pointer tests).
//! - `rayos.bridge=1`: an agent inside the VM: on the agent bridge's
//!   port `org.rayos.agent.0` it calls the MCP tools `list_vms` and
//!   `type_text` (into a VM named `other`, hidden) and prints `BRIDGE
//!   <tool> <reply line>`, retrying while nobody answers; `BRIDGE none`
//!   when the VM has no such port (the policy's `agent_bridge = "off"`).
//! - `rayos.uefi=1` (used by the UKI variant): prints whether it booted
//!   through UEFI (`FIRMWARE uefi|bios`) and the TPM version
//!   (`TPM <major>|none`); writes a UEFI variable through efivarfs on first
//!   boot (`EFIVAR written <v>`) and reads it back on later boots
//!   (`EFIVAR found <v>`); defines, writes and reads a TPM NV index with raw
//!   TPM2 commands through `/dev/tpm0` the same way (`TPMNV written|found
//!   <hex>`).
//! - `rayos.keys=1`: prints `KEYS ready` and then `KEY <evdev code>
//!   <value>` for every event of the guest's keyboard (input tests).
//! - `rayos.read=vda,sr0`: loads the virtio-blk, AHCI and CD-ROM drivers
//!   and prints `READ <dev> <hex of its first 16 bytes>` for each device
//!   named (`READ <dev> missing` when it does not show up within 60 s), so
//!   a test sees exactly which bytes the guest gets from a disk or medium.
//! - `fetch URL` typed on its serial console (the net e2e types it through
//!   `vm console linux`, docs/network.md): with a network device the guest
//!   gets an address with busybox `udhcpc` (first time only), fetches URL
//!   with busybox `wget` and prints `FETCH ok <sha256> <bytes>`, retrying
//!   for about 3 minutes (`FETCH retry N: why`, then `FETCH failed: ...`);
//!   with no network device it prints `FETCH failed: no network device`.
//!   Only on request, so tests that merely give a guest a NIC send nothing
//!   anywhere. A stand-in for a real distribution's network stack.
//! - `console=tty0` (the Linux VM seeded by the installer): the guest's
//!   display shows [`SCREEN_BANNER`] and, with `rayos.keys=1`, the `KEY`
//!   lines, with the cursor, screen blanking and kernel messages off, so
//!   the display only changes when a key arrives (presenter e2e).
//!
//! Build products are cached under `target/rayos-testkit/` keyed by a hash of
//! every input (kernel, busybox, modules, script), written under temporary
//! names and renamed, so parallel tests share one build.
//! The initramfs is written with rayos-image's cpio writer
//! ([`rayos_image::cpio`]), the one the RayOS media use.
//!
//! Limits: x86_64 Debian hosts (busybox-static, linux-image-amd64, and for
//! the UEFI variant systemd-boot-efi's stub, binutils' objcopy, mtools,
//! dosfstools).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rayos_image::cpio::{CpioError, CpioWriter};

/// Printed once `/init` has mounted its file systems.
pub const READY_MARKER: &str = "RAYOS_TEST_GUEST_READY";

/// The first line the guest draws on its display when its command line
/// has `console=tty0`.
pub const SCREEN_BANNER: &str = "RAYOS TEST GUEST: this is the Linux VM's display";

/// What the net e2e has the guest fetch (`fetch URL` on its console): the
/// e2e answers it on the outer host (QEMU `guestfwd` on the outer
/// machine's network 10.0.3.0/24, reached through RayOS's link and both
/// NATs).
pub const NET_TEST_URL: &str = "http://10.0.3.100/rayos-net-test";

/// Command line for direct kernel boot of [`LinuxGuest`].
pub const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 rayos.agent=1";

const BUSYBOX: &str = "/usr/bin/busybox";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Modules the guest loads (with their dependencies from `modules.dep`):
/// virtio-pci and virtio-console give the agent channel, virtio-input the
/// tablet (absolute pointer), efivarfs the UEFI variables, button and evdev
/// the ACPI power button, virtio_net the NIC a VM with networking gets. The
/// serial port, tpm_crb and the EFI framebuffer are built into Debian's
/// kernel.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_input",
    "efivarfs",
    "button",
    "evdev",
    "virtio_net",
];

/// Console keymaps the guest can load (`rayos.keymap=`): layout → the
/// console-data keymap below `/usr/share/keymaps/i386/`.
pub const KEYMAPS: &[(&str, &str)] = &[
    ("uk", "qwerty/uk"),
    ("de", "qwertz/de-latin1"),
    ("fr", "azerty/fr-latin1"),
    ("es", "qwerty/es"),
    ("it", "qwerty/it"),
];

/// Where console-data keeps its keymaps.
const KEYMAP_DIR: &str = "/usr/share/keymaps/i386";

/// Block drivers loaded only with `rayos.read=` (disks on virtio-blk,
/// installation media on the q35 AHCI controller), so other tests boot as
/// before.
const READ_MODULES: &[&str] = &["virtio_blk", "ahci", "sr_mod"];

/// Bumped when the build recipe changes in a way the input hash misses.
const RECIPE: &str = "rayos-testkit guest v2";

/// Why the test guest could not be built or waited on.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A host file the guest is built from is not there.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What is missing (the host kernel, busybox, …).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Which package or step provides it.
        hint: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A tool the build runs (objcopy, mkfs.fat, mtools, …) failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// What went wrong (its exit status and stderr, or why it could
        /// not run).
        detail: String,
    },
    /// A wait for console output ran out of time.
    #[error("timed out after {timeout:?} waiting for {what} in {path}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The console log waited on.
        path: PathBuf,
        /// How long was waited.
        timeout: Duration,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> GuestError + '_ {
    move |source| GuestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A direct-kernel-boot guest.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// The kernel image (the host's own).
    pub kernel: PathBuf,
    /// The initramfs with busybox, the modules and the test init.
    pub initrd: PathBuf,
    /// The kernel command line the init expects.
    pub cmdline: String,
}

/// The newest `/boot/vmlinuz-<ver>` and its `<ver>` (rayos-image's
/// choice, so the guests boot the kernel the images are built with).
pub fn host_kernel() -> Result<(PathBuf, String), GuestError> {
    rayos_image::uki::host_kernel_release().ok_or(GuestError::Missing {
        what: "a kernel",
        path: "/boot/vmlinuz-*".into(),
        hint: "install linux-image-amd64 (scripts/install-deps.sh)",
    })
}

/// Where build products are cached.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("rayos-testkit");
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .join("target/rayos-testkit")
}

/// The `/init` script (see the module docs for what it does); `modules` are
/// file names under `/lib/modules/` in load order.
pub fn init_script(modules: &[String]) -> String {
    init_script_with(modules, &[])
}

/// [`init_script`] plus `read_modules` (file names under `/lib/modules/`,
/// in load order), loaded only when the command line has `rayos.read=`.
pub fn init_script_with(modules: &[String], read_modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in {modules}; do insmod /lib/modules/$m 2>/dev/null; done
echo {READY_MARKER}
arg() {{ for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${{a#*=}}";; esac; done; }}

# console=tty0 on the command line: the display shows a fixed screen (a
# banner, then the keys with rayos.keys=1) with no cursor, no blanking and
# no kernel messages, so screenshots of it are stable and comparable; the
# counter stays on the serial console only.
screen=""
case " $(cat /proc/cmdline) " in *" console=tty0 "*) [ -e /dev/tty0 ] && screen=/dev/tty0;; esac
if [ -n "$screen" ]; then
  dmesg -n 1
  printf '\033[H\033[2J\033[?25l\033[9;0]' > $screen
  echo "{SCREEN_BANNER}" > $screen
fi

# Raw TPM2 command: $1 = octal-escaped bytes; prints the response as hex.
tpm() {{
  printf "$1" > /tmp/tpmcmd
  exec 3<>/dev/tpm0
  dd if=/tmp/tpmcmd bs=4096 2>/dev/null >&3
  dd bs=4096 count=1 2>/dev/null <&3 | hexdump -v -e '/1 "%02x"'
  exec 3<&-
}}
hex_to_oct() {{ echo "$1" | sed 's/../& /g' | while read -r l; do for b in $l; do printf '\\%03o' 0x$b; done; done; }}

if [ "$(arg rayos.uefi)" = 1 ]; then
  if [ -d /sys/firmware/efi ]; then echo "FIRMWARE uefi"; else echo "FIRMWARE bios"; fi
  echo "TPM $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null || echo none)"
  mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
  V=/sys/firmware/efi/efivars/RayosTest-5a4f6e1c-8d2b-4c3a-9e7f-0b1c2d3e4f50
  if [ -e $V ]; then
    echo "EFIVAR found $(tail -c +5 $V)"
  else
    v=$(cut -c1-8 /proc/sys/kernel/random/uuid)
    printf '\007\000\000\000%s' "$v" > $V && echo "EFIVAR written $v"
  fi
  if [ -e /dev/tpm0 ]; then
    # NV index 0x01500017, 8 bytes, owner read/write, empty owner auth.
    AUTH='\000\000\000\011\100\000\000\011\000\000\000\000\000'
    r=$(tpm "\200\002\000\000\000\043\000\000\001\116\100\000\000\001\001\120\000\027$AUTH\000\010\000\000")
    if [ "${{r:12:8}}" = 00000000 ]; then
      echo "TPMNV found ${{r:32:16}}"
    else
      r=$(tpm "\200\002\000\000\000\055\000\000\001\052\100\000\000\001$AUTH\000\000\000\016\001\120\000\027\000\013\000\002\000\002\000\000\000\010")
      d=$(hexdump -v -n 8 -e '/1 "%02x"' /dev/urandom)
      w=$(tpm "\200\002\000\000\000\053\000\000\001\067\100\000\000\001\001\120\000\027$AUTH\000\010$(hex_to_oct $d)\000\000")
      if [ "${{w:12:8}}" = 00000000 ]; then echo "TPMNV written $d"; else echo "TPMNV failed define=${{r:12:8}} write=${{w:12:8}}"; fi
    fi
  fi
fi

agent() {{
  name=""
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat $d/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && name=${{d##*/}}
  done
  [ -n "$name" ] || return
  # The port stays open, as qemu-ga keeps it: closing it discards what
  # the next client already sent, and reopening raced with that client.
  # While no client is connected a read ends at once: poll.
  exec 3<>/dev/$name
  while :; do
    if ! read -r line <&3; then sleep 0.25; continue; fi
    {{
      id=$(echo "$line" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
      case "$line" in
        *guest-sync-delimited*) printf '\377{{"return": %s}}\n' "$id";;
        *guest-sync*) printf '{{"return": %s}}\n' "$id";;
        *guest-exec-status*)
          p=$(echo "$line" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
          if [ -e /tmp/exec.$p.rc ]; then
            printf '{{"return": {{"exited": true, "exitcode": %s, "out-data": "%s", "err-data": "%s"}}}}\n' \
              "$(cat /tmp/exec.$p.rc)" "$(base64 /tmp/exec.$p.out | tr -d '\n')" "$(base64 /tmp/exec.$p.err | tr -d '\n')"
          else
            echo '{{"return": {{"exited": false}}}}'
          fi;;
        *guest-exec*)
          execs=$((execs + 1))
          path=$(echo "$line" | sed -n 's/.*"path": *"\([^"]*\)".*/\1/p')
          args=$(echo "$line" | sed -n 's/.*"arg": *\[\([^]]*\)\].*/\1/p' | tr ',"' '  ')
          if [ -x "$path" ]; then
            # Not on the channel: the program must not hold the port.
            ( $path $args >/tmp/exec.$execs.out 2>/tmp/exec.$execs.err; echo $? >/tmp/exec.$execs.tmp; mv /tmp/exec.$execs.tmp /tmp/exec.$execs.rc ) </dev/null >/dev/null 2>&1 3>&- &
            echo "AGENT exec $path" >/dev/console
            printf '{{"return": {{"pid": %s}}}}\n' $execs
          else
            printf '{{"error": {{"class": "GenericError", "desc": "Failed to execute child process \\"%s\\" (No such file or directory)"}}}}\n' "$path"
          fi;;
        *guest-set-time*)
          t=$(echo "$line" | sed -n 's/.*"time": *\([0-9]*\).*/\1/p')
          if [ -n "$t" ]; then
            date -s @$((t / 1000000000)) >/dev/null 2>&1
            echo "AGENT set-time $((t / 1000000000))" >/dev/console
          else
            # No time: from the RTC, as qemu-ga does (`hwclock -s`).
            hwclock -s -u >/dev/null 2>&1
            echo "AGENT set-time rtc" >/dev/console
          fi
          echo '{{"return": {{}}}}';;
        *) echo '{{"error": {{"class": "CommandNotFound", "desc": "not supported by the test guest"}}}}';;
      esac
    }} >&3
  done
}}
execs=0
[ "$(arg rayos.agent)" = 1 ] && agent &

# rayos.bridge=1: an agent in the VM calling the agent bridge (MCP).
bridge() {{
  name=""
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat $d/name 2>/dev/null)" = org.rayos.agent.0 ] && name=${{d##*/}}
  done
  [ -n "$name" ] || {{ echo "BRIDGE none"; return; }}
  exec 7<>/dev/$name
  id=0
  for call in list_vms type_text; do
    id=$((id + 1))
    case $call in
      list_vms) args='{{}}';;
      type_text) args='{{"vm":"other","text":"x","hidden":true}}';;
    esac
    i=0
    while [ $i -lt 120 ]; do
      echo '{{"jsonrpc":"2.0","id":'$id',"method":"tools/call","params":{{"name":"'$call'","arguments":'"$args"'}}}}' >&7
      if read -t 2 -r reply <&7 && [ -n "$reply" ]; then echo "BRIDGE $call $reply"; break; fi
      sleep 1
      i=$((i + 1))
    done
  done
}}
[ "$(arg rayos.bridge)" = 1 ] && bridge &

# rayos.keymap=de: the console keymap (all VTs), before the keyboard is read.
km=$(arg rayos.keymap)
if [ -n "$km" ]; then
  if loadkmap < /keymaps/$km.bmap; then echo "KEYMAP $km"; else echo "KEYMAP failed"; fi
fi

# rayos.tty=1: lines typed on the keyboard, as the guest's VT reads them.
ttyecho() {{
  [ -e /dev/tty1 ] || {{ echo "TTY none"; return; }}
  exec 6</dev/tty1
  echo "TTY ready"
  while read -r line <&6; do echo "TYPED $line"; done
}}
[ "$(arg rayos.tty)" = 1 ] && ttyecho &

# rayos.pointer=1: every event of the absolute pointer (virtio tablet).
pointer() {{
  dev=""
  for d in /sys/class/input/event*; do
    case "$(cat $d/device/name 2>/dev/null)" in *Tablet*) dev=/dev/input/${{d##*/}};; esac
  done
  [ -n "$dev" ] || {{ echo "POINTER none"; return; }}
  exec 5<$dev
  echo "POINTER ready"
  while :; do
    set -- $(dd bs=24 count=1 <&5 2>/dev/null | od -An -v -tu2)
    case "$9" in
      1) echo "POINTER BTN ${{10}} ${{11}}";;
      3) echo "POINTER ABS ${{10}} ${{11}}";;
    esac
  done
}}
[ "$(arg rayos.pointer)" = 1 ] && pointer &

# The ACPI power button powers the guest off, so a graceful stop works.
powerbutton() {{
  for d in /sys/class/input/event*; do
    [ "$(cat $d/device/name 2>/dev/null)" = "Power Button" ] || continue
    # One input event (24 bytes on x86_64) means the button was pressed.
    if dd if=/dev/input/${{d##*/}} bs=24 count=1 2>/dev/null | grep -q .; then
      echo "POWER button pressed"
      sync
      poweroff -f
    fi
  done
}}
powerbutton &

# rayos.keys=1: every key press and release on the keyboard (PS/2 or
# virtio) is printed as `KEY <evdev code> <1 down|0 up|2 repeat>`, so a
# test sees exactly what reached the guest.
keys() {{
  dev=""
  for d in /sys/class/input/event*; do
    case "$(cat $d/device/name 2>/dev/null)" in *[Kk]eyboard*) dev=/dev/input/${{d##*/}};; esac
  done
  [ -n "$dev" ] || {{ echo "KEYS none"; return; }}
  # One open file for the whole loop: evdev queues events per open file,
  # so reopening it per event would lose keys typed in between.
  exec 4<$dev
  echo "KEYS ready"
  while :; do
    # One input_event is 24 bytes: time (16), type, code (u16), value (s32).
    set -- $(dd bs=24 count=1 <&4 2>/dev/null | od -An -v -tu2)
    [ "$9" = 1 ] || continue
    echo "KEY ${{10}} ${{11}}"
    [ -n "$screen" ] && echo "KEY ${{10}} ${{11}}" > $screen
  done
}}
[ "$(arg rayos.keys)" = 1 ] && keys &

# rayos.read=vda,sr0: the first bytes the guest reads from each device.
readdevs() {{
  for m in {read_modules}; do insmod /lib/modules/$m 2>/dev/null; done
  for d in $(echo "$1" | tr , ' '); do
    i=0
    while [ ! -e /sys/block/$d ] && [ $i -lt 240 ]; do sleep 0.25; i=$((i + 1)); done
    if [ -e /sys/block/$d ]; then
      echo "READ $d $(dd if=/dev/$d bs=2048 count=1 2>/dev/null | hexdump -v -n 16 -e '/1 "%02x"')"
    else
      echo "READ $d missing"
    fi
  done
}}
r=$(arg rayos.read)
[ -n "$r" ] && readdevs "$r" &

# `fetch URL` typed on the console: DHCP with udhcpc (once), then fetch
# URL and print its SHA-256 (net e2e). Nothing is sent unless asked.
netup=""
fetch() {{
  url="$1"
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
  if [ ! -e /sys/class/net/eth0 ]; then echo "FETCH failed: no network device"; return; fi
  if [ -z "$netup" ]; then
    mkdir -p /etc
    printf '%s\n' '#!/bin/busybox sh' \
      'case "$1" in bound|renew)' \
      '  ip addr flush dev $interface; ip addr add $ip/${{mask:-24}} dev $interface' \
      '  for r in $router; do ip route add default via $r dev $interface; break; done' \
      '  for d in $dns; do echo "nameserver $d"; done > /etc/resolv.conf;;' \
      'esac' > /tmp/udhcpc.sh
    chmod +x /tmp/udhcpc.sh
    ip link set lo up
    ip link set eth0 up
  fi
  n=0
  while [ $n -lt 60 ]; do
    n=$((n + 1))
    if [ -z "$netup" ]; then
      if ! udhcpc -i eth0 -n -q -t 3 -s /tmp/udhcpc.sh >/dev/null 2>&1; then
        echo "FETCH retry $n: no DHCP lease"; sleep 2; continue
      fi
      netup=1
    fi
    # (busybox-static 1.35's wget crashes with -T: timeout(1) bounds it.)
    if timeout 30 wget -q -O /tmp/fetched "$url" 2>/tmp/wget.err; then
      echo "FETCH ok $(sha256sum /tmp/fetched | cut -d' ' -f1) $(wc -c < /tmp/fetched) bytes"
      return
    fi
    echo "FETCH retry $n: $(cat /tmp/wget.err)"
    sleep 3
  done
  echo "FETCH failed: gave up after $n tries"
}}
# A background job's stdin is /dev/null: read the console explicitly.
commands() {{
  while read -r cmd arg; do
    case "$cmd" in fetch) fetch "$arg";; esac
  done
}}
commands </dev/console &

n=0
while :; do
  echo "COUNTER $n"
  n=$((n + 1))
  sleep 0.25
done
"#,
        modules = modules.join(" "),
        read_modules = read_modules.join(" ")
    )
}

/// Builds (or finds cached) the kernel + initramfs guest.
pub fn linux_guest() -> Result<LinuxGuest, GuestError> {
    let (kernel, ver) = host_kernel()?;
    let initrd = build_initrd(&ver)?;
    Ok(LinuxGuest {
        kernel,
        initrd,
        cmdline: CMDLINE.into(),
    })
}

fn require(path: &Path, what: &'static str, hint: &'static str) -> Result<(), GuestError> {
    if path.exists() {
        Ok(())
    } else {
        Err(GuestError::Missing {
            what,
            path: path.to_path_buf(),
            hint,
        })
    }
}

/// A hash of file identities (path, size, mtime) and texts, for cache keys.
fn input_key(files: &[&Path], texts: &[&str]) -> Result<String, GuestError> {
    // FNV-1a 64: a cache key, not a security boundary.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    };
    eat(RECIPE.as_bytes());
    for f in files {
        let m = fs::metadata(f).map_err(io_err(f))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        eat(f.as_os_str().as_encoded_bytes());
        eat(&m.len().to_le_bytes());
        eat(&mtime.to_le_bytes());
    }
    for t in texts {
        eat(t.as_bytes());
    }
    Ok(format!("{h:016x}"))
}

/// Writes `out` through `write_tmp(tmp)` and a rename, unless it exists.
fn cached(
    out: &Path,
    write_tmp: impl FnOnce(&Path) -> Result<(), GuestError>,
) -> Result<(), GuestError> {
    if out.is_file() {
        return Ok(());
    }
    let dir = out.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Unique per process and call: tests build in parallel threads.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let r = write_tmp(&tmp);
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
        return r;
    }
    fs::rename(&tmp, out).map_err(io_err(out))
}

fn build_initrd(ver: &str) -> Result<PathBuf, GuestError> {
    let busybox = Path::new(BUSYBOX);
    require(
        busybox,
        "busybox",
        "install busybox-static (scripts/install-deps.sh)",
    )?;
    let moddir = PathBuf::from(format!("/lib/modules/{ver}"));
    let always = module_load_order(&moddir, MODULES)?;
    let mut modules = always.clone();
    for m in module_load_order(&moddir, READ_MODULES)? {
        if !modules.contains(&m) {
            modules.push(m);
        }
    }
    let file_name = |m: &PathBuf| {
        m.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let names: Vec<String> = modules.iter().map(file_name).collect();
    let always_names: Vec<String> = always.iter().map(file_name).collect();
    let read_names: Vec<String> = names[always.len()..].to_vec();
    let script = init_script_with(&always_names, &read_names);
    let keymap_srcs: Vec<PathBuf> = KEYMAPS
        .iter()
        .map(|(_, src)| Path::new(KEYMAP_DIR).join(format!("{src}.kmap.gz")))
        .collect();
    for src in &keymap_srcs {
        require(
            src,
            "console keymap",
            "install kbd and console-data (scripts/install-deps.sh)",
        )?;
    }
    let mut files: Vec<&Path> = vec![busybox];
    files.extend(modules.iter().map(PathBuf::as_path));
    files.extend(keymap_srcs.iter().map(PathBuf::as_path));
    let key = input_key(&files, &[&script, ver])?;
    let out = cache_dir().join(format!("guest-{key}.cpio"));
    cached(&out, |tmp| {
        let f = fs::File::create(tmp).map_err(io_err(tmp))?;
        let mut w = CpioWriter::new(io::BufWriter::new(f));
        let wr = |e: CpioError| GuestError::Io {
            path: tmp.to_path_buf(),
            source: io::Error::other(e),
        };
        for d in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "lib",
            "lib/modules",
            "keymaps",
        ] {
            w.dir(d, 0o755).map_err(wr)?;
        }
        // The kernel opens /dev/console for init before devtmpfs exists.
        w.char_dev("dev/console", 0o600, 5, 1).map_err(wr)?;
        put(&mut w, "init", 0o755, script.as_bytes()).map_err(wr)?;
        let bb = fs::read(busybox).map_err(io_err(busybox))?;
        put(&mut w, "bin/busybox", 0o755, &bb).map_err(wr)?;
        for (m, name) in modules.iter().zip(&names) {
            let data = fs::read(m).map_err(io_err(m))?;
            put(&mut w, &format!("lib/modules/{name}"), 0o644, &data).map_err(wr)?;
        }
        for ((layout, _), src) in KEYMAPS.iter().zip(&keymap_srcs) {
            let out = Command::new("loadkeys")
                .arg("-b")
                .arg(src)
                .output()
                .map_err(|e| GuestError::Tool {
                    tool: "loadkeys".into(),
                    detail: format!("{e} (install kbd, scripts/install-deps.sh)"),
                })?;
            if !out.status.success() || !out.stdout.starts_with(b"bkeymap") {
                return Err(GuestError::Tool {
                    tool: format!("loadkeys -b {}", src.display()),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            put(
                &mut w,
                &format!("keymaps/{layout}.bmap"),
                0o644,
                &out.stdout,
            )
            .map_err(wr)?;
        }
        let (inner, _) = w.finish().map_err(wr)?;
        let f = inner.into_inner().map_err(|e| GuestError::Io {
            path: tmp.to_path_buf(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err(tmp))
    })?;
    Ok(out)
}

/// A file entry of `data` (the writer takes its size and a reader).
fn put<W: Write>(
    w: &mut CpioWriter<W>,
    name: &str,
    perm: u32,
    data: &[u8],
) -> Result<(), CpioError> {
    w.file(name, perm, data.len() as u64, &mut &data[..])
}

/// A UEFI-bootable raw disk image: a FAT file system (no partition table,
/// which OVMF accepts) holding the guest as a UKI at `\EFI\BOOT\BOOTX64.EFI`.
/// The UKI's command line adds `rayos.uefi=1`. Returns the cached template;
/// copy it for each VM (QEMU locks disk images).
pub fn uefi_disk() -> Result<PathBuf, GuestError> {
    let (kernel, ver) = host_kernel()?;
    let initrd = build_initrd(&ver)?;
    let stub = Path::new(STUB);
    require(
        stub,
        "the systemd EFI stub",
        "install systemd-boot-efi (scripts/install-deps.sh)",
    )?;
    let cmdline = format!("{CMDLINE} rayos.uefi=1");
    let key = input_key(&[&kernel, &initrd, stub], &[&cmdline])?;
    let dir = cache_dir();
    let uki = dir.join(format!("guest-{key}.efi"));
    cached(&uki, |tmp| {
        let osrel = tmp.with_extension("osrel");
        let cmd = tmp.with_extension("cmdline");
        fs::write(&osrel, "NAME=RayOS test guest\nID=rayos-test-guest\n")
            .map_err(io_err(&osrel))?;
        fs::write(&cmd, &cmdline).map_err(io_err(&cmd))?;
        // Section addresses from PLATFORM_NOTES (the 252 stub's layout).
        let r = tool(
            Command::new("objcopy")
                .arg("--add-section")
                .arg(format!(".osrel={}", osrel.display()))
                .args(["--change-section-vma", ".osrel=0x20000"])
                .arg("--add-section")
                .arg(format!(".cmdline={}", cmd.display()))
                .args(["--change-section-vma", ".cmdline=0x30000"])
                .arg("--add-section")
                .arg(format!(".linux={}", kernel.display()))
                .args(["--change-section-vma", ".linux=0x2000000"])
                .arg("--add-section")
                .arg(format!(".initrd={}", initrd.display()))
                .args(["--change-section-vma", ".initrd=0x3000000"])
                .arg(stub)
                .arg(tmp),
        );
        let _ = fs::remove_file(&osrel);
        let _ = fs::remove_file(&cmd);
        r
    })?;
    let disk = dir.join(format!("guest-{key}.esp.img"));
    cached(&disk, |tmp| {
        let uki_len = fs::metadata(&uki).map_err(io_err(&uki))?.len();
        let kib = (uki_len / 1024 + 8 * 1024).div_ceil(1024) * 1024;
        tool(
            Command::new("mkfs.fat")
                .args(["-C", "-n", "RAYOSTEST"])
                .arg(tmp)
                .arg(kib.to_string()),
        )?;
        tool(
            Command::new("mmd")
                .arg("-i")
                .arg(tmp)
                .args(["::/EFI", "::/EFI/BOOT"]),
        )?;
        tool(
            Command::new("mcopy")
                .arg("-i")
                .arg(tmp)
                .arg(&uki)
                .arg("::/EFI/BOOT/BOOTX64.EFI"),
        )
    })?;
    Ok(disk)
}

/// The module files for `wanted` (module names) and everything they depend
/// on, dependencies first, from `<moddir>/modules.dep`.
pub fn module_load_order(moddir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, GuestError> {
    let dep_file = moddir.join("modules.dep");
    let text = fs::read_to_string(&dep_file).map_err(io_err(&dep_file))?;
    let deps: std::collections::HashMap<&str, Vec<&str>> = text
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m.trim(), d.split_whitespace().collect()))
        })
        .collect();
    let by_name = |name: &str| {
        deps.keys().copied().find(|k| {
            let file = k.rsplit('/').next().unwrap_or(k);
            let stem = file.split(".ko").next().unwrap_or(file);
            stem.replace('-', "_") == name.replace('-', "_")
        })
    };
    let mut order: Vec<&str> = Vec::new();
    fn visit<'a>(
        m: &'a str,
        deps: &std::collections::HashMap<&'a str, Vec<&'a str>>,
        order: &mut Vec<&'a str>,
        depth: usize,
    ) {
        if order.contains(&m) || depth > 64 {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order, depth + 1);
        }
        order.push(m);
    }
    for w in wanted {
        let m = by_name(w).ok_or_else(|| GuestError::Missing {
            what: "kernel module",
            path: moddir.join(format!("{w}.ko")),
            hint: "install the linux-image package matching /boot/vmlinuz",
        })?;
        visit(m, &deps, &mut order, 0);
    }
    let out: Vec<PathBuf> = order.iter().map(|m| moddir.join(m)).collect();
    for p in &out {
        require(
            p,
            "kernel module",
            "install the linux-image package matching /boot/vmlinuz",
        )?;
        if p.extension().is_some_and(|e| e != "ko") {
            return Err(GuestError::Tool {
                tool: "insmod".into(),
                detail: format!(
                    "{} is compressed; the test guest loads plain .ko files",
                    p.display()
                ),
            });
        }
    }
    Ok(out)
}

fn tool(cmd: &mut Command) -> Result<(), GuestError> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| GuestError::Tool {
        tool: name.clone(),
        detail: format!("cannot run it: {e} (scripts/install-deps.sh installs it)"),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GuestError::Tool {
            tool: name,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// The `COUNTER <n>` values in console text, in order.
pub fn counters(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let i = l.find("COUNTER ")?;
            l[i + 8..].trim().parse().ok()
        })
        .collect()
}

/// Reads a console log from byte `from` on (lossy UTF-8).
pub fn read_from(log: &Path, from: u64) -> Result<String, GuestError> {
    let mut f = match fs::File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io_err(log)(e)),
    };
    f.seek(SeekFrom::Start(from)).map_err(io_err(log))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io_err(log))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The part of `text` up to its last newline: a line the guest is still
/// writing is left for the next poll, so a waiter never sees half of it
/// (`READ sr0 51464` for `READ sr0 514649fb…` failed a CI run).
fn complete_lines(text: &str) -> &str {
    text.rfind('\n').map_or("", |i| &text[..=i])
}

/// The current size of a console log (0 when it does not exist yet): an
/// offset to read new output from.
pub fn log_len(log: &Path) -> u64 {
    fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// Waits until the log, from byte `from` on, has a line containing
/// `needle`; returns that line.
pub fn wait_for_line(
    log: &Path,
    from: u64,
    needle: &str,
    timeout: Duration,
) -> Result<String, GuestError> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read_from(log, from)?;
        if let Some(l) = complete_lines(&text).lines().find(|l| l.contains(needle)) {
            return Ok(l.trim_end_matches('\r').to_string());
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Timeout {
                what: format!("{needle:?}"),
                path: log.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a counter above `min` appears after byte `from`; returns it.
pub fn wait_counter_above(
    log: &Path,
    from: u64,
    min: Option<u64>,
    timeout: Duration,
) -> Result<u64, GuestError> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read_from(log, from)?;
        if let Some(&c) = counters(complete_lines(&text))
            .iter()
            .find(|&&c| min.is_none_or(|m| c > m))
        {
            return Ok(c);
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Timeout {
                what: format!("a counter above {min:?}"),
                path: log.to_path_buf(),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the UEFI/TPM variant keeps across boots: the values it wrote to
/// its EFI variable and to its TPM NV index at its first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    /// The EFI variable's value (`EFIVAR written <v>`).
    pub efivar: String,
    /// The TPM NV index's value (`TPMNV written <v>`).
    pub tpm_nv: String,
}

/// Waits (each line up to `timeout`) for the UEFI/TPM variant's first boot
/// in `log`: booted through UEFI, a TPM 2.0 seen, the EFI variable and the
/// TPM NV index written; returns what it wrote. A test helper: panics when
/// a line does not come or says otherwise.
pub fn expect_first_uefi_tpm_boot(log: &Path, timeout: Duration) -> Secrets {
    let line = |needle| wait_for_line(log, 0, needle, timeout).unwrap();
    let last_word = |l: &str| l.split_whitespace().last().unwrap_or_default().to_string();
    assert_eq!(line("FIRMWARE"), "FIRMWARE uefi");
    assert_eq!(line("TPM "), "TPM 2");
    let efivar = last_word(&line("EFIVAR written"));
    let nv_line = line("TPMNV ");
    assert!(nv_line.starts_with("TPMNV written"), "{nv_line}");
    Secrets {
        efivar,
        tpm_nv: last_word(&nv_line),
    }
}

/// Waits for a later boot of the UEFI/TPM variant (its output from byte
/// `from` of `log`) to find both `secrets` again. Panics otherwise.
pub fn expect_secrets_found(log: &Path, from: u64, secrets: &Secrets, timeout: Duration) {
    assert_eq!(
        wait_for_line(log, from, "EFIVAR ", timeout).unwrap(),
        format!("EFIVAR found {}", secrets.efivar)
    );
    assert_eq!(
        wait_for_line(log, from, "TPMNV ", timeout).unwrap(),
        format!("TPMNV found {}", secrets.tpm_nv)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_is_valid_busybox_shell() {
        let script = init_script_with(&["a.ko".into()], &["b.ko".into()]);
        let o = Command::new(BUSYBOX)
            .args(["sh", "-n", "-c"])
            .arg(&script)
            .output()
            .expect("busybox-static (scripts/install-deps.sh)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // The udhcpc script the guest writes is itself valid.
        let start = script.find("printf '%s\\n' '#!/bin/busybox sh'").unwrap();
        assert!(script[start..].contains("${mask:-24}"));
        // Nothing is fetched unless asked on the console.
        assert!(!script.contains(NET_TEST_URL));
        assert!(script.contains("commands </dev/console &"));
    }

    #[test]
    fn module_order_puts_dependencies_first() {
        let (_, ver) = host_kernel().unwrap();
        let order = module_load_order(Path::new(&format!("/lib/modules/{ver}")), MODULES).unwrap();
        let pos = |n: &str| {
            order
                .iter()
                .position(|p| p.file_name().unwrap().to_str().unwrap().starts_with(n))
                .unwrap_or_else(|| panic!("{n} missing from {order:?}"))
        };
        assert!(pos("virtio_ring.ko") < pos("virtio.ko"));
        assert!(pos("virtio.ko") < pos("virtio_pci.ko"));
        assert!(pos("virtio.ko") < pos("virtio_console.ko"));
        assert!(pos("efivarfs").lt(&order.len()));
    }

    #[test]
    fn counters_parse() {
        assert_eq!(
            counters("boot\r\nCOUNTER 0\r\nCOUNTER 1\nnoise COUNTER 7\nCOUNTER x\n"),
            vec![0, 1, 7]
        );
    }
}

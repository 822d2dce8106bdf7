#!/bin/busybox sh
# /init of the Windows stand-in (crates/rayos-image/src/winstandin): an
# installer that needs what Windows 11 needs. Booted from its medium
# (rayos.standin=install) it checks Secure Boot and the TPM 2.0, writes a
# secret into a TPM NV index, a UEFI variable and a marker file on the AHCI
# disk, installs the same signed boot chain (shim -> GRUB -> kernel) onto
# the disk's ESP and powers off. Booted from the disk (rayos.standin=run)
# it prints the marker, reads the NV index and the variable back and then
# a counter in RAM (and the NV index again every 10 s). Console lines start with STANDIN_ (the tests match
# them; rayos_image::winstandin names them).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in efivarfs button evdev ahci sd_mod vfat nls_cp437 nls_ascii nls_utf8; do
  modprobe $m 2>/dev/null
done
mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}";; esac; done; }
MODE=$(arg rayos.standin)
echo "STANDIN_BOOT $MODE"

# Like Windows Setup's "This PC can't run Windows 11": the message stays
# and nothing is written; the VM keeps running until the person stops it
# (a power-off here would read as "installed" to RayOS's provisioning rule).
fail() {
  echo "STANDIN_FAIL $*"
  while :; do sleep 3600; done
}

# (1) What Windows 11 requires: UEFI with Secure Boot on, and a TPM 2.0.
[ -d /sys/firmware/efi ] || fail "not booted through UEFI"
SB=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
# 4 bytes of attributes, then the value (efivarfs files do not seek, so
# the whole file is read and its last byte taken).
sb=$(hexdump -v -e '/1 "%02x"' $SB 2>/dev/null)
sb=${sb:8:2}
[ "$sb" = 01 ] || fail "Secure Boot is off (SecureBoot=${sb:-missing}): this installer needs it on"
echo "STANDIN_SECUREBOOT on"
i=0
while [ ! -e /dev/tpm0 ] && [ $i -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
tpmv=$(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)
[ "$tpmv" = 2 ] && [ -e /dev/tpm0 ] || fail "no TPM 2.0 (found: ${tpmv:-none})"
echo "STANDIN_TPM 2"

# Raw TPM2 commands on /dev/tpm0: $1 = octal-escaped bytes; prints the
# response as hex. NV index 0x01500018, 8 bytes, owner read/write, empty
# owner auth (password session).
tpm() {
  printf "$1" > /tmp/tpmcmd
  exec 3<>/dev/tpm0
  dd if=/tmp/tpmcmd bs=4096 2>/dev/null >&3
  dd bs=4096 count=1 2>/dev/null <&3 | hexdump -v -e '/1 "%02x"'
  exec 3<&-
}
hex_to_oct() { echo "$1" | sed 's/../& /g' | while read -r l; do for b in $l; do printf '\\%03o' 0x$b; done; done; }
AUTH='\000\000\000\011\100\000\000\011\000\000\000\000\000'
nv_read() {
  r=$(tpm "\200\002\000\000\000\043\000\000\001\116\100\000\000\001\001\120\000\030$AUTH\000\010\000\000")
  [ "${r:12:8}" = 00000000 ] && echo "${r:32:16}"
}
nv_write() {
  if [ -z "$(nv_read)" ]; then
    r=$(tpm "\200\002\000\000\000\055\000\000\001\052\100\000\000\001$AUTH\000\000\000\016\001\120\000\030\000\013\000\002\000\002\000\000\000\010")
    [ "${r:12:8}" = 00000000 ] || return 1
  fi
  w=$(tpm "\200\002\000\000\000\053\000\000\001\067\100\000\000\001\001\120\000\030$AUTH\000\010$(hex_to_oct $1)\000\000")
  [ "${w:12:8}" = 00000000 ]
}
EFIVAR=/sys/firmware/efi/efivars/RayosStandin-5a4f6e1c-8d2b-4c3a-9e7f-0b1c2d3e4f51

# The AHCI disk (the only disk on an ATA port; media are on USB or are
# CD-ROMs, whose drivers this initramfs does not load).
find_disk() {
  i=0
  while [ $i -lt 120 ]; do
    for b in /sys/block/sd*; do
      [ -e "$b" ] || continue
      case "$(readlink -f $b)" in */ata*) echo ${b##*/}; return;; esac
    done
    sleep 0.25
    i=$((i + 1))
  done
}
DISK=$(find_disk)
[ -n "$DISK" ] || fail "no AHCI disk"

if [ "$MODE" = install ]; then
  echo "STANDIN_INSTALLING /dev/$DISK"
  # MBR with one EFI system partition (type 0xEF), 1 MiB to 257 MiB.
  dd if=/dev/zero of=/dev/$DISK bs=1M count=1 2>/dev/null
  printf '\000\376\377\377\357\376\377\377\000\010\000\000\000\000\010\000' |
    dd of=/dev/$DISK bs=1 seek=446 conv=notrunc 2>/dev/null
  printf '\125\252' | dd of=/dev/$DISK bs=1 seek=510 conv=notrunc 2>/dev/null
  blockdev --rereadpt /dev/$DISK
  i=0
  while [ ! -e /dev/${DISK}1 ] && [ $i -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
  mkdosfs -F 32 -n STANDIN /dev/${DISK}1 >/dev/null || fail "mkdosfs failed"
  mkdir -p /mnt
  mount -t vfat /dev/${DISK}1 /mnt || fail "cannot mount the new ESP"
  mkdir -p /mnt/EFI/BOOT /mnt/EFI/debian /mnt/rayos-standin
  # (3) The same signed chain: shim as the removable-media loader, GRUB
  # beside it (shim loads grubx64.efi from its own directory), GRUB's
  # configuration where its built-in prefix (/EFI/debian) looks.
  cp /standin/shimx64.efi /mnt/EFI/BOOT/BOOTX64.EFI
  cp /standin/mmx64.efi /mnt/EFI/BOOT/mmx64.efi
  cp /standin/grubx64.efi /mnt/EFI/BOOT/grubx64.efi
  cp /standin/vmlinuz /mnt/vmlinuz
  cp /standin/grub-run.cfg /mnt/EFI/debian/grub.cfg
  # The installed system's initramfs is this one without the payload
  # (the medium's GRUB loaded it as a second archive).
  cp /standin/initrd.img /mnt/initrd.img
  # (2) The secrets: TPM NV index, a UEFI variable, the marker file.
  secret=$(hexdump -v -n 8 -e '/1 "%02x"' /dev/urandom)
  id=$(cut -c1-8 /proc/sys/kernel/random/uuid)
  nv_write $secret || fail "cannot write the TPM NV index"
  printf '\007\000\000\000%s' "$id" > $EFIVAR || fail "cannot write the UEFI variable"
  echo "install=$id nv=$secret" > /mnt/rayos-standin/marker
  sync
  umount /mnt
  echo "STANDIN_INSTALLED id=$id nv=$secret"
  # (4) Done: power off (RayOS marks the VM provisioned at this first
  # power-off of an unprovisioned VM with media).
  sync
  poweroff -f
  sleep 60
fi

# Booted from the disk.
mkdir -p /mnt
mount -t vfat -o ro /dev/${DISK}1 /mnt || fail "cannot mount the installed ESP"
marker=$(cat /mnt/rayos-standin/marker 2>/dev/null)
[ -n "$marker" ] || fail "no marker on the disk"
echo "STANDIN_MARKER $marker"
want=${marker##*nv=}
check_nv() {
  got=$(nv_read)
  if [ -n "$got" ] && [ "$got" = "$want" ]; then
    echo "STANDIN_NV ok $got"
  else
    echo "STANDIN_NV mismatch got=${got:-none} want=$want"
  fi
}
check_nv
echo "STANDIN_EFIVAR $(tail -c +5 $EFIVAR 2>/dev/null || echo missing)"
umount /mnt

# The ACPI power button powers the guest off, so a graceful stop works.
powerbutton() {
  for d in /sys/class/input/event*; do
    [ "$(cat $d/device/name 2>/dev/null)" = "Power Button" ] || continue
    if dd if=/dev/input/${d##*/} bs=24 count=1 2>/dev/null | grep -q .; then
      echo "POWER button pressed"
      sync
      poweroff -f
    fi
  done
}
powerbutton &
echo "STANDIN_READY"
n=0
while :; do
  echo "COUNTER $n"
  n=$((n + 1))
  # The TPM is read again every 10 s, so a resumed guest shows that its
  # TPM (swtpm's state, carried in the saved state) still holds the secret.
  [ $((n % 40)) = 0 ] && check_nv
  sleep 0.25
done

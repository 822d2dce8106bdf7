#!/bin/sh
# Runs inside the new root (chroot) at the end of mmdebstrap, with a
# private tmpfs on /boot/efi standing in for the VM's EFI system partition:
# whatever lands there becomes the ESP image. Everything here is what the
# guest itself would do, so its own `apt upgrade` later works the same way.
set -eu
kver=$(ls /boot/vmlinuz-* | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1)
# The overlay's /etc/initramfs-tools/{modules,conf.d/rayos-vm.conf} make a
# small lz4 initramfs with the VM's disk drivers and qemu_fw_cfg (systemd
# imports the fw_cfg credentials when PID 1 starts, before udev of the real
# root runs: the driver must already be loaded by the initramfs).
update-initramfs -u -k "$kver"
# systemd-boot into the ESP, entries named by /etc/kernel/entry-token.
# SYSTEMD_RELAX_ESP_CHECKS: /boot/efi is a tmpfs here, not a FAT partition.
export SYSTEMD_RELAX_ESP_CHECKS=1
bootctl install --esp-path=/boot/efi --no-variables --make-entry-directory=yes
BOOT_ROOT=/boot/efi kernel-install add "$kver" "/boot/vmlinuz-$kver"
# Every VM made from this image would share these: made at first boot.
rm -f /etc/ssh/ssh_host_* /boot/efi/loader/random-seed
systemctl disable ssh.service
# No LVM here, nothing for e2scrub to check (also in the preset file).
systemctl disable e2scrub_reap.service e2scrub_all.timer
# login(1) gives up 60 s (guest clock) after the user name when the password
# check has not finished; emulated inside an emulated machine PAM takes
# longer than that, and the console's login kept timing out.
sed -i 's/^LOGIN_TIMEOUT[[:space:]].*/LOGIN_TIMEOUT\t\t600/' /etc/login.defs
grep -q '^LOGIN_TIMEOUT[[:space:]]*600$' /etc/login.defs
# The installer's default locale, compiled once here instead of at every
# VM's first boot (localedef takes seconds without KVM, minutes nested).
sed -i 's/^# *en_US.UTF-8 UTF-8$/en_US.UTF-8 UTF-8/' /etc/locale.gen
locale-gen >/dev/null
# Replaced by rayos-firstboot (systemd-firstboot would prompt on the console).
systemctl mask systemd-firstboot.service
systemctl enable rayos-firstboot.service

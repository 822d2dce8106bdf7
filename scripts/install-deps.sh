#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages RayOS needs to build, test and run its
# media. Run as root on a fresh machine; as another user it only reports what
# is missing. Idempotent: packages already present are skipped by apt.
set -euo pipefail

PKGS=(
  # disks and filesystems
  gdisk dosfstools mtools e2fsprogs util-linux fdisk
  # virtual machines
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools
  # boot media
  systemd-boot-efi xorriso cpio busybox-static kmod zstd binutils
  linux-image-amd64 efibootmgr
  # the Debian VM image (docs/linux-vm.md)
  mmdebstrap
  # tests (g++: libFuzzer, built by the fuzz targets; iproute2 + dnsmasq-base:
  # the DHCP test of `rayos net` in network namespaces, docs/network.md;
  # kbd + console-data: the keymap test of rayos-init, docs/init.md, and with
  # xkb-data the layout tables of the agent bridge, docs/agent-bridge.md)
  tmux g++ iproute2 dnsmasq-base kbd console-data xkb-data
)

find_missing() {
  missing=()
  for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
}
find_missing

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all system packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"

# apt may remove a package we need to install another: a machine with
# bookworm-backports' qemu-utils 10.0 loses it when bookworm's
# qemu-system-x86 7.2 comes in. A second pass puts back what went (from
# bookworm, now that nothing newer is installed), and a third check fails
# loudly instead of leaving tests to find a missing tool.
find_missing
if [ ${#missing[@]} -ne 0 ]; then
  echo "install-deps: apt removed ${missing[*]}; installing again"
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  find_missing
  if [ ${#missing[@]} -ne 0 ]; then
    echo "install-deps: still missing after install: ${missing[*]}" >&2
    exit 1
  fi
fi

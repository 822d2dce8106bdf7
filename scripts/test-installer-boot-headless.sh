#!/bin/sh
# The end-to-end install test under QEMU + OVMF (TCG, headless): boots the
# installer media, installs unattended onto a blank disk, boots the installed
# system twice and checks the markers, the UEFI boot entry, the VM resume and
# the logs (same as `cargo xtask e2e`; e.g. --variant iso --variant usb
# --variant 4k, or --boot-only for the quick boot check).
set -eu
cd "$(dirname "$0")/.."
exec cargo xtask e2e "$@"

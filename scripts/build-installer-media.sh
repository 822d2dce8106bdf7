#!/bin/sh
# Builds build/rayos.efi, build/rayos-installer.iso, build/rayos-installer-usb.img
# and build/manifest.json (same as `cargo xtask media`; options pass through,
# e.g. --zstd-level 3 for a quick build). Run from anywhere on Debian 12.
set -eu
cd "$(dirname "$0")/.."
exec cargo xtask media "$@"

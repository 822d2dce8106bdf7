#!/bin/sh
# The installer's dry run on the build host: plans an install of RayOS onto a
# blank sparse disk image with the end-to-end answer file, prints the plan and
# checks that nothing was written (same as `cargo xtask e2e --dry-run`).
set -eu
cd "$(dirname "$0")/.."
exec cargo xtask e2e --dry-run "$@"

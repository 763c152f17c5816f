#!/usr/bin/env bash
# The embedded demo: grows with the toolchain. Usage: recipes/demo.sh OUT_DIR
set -euo pipefail
out=${1:-demo_out}
mkdir -p "$out"
python -m avat3r.demo "$out"

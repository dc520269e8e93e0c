#!/usr/bin/env bash
# Split the FlashAttention-4 wheels that ../shared/gpu/fa4-wheels.sh put in .whl/a and .whl/b
# into three carries that each fit the device tool's 64-MiB limit next to the working tree:
#   .whl/a  (part_00, ~47 MB)            call 1: mkdir -p /root/fa4 && cp .whl/a/* /root/fa4/
#   .whl/w  (the small wheels, ~10 MB)   call 2: mkdir -p /root/fa4w && cp .whl/w/* /root/fa4w/
#   .whl/p  (part_01, ~42 MB, install)   call 3: source .whl/p/install.sh && <command>
# sent back to back (the machine stays yours ~30 s after a call). Why: with .whl/b (52 MB)
# the 16 MB of tracked files no longer fit in one carry (session 8).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .whl/b ] || { echo "run bash ../shared/gpu/fa4-wheels.sh first" >&2; exit 1; }
rm -rf .whl/w .whl/p && mkdir -p .whl/w .whl/p
cp .whl/b/*.whl .whl/w/
cp .whl/b/part_0* .whl/p/
cat >.whl/p/install.sh <<'SH'
# Sourced on the device machine after the two copy calls (scripts/fa4_split.sh).
if [ ! -f /tmp/fa4site/.complete ]; then
  mkdir -p /tmp/fa4site
  cat /root/fa4/part_00 .whl/p/part_0* > /tmp/cutlass_libs_cu13.whl || return 1
  for w in /root/fa4w/*.whl /tmp/cutlass_libs_cu13.whl; do python3 -m zipfile -e "$w" /tmp/fa4site || return 1; done
  touch /tmp/fa4site/.complete
fi
export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
SH
du -sh .whl/a .whl/w .whl/p

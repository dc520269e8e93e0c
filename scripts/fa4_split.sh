#!/usr/bin/env bash
# Split the FlashAttention-4 wheels that ../shared/gpu/fa4-wheels.sh put in .whl/a and .whl/b
# into carries that each fit the device tool's 64-MiB limit next to the working tree (which
# travels with every call: 19 MB in session 12, so .whl/a's 47 MB no longer fit beside it).
# Prints the calls to send back to back (the machine stays yours ~30 s after a call):
#   .whl/c1 .. .whl/c(N-1)   cp .whl/cI/* /root/fa4c/            (one chunk each)
#   .whl/cN                  source .whl/cN/install.sh && <command>  (last chunk + installer)
# The installer joins the chunks, unpacks the wheels into /tmp/fa4site once per machine and
# puts them on PYTHONPATH. Run from anywhere; re-run when the tree has grown.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .whl/a ] && [ -d .whl/b ] || { echo "run bash ../shared/gpu/fa4-wheels.sh first" >&2; exit 1; }
# The tree that travels: tracked files plus untracked files git does not ignore.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- | tail -n 1 | cut -f1)
limit=$((64 * 1024 * 1024 - 2 * 1024 * 1024))  # 2 MiB of margin
chunk=$((limit - tree))
[ "$chunk" -gt $((8 * 1024 * 1024)) ] || { echo "the tree ($tree bytes) leaves no room for a carry" >&2; exit 1; }
rm -rf .whl/c* .whl/w .whl/p .whl/a1 .whl/a2 .whl/stage && mkdir -p .whl/stage
# One stream: the split cutlass wheel (part_00 from a, part_0* from b) and the other wheels.
tar -cf - -C .whl a/part_00 $(cd .whl && ls b/part_0* b/*.whl) | split -b "$chunk" -d -a 2 - .whl/stage/chunk_
n=$(ls .whl/stage | wc -l)
i=0
for f in .whl/stage/chunk_*; do
    i=$((i + 1))
    mkdir -p ".whl/c$i" && mv "$f" ".whl/c$i/"
done
rmdir .whl/stage
cat >".whl/c$n/install.sh" <<SH
# Sourced on the device machine after the copy calls (scripts/fa4_split.sh).
if [ ! -f /tmp/fa4site/.complete ]; then
  mkdir -p /tmp/fa4site /tmp/fa4tar
  cat /root/fa4c/chunk_* .whl/c$n/chunk_* | tar -xf - -C /tmp/fa4tar || return 1
  cat /tmp/fa4tar/a/part_00 /tmp/fa4tar/b/part_0* > /tmp/cutlass_libs_cu13.whl || return 1
  for w in /tmp/fa4tar/b/*.whl /tmp/cutlass_libs_cu13.whl; do
    python3 -m zipfile -e "\$w" /tmp/fa4site || return 1
  done
  touch /tmp/fa4site/.complete
fi
export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages\${PYTHONPATH:+:\$PYTHONPATH}
SH
echo "tree $((tree / 1024 / 1024)) MiB, chunks of at most $((chunk / 1024 / 1024)) MiB; send back to back:"
for j in $(seq 1 $((n - 1))); do
    echo "  run carry [\".whl/c$j\"]: mkdir -p /root/fa4c && cp .whl/c$j/* /root/fa4c/"
done
echo "  run carry [\".whl/c$n\"]: source .whl/c$n/install.sh && <command>"

#!/usr/bin/env bash
# Prepare bench/gpu_check.py's carry on a CPU machine, into .gpu/ (ignored by git):
#   .gpu/wheels  bashgpt's own wheel, and for Python 3.12 on manylinux x86_64 every release it needs that the GPU
#                image does not keep, at the versions this Python has (bench/gpu_wheels.py says which)
#   .gpu/corpus  the stage-2 corpus: `bashgpt collect` of this machine's scripts (with Debian's: 67 MiB in all, too large)
# Then it checks that the working tree and the carry travel within the device tool's 64 MiB.
#
#   bash bench/gpu_prepare.sh [PYTHON]        # PYTHON: a venv's python with bashgpt installed (default .venv/bin/python)
#   SOURCES="system debian:" bash bench/gpu_prepare.sh   # also Debian's scripts (default: this machine's: "system")
#
# On the GPU machine, carry .gpu and run: python3 bench/gpu_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
SOURCES=${SOURCES:-system}
LIMIT_MIB=64
[ -x "$PY" ] || { echo "gpu_prepare: no Python at $PY; make the venv first (the README's test command) or name one" >&2; exit 2; }
STAGE=.gpu.tmp
rm -rf "$STAGE"
mkdir -p "$STAGE/wheels"

echo "gpu_prepare: bashgpt's wheel"
rm -rf build  # setuptools' staging folder: a stale one would ship files the tree no longer has
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$STAGE/wheels" .
"$PY" bench/gpu_wheels.py > "$STAGE/carry.txt"
echo "gpu_prepare: $(wc -l < "$STAGE/carry.txt") releases for Python 3.12 manylinux x86_64"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$STAGE/wheels" -r "$STAGE/carry.txt"

echo "gpu_prepare: the stage-2 corpus (bashgpt collect $SOURCES)"
# shellcheck disable=SC2086  # SOURCES is a list of sources
if ! "$PY" -m bashgpt.cli collect $SOURCES --out "$STAGE/corpus" > "$STAGE/collect.log" 2>&1; then
  echo "gpu_prepare: collect $SOURCES failed ($(tail -n 1 "$STAGE/collect.log")); this machine's scripts only"
  rm -rf "$STAGE/corpus"
  "$PY" -m bashgpt.cli collect system --out "$STAGE/corpus" > "$STAGE/collect.log" 2>&1
fi
tail -n 4 "$STAGE/collect.log"

rm -rf .gpu
mv "$STAGE" .gpu
carry=$(du -sm .gpu | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cm --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
total=$((carry + tree))
echo "gpu_prepare: .gpu is ${carry} MiB, the working tree ${tree} MiB: ${total} of the ${LIMIT_MIB} MiB that may travel"
if [ "$total" -gt "$LIMIT_MIB" ]; then
  echo "gpu_prepare: too large to travel: collect fewer SOURCES" >&2
  exit 1
fi
echo "gpu_prepare: ready. On the GPU machine (carry .gpu): python3 bench/gpu_check.py --out \"\$OUT\""

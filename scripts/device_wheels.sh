#!/usr/bin/env bash
# Download, here, the Python 3.12 wheels that the GPU machine lacks (it has JAX, numpy, pillow and
# rich but no Keras), into .whl/ (ignored by git), so `scripts/device_train.sh` can install them
# there without a network. Run once per checkout: bash scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-python3}
platforms=()
for n in 2_28 2_27 2_24 2_17 2014 1; do
  case $n in 2014|1) platforms+=(--platform "manylinux${n}_x86_64");; *) platforms+=(--platform "manylinux_${n}_x86_64");; esac
done
# Only what the machine lacks: keras (the version installed here, so .keras files match) and its
# two needs that are not there. Everything else Keras and the CLI import (h5py, ml-dtypes, absl-py,
# rich, typer, matplotlib) is in the machine's image; carrying other versions of those would shadow
# the ones its jaxlib was built against.
keras_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("keras"))' 2>/dev/null || echo 3.15.1)
packages=("keras==$keras_version" namex optree)
for pkg in "${packages[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pkg"
done
du -sh .whl

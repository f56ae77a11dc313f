#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored through .git/info/exclude) the wheels the GPU benchmark
# (python3 -m bench.gpu) needs on a GPU machine that has Python 3.12, JAX with its CUDA
# plugin, NumPy, Pillow and Keras's other dependencies, but no Keras, no TensorFlow and no
# package registry (the nvidia-h200 machines of /work/.library/device/KINDS.md): Keras at
# the project's pin (pyproject.toml) and the two dependencies of it missing there, namex and
# optree, at the versions this project's venv resolved. About 2 MB in all, far below the
# 64 MiB a call may carry. Run it where pip reaches a registry, from the repository root:
#
#     bash bench/gpu_wheels.sh            # PYTHON_VERSION=3.12 by default
#
# then, on the GPU machine, with .whl carried (README, GPU benchmark):
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#         --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python3 -m bench.gpu
#
# TensorFlow is left out: tensorflow-cpu 2.21.0 is a 274 MB wheel for Python 3.12 (more than
# four times what a call may carry) and needs five more packages that machine lacks, so there
# the real-pipeline column (tf.data) is skipped; see README, GPU benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PIP=${PIP:-python3 -m pip}
HOST_PYTHON=${HOST_PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# Keras's pin from pyproject.toml; namex and optree as this project's venv has them (any
# version satisfies Keras; unpinned where the venv is missing).
keras=$("$HOST_PYTHON" -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("keras==")))')
pinned() {
    "$HOST_PYTHON" -c "import importlib.metadata as m, sys
try: print(f'$1=={m.version(\"$1\")}')
except m.PackageNotFoundError: print('$1')"
}
wheels=("$keras" "$(pinned namex)" "$(pinned optree)")

mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
$PIP download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp "${platforms[@]}" -d .whl "${wheels[@]}"
echo "in .whl/ for Python $PYTHON_VERSION (${wheels[*]}):"
ls -l .whl/
du -sh .whl/

#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored through .git/info/exclude) the wheels the GPU benchmark
# (bench/gpu_run.sh) needs on a GPU machine that has Python 3.12, JAX with its CUDA plugin,
# NumPy, Pillow and Keras's other dependencies, but no Keras, no TensorFlow and no package
# registry (the nvidia-h200 machines of /work/.library/device/KINDS.md): Keras at the
# project's pin (pyproject.toml) and the two dependencies of it missing there, namex and
# optree, at the versions this project's venv resolved. About 3 MB. Run it where pip reaches
# a registry, from the repository root:
#
#     bash bench/gpu_wheels.sh [--with-tensorflow]      # PYTHON_VERSION=3.12 by default
#
# --with-tensorflow also packs tensorflow-cpu (for tf.data: the real-pipeline column) for a
# machine that may receive only 64 MiB per call: the 274 MB wheel, unpacked, without its C++
# headers, its shared libraries stripped, as one xz tar (122 MB, about 4 minutes on 2 cores)
# split in two parts, .tf1/part00 and .tf2/part01, plus its small dependencies in .tfx/
# (google-crc32c for the benchmark's TFRecord writer). README, GPU benchmark, says how the
# two parts travel in two calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PIP=${PIP:-python3 -m pip}
HOST_PYTHON=${HOST_PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for ignored in /.whl/ /.tf1/ /.tf2/ /.tfx/; do
    grep -qxF "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >>"$exclude"
done

# Keras's pin from pyproject.toml; namex and optree as this project's venv has them (any
# version satisfies Keras; unpinned where the venv is missing).
keras=$("$HOST_PYTHON" -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("keras==")))')
pinned() {
    "$HOST_PYTHON" -c "import importlib.metadata as m, sys
try: print(f'$1=={m.version(\"$1\")}')
except m.PackageNotFoundError: print('$1')"
}
wheels=("$keras" "$(pinned namex)" "$(pinned optree)")

platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
download() {  # download FOLDER REQUIREMENT...
    mkdir -p "$1"
    $PIP download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
        --implementation cp "${platforms[@]}" -d "$@"
}
download .whl "${wheels[@]}"
echo "in .whl/ for Python $PYTHON_VERSION (${wheels[*]}):"
ls -l .whl/
du -sh .whl/

[[ ${1:-} == --with-tensorflow ]] || exit 0
# TensorFlow's dependencies that machine lacks or has at versions TensorFlow refuses.
download .tfx "$(pinned google-crc32c)" "$(pinned protobuf)" "$(pinned astunparse)" \
    "$(pinned gast)" "$(pinned google-pasta)" "$(pinned termcolor)" "$(pinned flatbuffers)" \
    "$(pinned wrapt)"
tensorflow=$("$HOST_PYTHON" -c 'import tomllib; print(next(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("tensorflow-cpu==")).split(";")[0])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download "$work" "$tensorflow"
mkdir "$work/unpacked"
(cd "$work/unpacked" && unzip -q "$work"/tensorflow_cpu-*.whl && rm -rf tensorflow/include &&
    find . -name '*.so*' -type f -exec strip --strip-unneeded {} +)
rm -rf .tf1 .tf2 && mkdir .tf1 .tf2
tar -cf - -C "$work/unpacked" . | xz -T0 -9 | split -b 61500000 -d - "$work/part"
if [[ -e $work/part02 ]]; then
    echo "tensorflow packs to more than two parts of 61.5 MB: carry a third call's worth" >&2
    exit 1
fi
mv "$work/part00" .tf1/ && mv "$work/part01" .tf2/
cat .tf1/part00 .tf2/part01 | sha256sum | cut -d' ' -f1 >.tf2/sha256
ls -l .tfx/ .tf1/ .tf2/

#!/usr/bin/env bash
# The GPU benchmark on a lent GPU machine without a registry (README, GPU benchmark), from
# the repository root: installs the wheels in .whl (Keras; bench/gpu_wheels.sh makes them),
# and TensorFlow too where its two parts are there (the first copied to /tmp/parts by an
# earlier call, the second carried in .tf2; its dependencies in .tfx; the README says which
# call carries what), then runs `python3 -m bench.gpu
# --backend jax "$@"`, its log and JSON written to $OUT (or ./gpu-results). Without
# TensorFlow the in-memory and on-device arms still run.
set -uo pipefail
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
results=${OUT:-gpu-results}
mkdir -p "$results"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
if [[ -f /tmp/parts/part00 && -f .tf2/part01 ]]; then
    if [[ $(cat /tmp/parts/part00 .tf2/part01 | sha256sum | cut -d' ' -f1) != "$(cat .tf2/sha256)" ]]; then
        echo "the TensorFlow parts do not match (.tf2/sha256): make both with one run of" \
             "bench/gpu_wheels.sh --with-tensorflow" >&2
        exit 1
    fi
    rm -rf /tmp/tf
    cat /tmp/parts/part00 .tf2/part01 | python3 -c "import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/tf', filter='data')" &&
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/tfdeps .tfx/*.whl || exit 1
    export PYTHONPATH=/tmp/site:/tmp/tfdeps:/tmp/tf
    python3 -c "import tensorflow" || exit 1
else
    echo "no TensorFlow parts (/tmp/parts/part00 and .tf2/part01): the real-pipeline column" \
         "will not be measured"
fi
python3 -m bench.gpu --backend jax --json "$results/gpu.json" "$@" 2>&1 | tee "$results/gpu.log"

#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the session's `device` tool; CI never runs there). That machine is bare,
# cannot reach a package registry and sees only this checkout, so the run is prepared here first:
#
#   bash .ci/device-run.sh prepare medmnist Task04_Hippocampus   # here: .whl/ (wheels), .devdata/ (data copies)
#
# then, through the device tool, with carry [".whl", ".devdata"] (64 MiB in all with the checkout):
#
#   bash .ci/device-run.sh bench [bench args]            # python -m lmttm_monai.experiments.bench --device cuda -> $OUT
#   bash .ci/device-run.sh results NAME [results args]   # python -m lmttm_monai.experiments.results run NAME -> $OUT/NAME.tar.gz
#
# Only plain files directly under $OUT come back (8 at most, 16 MiB each), so a results folder comes back as one
# tarball of its run.json, logs, tables and figures, without checkpoints. DEADLINE (seconds, default 480) stops the
# training early enough that the table, the figures and the tarball are still written inside one 600 s call; a run
# stopped there is not in the table (results reports finished runs only).
set -euo pipefail
cd "$(dirname "$0")/.."
# the pure-Python packages the GPU image lacks (its torch, numpy, matplotlib and einops are used as they are);
# SimpleITK is left out (50 MB): training and evaluation read NIfTI with nibabel and import it only on first use
WHEELS=(monai==1.6.1 pytorch-ignite==0.5.5 fire==0.7.1 termcolor==3.3.0 nibabel==5.4.2)

usage() {
    echo "usage: bash .ci/device-run.sh prepare DATASET... | bench [ARGS] | results NAME [ARGS]" >&2
    exit 2
}

on_device() {
    : "${OUT:?OUT is not set: bench and results run on the device machine, whose OUT comes back}"
    if ! ls .whl/*.whl > /dev/null 2>&1; then
        echo "device-run: .whl/ holds no wheels: run 'bash .ci/device-run.sh prepare ...' here and carry .whl" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MONAI_DATA_DIRECTORY="$PWD/.devdata"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, monai; print(torch.__version__, torch.cuda.is_available(), 'monai', monai.__version__)"
}

command=${1:-}
[ -n "$command" ] || usage
shift
case "$command" in
prepare)
    [ $# -gt 0 ] || usage
    rm -rf .whl && mkdir -p .whl .devdata
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    for name in "$@"; do
        source_dir="${MONAI_DATA_DIRECTORY:-../shared/data}/$name"
        [ -d "$source_dir" ] || { echo "device-run: $source_dir is not a folder" >&2; exit 1; }
        rm -rf ".devdata/$name" && cp -r "$source_dir" ".devdata/$name"
    done
    du -sh .whl .devdata
    echo "carry [\".whl\", \".devdata\"]; keep them out of git (.git/info/exclude: /.whl/ and /.devdata/)"
    ;;
bench)
    on_device
    python3 -m lmttm_monai.experiments.bench --device cuda --out "$OUT/benchmarks_cuda.md" "$@"
    ;;
results)
    [ $# -gt 0 ] || usage
    name=$1
    shift
    on_device
    runs="/tmp/results/$name"
    # timeout runs the command in a process group of its own and signals the whole group at the deadline, so the
    # trainings that results started stop too, not only the scheduler
    set +e
    timeout --kill-after=30 "${DEADLINE:-480}" python3 -m lmttm_monai.experiments.results run "$name" --out "$runs" "$@"
    echo "device-run: results run ended with status $? (124: the deadline stopped it)"
    set -e
    if [ -f "$runs/comparison.json" ]; then
        python3 -m lmttm_monai.experiments.results table "$runs" --figures "$runs/figures" || true
    fi
    tar -czf "$OUT/$name.tar.gz" --exclude='*.pt' --exclude='*.ts' -C /tmp/results "$name"
    ls -la "$OUT"
    ;;
*)
    usage
    ;;
esac

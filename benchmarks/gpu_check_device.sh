#!/usr/bin/env bash
# The device run of benchmarks/gpu_check.py (issue 14, item 4; issue 24: its first part, "busy", is a
# GPU-bound model with one worker per GPU, printed as "busy model" against the >= 90% busy and <= 2%
# idle goals), from the repository root:
#   bash benchmarks/gpu_check_device.sh      (the `run` tool, with carry [".whl"])
# The device has python3.12 with torch (CUDA), numpy, msgpack, rich, fsspec, scikit-learn and
# nvidia-ml-py; pyzmq, pykka and lmdb come as wheels in .whl/ (git-ignored: carry it). The
# repository is imported from $PWD (symlinks pbt_actors/storage, pbt_actors/transport), not installed.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
rm -rf /tmp/gpu_check_work  # a rerun on a warm machine must not find the last run's finished stores
ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: run with carry [\".whl\"]"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 3
nvidia-smi -L || true
PYTHONUNBUFFERED=1 timeout -k 10 480 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json" \
  --workdir /tmp/gpu_check_work 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
for store in /tmp/gpu_check_work/store-*; do  # the workers' logs, per run
  [ -d "$store/logs" ] && mkdir -p "$OUT/logs/${store##*/}" && cp "$store"/logs/*.log "$OUT/logs/${store##*/}/" 2>/dev/null
done
echo "gpu_check exit code: $rc"
exit "$rc"

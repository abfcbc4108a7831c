#!/usr/bin/env bash
# Every GPU check and figure medpipe needs, as ONE device call (sessions get ~15 device minutes, start included).
#
# Prepare on the development machine (the GPU machine has no network and none of medpipe's venv):
#   bash bench/gpu_wheels.sh                                  # .whl/: the pinned wheels the GPU image lacks
#   mkdir -p data && cp -r ../shared/data/mammo-ddsm data/     # data/ and .whl/ are git-ignored: carry them
# Then run on the device machine, from the repo root, with carry [".whl", "data"] and timeout_s 570:
#   bash bench/gpu_check.sh
# Results land in $OUT (gpu_tests.txt, bench_train.txt, run_summary.md, run_history.json, env.txt).
# EPOCHS, SIZE, STEPS and DATA can be overridden (a CPU dry run: SIZE=32 STEPS=3 EPOCHS=1); the `medpipe run` step stops itself before the call's limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
DATA=${DATA:-data/mammo-ddsm}
EPOCHS=${EPOCHS:-30}
SIZE=${SIZE:-224}
STEPS=${STEPS:-60}
RUN_SECONDS=${RUN_SECONDS:-300}
mkdir -p "$OUT"
if ! python -c "import pydantic, imagehash, yaml, tqdm, pydicom, captum" 2>/dev/null; then
  python -m pip install --quiet --no-index --no-deps --target /tmp/medpipe-site .whl/*.whl
  export PYTHONPATH="/tmp/medpipe-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; } > "$OUT/env.txt"
cat "$OUT/env.txt"

echo "== 1. GPU tests (pytest -m gpu)"
python -m pytest -q -p no:cacheprovider -m gpu tests/test_device.py tests/evaluate/test_evaluate_model.py \
  2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

echo "== 2. training throughput, $SIZE px, batch 32 (ceiling vs medpipe vs PIL+DataLoader)"
python bench/bench_train.py --data "$DATA" --size "$SIZE" --steps "$STEPS" --warmup 3 --workers 8 2>&1 \
  | grep -v -e UserWarning -e check_worker | tail -8 | tee "$OUT/bench_train.txt"
python bench/bench_train.py --data "$DATA" --size "$SIZE" --steps "$STEPS" --warmup 3 --workers 8 --ema-decay 0.99 \
  --models custom_cnn resnet18 2>&1 | grep -v -e UserWarning -e check_worker | tail -3 | tee -a "$OUT/bench_train.txt"

echo "== 3. medpipe run on $DATA: $SIZE px, both models from random weights, $EPOCHS epochs"
rm -rf /tmp/gpu-run
timeout "$RUN_SECONDS" python -m medpipe run --data "$DATA" --out /tmp/gpu-run \
  --set data.image_size="$SIZE" --set data.cache_dir=/tmp/medpipe-cache --set train.epochs="$EPOCHS" --set train.patience="$EPOCHS" \
  --set models.resnet18.weights=none --set train.class_weights=none 2>&1 | grep -E "epoch|best|summary|error|Error" \
  | tail -40 | tee "$OUT/run_log.txt"
cp /tmp/gpu-run/summary.md "$OUT/run_summary.md" 2>/dev/null
for m in custom_cnn resnet18; do
  cp "/tmp/gpu-run/models/$m/history.json" "$OUT/${m}_history.json" 2>/dev/null
done
ls -la "$OUT"

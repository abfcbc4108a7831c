#!/usr/bin/env bash
# Download, on this machine, the wheels the GPU device image lacks (it has torch, torchvision, onnx, onnxruntime, scipy,
# scikit-learn, matplotlib, Pillow, numpy; it has no network), pinned by constraints.txt, for its Python 3.12,
# into .whl/ (git-ignored; carry it: `carry: [".whl", "data"]`). bench/gpu_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
pins=$(grep -i -E "^(pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions|ImageHash|PyWavelets|PyYAML|pydicom|captum|tqdm|pytest|pluggy|iniconfig|packaging)==" constraints.txt)
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --dest .whl $pins
du -sh .whl

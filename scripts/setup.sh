#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv with torch==2.13.0 (the CPU wheel on local disk; any other
# torch request would download a multi-GB CUDA build), then negschedule with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
python -c "import torch, diffusers, transformers, negschedule; print('negschedule', negschedule.__version__, '| torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"

#!/usr/bin/env bash
# One-time set-up on a fresh machine: a venv with torch==2.13.0 (the CPU wheel on local disk; any other
# torch request would download a multi-GB CUDA build), then negschedule with its UI and test extras,
# and Debian's chromium for the browser test of the web UI (Playwright drives it; it downloads no browser).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[ui,test]"
python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} replaced 2.13.0')"
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
            || echo "setup: could not install chromium; the browser test will be skipped" >&2
    else
        echo "setup: chromium not installed (needs root and apt-get); the browser test will be skipped" >&2
    fi
fi
python -c "import torch, diffusers, transformers, negschedule; print('negschedule', negschedule.__version__, '| torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"

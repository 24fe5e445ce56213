#!/usr/bin/env bash
# The checks that need a GPU, in one go (CI has none): the test files built on the shared tiny
# pipelines run with those pipelines on CUDA (float32, then the bit-exact stock comparisons in
# float16; the tests that compare a command-line run with a CPU pipeline are left out), every verb
# of the command line on CUDA with its defaults (--device auto --dtype auto), and bench_generate on
# an SD 1.5-shaped pipeline in float16 at 512x512. Figures of a run: benchmarks/README.md.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh      # logs and the benchmark's JSON under $OUT
# Needs torch with CUDA, and the project importable (PYTHONPATH=src or installed). The pictures and
# experiment folders go to $WORK (default $OUT/work).
set -u
OUT=$(realpath -m "${OUT:-runs/gpu-check}")
WORK=$(realpath -m "${WORK:-$OUT/work}")
mkdir -p "$OUT" "$WORK/cli"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
python3 -c "import torch, diffusers, transformers; print(torch.__version__, torch.cuda.get_device_name(), diffusers.__version__, transformers.__version__)"

TINY="tests/test_generate.py tests/test_engine.py tests/test_guidance_engine.py tests/test_engine_attention.py tests/test_sweep.py tests/test_experiments_removal.py tests/test_guidance_bench.py"
NEGSCHEDULE_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider -n 8 $TINY -k "not cli and not accelerate" >"$OUT/tests-cuda-float32.log" 2>&1
echo "tests on cuda, float32: rc $?"; tail -3 "$OUT/tests-cuda-float32.log"
NEGSCHEDULE_TEST_DEVICE=cuda NEGSCHEDULE_TEST_DTYPE=float16 python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_generate.py >"$OUT/tests-cuda-float16.log" 2>&1
echo "test_generate on cuda, float16: rc $?"; tail -3 "$OUT/tests-cuda-float16.log"

ns() { python3 -m negschedule.cli "$@"; }
{
  ns generate --prompt "a red circle and a blue square" --negative-prompt "blue square" --negative-start 5 --out "$WORK/cli/gen.png" && echo "generate ok"
  ns compare --prompt "a red circle and a blue square" --negative-prompt "blue square" --negative-start 0.25 --dtype float32 --out "$WORK/cli/cmp.png" && echo "compare ok"
  ns generate --prompt "night, a red square" --negative-prompt moon --negative-start auto --out "$WORK/cli/auto.png" && echo "auto ok"
  ns generate --prompt "night, a red square" --negative-prompt moon --negative-start auto --auto-signal rollout --out "$WORK/cli/rollout.png" && echo "rollout ok"
  for rule in perp_neg negative_scale dng; do
    ns generate --prompt "a red circle and a blue square" --negative-prompt "blue square" --guidance $rule --out "$WORK/cli/$rule.png" && echo "$rule ok"
  done
  ns generate --prompt "a red circle" --negative-prompt "[:blue square:0.3]" --negative-start percent:0.2 --out "$WORK/cli/pct.png" && echo "percent ok"
  ns generate --prompt "a red circle" --init-image "$WORK/cli/gen.png" --negative-prompt "blue square" --negative-start 2 --out "$WORK/cli/i2i.png" && echo "img2img ok"
  ns sweep --prompt "night, a red square" --negative-prompt moon --concept moon --seeds 0:2 --starts 0,4,8 --no-progress --out "$WORK/sweep" && echo "sweep ok"
  ns removal-curve --prompt "night, a red square" --negative-prompt moon --concept moon --seeds 0 --no-progress --out "$WORK/curve" && echo "removal-curve ok"
  ns attention --prompt "night, a red square" --tokens square --negative-prompt moon --negative-tokens moon --negative-start 4 --out "$WORK/attention" && echo "attention ok"
  ns generate --prompt x --device cuda:7 --out "$WORK/cli/bad.png"; echo "bad device: rc $?"
} >"$OUT/cli.log" 2>&1
grep -E " ok$|rc |Error|error" "$OUT/cli.log" | head -40

cd benchmarks && python3 bench_generate.py --model sd15-shaped --device cuda --dtype float16 --repeats 10 --also auto --also perp_neg >"$OUT/bench-sd15-float16.json" 2>"$OUT/bench.err"
echo "bench rc $?"; cat "$OUT/bench-sd15-float16.json"; tail -3 "$OUT/bench.err"

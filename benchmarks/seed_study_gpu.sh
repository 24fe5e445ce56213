#!/usr/bin/env bash
# Many training seeds of the shipped recipe at once on one GPU: how the named-shape figure of
# `toy eval` spreads over seeds (docs/toyworld.md, "Twelve seeds on a GPU"). Each seed is the full
# `negschedule toy train --device cuda` (data, VAE, latents, UNet + text encoder; the recipe and
# its CPU random draws unchanged), then `toy eval --starts 0` on the first two caption sets.
#   SEEDS="10 11 12" WORK=/tmp/study bash benchmarks/seed_study_gpu.sh start   # launch, detached
#   WORK=/tmp/study bash benchmarks/seed_study_gpu.sh watch 540                  # progress for N s, then the table
# The runs are detached (setsid), so `watch` can be called again while they go on. Figures land
# in $WORK/s<seed>/eval-set{1,2}/eval.json; `collect` prints one JSON line per seed.
set -u
WORK=${WORK:-/tmp/seed-study}
WORLD=${WORLD:-moon-alone}
EXTRA=${EXTRA:-}  # more `toy train` options for every seed (a variant of the recipe)
ns() { python3 -m negschedule.cli "$@"; }

run_seed() {
  local s=$1 dir="$WORK/s$1"
  ns toy train --device cuda --threads 1 --world "$WORLD" --seed "$s" --out "$dir" $EXTRA >"$dir.train.log" 2>&1 || return
  ns toy eval --model "$dir/pipeline" --device cuda --dtype float32 --threads 1 --batch 200 --starts 0 \
    --out "$dir/eval-set1" >"$dir.eval1.log" 2>&1
  ns toy eval --model "$dir/pipeline" --device cuda --dtype float32 --threads 1 --batch 200 --starts 0 \
    --scene-seed 2000000 --image-seed 1000 --out "$dir/eval-set2" >"$dir.eval2.log" 2>&1
}

collect() {
  python3 - "$WORK" <<'EOF'
import json, pathlib, sys
for d in sorted(pathlib.Path(sys.argv[1]).glob("s*/"), key=lambda p: int(p.name[1:])):
    row = {"seed": int(d.name[1:])}
    for k in (1, 2):
        f = d / f"eval-set{k}" / "eval.json"
        if f.exists():
            s = json.loads(f.read_text())["summary"]
            row[f"set{k}"] = {n: s[n]["measured"] if isinstance(s[n], dict) else s[n] for n in s}
    fig = d / "figures.json"
    if fig.exists():
        row["train"] = json.loads(fig.read_text())
    print(json.dumps(row))
EOF
}

case "${1:-}" in
  start)
    mkdir -p "$WORK"
    export -f run_seed ns; export WORK WORLD EXTRA
    for s in ${SEEDS:-10 11 12 13 14 15 16 17 18 19 20 21}; do
      setsid nohup bash -c "run_seed $s" >/dev/null 2>&1 &
    done
    echo "launched: ${SEEDS:-10..21}" ;;
  watch)
    end=$((SECONDS + ${2:-60}))
    while [ $SECONDS -lt $end ]; do
      sleep 30
      echo "--- $(date +%T)"; for f in "$WORK"/s*.train.log; do echo "$(basename $f): $(tail -n1 "$f" | cut -c1-110)"; done
      ls "$WORK"/s*/eval-set2/eval.json 2>/dev/null | wc -l
    done
    collect ;;
  collect) collect ;;
  *) echo "usage: $0 start|watch [seconds]|collect" >&2; exit 2 ;;
esac

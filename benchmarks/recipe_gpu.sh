#!/bin/bash
# The recipe's GPU runs (docs/results.md), for a machine with one CUDA GPU and ~16 cores:
#
#   bash benchmarks/recipe_gpu.sh OUT grid    # TSN / TSM pretraining grid, seed 0, both families
#   bash benchmarks/recipe_gpu.sh OUT sweep   # the 3-seed sweep of both families at FRAME / SIZE
#   bash benchmarks/recipe_gpu.sh OUT all     # grid, then the sweep at the point the rule picks
#
# The rule, fixed before the runs: the cheapest grid point where TSM reaches 90 % within
# pairs on both families, else the one with the best mean. `sweep` reuses the grid's seed-0
# runs of that point when OUT holds them. Every finished run is appended to
# OUT/*/runs.jsonl as it finishes; with DEADLINE (seconds) the sweep stops then, and
# `python benchmarks/recipe.py --report-only --out OUT/recipe-FAMILY ...` summarises the
# runs it finished. `sweep` again on the same OUT goes on from those runs (only the
# missing ones run): the whole sweep (16 adapted models per seed and family) takes about
# 15 minutes on 16 cores, so it fits two calls of 10 minutes. With INIT=FILE (a frame-level
# pretrained backbone, benchmarks/frame_pretrain.py) TSN and TSM start from it
# (recipe.py --backbone-init) with its lr times BACKBONE_LR_MULT (default 1); the grid's
# runs, from scratch, are then not reused. LAMBDAS="0.1 0.3 0.5" sets the sweep's lambdas
# (default: recipe.py's); from a pretrained backbone a FLOPs budget needs larger ones.
set -u
OUT=${1:?usage: recipe_gpu.sh OUT grid|sweep|all}
STAGE=${2:-all}
FRAME=${FRAME:-64}
SIZE=${SIZE:-medium}
WORKERS=${WORKERS:-7}
DEADLINE=${DEADLINE:-100000}
INIT=${INIT:-}
BACKBONE_LR_MULT=${BACKBONE_LR_MULT:-1}
LAMBDAS=${LAMBDAS:-}
GRID=("32 small" "64 small" "64 medium")
FAMILIES=(motion cycles)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*"; }

if [[ $STAGE == grid || $STAGE == all ]]; then
    for family in "${FAMILIES[@]}"; do
        for point in "${GRID[@]}"; do
            set -- $point
            python benchmarks/recipe.py --family "$family" --frame-size "$1" --size "$2" \
                --seeds 0 --workers 2 --pretrain-only --out "$OUT/grid-$family-$1-$2" \
                >"$OUT/grid-$family-$1-$2.log" 2>&1 &
        done
    done
    wait
    say "grid done"
    for table in "$OUT"/grid-*/recipe.md; do echo "== $table" && cat "$table"; done
fi

if [[ $STAGE == all ]]; then
    read -r FRAME SIZE < <(
        python - "$OUT" "${GRID[@]}" <<'PY'
import json, statistics, sys
out, points = sys.argv[1], [p.split() for p in sys.argv[2:]]
def tsm(family, point):
    runs = json.load(open(f"{out}/grid-{family}-{point[0]}-{point[1]}/recipe.json"))["results"]
    return next(r["within_pair"] for r in runs if r["model"] == "TSM")
scores = [[tsm(f, p) for f in ("motion", "cycles")] for p in points]
good = [p for p, s in zip(points, scores) if min(s) >= 0.9]
best = max(zip(points, scores), key=lambda ps: statistics.mean(ps[1]))[0]
print(*(good[0] if good else best))
PY
    )
    [[ -n ${FRAME:-} && -n ${SIZE:-} ]] || { say "no grid point to choose (see $OUT/grid-*.log)"; exit 1; }
    say "chosen: ${FRAME}px, $SIZE"
fi

if [[ $STAGE == sweep || $STAGE == all ]]; then
    left=$((DEADLINE - ($(date +%s) - T0)))
    ((left > 0)) || { say "no time left for the sweep"; exit 1; }
    for family in "${FAMILIES[@]}"; do
        grid="$OUT/grid-$family-$FRAME-$SIZE"
        reuse=()
        init=()
        [[ -n $INIT ]] && init=(--backbone-init "$INIT" --backbone-lr-mult "$BACKBONE_LR_MULT")
        lambdas=()
        [[ -n $LAMBDAS ]] && read -ra lambdas <<<"--lambdas $LAMBDAS"
        [[ -f $grid/recipe.json && -z $INIT ]] && reuse=(--pretrained "$grid")
        if [[ -f $OUT/recipe-$family/runs.jsonl ]]; then  # a sweep cut short: go on from it
            done_runs="$OUT/recipe-$family.done-$(date +%s)"
            mkdir -p "$done_runs"
            cp "$OUT/recipe-$family"/{runs.jsonl,settings.json} "$done_runs"/
            reuse=(--pretrained "$done_runs")
        fi
        timeout "$left" python benchmarks/recipe.py --family "$family" --frame-size "$FRAME" \
            --size "$SIZE" --seeds 0 1 2 --workers "$WORKERS" ${reuse[@]+"${reuse[@]}"} \
            ${init[@]+"${init[@]}"} ${lambdas[@]+"${lambdas[@]}"} \
            --out "$OUT/recipe-$family" >"$OUT/recipe-$family.log" 2>&1 &
    done
    wait
    say "sweep done"
    for family in "${FAMILIES[@]}"; do tail -30 "$OUT/recipe-$family.log"; done
fi

#!/usr/bin/env bash
# The clean "no expression" ablation (docs/results.md): the same network, the same parameters and the same data,
# fed either the expression code (`full`) or the neutral code whatever is asked (`constant`,
# model.overrides.expression_conditioning = "constant"); two training seeds per arm, each fine-tuned for STEPS
# steps from the same starting checkpoint INIT (by default region weight 5 and a constant learning rate, as
# recorded for the first rows), two runs at a time on one thread each. Then every run is evaluated on the same
# held-out examples (inputs: neutral photos; targets: novel views at other expressions).
#
#   [SEEDS="0 1"] recipes/expression_ablation.sh INIT HELD_OUT_MANIFEST [STEPS] [OUT] [--set KEY=VALUE ...]
#
# Trailing --set arguments override the defaults in every run, e.g. the fine-tuning ablation from the shipped
# weights in docs/results.md:
#   SEEDS="12 13" recipes/expression_ablation.sh models/synthheads-tiny data/heldout-64-prior/manifest.parquet \
#       2000 runs/ablation-ft --set loss.expression_weight=15 --set optim.schedule=cosine --set optim.lr=1e-4 \
#       --set data.n_targets=8
set -euo pipefail
init=$1
heldout=$2
steps=${3:-1000}
out=${4:-runs/ablation}
shift $(( $# < 4 ? $# : 4 ))
extra=("$@")
seeds=${SEEDS:-0 1}
mkdir -p "$out"
# both arms keep INIT's input side and patch (the tiny preset's are 64 and 8)
read -r side patch < <(python "$(dirname "$0")/checkpoint_input.py" "$init")

train() {  # name seed conditioning
    OMP_NUM_THREADS=1 avat3r train --recipe recipes/synthheads-tiny.toml -o "$out/$1" --max-steps "$steps" --quiet \
        --set model.init="$init" \
        --set "model.overrides={input_res=$side, patch=$patch, expression_conditioning=\"$3\"}" \
        --set data.seed="$2" --set run.seed="$2" --set run.checkpoint_every=250 --set run.keep_checkpoints=0 \
        --set optim.max_steps="$steps" --set loss.expression_weight=5 --set optim.schedule=constant "${extra[@]}" \
        > "$out/$1.log" 2>&1
}
for seed in $seeds; do
    train "full-s$seed" "$seed" code &
    train "constant-s$seed" "$seed" constant &
    wait
done
for run in $(for seed in $seeds; do echo "full-s$seed constant-s$seed"; done); do
    avat3r eval -c "$out/$run/checkpoints/step_$(printf %08d "$steps")" -m "$heldout" --inputs other \
        --input-segments neutral -o "$out/eval-$run" --quiet
done
for seed in $seeds; do  # paired differences on the same examples, per training seed
    python recipes/ablation_table.py --ref "$out/eval-full-s$seed" "$out/eval-full-s$seed" "$out/eval-constant-s$seed"
done

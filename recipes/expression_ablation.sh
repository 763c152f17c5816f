#!/usr/bin/env bash
# The clean "no expression" ablation (docs/results.md): the same network, the same parameters and the same data,
# fed either the expression code (`full`) or the neutral code whatever is asked (`constant`,
# model.overrides.expression_conditioning = "constant"); two training seeds per arm, each fine-tuned for STEPS
# steps from the same starting checkpoint INIT (region weight 5, constant learning rate, as recorded), two runs at
# a time on one thread each. Then every run is evaluated on the same held-out examples (inputs: neutral photos; targets: novel views at other expressions).
#
#   recipes/expression_ablation.sh INIT HELD_OUT_MANIFEST [STEPS] [OUT]
set -euo pipefail
init=$1
heldout=$2
steps=${3:-1000}
out=${4:-runs/ablation}
mkdir -p "$out"

train() {  # name seed conditioning
    OMP_NUM_THREADS=1 avat3r train --recipe recipes/synthheads-tiny.toml -o "$out/$1" --max-steps "$steps" --quiet \
        --set model.init="$init" --set "model.overrides={expression_conditioning=\"$3\"}" \
        --set data.seed="$2" --set run.seed="$2" --set run.checkpoint_every=250 --set run.keep_checkpoints=0 \
        --set loss.expression_weight=5 --set optim.schedule=constant \
        > "$out/$1.log" 2>&1
}
for seed in 0 1; do
    train "full-s$seed" "$seed" code &
    train "constant-s$seed" "$seed" constant &
    wait
done
for run in full-s0 constant-s0 full-s1 constant-s1; do
    avat3r eval -c "$out/$run/checkpoints/step_$(printf %08d "$steps")" -m "$heldout" --inputs other \
        --input-segments neutral -o "$out/eval-$run" --quiet
done
for seed in 0 1; do  # paired differences on the same examples, per training seed
    python recipes/ablation_table.py --ref "$out/eval-full-s$seed" "$out/eval-full-s$seed" "$out/eval-constant-s$seed"
done

#!/usr/bin/env bash
# One training leg of the tiny model on one GPU, sized for a 10-minute job: build the SynthHeads training set
# and the held-out set (docs/results.md protocol) on every CPU core while gsplat compiles its CUDA kernels,
# train from INIT for STEPS steps or TRAIN_MINUTES (whichever ends first; the run stops with a checkpoint and
# can be continued with `avat3r train ... --resume`), evaluate on the held-out persons and rigs, and gather
# what is worth keeping in OUT.
#
#   OUT=out recipes/gpu_leg.sh                 # on the GPU machine (TORCH_CUDA_ARCH_LIST and MAX_JOBS set)
#   DRY_RUN=1 OUT=/tmp/leg recipes/gpu_leg.sh  # on a CPU: tiny sizes, a few steps, the same commands
#
# Environment (default): OUT (required), INIT (models/synthheads-tiny; empty = from scratch), PERSONS (120),
# STEPS (20000), BATCH (8), LR (2e-4), TARGETS (8), SEED (20), TRAIN_MINUTES (5), WORKERS (all cores),
# RES (128: the images' side, training and held-out; the held-out set is scored at RES),
# INPUT (the model's input side: INIT's, 64 from scratch; the patch is INPUT / 8, so the token grid stays 8×8 and
# an INIT with a smaller side starts from its lifted weights, avat3r.model.upres; RES > INPUT supervises at
# RES / INPUT × the inputs, which are block-averaged down, data.options.input_downsample, with priors computed at
# the input side, prior --downsample),
# DIM (from scratch only, INIT empty: the model width, the tiny preset's 128 by default; heads stay 4),
# DATA (data/gpu-leg; sets already built there are reused), RUN (runs/gpu-leg: the run folder, kept out of OUT).
#
# OUT receives: model/ (model.safetensors, config.json, train.json: what `load_checkpoint` reads; train_state/
# for --resume), scalars.jsonl, the last preview, eval-other/ and eval-mixed/ (metrics.md, metrics.parquet),
# and leg.log with every command and its wall time.
set -euo pipefail
: "${OUT:?set OUT to the folder that receives the checkpoint, logs and evaluation}"
INIT=${INIT-models/synthheads-tiny}
PERSONS=${PERSONS:-120} STEPS=${STEPS:-20000} BATCH=${BATCH:-8} LR=${LR:-2e-4} TARGETS=${TARGETS:-8}
SEED=${SEED:-20} TRAIN_MINUTES=${TRAIN_MINUTES:-5} WORKERS=${WORKERS:-$(nproc)} DATA=${DATA:-data/gpu-leg}
RES=${RES:-128} FRAMES=6 CAMERAS=12 HELDOUT=32 EXAMPLES=96 DEVICE=cuda
if [[ -n "${DRY_RUN:-}" ]]; then
    PERSONS=3 STEPS=3 BATCH=1 FRAMES=2 CAMERAS=8 HELDOUT=2 EXAMPLES=2 DEVICE=cpu TRAIN_MINUTES=2
fi
if [[ -n "${DIM:-}" && -n "$INIT" ]]; then  # a checkpoint's width is its own; widening is not a lift
    echo "gpu_leg.sh: DIM sets the width of a model trained from scratch; set INIT= (empty) with it" >&2
    exit 2
fi
if [[ -z "${INPUT:-}" ]]; then  # the checkpoint's input side (64 from scratch)
    INPUT=64
    [[ -n "$INIT" ]] && read -r INPUT _ < <(python "$(dirname "$0")/checkpoint_input.py" "$INIT")
fi
if (( INPUT % 64 || RES % INPUT )); then
    echo "gpu_leg.sh: INPUT must be a multiple of 64 and RES a multiple of INPUT, got INPUT=$INPUT RES=$RES" >&2
    exit 2
fi
mkdir -p "$OUT" "$DATA"
LOG="$OUT/leg.log"
step() {  # name command...: run, log the command and its wall time
    local name=$1 t0=$SECONDS
    shift
    echo "[$name] $*" | tee -a "$LOG"
    "$@"
    echo "[$name] done in $((SECONDS - t0)) s" | tee -a "$LOG"
}

if [[ "$DEVICE" == cuda ]]; then  # gsplat builds its kernels on first use: overlap that with the data
    python - >"$OUT/gsplat-build.log" 2>&1 <<'EOF' &
import torch
from avat3r.cameras import orbit_path
from avat3r.gaussians import Gaussians
from avat3r.render import rasterize
n = 64
g = Gaussians(torch.randn(n, 3) * 0.05, torch.nn.functional.normalize(torch.randn(n, 4), dim=-1),
              torch.full((n, 3), 2e-3), torch.full((n,), 0.5), torch.rand(n, 3))
rasterize(g.to("cuda"), orbit_path(1, radius=1.0, width=64, height=64, fov_y_degrees=14.0).to("cuda"), backend="gsplat")
torch.cuda.synchronize()
print("gsplat ready")
EOF
    build=$!
fi

# the training set of the shipped model (same seed: the same persons, rigs and codes), its priors at frames 0-1
train_set="$DATA/rand-$RES" heldout="$DATA/heldout-$RES" factor=$(( RES / INPUT ))
if [[ ! -f "$train_set-prior$INPUT/manifest.parquet" ]]; then
    step prep-train avat3r prep synth -o "$train_set" --persons "$PERSONS" --frames "$FRAMES" --cameras "$CAMERAS" \
        --res "$RES" --seed 0 --segments random --val-persons 0 --test-persons 0 --workers "$WORKERS" --shard-mb 4
    step prior-train avat3r prior "$train_set" -o "$train_set-prior$INPUT" --position geometric --frames 0-1 \
        --downsample "$factor" --workers "$WORKERS"
fi
if [[ ! -f "$heldout-prior$INPUT/manifest.parquet" ]]; then
    step prep-heldout avat3r prep synth -o "$heldout" --persons "$HELDOUT" --frames 1 --cameras "$CAMERAS" \
        --res "$RES" --seed 1 --segments neutral --segments EXP_jaw003 --segments EXP_smile --segments EXP_blink \
        --segments EXP_tongue001 --test-persons "$HELDOUT" --val-persons 0 --workers "$WORKERS" --shard-mb 2
    step prior-heldout avat3r prior "$heldout" -o "$heldout-prior$INPUT" --position geometric \
        --segments neutral,EXP_jaw003,EXP_smile --downsample "$factor" --workers "$WORKERS"
fi
if [[ -n "${build:-}" ]]; then
    step gsplat-build wait "$build"
fi

run=${RUN:-runs/gpu-leg}
step train avat3r train --recipe recipes/synthheads-tiny.toml -o "$run" --quiet --time-limit "$TRAIN_MINUTES" \
    --set "data.manifest=\"$train_set-prior$INPUT/manifest.parquet\"" --set "model.init=\"$INIT\"" \
    --set optim.max_steps="$STEPS" --set optim.batch_size="$BATCH" --set optim.lr="$LR" \
    --set data.n_targets="$TARGETS" --set data.num_workers="$(( WORKERS > 8 ? 8 : 0 ))" \
    --set data.seed="$SEED" --set run.seed="$SEED" --set run.checkpoint_every=1000 --set run.keep_checkpoints=1 \
    --set "model.overrides={input_res=$INPUT, patch=$(( INPUT / 8 ))${DIM:+, dim=$DIM}}" \
    --set "data.options={avoid_target_timestep=true, reference_views=true, input_downsample=$factor}"
ckpt=$(ls -d "$run"/checkpoints/step_* | sort | tail -n 1)
mkdir -p "$OUT/model"
cp -r "$ckpt"/. "$OUT/model/"
cp "$run/logs/scalars.jsonl" "$OUT/"
cp "$(ls "$run"/previews/*.png | sort | tail -n 1)" "$OUT/last_preview.png"
tail -n 1 "$OUT/scalars.jsonl" | tee -a "$LOG"

for mode in other mixed; do
    segments=()
    [[ "$mode" == other ]] && segments=(--input-segments neutral)
    step "eval-$mode" avat3r eval -c "$OUT/model" -m "$heldout-prior$INPUT/manifest.parquet" --inputs "$mode" \
        "${segments[@]}" -n "$EXAMPLES" --device "$DEVICE" -o "$OUT/eval-$mode" --quiet
done
grep -A 12 "^## Overall" "$OUT/eval-other/metrics.md" | tee -a "$LOG"

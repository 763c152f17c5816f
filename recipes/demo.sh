#!/usr/bin/env bash
# The embedded demo (`just demo`): reconstruct a held-out SynthHeads person (its own camera rig, never trained
# on) from 4 neutral photos with the shipped model, animate it with the built-in sequence, and render an orbit
# video, a PLY and a truth-vs-avatar contact sheet (every expression comes from the code alone); then film another held-out person as a driving video and reenact it
# with the avatar (expressions read off the video by the shipped regressor). Usage: recipes/demo.sh [OUT_DIR]
# [CHECKPOINT]
set -euo pipefail
out=${1:-demo_out}
ckpt=${2:-models/synthheads-tiny}
person=${DEMO_PERSON:-219}   # the shipped model trained on persons 0-119 of seed 0
mkdir -p "$out"

# photos at 128²: reconstruct brings them to the model's 64² by area averaging, as it would a camera's
avat3r prep synth-photos --person "$person" --res 128 --neutral -o "$out/inputs"
avat3r reconstruct "$out/inputs" --cams "$out/inputs/cams.json" --checkpoint "$ckpt" -o "$out/head.avt" \
    --self-contained
avat3r animate "$out/head.avt" --builtin demo --quiet | \
    avat3r render --path orbit --size 256 --video "$out/orbit.mp4" --quiet
avat3r render "$out/head.avt" --expr neutral --ply "$out/head.ply" --quiet
python "$(dirname "$0")/demo.py" sheet "$out/head.avt" --photos "$out/inputs" -o "$out/sheet.png"
avat3r export "$out/head.avt" -o "$out/head.rig.npz" --html "$out/viewer.html" --quiet

driver=${DEMO_DRIVER:-212}   # another held-out person
avat3r prep synth-video --person "$driver" --frames 60 --fps 12.5 -o "$out/driving.mp4" --quiet
avat3r animate "$out/head.avt" --video "$out/driving.mp4" --extractor regressor --quiet | \
    avat3r render --path frontal --size 256 --video "$out/driven.mp4" --quiet
python "$(dirname "$0")/demo.py" reenact "$out/head.avt" --video "$out/driving.mp4" --photos "$out/inputs" \
    -o "$out/reenact.mp4"
echo "demo: wrote $out/orbit.mp4, $out/head.ply, $out/sheet.png, $out/viewer.html, $out/driven.mp4 and $out/reenact.mp4" \
     "(driving video | truth | avatar; inputs in $out/inputs)" >&2

"""Print a checkpoint's input side and patch ("128 16"), for the shell recipes that keep them when they train
from it. Takes a checkpoint folder or a shipped model's name.

    read -r side patch < <(python recipes/checkpoint_input.py models/synthheads-tiny)
"""

from __future__ import annotations

import sys

from avat3r.model.checkpoint import read_checkpoint_config
from avat3r.shipped import resolve_model_path

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python recipes/checkpoint_input.py CHECKPOINT")
    config = read_checkpoint_config(resolve_model_path(sys.argv[1]))[0]
    print(config.input_res, config.patch)

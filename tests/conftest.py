"""Every test runs on one CPU thread: `just test` runs two pytest workers on two cores, and a test that
spawned threads of its own would fight the other worker for them (one test ran 10× slower that way)."""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the CLI subprocesses some tests start

import torch  # noqa: E402

torch.set_num_threads(1)

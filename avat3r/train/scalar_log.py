"""Training scalars: always ``logs/scalars.jsonl`` (one JSON object per logged step, readable without extra
packages), plus TensorBoard event files when the optional ``tensorboard`` package is installed
(``pip install "avat3r[tensorboard]"``)."""

from __future__ import annotations

import json
from pathlib import Path


class ScalarLog:
    def __init__(self, log_dir: Path, start: int):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / "scalars.jsonl"
        # a resumed run rewrites the steps after its checkpoint, so the file holds one curve, not two
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= start:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by a kill
        self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(log_dir), purge_step=start)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._file.flush()
        if self.tensorboard is not None:
            for k, v in scalars.items():
                self.tensorboard.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

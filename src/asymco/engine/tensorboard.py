"""Optional TensorBoard scalars: the same figures as metrics.jsonl, one step per epoch."""

from __future__ import annotations

from pathlib import Path

from asymco.errors import UserError


class ScalarLog:
    def __init__(self, path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "log.tensorboard=true needs the tensorboard package: "
                'pip install "asymco[tensorboard]"'
            ) from None
        self.writer = SummaryWriter(log_dir=str(path))

    def write(self, row: dict) -> None:
        """Every numeric figure of one metrics.jsonl row, at step `row["epoch"]`."""
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

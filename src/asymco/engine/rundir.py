"""The run directory, the project's output contract (DESIGN.md section 3).

config.yaml, noisy_labels.npy, noise_transition.npy, metrics.jsonl, summary.json and
checkpoint.pt. Every file is written atomically; metrics.jsonl is rewritten whole after each
epoch from the same history the checkpoint holds, so the two never disagree.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from asymco.errors import UserError
from asymco.files import write_atomic, write_text_atomic


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @classmethod
    def prepare(cls, path: Path, *, resume: bool) -> RunDir:
        """Create (or reopen, for `resume`) a run directory, failing before any training if it
        cannot be written or would overwrite an earlier run."""
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
        if resume:
            if not (path / "checkpoint.pt").is_file():
                raise UserError(f"cannot resume: {path} holds no checkpoint.pt")
        elif path.is_dir() and any(
            (path / name).exists() for name in ("checkpoint.pt", "summary.json", "config.yaml")
        ):
            raise UserError(
                f"{path} already holds a run; pass --resume to continue it or choose another --out"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_bytes(b"\0" * 4096)
            os.fsync(os.open(probe, os.O_RDONLY))
            probe.unlink()
        except OSError as err:
            raise UserError(f"cannot write to the run directory {path} ({err.strerror})") from None
        return cls(path)

    def write_config(self, config: dict) -> None:
        write_text_atomic(self.config_file, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        from asymco.untrusted import TEXT_LIMIT, decoding, read_text

        text = read_text(self.config_file, "the run configuration", TEXT_LIMIT)
        with decoding(self.config_file, "the run configuration", "fix or restore config.yaml"):
            return yaml.safe_load(text)

    def write_array(self, name: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array)
        write_atomic(self.path / name, buffer.getvalue())

    def write_metrics(self, history: list[dict]) -> None:
        write_text_atomic(
            self.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history)
        )

    def write_summary(self, summary: dict) -> None:
        write_text_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

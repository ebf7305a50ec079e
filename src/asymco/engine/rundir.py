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
    def prepare(cls, path: Path) -> RunDir:
        """Create (or reopen) a run directory, failing before any training if it cannot be
        written. Whether the run in it may start or continue is `engine/claim.py`'s decision."""
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test.{os.getpid()}"  # its own name: runs may race here
            with probe.open("wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
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

    def read_summary(self) -> dict:
        """A finished run's summary.json, through the guarded path every run file takes."""
        from asymco.untrusted import read_json_mapping

        return read_json_mapping(self.path / "summary.json", "the run's summary",
                                 "copy the run again")

"""Preemption: SIGTERM (what schedulers send before they stop a job) asks a run to stop at the
next step boundary, with a checkpoint, instead of dying mid-step; under torchrun every process
stops at the same step.
"""

from __future__ import annotations

import signal
import threading

import torch

from asymco.engine.distributed import Dist

STOP_CHECK_STEPS = 10
"""With several processes, how often they agree on whether to stop (one tiny all-reduce)."""


class StopSignal:
    """Records SIGTERM while installed (main thread only) instead of dying on it."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _record(self, signum: int, frame: object) -> None:
        self.requested = True

    def agreed(self, dist: Dist, step: int, device: torch.device) -> bool:
        """Whether every rank stops now: any rank's request counts, checked by all ranks at the
        same steps (every step when running alone, where the check is free)."""
        if not dist.enabled:
            return self.requested
        if step % STOP_CHECK_STEPS:
            return False
        flag = torch.tensor(float(self.requested), device=device)
        return bool(dist.global_sum(flag) > 0)

"""Per-epoch learning-rate plans with the official `--lr-decay` semantics (act-spec A.4).

A plan is a list with one value per epoch; the engine writes `plan[epoch]` into the optimizer's
parameter group once at the start of each epoch, as the official code does (no change within an
epoch). Every plan has exactly `epochs` entries. The strings mean what they mean in the official
code's `build_lr_plan` (E = epochs, W = warmup epochs):

- `cosine:s,end,t`: `warmup_lr` for W epochs, `lr` until epoch s, a half cosine from `lr`
  towards `end` over epochs s..t-1, then the last value held.
- `constant`: `warmup_lr` for W epochs, then `lr`.
- `baseline`: `lr` x0.1 at epochs 60, 120 and 150, and no warmup: `warmup_lr` is never used
  (the plan that drives the NTM in `main_web.py`).
- `step`: the `baseline` milestones, with the first W entries replaced by `warmup_lr`.
- `step30`: `lr` x0.1 at epochs 50, 80 and 100, the first W entries replaced by `warmup_lr`.
- `step:m1,...,last`: the elements before the last are whole-number milestones. A last element
  >= 1 is one more milestone and the factor is 0.1; a last element below 1 is the factor and not
  a milestone. `plan[e] = lr * factor ** (number of milestones <= e)`, then the first W entries
  are replaced by `warmup_lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asymco.errors import UserError

_STEP_MILESTONES = {"step": (60, 120, 150), "baseline": (60, 120, 150), "step30": (50, 80, 100)}
_STEP_FACTOR = 0.1


MAX_EPOCH = 100_000
"""The largest epoch number a plan may name (and `train.epochs` may ask for): a plan holds one
value per epoch, so an absurd number would fill the memory instead of training."""


def parse_decay(decay: str) -> tuple[str, tuple[float, ...]]:
    """Split `name:a,b,c` into its name and numbers; raise `UserError` on a malformed string.

    Besides the shape of each form (see the module docstring), a list is refused where the
    official code would crash or the plan would make no sense: an empty list (`step:`), a value
    that is not finite, an epoch number (a cosine's start and stop, a step milestone) that is not
    a whole number in [0, MAX_EPOCH], a cosine end below 0 or a step factor <= 0.
    `baseline`, `step30` and `constant` take no numbers. The numbers come back as written, so for
    `step:40,80,0.5` they are (40.0, 80.0, 0.5); `step_schedule` tells milestones from factor.
    """
    name, colon, rest = decay.partition(":")
    try:
        numbers = tuple(float(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        raise UserError(f"optim.lr_decay {decay!r} has a value that is not a number") from None
    if not all(math.isfinite(x) for x in numbers):
        raise UserError(f"optim.lr_decay {decay!r} has a value that is not a finite number")
    if name == "cosine":
        if len(numbers) != 3:
            raise UserError(f"optim.lr_decay {decay!r} must look like cosine:start,end,stop")
        start, end, stop = numbers
        _check_epochs(decay, (start, stop), "epoch")
        if end < 0:
            raise UserError(f"optim.lr_decay {decay!r}: the end value {end:g} must be >= 0")
        if stop <= start:
            raise UserError(f"optim.lr_decay {decay!r}: stop must come after start")
    elif name == "step" and colon:
        if not numbers:
            raise UserError(f"optim.lr_decay {decay!r} lists no milestones; use step:e1,e2,...")
        milestones, factor = step_schedule(numbers)
        if factor <= 0:
            raise UserError(
                f"optim.lr_decay {decay!r}: the decay factor {factor:g} must be above 0"
            )
        _check_epochs(decay, milestones, "milestone")
    elif name in _STEP_MILESTONES or name == "constant":
        if colon:
            raise UserError(f"optim.lr_decay {decay!r}: {name!r} takes no numbers")
    else:
        raise UserError(
            f"optim.lr_decay {decay!r} is not supported; use cosine:start,end,stop, step, "
            "step:e1,e2,..., baseline, step30 or constant"
        )
    return name, numbers


def _check_epochs(decay: str, epochs: tuple[float, ...], what: str) -> None:
    """Refuse an epoch number the plan cannot hold: not whole, negative or past MAX_EPOCH."""
    for e in epochs:
        if e != int(e) or not 0 <= e <= MAX_EPOCH:
            raise UserError(
                f"optim.lr_decay {decay!r}: the {what} {e:g} is not a whole epoch number "
                f"from 0 to {MAX_EPOCH}"
            )


def step_schedule(numbers: tuple[float, ...]) -> tuple[tuple[float, ...], float]:
    """The milestones and the factor of a `step:m1,...,last` list (official semantics).

    A last element >= 1 is one more milestone and the factor is 0.1; one below 1 is the factor.
    """
    *milestones, last = numbers
    if last >= 1:
        return (*milestones, last), _STEP_FACTOR
    return tuple(milestones), last


def cosine_segment(lr: float, end: float, length: int) -> list[float]:
    """`length` values from exactly `lr` towards (never reaching) `end` on half a cosine."""
    if not end < lr:
        raise UserError(f"the cosine plan's end value {end} must be below the learning rate {lr}")
    return [end + (lr - end) * 0.5 * (1 + math.cos(math.pi * k / length)) for k in range(length)]


def build_lr_plan(
    lr: float, *, epochs: int, warmup_epochs: int, warmup_lr: float, decay: str
) -> list[float]:
    """Learning rate for each epoch 0..epochs-1, always exactly `epochs` values.

    `cosine:s,end,t`: `warmup_lr` for the warmup epochs, then `lr` until epoch s (nothing if
    s <= warmup_epochs), then t - s cosine values from lr towards `end`, then the last value
    held. `constant`: `warmup_lr` for the warmup epochs, then `lr`.

    Step plans follow the official code: `plan[e] = lr * factor ** (milestones <= e)`, with
    milestones 60/120/150 for `step` and `baseline`, 50/80/100 for `step30` (factor 0.1), and
    for `step:m1,...,last` the listed milestones, where a last element below 1 is the factor
    rather than a milestone (see `step_schedule`). `step`, `step30` and `step:...` then replace
    the first `warmup_epochs` entries by `warmup_lr`; `baseline` never uses `warmup_lr`, like
    the official plan that drives the NTM in `main_web.py`.
    """
    name, numbers = parse_decay(decay)
    if name == "cosine":
        start, end, stop = int(numbers[0]), numbers[1], int(numbers[2])
        plan = [warmup_lr] * warmup_epochs + [lr] * max(0, start - warmup_epochs)
        plan += cosine_segment(lr, end, stop - start)
        plan += [plan[-1]] * max(0, epochs - stop)
        if len(plan) < epochs:  # the cosine ended before the plan reached `epochs`
            plan += [plan[-1]] * (epochs - len(plan))
        return plan[:epochs]
    if name == "constant":
        plan = [warmup_lr] * warmup_epochs + [lr] * max(0, epochs - warmup_epochs)
        return plan[:epochs]
    if numbers:  # step:m1,...,last
        milestones, factor = step_schedule(numbers)
    else:
        milestones, factor = _STEP_MILESTONES[name], _STEP_FACTOR
    plan = [lr * factor ** sum(e >= m for m in milestones) for e in range(epochs)]
    if name == "baseline":
        return plan
    warmup = min(max(0, warmup_epochs), epochs)
    return [warmup_lr] * warmup + plan[warmup:]


@dataclass(frozen=True)
class LRPlan:
    """How one parameter group's learning rate moves: what a method asks the engine for.

    The engine turns it into per-epoch values with `build_lr_plan` and the run's epochs and
    warmup epochs.
    """

    lr: float
    """The learning rate after warmup."""
    warmup_lr: float
    """The constant learning rate of the warmup epochs (never used by `baseline`)."""
    decay: str
    """An official `--lr-decay` string (module docstring)."""

    def values(self, *, epochs: int, warmup_epochs: int) -> list[float]:
        """The learning rate of each epoch 0..epochs-1."""
        return build_lr_plan(
            self.lr,
            epochs=epochs,
            warmup_epochs=warmup_epochs,
            warmup_lr=self.warmup_lr,
            decay=self.decay,
        )


def rescale_decay(decay: str, *, epochs: int, new_epochs: int) -> str:
    """`decay` for a run of `new_epochs` instead of `epochs` (a time budget's choice): every
    epoch number in it scales by new_epochs / epochs, so the plan keeps its shape. `step` and
    `step30` become the `step:` list of their scaled milestones; `constant` and `baseline`
    (fixed milestones, no warmup) stay as they are."""
    name, numbers = parse_decay(decay)
    ratio = new_epochs / epochs

    def scaled(epoch: float) -> int:
        return min(MAX_EPOCH, max(0, round(epoch * ratio)))

    if name == "cosine":
        start, end, stop = numbers
        first = min(scaled(start), MAX_EPOCH - 1)
        return f"cosine:{first},{end:g},{max(first + 1, scaled(stop))}"
    if name in ("constant", "baseline"):  # baseline: fixed epochs 60/120/150, no warmup
        return decay
    milestones, factor = step_schedule(numbers) if numbers else (_STEP_MILESTONES[name], 0.1)
    points = sorted({scaled(m) for m in milestones})
    return "step:" + ",".join(str(p) for p in points) + f",{factor:g}"

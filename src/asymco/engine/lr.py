"""Per-epoch learning-rate plans with the official `--lr-decay` semantics (act-spec A.4).

A plan is a list with one value per epoch; the engine writes `plan[epoch]` into the optimizer's
parameter group once at the start of each epoch, as the official code does (no change within an
epoch).
"""

from __future__ import annotations

import math

from asymco.errors import UserError

_STEP_MILESTONES = {"step": (60, 120, 150), "baseline": (60, 120, 150), "step30": (50, 80, 100)}


def parse_decay(decay: str) -> tuple[str, tuple[float, ...]]:
    """Split `name:a,b,c` into its name and numbers; raise `UserError` on a malformed string."""
    name, _, rest = decay.partition(":")
    try:
        numbers = tuple(float(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        raise UserError(f"optim.lr_decay {decay!r} has a value that is not a number") from None
    if name == "cosine":
        if len(numbers) != 3:
            raise UserError(f"optim.lr_decay {decay!r} must look like cosine:start,end,stop")
        start, _, stop = numbers
        if stop <= start:
            raise UserError(f"optim.lr_decay {decay!r}: stop must come after start")
    elif name == "step" and numbers:
        pass  # step:a,b,...: decay x0.1 at each listed epoch
    elif name not in _STEP_MILESTONES and name != "constant":
        raise UserError(
            f"optim.lr_decay {decay!r} is not supported; use cosine:start,end,stop, step, "
            "step:e1,e2,..., baseline, step30 or constant"
        )
    return name, numbers


def cosine_segment(lr: float, end: float, length: int) -> list[float]:
    """`length` values from exactly `lr` towards (never reaching) `end` on half a cosine."""
    if not end < lr:
        raise UserError(f"the cosine plan's end value {end} must be below the learning rate {lr}")
    return [end + (lr - end) * 0.5 * (1 + math.cos(math.pi * k / length)) for k in range(length)]


def build_lr_plan(
    lr: float, *, epochs: int, warmup_epochs: int, warmup_lr: float, decay: str
) -> list[float]:
    """Learning rate for each epoch 0..epochs-1.

    `cosine:s,end,t`: `warmup_lr` for the warmup epochs, then `lr` until epoch s (nothing if
    s <= warmup_epochs), then t - s cosine values from lr towards `end`, then the last value
    held. Step plans multiply `lr` by 0.1 at each milestone and use no warmup lr, like the
    official `baseline` plan that drives the NTM in `main_web.py`.
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
        return [warmup_lr] * warmup_epochs + [lr] * max(0, epochs - warmup_epochs)
    milestones = tuple(int(x) for x in numbers) if numbers else _STEP_MILESTONES[name]
    return [lr * 0.1 ** sum(e >= m for m in milestones) for e in range(epochs)]

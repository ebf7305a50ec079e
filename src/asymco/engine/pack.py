"""Packed runs: K independent runs of one method and architecture trained as one batched model.

One 32x32 CNN at batch 128 cannot fill a modern GPU; K of them, stacked, can. The members stay
what they are: K `Method` objects with their own nets, per-sample state, optimizer and run
directory. For the training steps their tensors are stacked along a new leading dimension
(`gather`) and one call of the method's own `training_step` runs under `torch.func.vmap` over
that dimension, with the stacked tensors substituted by `functional_call`. Convolutions with a
stacked weight become grouped convolutions, BatchNorm keeps per-member statistics, and in-place
updates of per-sample buffers land in each member's slice. The K losses are summed and
backpropagated once: member k's loss depends only on member k's slice, so each slice receives
exactly its own gradient. One optimizer over the stacked parameters equals K optimizers, since
SGD and Adam update every element from its own gradient and state. `scatter` copies the stacked
state back into the members, whose checkpoints and evaluation then work as in a plain run.

A method can be packed when its training step is a function of its tensors alone: no random
draws, no Python decisions on tensor values, no shapes that depend on the data, no averaged nets
(`Method.packable`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from asymco.batch import Batch
from asymco.config import RunConfig
from asymco.config_io import to_dict
from asymco.engine.precision import Execution
from asymco.errors import UserError
from asymco.methods.base import Method

PER_MEMBER = {"preset", "description", "paper_test_acc", "noise"}
"""Config sections and fields that may differ inside a pack (besides `train.seed`)."""


def pack_key(cfg: RunConfig) -> str:
    """Runs whose keys are equal can share a pack: everything but the seed, the noise and the
    preset's name must match (data, network, method settings, schedule, device, precision)."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in PER_MEMBER}
    config["train"] = {k: v for k, v in config["train"].items() if k != "seed"}
    return repr(sorted(config.items()))


def why_unpackable(cfg: RunConfig, method_class: type[Method]) -> str | None:
    """The reason runs of `cfg` cannot be packed, or None."""
    t = cfg.train
    if not method_class.packable:
        return f"method {cfg.method.name} draws random numbers or data-dependent shapes per step"
    if t.precision == "fp16":
        return "fp16's gradient scaler would skip a step for every member when one overflows"
    if t.compile:
        return "train.compile applies to single nets"
    if t.budget:
        return "train.budget chooses each run's epochs from its own measured step times"
    # Last: a budget (above) can be what turns a method's per-run rule on by default.
    return method_class.unpackable_reason(cfg.method.for_run(cfg))


class _Step(nn.Module):
    """Calls `method.training_step` as a module, for `functional_call`."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, index: Tensor, label: Tensor, *views: Tensor) -> dict[str, Tensor]:
        return self.method.training_step(Batch(index, views, label))


class PackedModel:
    """The members' tensors stacked, with one optimizer over them; see the module docstring."""

    def __init__(self, members: Sequence[Method], optimizers: Sequence[torch.optim.Optimizer]):
        if len({type(m) for m in members}) != 1:
            raise UserError("a pack holds runs of one method")
        self.members, self.optimizers = list(members), list(optimizers)
        self.step_module = _Step(self.members[0])  # its tensors are swapped for the stack
        with torch.no_grad():
            self.params = {
                name: torch.stack([dict(m.named_parameters())[name] for m in members])
                for name, _ in members[0].named_parameters()
            }
            self.buffers = {
                name: torch.stack([dict(m.named_buffers())[name] for m in members])
                for name, _ in members[0].named_buffers()
            }
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = self._stacked_optimizer()
        self.gather()

    def _stacked_optimizer(self) -> torch.optim.Optimizer:
        """The members' optimizer with each group's parameters replaced by their stacks."""
        template = self.optimizers[0]
        name_of = {p: name for name, p in self.members[0].named_parameters()}
        groups = [
            {
                **{key: value for key, value in group.items() if key != "params"},
                "params": [self.params[name_of[p]] for p in group["params"]],
            }
            for group in template.param_groups
        ]
        return type(template)(groups, **template.defaults)

    @torch.no_grad()
    def gather(self) -> None:
        """Members -> stack: parameters, buffers, optimizer state and learning rates."""
        member_params = [dict(m.named_parameters()) for m in self.members]
        for k, member in enumerate(self.members):
            for name, p in member_params[k].items():
                self.params[name][k].copy_(p)
            for name, b in member.named_buffers():
                self.buffers[name][k].copy_(b)
        for stacked, group in zip(
            self.optimizer.param_groups, self.optimizers[0].param_groups, strict=True
        ):
            stacked["lr"] = group["lr"]
        self.optimizer.state.clear()
        for name, stacked in self.params.items():
            states = [
                opt.state.get(params[name])
                for opt, params in zip(self.optimizers, member_params, strict=True)
            ]
            if all(states):  # a fresh run has no momentum yet
                self.optimizer.state[stacked] = {
                    key: _stack_state([s[key] for s in states], stacked.shape[1:])
                    for key in states[0]
                }

    @torch.no_grad()
    def scatter(self) -> None:
        """Stack -> members: parameters, buffers and optimizer state, in the members' own
        memory formats, so each member checkpoints and evaluates as a plain run."""
        for k, member in enumerate(self.members):
            for name, p in member.named_parameters():
                p.copy_(self.params[name][k])
                stacked = self.optimizer.state.get(self.params[name])
                if stacked:
                    self.optimizers[k].state[p] = {
                        key: _member_state(value, p, k) for key, value in stacked.items()
                    }
            for name, b in member.named_buffers():
                b.copy_(self.buffers[name][k])

    def step(self, batches: Sequence[Batch], exe: Execution) -> dict[str, Tensor]:
        """One training step of every member on its own batch; each figure is (K,)."""
        index = torch.stack([b.index for b in batches])
        label = torch.stack([b.label for b in batches])
        views = [torch.stack(v) for v in zip(*(b.views for b in batches), strict=True)]

        def one(params: dict, buffers: dict, *args: Tensor) -> dict[str, Tensor]:
            return functional_call(self.step_module, _prefixed(params, buffers), args)

        with exe.autocast():
            out = vmap(one)(self.params, self.buffers, index, label, *views)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].sum().backward()
        self.optimizer.step()
        return out


def _prefixed(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"method.{name}": t for name, t in (*params.items(), *buffers.items())}


def _member_state(value: Tensor, param: Tensor, k: int) -> Tensor:
    """Member k's copy of one stacked optimizer-state entry, in its parameter's layout."""
    if value.dim() == param.dim() + 1:
        return torch.empty_like(param).copy_(value[k])
    return value.clone()


def _stack_state(values: list[Tensor], shape: torch.Size) -> Tensor:
    """One optimizer-state entry of every member: stacked when it is per element (momentum,
    Adam's moments), the shared value when it is a per-parameter count (Adam's `step`)."""
    if values[0].shape == shape:
        return torch.stack(values)
    if any(not torch.equal(v, values[0]) for v in values):
        raise RuntimeError("the members' optimizer step counts differ")
    return values[0].clone()

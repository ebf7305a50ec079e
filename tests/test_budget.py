"""Time budgets and ETAs: durations, the LR plan rescaled, the epochs a budget allows, the step
times measured before training (without moving any random generator), and `--budget` end to end.
How close the budget and the ETA come on this machine is `benchmarks/budget.py`'s measurement."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from asymco import api
from asymco.cli import main
from asymco.data.prepare import prepare_data
from asymco.durations import format_duration, parse_duration
from asymco.engine.device import resolve_device
from asymco.engine.distributed import Dist
from asymco.engine.precision import resolve_execution
from asymco.engine.run import measure_run, set_up_process
from asymco.engine.timing import StepTimes, fit_budget, remaining_seconds
from asymco.errors import UserError
from asymco.lr_plan import build_lr_plan, rescale_decay


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45),
                          ("1.5m", 90), (" 2M ", 120)]
)
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15x", "m", "-1m", "0", "inf", "nan", "1m-2s", "9999999h"])
def test_bad_durations_are_one_sentence(text):
    with pytest.raises(UserError, match=r"train\.budget"):
        parse_duration(text)


def test_durations_print_short():
    assert [format_duration(s) for s in (0, 35.4, 250, 3725)] == ["0s", "35s", "4m10s", "1h02m"]


def test_a_rescaled_lr_plan_keeps_its_shape():
    plan = build_lr_plan(0.1, epochs=150, warmup_epochs=50, warmup_lr=0.1,
                         decay="cosine:50,5e-4,150")
    decay = rescale_decay("cosine:50,5e-4,150", epochs=150, new_epochs=30)
    assert decay == "cosine:10,0.0005,30"
    short = build_lr_plan(0.1, epochs=30, warmup_epochs=10, warmup_lr=0.1, decay=decay)
    assert short[:10] == [0.1] * 10  # the warmup share
    for where in (0.25, 0.5, 0.75):  # the same point of the cosine, a fifth as many epochs in
        assert short[10 + round(20 * where)] == pytest.approx(plan[50 + round(100 * where)],
                                                              rel=0.05)
    assert rescale_decay("step:40,80,0.5", epochs=100, new_epochs=50) == "step:20,40,0.5"
    assert rescale_decay("step30", epochs=100, new_epochs=200) == "step:100,160,200,0.1"
    assert rescale_decay("constant", epochs=100, new_epochs=7) == "constant"


TIMES = StepTimes(warmup_step=0.1, main_step=0.4, epoch_extra=1.0, final_extra=3.0, steps=10)
# An epoch: 2 s in warmup, 5 s after it.


def budgeted(budget: str, epochs: int = 60, warmup: int = 10, fill: bool = True):
    cfg = api.resolve_config("quickstart", [f"train.epochs={epochs}",
                                            f"train.warmup_epochs={warmup}",
                                            f"train.budget={budget}",
                                            f"train.budget_fill={str(fill).lower()}"])
    return fit_budget(cfg, TIMES, spent=10.0)


def test_a_budget_chooses_the_epochs_that_fit_and_keeps_the_warmup_share():
    cfg = budgeted("5m")  # 300 s - 10 spent - 3 final = 287 s; mean epoch 1/6*2 + 5/6*5 = 4.5 s
    t = cfg.train
    assert t.epochs == 63 and t.warmup_epochs == round(63 / 6)
    assert TIMES.run_seconds(t.epochs, t.warmup_epochs) + 10 <= 300
    assert cfg.optim.lr_decay == f"cosine:{round(10 * 63 / 60)},0.001,63"
    assert budgeted("1m").train.epochs == 10  # fewer than asked: fits
    assert budgeted("5m", fill=False).train.epochs == 60  # no more than asked when not filling


def test_a_budget_too_short_for_two_epochs_is_one_sentence():
    with pytest.raises(UserError, match=r"train.budget=15s is too short: 2 epoch\(s\) take about"):
        budgeted("15s")


def test_the_run_eta_uses_the_epochs_already_seen():
    assert remaining_seconds(TIMES, [], 4, 2) == 2 * 2 + 2 * 5 + 3
    seen = [{"epoch": 0, "epoch_seconds": 3.0, "eval_seconds": 1.0}]
    assert remaining_seconds(TIMES, seen, 4, 2) == 4 + 2 * 5 + 3


def test_measuring_the_steps_moves_no_random_generator():
    cfg = api.resolve_config("quickstart", ["train.epochs=4", "train.warmup_epochs=2",
                                            "train.progress=false"])
    exe = resolve_execution(cfg.train, resolve_device("cpu"))
    set_up_process(cfg, Dist())
    data = prepare_data(cfg.data, cfg.noise)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    times = measure_run(cfg, data, exe, Dist())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]
    assert times.steps == 23 and times.warmup_step > 0 and times.main_step > 0
    assert times.epoch_extra > 0 and times.final_extra > 0


def test_a_data_set_of_one_batch_an_epoch_has_its_steps_timed():
    """Timed within one epoch, its only step was the untimed one: 0 s a step, and a 40 s
    budget planned hundreds of epochs."""
    cfg = api.resolve_config("quickstart", ["train.epochs=4", "train.warmup_epochs=2",
                                            "train.progress=false", "data.subset=150",
                                            "data.batch_size=150"])
    exe = resolve_execution(cfg.train, resolve_device("cpu"))
    set_up_process(cfg, Dist())
    times = measure_run(cfg, prepare_data(cfg.data, cfg.noise), exe, Dist())
    assert times.steps == 1 and times.warmup_step > 0 and times.main_step > 0


def test_the_main_phase_is_timed_as_the_main_phase_with_the_collapse_guard(monkeypatch):
    """The guard stays in warmup while the nets agree on few labels; timed after a few warmup
    steps it held the main phase too, and budgets were planned with warmup steps only."""
    from asymco.methods.act import ACT

    phases = []
    step = ACT.training_step

    def recorded(self, batch):
        phases.append(self.warmup)
        return step(self, batch)

    monkeypatch.setattr(ACT, "training_step", recorded)
    cfg = api.resolve_config("quickstart", ["train.epochs=4", "train.warmup_epochs=2",
                                            "train.progress=false", "method.collapse_guard=true"])
    exe = resolve_execution(cfg.train, resolve_device("cpu"))
    set_up_process(cfg, Dist())
    measure_run(cfg, prepare_data(cfg.data, cfg.noise), exe, Dist())
    main = phases.index(True)  # the main phase, then warmup; one untimed step and 2+ timed each
    assert main >= 3 and not any(phases[:main]) and all(phases[main:]) and len(phases) - main >= 3


def test_budget_on_the_command_line_plans_and_records_the_epochs(tmp_path):
    """A real command (its own process: the budget counts from asymco's import). 45 s leaves
    room for at least 2 epochs after a slow import on a loaded 2-core machine."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "asymco", "train", "--preset", "quickstart", "--budget", "45s",
         "--out", str(out), "--set", "data.subset=300", "--set", "train.progress=false"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["budget"] == "45s" and saved["budget_fill"] is True
    assert "to fit train.budget=45s" in proc.stderr and "ETA" in proc.stderr
    assert f"plan: {saved['epochs']} epochs ({saved['warmup_epochs']} warmup)" in proc.stderr
    assert saved["epochs"] != 60  # chosen, not the preset's
    assert "run left ~" in proc.stderr  # the whole run's ETA after each epoch
    # A thousandth of a second: measuring the first steps alone takes longer on any machine (a
    # fast one fitted two quickstart epochs into 1 s).
    assert main(["train", "--preset", "quickstart", "--budget", "0.001", "--out",
                 str(tmp_path / "short"), "--set", "train.progress=false"]) == 2
    assert not (tmp_path / "short" / "config.yaml").exists()

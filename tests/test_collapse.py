"""ACT's selection collapse (issue 15): the detector on synthetic histories, the guard's two
avoidance rules, the fallback label score, and the guard inside ACT's steps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from asymco.config import RunConfig, TrainConfig
from asymco.methods.act import ACT, ACTSettings
from asymco.methods.collapse import (
    detect_collapse,
    fallback_scores,
    floor_selection,
    hold_warmup,
    is_degenerate,
)
from tests.test_selection import force_class, make_act, make_batch


def row(epoch, phase="robust", sel=0.5, rtm=50.0, ntm=50.0, fit=(40.0, 45.0), **extra):
    """A metrics row with ACT's columns (test accuracies, train accuracies on given labels)."""
    return {
        "epoch": epoch,
        "phase": phase,
        "sel_fraction": 1.0 if phase == "warmup" else sel,
        "test_acc": rtm,
        "test_acc_ntm": ntm,
        "train_acc_rtm": fit[0],
        "train_acc_ntm": fit[1],
        **extra,
    }


# The issue's run: 3 warmup epochs, then ~1 % selected and the RTM far below the NTM.
COLLAPSED = [row(e, "warmup", rtm=3.0, ntm=4.0, fit=(3.0, 3.0)) for e in range(3)] + [
    row(3 + i, sel=s, rtm=r, ntm=10.0, fit=(3.0, 3.5))
    for i, (s, r) in enumerate([(0.011, 1.55), (0.009, 2.0), (0.009, 2.5), (0.008, 3.0)])
]
HEALTHY = [row(e, "warmup") for e in range(3)] + [
    row(e, sel=0.55, rtm=52.0 + e, ntm=50.0) for e in range(3, 10)
]


def kinds(history, **kw):
    return [(w.kind, w.epoch) for w in detect_collapse(history, **kw)]


def test_the_issues_run_warns_of_both_and_says_what_to_do():
    warnings = detect_collapse(COLLAPSED)
    assert [(w.kind, w.epoch) for w in warnings] == [
        ("degenerate_selection", 3),  # the first robust epoch
        ("rtm_behind_ntm", 5),  # the third robust epoch in a row below the NTM
    ]
    first = warnings[0].message
    assert "1.1%" in first and "method.collapse_guard=true" in first
    assert "collapse guard topped" in detect_collapse(COLLAPSED, guard=True)[0].message


def test_a_healthy_run_warns_of_nothing():
    assert detect_collapse(HEALTHY) == []


def test_warmup_rows_and_rows_without_act_columns_never_warn():
    plain = [
        {"epoch": e, "phase": "robust", "sel_fraction": None, "test_acc": 5.0} for e in range(6)
    ]
    assert detect_collapse(plain) == []
    assert detect_collapse([row(e, "warmup", fit=(1.0, 1.0)) for e in range(5)]) == []


@pytest.mark.parametrize(
    ("sel", "fit", "floor_share", "degenerate"),
    [
        (0.04, (3.0, 3.0), 0.0, True),  # below the 5 % floor
        (0.06, (10.0, 10.0), 0.0, False),
        (0.10, (60.0, 70.0), 0.0, True),  # the nets fit 60 %, agree on 10 %: far below
        (0.20, (60.0, 70.0), 0.0, False),
        (0.06, (10.0, 10.0), 0.05, True),  # the rule chose 1 %; the guard's floor added 5 %
    ],
)
def test_degenerate_is_below_the_floor_or_far_below_what_the_nets_fit(
    sel, fit, floor_share, degenerate
):
    assert is_degenerate(row(4, sel=sel, fit=fit, floor_share=floor_share)) is degenerate


def test_rtm_behind_needs_consecutive_clearly_lower_epochs():
    behind, level = dict(rtm=5.0, ntm=10.0), dict(rtm=9.5, ntm=10.0)  # 0.5 below: not clearly
    steps = [behind, behind, level, behind, behind, level, level]
    history = [row(e, **kw) for e, kw in enumerate(steps)]
    assert kinds(history) == []
    assert kinds([*history[:2], row(2, **behind)]) == [("rtm_behind_ntm", 2)]


def test_a_held_warmup_is_reported_with_whether_selection_started():
    held = [
        row(0, "warmup"),
        row(1, "warmup", warmup_held=True),
        row(2, "warmup", warmup_held=True),
    ]
    [never] = detect_collapse(held)
    assert (never.kind, never.epoch) == ("warmup_held", 1)
    assert "never left warmup" in never.message
    started = detect_collapse([*held, row(3)])[0]
    assert "selection started at epoch 4" in started.message


def test_each_warning_is_new_at_exactly_one_epoch():
    act = make_act(torch.zeros(4, dtype=torch.long))
    shown = [m for n in range(1, len(COLLAPSED) + 1) for m in act.new_warnings(COLLAPSED[:n])]
    assert shown == [w["message"] for w in act.run_warnings(COLLAPSED)]
    assert len(shown) == 2


# ------------------------------------------------------------------ the guard's rules


def test_floor_tops_up_with_the_highest_scores_and_keeps_the_selection():
    selected = torch.tensor([False, True, False, False, False, False, False, False, False, False])
    score = torch.tensor([0.9, -5.0, 0.1, 0.8, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    out = floor_selection(selected, score, 0.3)  # ceil(3) samples
    assert out.tolist() == [True, True, False, True] + [False] * 6
    assert floor_selection(selected, score, 0.0).equal(selected)
    many = torch.tensor([True] * 5 + [False] * 5)
    assert floor_selection(many, score, 0.3).equal(many)  # already above the floor


def test_floor_selection_runs_under_vmap():
    selected = torch.zeros(2, 8, dtype=torch.bool)
    score = torch.stack([torch.arange(8.0), -torch.arange(8.0)])
    out = torch.vmap(lambda s, x: floor_selection(s, x, 0.25))(selected, score)
    assert out[0].nonzero().flatten().tolist() == [6, 7]
    assert out[1].nonzero().flatten().tolist() == [0, 1]


@pytest.mark.parametrize(
    ("previous", "share", "threshold", "held"),
    [
        (True, 0.01, 0.05, True),
        (True, 0.2, 0.05, False),
        (False, 0.01, 0.05, False),
        (True, 0.01, 0.0, False),
    ],
)
def test_hold_warmup(previous, share, threshold, held):
    assert hold_warmup(previous_warmup=previous, agreement_share=share, threshold=threshold) is held


def test_fallback_scores_rank_within_a_class_and_scale_by_it():
    mean = torch.tensor([0.2, 0.1, 0.3, 0.02, 0.01, 0.03])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    s = fallback_scores(mean, labels, 2)
    assert s[1] < s[0] < s[2] and s[4] < s[3] < s[5]
    assert s[0].item() == pytest.approx(0.5) and s[3].item() == pytest.approx(0.5)
    assert s[3] > s[1]  # relative to its class: the hard class does not fill the top


# ------------------------------------------------------------------ inside ACT


def guarded(**kw) -> ACTSettings:
    return ACTSettings(collapse_guard=True, **kw)


def test_guard_off_is_the_faithful_rule():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    act = make_act(labels)
    force_class(act.nets["rtm"], 3)  # nobody fits: the rule selects nothing
    act.on_epoch_start(5, warmup=False)
    out = act.training_step(make_batch(torch.arange(6), labels))
    assert float(out["selected_share"]) == 0 and float(out["floor_share"]) == 0
    assert not act.is_selected.any()


def test_selection_floor_trains_on_at_least_the_floor():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    act = make_act(labels, ACTSettings(selection_floor=0.3))
    force_class(act.nets["rtm"], 3)
    act.on_epoch_start(5, warmup=False)
    out = act.training_step(make_batch(torch.arange(10), labels))
    assert int(act.is_selected.sum()) == 3
    assert float(out["floor_share"]) == pytest.approx(0.3)
    assert act.rule_selected.tolist() == [0.0, 10.0]  # the rule itself chose none


def test_warmup_is_held_while_the_nets_agree_on_too_few_labels():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    act = make_act(labels, guarded())
    act.run_warmup_epochs = 1
    force_class(act.nets["rtm"], 3)  # the nets never both fit a label
    act.on_epoch_start(0, warmup=True)
    act.training_step(make_batch(torch.arange(6), labels))
    act.on_epoch_start(1, warmup=False)  # the engine's first robust epoch
    assert act.warmup and act.train_views() == ("weak",)
    assert "agreement_share" in act.training_step(make_batch(torch.arange(6), labels))
    assert act.reported_net == "mean"  # auto: held warmup only, both nets trained on everything
    act.set_phase(1, warmup=False)  # a resume in the middle of the held epoch
    assert act.warmup
    for net in ("rtm", "ntm"):  # now both fit every label of class 0 (half the samples)
        force_class(act.nets[net], 0)
    act.on_epoch_start(2, warmup=False)
    act.training_step(make_batch(torch.arange(6), labels))
    act.on_epoch_start(3, warmup=False)
    assert not act.warmup and int(act.held_epochs) == 2
    assert act.warmup_epochs_run(1) == 3  # label_issues.csv counts robust epochs after these
    # Selection then goes well (half of each batch): the run is no longer collapsed, so it
    # reports the RTM and ranks labels by ACT's own score again.
    act.training_step(make_batch(torch.arange(6), labels))
    assert act.reported_net == "rtm" and act.clean_scores() is None
    assert act.label_trust()["level"] == "usual"


def test_label_score_falls_back_once_the_selection_collapsed():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    act = make_act(labels)
    act.on_epoch_start(0, warmup=True)
    act.training_step(make_batch(torch.arange(6), labels))
    assert act.clean_scores() is None and act.label_trust()["level"] == "usual"
    force_class(act.nets["rtm"], 3)
    act.on_epoch_start(1, warmup=False)
    act.training_step(make_batch(torch.arange(6), labels))
    scores = act.clean_scores()
    assert scores is not None and ((scores > 0) & (scores < 1)).all()
    assert act.label_trust()["level"] == "low"


def test_auto_guard_is_on_for_own_data_and_budgets_only():
    auto = ACTSettings()
    preset = RunConfig()
    assert auto.for_run(preset).collapse_guard is False
    own = dataclasses.replace(preset, data=dataclasses.replace(preset.data, dataset="npz"))
    assert auto.for_run(own).collapse_guard is True
    budget = dataclasses.replace(preset, train=TrainConfig(budget="15m"))
    assert auto.for_run(budget).collapse_guard is True
    assert ACTSettings(collapse_guard=False).for_run(own).collapse_guard is False
    assert ACT.unpackable_reason(auto.for_run(preset)) is None
    assert "warmup" in ACT.unpackable_reason(auto.for_run(own))


def test_guard_settings_are_checked():
    from asymco.errors import UserError

    with pytest.raises(UserError, match="selection_floor"):
        ACTSettings(selection_floor=1.0)
    with pytest.raises(UserError, match="warmup_until_agreement"):
        ACTSettings(warmup_until_agreement=-0.1)
    assert math.isclose(ACTSettings(selection_floor=0.1).selection_floor, 0.1)


# ------------------------------------------------------------------ how far to trust the list


def test_the_suspects_page_says_how_far_to_trust_the_list(tmp_path):
    import json

    from asymco.report.gallery import write_gallery
    from asymco.suggest import Suspect

    suspect = Suspect(0, 7, "", 1, "cat", 2, "dog", 0.1, True, 0.0, 0.1, 0.6)
    page = tmp_path / "label_issues.html"
    write_gallery(page, "run", [suspect], [])
    assert "Trust:" not in page.read_text()  # no summary.json beside the page: no claim
    trust = {"level": "low", "message": "ACT's selection collapsed <rough>"}
    (tmp_path / "summary.json").write_text(json.dumps({"label_trust": trust}))
    text = write_gallery(page, "run", [suspect], []).read_text()
    assert '<p class="trust low"><b>Trust: low.</b>' in text and "&lt;rough&gt;" in text
    for damaged in (b"{broken", b"\xff\xfe{}", b"[" * 100_000, b"[1, 2]"):
        (tmp_path / "summary.json").write_bytes(damaged)
        assert "Trust:" not in write_gallery(page, "run", [suspect], []).read_text()


def test_a_held_run_end_to_end_warns_and_ranks_by_the_fallback(tmp_path, caplog):
    """Quickstart with a hold threshold no net reaches: every epoch stays warmup, the console
    and summary.json say so, and label_issues.csv ranks by the fallback score."""
    import csv
    import json
    import logging

    from asymco import api

    overrides = [
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.progress=false",
        "data.subset=300",
        "method.collapse_guard=true",
        "method.warmup_until_agreement=0.99",
    ]
    with caplog.at_level(logging.INFO):
        api.train(api.resolve_config("quickstart", overrides), out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["warmup_held"]) for r in rows] == [("warmup", False), ("warmup", True)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [w["kind"] for w in summary["warnings"]] == ["warmup_held"]
    assert summary["label_trust"]["level"] == "low"
    assert summary["collapse_guard"]["warmup_epochs_held"] == 1
    assert "never left warmup" in caplog.text and "trust low" in caplog.text
    with (tmp_path / "label_issues.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert all(0 < float(r["label_score"]) < 1 for r in table)
    assert {r["selected_epochs"] for r in table} == {"0"}  # held epochs selected no one


@pytest.mark.parametrize(
    ("settings", "reported"),
    [
        (ACTSettings(), "rtm"),
        (guarded(), "ntm"),  # auto: the RTM learned from a degenerate selection
        (guarded(report_on_collapse="mean"), "mean"),
        (ACTSettings(report_on_collapse="ntm"), "ntm"),
    ],
)
def test_once_collapsed_the_guard_reports_another_net(settings, reported):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    act = make_act(labels, settings)
    assert act.reported_net == "rtm" and list(act.eval_nets()) == ["rtm", "ntm"]
    force_class(act.nets["rtm"], 3)
    force_class(act.nets["ntm"], 3)  # neither fits a label: the rule selects nobody
    act.on_epoch_start(1, warmup=False)
    act.training_step(make_batch(torch.arange(6), labels))
    assert act.reported_net == reported and next(iter(act.eval_nets())) == reported
    x = make_batch(torch.arange(2), labels[:2]).views[0]
    probs = torch.softmax(act.predict(x), 1)
    if reported == "mean":
        each = [torch.softmax(act.nets[n](x), 1) for n in ("rtm", "ntm")]
        torch.testing.assert_close(probs, (each[0] + each[1]) / 2)
    assert not any(k.startswith("mean") for k in act.state_dict())  # no extra checkpoint keys


def test_a_run_cut_inside_a_held_warmup_epoch_resumes_exactly(tmp_path, cut_and_resume):
    """The hold decision lives in checkpointed buffers: a run stopped mid-way through a held
    epoch and resumed equals an unbroken one (figures, held flags, the fallback ranking)."""
    from asymco import api

    cfg = api.resolve_config("quickstart", [
        "train.epochs=3", "train.warmup_epochs=1", "train.progress=false",
        "train.checkpoint_steps=3", "data.subset=400",
        "method.collapse_guard=true", "method.warmup_until_agreement=0.99",
    ])
    api.train(cfg, out_dir=tmp_path / "full")
    cut_and_resume(cfg, tmp_path / "cut", epochs_done=1, step=3)  # inside held epoch 2
    from tests.test_resume import metrics

    full = metrics(tmp_path / "full")
    assert [row["warmup_held"] for row in full] == [False, True, True]
    assert metrics(tmp_path / "cut") == full
    for name in ("label_issues.csv", "noisy_labels.npy"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


@pytest.mark.parametrize(("settings", "starved"), [(guarded(), True), (ACTSettings(), False)])
def test_a_selection_under_the_agreement_the_guard_waited_for_starves_the_rtm(settings, starved):
    """10 % selected passes the 5 % collapse line, but the guard waited for 20 % agreement
    before selecting: measured, an RTM trained on 6-8 % ended at half the NTM's accuracy."""
    labels = torch.tensor([0, 1, 2, 1, 2, 1, 2, 1, 2, 1])
    act = make_act(labels, settings)
    for net in ("rtm", "ntm"):
        force_class(act.nets[net], 0)  # both fit the one label-0 sample: the rule keeps 10 %
    act.on_epoch_start(5, warmup=False)
    act.training_step(make_batch(torch.arange(10), labels))
    assert act.rule_selected.tolist() == [1.0, 10.0]
    assert act.starved() is starved
    assert act.reported_net == ("ntm" if starved else "rtm")


@pytest.mark.parametrize("reported", ["rtm", "ntm", "mean"])
def test_an_epoch_row_and_its_line_name_both_nets_whichever_is_reported(reported):
    """Once the NTM is reported, the row's test_acc is the NTM's; the row and the console line
    still carry both nets' accuracies (a robust epoch with the NTM reported once crashed here)."""
    from asymco.methods.reporting import EpochResults

    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    act = make_act(labels, ACTSettings(report_on_collapse=reported))
    force_class(act.nets["rtm"], 3)
    force_class(act.nets["ntm"], 3)  # the rule selects nobody: collapsed
    act.on_epoch_start(1, warmup=False)
    out = act.training_step(make_batch(torch.arange(6), labels))
    assert act.reported_net == reported
    accs = {"rtm": 10.0, "ntm": 20.0, "mean": 15.0}
    results = EpochResults(
        epoch=1,
        sums={k: float(v.detach()) for k, v in out.items()},
        batches=1,
        lrs={"rtm": 0.01, "ntm": 0.01},
        test_acc={name: accs[name] for name in act.eval_nets()},
        scores={},
        truth_known=False,
    )
    row = {**act.epoch_row(results), "epoch_seconds": 1.0}  # the engine adds the timing
    assert row["test_acc"] == accs[reported] and row["test_acc_ntm"] == 20.0
    assert ("test_acc_rtm" in row) is (reported != "rtm")
    line = act.describe(row, epochs=2)
    assert "ntm 20.00%" in line and ("rtm 10.00%" in line) is (reported != "rtm")
    behind = detect_collapse([{**row, "epoch": e} for e in range(3)])
    assert [w.kind for w in behind] == ["rtm_behind_ntm"]  # the RTM's figure, wherever it is

"""Per-epoch learning-rate plans against the worked table of act-spec A.4."""

import itertools
import math
import re

import pytest

from asymco.errors import UserError
from asymco.lr_plan import build_lr_plan, parse_decay

# (lr, W, warmup_lr, decay, E, cosine_start, cosine_stop, {epoch: value}, first value, last value)
TABLE = {
    "repo_default": dict(
        lr=1e-3, warmup_epochs=20, warmup_lr=1e-3, decay="cosine:20,5e-4,100", epochs=100,
        cos_start=20, cos_end=99, points={50: 8.457e-4, 60: 7.5e-4, 90: 5.19e-4},
        last=5.002e-4,
    ),
    "blog_paper": dict(
        lr=1e-2, warmup_epochs=50, warmup_lr=1e-2, decay="cosine:20,5e-4,100", epochs=150,
        cos_start=50, cos_end=129,
        points={60: 9.638e-3, 75: 7.889e-3, 90: 5.25e-3, 100: 3.432e-3}, last=5.037e-4,
    ),
    "food101n": dict(
        lr=5e-4, warmup_epochs=5, warmup_lr=1e-3, decay="cosine:5,5e-5,50", epochs=50,
        cos_start=5, cos_end=49, points={20: 3.875e-4, 30: 2.359e-4}, last=5.055e-5,
    ),
}


def _plan(row):
    return build_lr_plan(row["lr"], epochs=row["epochs"], warmup_epochs=row["warmup_epochs"],
                         warmup_lr=row["warmup_lr"], decay=row["decay"])


@pytest.mark.parametrize("name", list(TABLE))
def test_worked_table(name):
    """Warmup constant, cosine starts at exactly lr, listed epochs match to 4 digits, tail flat."""
    row = TABLE[name]
    plan = _plan(row)
    assert len(plan) == row["epochs"]
    assert plan[: row["warmup_epochs"]] == [row["warmup_lr"]] * row["warmup_epochs"]
    assert plan[row["cos_start"]] == row["lr"]  # the first cosine value is lr exactly
    for epoch, value in row["points"].items():
        assert plan[epoch] == pytest.approx(value, rel=5e-4), epoch
    assert plan[row["cos_end"]] == pytest.approx(row["last"], rel=5e-4)
    cosine = plan[row["cos_start"]: row["cos_end"] + 1]
    assert all(a > b for a, b in itertools.pairwise(cosine))
    tail = plan[row["cos_end"]:]
    assert all(v == tail[0] for v in tail)


def test_blog_tail_is_constant_last_cosine_value():
    """Blog config: e = 130..149 repeat the last cosine value, at k = L - 1 = 79."""
    plan = _plan(TABLE["blog_paper"])
    expected = 5e-4 + (1e-2 - 5e-4) * 0.5 * (1 + math.cos(math.pi * 79 / 80))
    assert plan[129] == pytest.approx(expected, rel=1e-12)
    assert plan[130:] == [plan[129]] * 20
    assert plan[128] > plan[129]


def test_default_preset_string():
    """`cosine:50,5e-4,150` with W=50, E=150: warmup 0.01, 0.01 at e=50, then strictly down."""
    plan = build_lr_plan(0.01, epochs=150, warmup_epochs=50, warmup_lr=0.01,
                         decay="cosine:50,5e-4,150")
    assert len(plan) == 150
    assert plan[:50] == [0.01] * 50
    assert plan[50] == 0.01
    after = plan[50:]
    assert all(a > b for a, b in itertools.pairwise(after))
    assert plan[-1] > 5e-4
    assert plan[-1] == pytest.approx(5e-4 + 0.0095 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_start_after_warmup_holds_lr():
    """With s > W, [lr] * (s - W) is inserted between warmup and cosine."""
    plan = build_lr_plan(0.1, epochs=30, warmup_epochs=5, warmup_lr=0.01, decay="cosine:10,0,20")
    assert plan[:5] == [0.01] * 5
    assert plan[5:11] == [0.1] * 6
    assert plan[11] < 0.1
    assert plan[20:] == [plan[19]] * 10


# Step plans (official util.build_lr_plan, act-spec A.4), all with lr=0.1, E=160, W=5 and
# warmup_lr=0.01 unless a test says otherwise. Values are worked by hand.
STEP_ARGS = dict(epochs=160, warmup_epochs=5, warmup_lr=0.01)


def test_baseline_plan_has_no_warmup():
    """`baseline`: 0.1, x0.1 at 60, 120 and 150; the warmup lr is never used."""
    plan = build_lr_plan(0.1, decay="baseline", **STEP_ARGS)
    assert len(plan) == 160
    assert plan[:5] == [0.1] * 5
    assert plan[0] == 0.1
    assert plan[59] == 0.1
    assert plan[60] == pytest.approx(0.01)
    assert plan[119] == pytest.approx(0.01)
    assert plan[120] == pytest.approx(0.001)
    assert plan[149] == pytest.approx(0.001)
    assert plan[150] == pytest.approx(0.0001)
    assert plan[159] == pytest.approx(0.0001)


def test_step_plan_starts_with_warmup():
    """`step`: warmup 0.01 for 5 epochs, then 0.1, x0.1 at 60, 120 and 150."""
    plan = build_lr_plan(0.1, decay="step", **STEP_ARGS)
    assert len(plan) == 160
    assert plan[:5] == [0.01] * 5
    assert plan[5] == 0.1
    assert plan[59] == 0.1
    assert plan[60] == pytest.approx(0.01)
    assert plan[119] == pytest.approx(0.01)
    assert plan[120] == pytest.approx(0.001)
    assert plan[149] == pytest.approx(0.001)
    assert plan[150] == pytest.approx(0.0001)
    assert plan[159] == pytest.approx(0.0001)


def test_step30_plan():
    """`step30`: warmup 0.01 for 5 epochs, then 0.1, x0.1 at 50, 80 and 100."""
    plan = build_lr_plan(0.1, decay="step30", **STEP_ARGS)
    assert len(plan) == 160
    assert plan[:5] == [0.01] * 5
    assert plan[5] == 0.1
    assert plan[49] == 0.1
    assert plan[50] == pytest.approx(0.01)
    assert plan[79] == pytest.approx(0.01)
    assert plan[80] == pytest.approx(0.001)
    assert plan[99] == pytest.approx(0.001)
    assert plan[100] == pytest.approx(0.0001)
    assert plan[159] == pytest.approx(0.0001)


def test_step_list_last_below_one_is_the_factor():
    """`step:40,80,0.5`: milestones 40 and 80, factor 0.5; 0.5 is no milestone at epoch 0."""
    plan = build_lr_plan(0.1, decay="step:40,80,0.5", **STEP_ARGS)
    assert len(plan) == 160
    assert plan[:5] == [0.01] * 5
    assert plan[5] == 0.1
    assert plan[39] == 0.1
    assert plan[40] == pytest.approx(0.05)
    assert plan[79] == pytest.approx(0.05)
    assert plan[80] == pytest.approx(0.025)
    assert plan[159] == pytest.approx(0.025)
    no_warmup = build_lr_plan(0.1, epochs=160, warmup_epochs=0, warmup_lr=0.01,
                              decay="step:40,80,0.5")
    assert no_warmup[0] == 0.1
    assert no_warmup[39] == 0.1


def test_step_list_last_at_least_one_is_a_milestone():
    """`step:40,80,100`: three milestones, factor 0.1."""
    plan = build_lr_plan(0.1, decay="step:40,80,100", **STEP_ARGS)
    assert len(plan) == 160
    assert plan[:5] == [0.01] * 5
    assert plan[5] == 0.1
    assert plan[39] == 0.1
    assert plan[40] == pytest.approx(0.01)
    assert plan[79] == pytest.approx(0.01)
    assert plan[80] == pytest.approx(0.001)
    assert plan[99] == pytest.approx(0.001)
    assert plan[100] == pytest.approx(0.0001)
    assert plan[159] == pytest.approx(0.0001)


def test_step_list_whole_plan():
    """`step:2,4,0.5`, lr=0.1, E=6, W=1, warmup_lr=0.01, every value."""
    plan = build_lr_plan(0.1, epochs=6, warmup_epochs=1, warmup_lr=0.01, decay="step:2,4,0.5")
    assert plan == pytest.approx([0.01, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_step_list_single_factor_is_constant_after_warmup():
    """`step:0.5`: a factor and no milestone, so lr after the warmup."""
    plan = build_lr_plan(0.1, epochs=10, warmup_epochs=3, warmup_lr=0.01, decay="step:0.5")
    assert plan == [0.01] * 3 + [0.1] * 7


def test_step_list_single_milestone():
    """`step:5`: one milestone, factor 0.1."""
    plan = build_lr_plan(0.1, epochs=8, warmup_epochs=2, warmup_lr=0.01, decay="step:5")
    assert plan == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_parse_step_list_keeps_numbers():
    """The parser returns the numbers as written; the plan tells milestones from the factor."""
    assert parse_decay("step:40,80,0.5") == ("step", (40.0, 80.0, 0.5))
    assert parse_decay("step") == ("step", ())
    assert parse_decay("baseline") == ("baseline", ())


@pytest.mark.parametrize("decay", ["step", "step30", "step:1,2,0.5", "constant"])
def test_warmup_longer_than_plan_is_cut(decay):
    """W > E: exactly E entries, all the warmup lr."""
    plan = build_lr_plan(0.1, epochs=3, warmup_epochs=5, warmup_lr=0.01, decay=decay)
    assert plan == [0.01] * 3


def test_baseline_ignores_long_warmup():
    """W > E: `baseline` still has E entries and never uses the warmup lr."""
    plan = build_lr_plan(0.1, epochs=3, warmup_epochs=5, warmup_lr=0.01, decay="baseline")
    assert plan == [0.1] * 3


def test_constant_plan():
    """`constant`: warmup lr, then lr."""
    plan = build_lr_plan(0.1, epochs=10, warmup_epochs=3, warmup_lr=0.01, decay="constant")
    assert plan == [0.01] * 3 + [0.1] * 7


@pytest.mark.parametrize(
    "decay", ["cosine:1,2", "cosine:a,b,c", "foo", "cosine:50,5e-4,40", "cosine:1,2,3,4"]
)
def test_malformed_strings_raise(decay):
    """Malformed or unsupported decay strings are user errors."""
    with pytest.raises(UserError):
        build_lr_plan(0.01, epochs=150, warmup_epochs=50, warmup_lr=0.01, decay=decay)


@pytest.mark.parametrize(
    "decay",
    [
        "step:60.5,120",  # a milestone that is not a whole number
        "step:40,120.5",  # nor as the last element
        "step:40,0",  # factor 0
        "step:40,-0.5",  # negative factor
        "step:-0.5",  # negative factor, alone
        "step:",  # nothing after the colon
        "step:-10,40",  # negative milestone
        "step:40,inf",
        "step:nan",
        "step:40,,80",
        "baseline:60",  # the named plans take no numbers
        "step30:50",
        "constant:1",
    ],
)
def test_malformed_step_strings_raise(decay):
    """Step strings the official code would crash on, or that make no sense, name the string."""
    with pytest.raises(UserError, match=re.escape(repr(decay))):
        parse_decay(decay)
    with pytest.raises(UserError):
        build_lr_plan(0.1, decay=decay, **STEP_ARGS)


def test_cosine_end_not_below_lr_raises():
    """The cosine end value must be below lr (make_cosine_lr asserts end < lr)."""
    with pytest.raises(UserError):
        build_lr_plan(1e-3, epochs=100, warmup_epochs=20, warmup_lr=1e-3,
                      decay="cosine:20,1e-2,100")

"""Per-epoch learning-rate plans against the worked table of act-spec A.4."""

import itertools
import math

import pytest

from asymco.engine.lr import build_lr_plan
from asymco.errors import UserError

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


@pytest.mark.parametrize("decay", ["baseline", "step"])
def test_step_plan(decay):
    """Step plans: lr x0.1 at epochs 60, 120 and 150, no warmup lr."""
    plan = build_lr_plan(0.08, epochs=160, warmup_epochs=50, warmup_lr=0.5, decay=decay)
    assert len(plan) == 160
    assert plan[0] == 0.08
    assert plan[59] == 0.08
    assert plan[60] == pytest.approx(0.008)
    assert plan[119] == pytest.approx(0.008)
    assert plan[120] == pytest.approx(0.0008)
    assert plan[149] == pytest.approx(0.0008)
    assert plan[150] == pytest.approx(0.00008)


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


def test_cosine_end_not_below_lr_raises():
    """The cosine end value must be below lr (make_cosine_lr asserts end < lr)."""
    with pytest.raises(UserError):
        build_lr_plan(1e-3, epochs=100, warmup_epochs=20, warmup_lr=1e-3,
                      decay="cosine:20,1e-2,100")

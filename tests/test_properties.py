"""Property-based tests (hypothesis): invariants of the noise generators (act-spec C.1), of
ACT's selection rule and losses (act-spec A.2, A.3) and of the configuration parser, over
generated inputs rather than a handful of examples."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from asymco.config import SECTIONS, RunConfig
from asymco.config_io import apply_overrides, from_dict, to_dict
from asymco.data.noise import (
    draw_noisy_labels,
    known_classes,
    make_noisy_labels,
    transition_matrix,
)
from asymco.errors import UserError
from asymco.methods.selection import (
    confidence_penalty,
    historical_weights,
    memorization_gap,
    memorization_gap_of_counts,
    mining_open,
    pseudo_labels,
    select,
)
from asymco.presets import get_preset, list_presets

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=8, deadline=None)  # examples that draw thousands of labels

KINDS = st.sampled_from(["symmetric", "asymmetric"])
RATES = st.floats(min_value=1e-3, max_value=0.999)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def noise_setups(draw, max_classes: int = 60):
    """(kind, rate, number of classes C, open-set ratio) with at least 2 known classes."""
    num_classes = draw(st.integers(min_value=2, max_value=max_classes))
    openset_ratio = draw(st.sampled_from([0.0, 0.0, 0.1, 0.2, 0.5]))
    assume(known_classes(num_classes, openset_ratio) >= 2)
    return draw(KINDS), draw(RATES), num_classes, openset_ratio


# ---------------------------------------------------------------------------- noise: matrices


@FAST
@given(noise_setups())
def test_transition_matrix_is_row_stochastic_with_the_protocols_structure(setup):
    kind, rate, c, ratio = setup
    k = known_classes(c, ratio)
    p = transition_matrix(kind, rate=rate, num_classes=c, openset_ratio=ratio)
    assert p.shape == (c, c) and p.dtype == np.float64
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(p[:, k:] == 0)  # nobody is ever labelled with an open-set class
    np.testing.assert_array_equal(p[k:, :k], np.full((c - k, k), 1.0 / k))  # open set: uniform
    known = np.arange(k)
    np.testing.assert_array_equal(p[known, known], 1.0 - rate)  # keep with probability 1 - r
    off = p[:k, :k] - np.diag(np.diag(p[:k, :k]))
    if kind == "symmetric":  # r spread evenly over the other K - 1 known classes
        np.testing.assert_array_equal(off[~np.eye(k, dtype=bool)], rate / (k - 1))
    else:  # pair flip: all of r goes to (i + 1) mod K and nowhere else
        target = np.zeros((k, k))
        target[known, (known + 1) % k] = rate
        np.testing.assert_array_equal(off, target)


@FAST
@given(KINDS, st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(math.nan)))
def test_rate_outside_the_open_interval_is_a_user_error(kind, rate):
    with pytest.raises(UserError, match=r"noise\.rate"):
        transition_matrix(kind, rate=rate, num_classes=10)


@FAST
@given(KINDS, RATES, st.integers(min_value=1, max_value=30), st.floats(0.0, 0.99))
def test_fewer_than_two_known_classes_is_a_user_error(kind, rate, c, ratio):
    assume(known_classes(c, ratio) < 2)
    with pytest.raises(UserError, match="at least 2 known classes"):
        transition_matrix(kind, rate=rate, num_classes=c, openset_ratio=ratio)


# ---------------------------------------------------------------------------- noise: draws


@st.composite
def labelled(draw, max_n: int = 300):
    kind, rate, c, ratio = draw(noise_setups())
    n = draw(st.integers(min_value=0, max_value=max_n))
    labels = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    return kind, rate, c, ratio, np.array(labels, dtype=np.int64)


@FAST
@given(labelled(), SEEDS)
def test_noisy_labels_stay_among_the_known_classes_and_follow_the_matrix(case, seed):
    kind, rate, c, ratio, labels = case
    k = known_classes(c, ratio)
    noisy, p = make_noisy_labels(
        labels, kind=kind, rate=rate, num_classes=c, openset_ratio=ratio, seed=seed
    )
    assert noisy.shape == labels.shape and noisy.dtype == np.int64
    assert np.all((noisy >= 0) & (noisy < k))
    assert np.all(p[labels, noisy] > 0)  # every draw is possible under P
    known = labels < k
    if kind == "asymmetric":  # pair flip: a known label stays or moves to the next class only
        assert np.all(np.isin(noisy[known] - labels[known], [0, 1, 1 - k]))
        flipped = known & (noisy != labels)
        np.testing.assert_array_equal(noisy[flipped], (labels[flipped] + 1) % k)


@FAST
@given(labelled(max_n=100), SEEDS)
def test_same_seed_same_labels(case, seed):
    kind, rate, c, ratio, labels = case
    options = {"kind": kind, "rate": rate, "num_classes": c, "openset_ratio": ratio}
    first, p = make_noisy_labels(labels, seed=seed, **options)
    again, _ = make_noisy_labels(labels.copy(), seed=seed, **options)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(draw_noisy_labels(labels, p, seed=seed), first)
    # One draw per sample in order: a prefix of the data gets a prefix of the labels.
    cut = len(labels) // 2
    np.testing.assert_array_equal(
        make_noisy_labels(labels[:cut], seed=seed, **options)[0], first[:cut]
    )


@SLOW
@given(KINDS, st.floats(0.05, 0.95), st.integers(2, 20), SEEDS)
def test_actual_noise_rate_is_close_to_the_requested_one(kind, rate, c, seed):
    """P[i, i] = 1 - r exactly, so each known-class label flips with probability exactly r."""
    n = 4000
    labels = np.arange(n) % c
    noisy, _ = make_noisy_labels(labels, kind=kind, rate=rate, num_classes=c, seed=seed)
    actual = np.mean(noisy != labels)
    assert abs(actual - rate) < 5 * math.sqrt(rate * (1 - rate) / n)


@SLOW
@given(st.integers(2, 20), st.sampled_from([0.2, 0.5]), SEEDS)
def test_open_set_samples_are_relabelled_uniformly(c, ratio, seed):
    k = known_classes(c, ratio)
    assume(k >= 2 and k < c)
    labels = np.full(3000, c - 1)  # every sample from the last (open-set) class
    noisy, _ = make_noisy_labels(
        labels, kind="none", rate=0.0, num_classes=c, openset_ratio=ratio, seed=seed
    )
    counts = np.bincount(noisy, minlength=c)
    assert counts[k:].sum() == 0
    expected = len(labels) / k
    assert np.all(np.abs(counts[:k] - expected) < 6 * math.sqrt(expected))


@FAST
@given(st.lists(st.integers(0, 50), max_size=200), SEEDS)
def test_rate_zero_changes_nothing(labels, seed):
    labels = np.array(labels, dtype=np.int64)
    noisy, p = make_noisy_labels(labels, kind="none", rate=0.0, num_classes=51, seed=seed)
    assert p is None
    np.testing.assert_array_equal(noisy, labels)
    noisy[:] = -1  # a copy: the caller's labels are untouched
    assert labels.size == 0 or labels.min() >= 0


@FAST
@given(
    st.one_of(
        st.lists(st.floats(allow_nan=True), min_size=1, max_size=5).map(np.array),
        st.lists(st.text(max_size=3), min_size=1, max_size=5).map(np.array),
        st.lists(st.booleans(), min_size=1, max_size=5).map(np.array),
        st.integers(-5, 20).map(lambda n: np.full((2, 2), n)),
        st.lists(st.integers(-10, 30), min_size=1, max_size=20)
        .map(np.array)
        .filter(lambda a: a.min() < 0 or a.max() >= 10),
    ),
    KINDS,
)
def test_malformed_labels_are_a_user_error(labels, kind):
    """Wrong dtype, wrong shape or out of range: one UserError, never an IndexError."""
    with pytest.raises(UserError, match="labels"):
        make_noisy_labels(labels, kind=kind, rate=0.3, num_classes=10)
    with pytest.raises(UserError, match="labels"):
        draw_noisy_labels(labels, transition_matrix(kind, rate=0.3, num_classes=10))


# ---------------------------------------------------------------------------- selection


@st.composite
def hits(draw, min_size: int = 1):
    """(rtm_hits, ntm_hits): (B,) bool tensors, "prediction equals the observed label"."""
    n = draw(st.integers(min_value=min_size, max_value=64))
    rtm = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    ntm = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return torch.tensor(rtm, dtype=torch.bool), torch.tensor(ntm, dtype=torch.bool)


VARIANTS = st.sampled_from(["paper_main", "web"])


def subset(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a & ~b).sum() == 0)


@FAST
@given(hits(min_size=0), st.booleans(), VARIANTS, st.booleans(), st.booleans(), st.booleans())
def test_selection_invariants(h, mining, variant, use_ass, use_asm, as_tensor):
    rtm, ntm = h
    gate = torch.tensor(mining) if as_tensor else mining
    selected, mined = select(rtm, ntm, gate, variant=variant, use_ass=use_ass, use_asm=use_asm)
    assert selected.dtype == mined.dtype == torch.bool
    assert selected.shape == mined.shape == rtm.shape
    assert subset(mined, selected)  # mined samples are selected
    assert subset(mined, ~rtm & ntm)  # mining only takes "only the NTM fits the label"
    if not (mining and use_asm and use_ass):
        assert not mined.any()  # mining off (or ablated) mines nothing
    if not use_ass:
        assert selected.all()  # without ASS the RTM trains on everything
        return
    agreed = rtm & ntm
    assert subset(agreed, selected)  # both nets fit the label: always selected
    assert not (selected & ~rtm & ~ntm).any()  # neither fits: never selected
    if variant == "paper_main":
        assert subset(selected, ntm)  # the "only the RTM fits" cell is never selected
        expected = ntm if (mining and use_asm) else agreed  # A ∪ M = {NTM fits} (spec A.3)
    else:
        expected = rtm | ntm if (mining and use_asm) else rtm
    assert torch.equal(selected, expected)
    assert torch.equal(selected, agreed | mined) or variant == "web"


@FAST
@given(hits(), VARIANTS, st.booleans())
def test_mining_only_adds_samples(h, variant, use_asm):
    rtm, ntm = h
    off, _ = select(rtm, ntm, False, variant=variant, use_asm=use_asm)
    on, mined = select(rtm, ntm, True, variant=variant, use_asm=use_asm)
    assert subset(off, on)
    assert torch.equal(on, off | mined)


@FAST
@given(hits(), st.floats(1e-6, 10.0), st.floats(1e-6, 10.0))
def test_memorization_gap_and_gate(h, tau, other_tau):
    rtm, ntm = h
    gap, acc_rtm = memorization_gap(rtm, ntm)
    acc_r = 100 * rtm.float().mean()
    acc_n = 100 * ntm.float().mean()
    assert 0 <= acc_rtm <= 100 and torch.isclose(acc_rtm, acc_r)
    assert torch.isfinite(gap)
    if acc_r > 0:
        assert torch.isclose(gap, (acc_n - acc_r) / acc_r, atol=1e-6)
        assert gap >= -1  # Acc_NTM >= 0
    else:
        assert gap == 0
    same = memorization_gap_of_counts(
        rtm.sum().float(), ntm.sum().float(), torch.tensor(float(len(rtm)))
    )
    assert torch.isclose(same[0], gap) and torch.isclose(same[1], acc_rtm)
    is_open = mining_open(gap, acc_rtm, tau)
    assert bool(is_open) == bool(acc_rtm != 0 and gap < tau)
    if acc_rtm == 0:
        assert not is_open  # the RTM fits nothing: mining is off
    if is_open and other_tau >= tau:
        assert mining_open(gap, acc_rtm, other_tau)  # a larger tau keeps the gate open
    if torch.equal(rtm, ntm) and rtm.any():
        assert gap == 0 and is_open  # nets that agree exactly have not memorised anything


@FAST
@given(st.integers(0, 500), st.data())
def test_historical_weights_in_unit_interval(epoch, data):
    """w = c / (e + 1) with 1 <= c <= e + 1 for a sample selected now (spec A.3 step 5)."""
    counts = data.draw(st.lists(st.integers(1, epoch + 1), min_size=1, max_size=50))
    c = torch.tensor(counts, dtype=torch.int32)
    w = historical_weights(c, epoch)
    assert w.dtype == torch.float32
    assert torch.all(w > 0) and torch.all(w <= 1)
    assert torch.allclose(w, c.double().div(epoch + 1).float())
    order = torch.argsort(c, stable=True)
    assert torch.all(w[order].diff() >= 0)  # more epochs selected, more weight
    assert torch.all(w[c == epoch + 1] == 1)  # selected in every epoch: full weight


@FAST
@given(st.integers(0, 200), st.integers(0, 200))
def test_weight_lower_bound_after_warmup(warmup, robust):
    """Warmup counts every sample; one selected now has c >= W + 1 in epoch e = W + robust."""
    epoch = warmup + robust
    w = historical_weights(torch.tensor([warmup + 1]), epoch)
    assert torch.isclose(w, torch.tensor([(warmup + 1) / (epoch + 1)]))


@FAST
@given(st.integers(1, 32), st.integers(2, 12), st.data())
def test_pseudo_labels(n, classes, data):
    selected = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    label = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    probs = torch.rand(n, classes, generator=torch.Generator().manual_seed(n * classes))
    probs = probs / probs.sum(1, keepdim=True)
    target = pseudo_labels(selected, label, probs)
    assert target.shape == (n,) and torch.all((target >= 0) & (target < classes))
    assert torch.equal(target[selected], label[selected])  # selected: the observed label
    assert torch.equal(target[~selected], probs.argmax(1)[~selected])  # else argmax q
    assert torch.equal(pseudo_labels(torch.ones(n, dtype=torch.bool), label, probs), label)


LOGITS = st.integers(1, 16).flatmap(
    lambda n: st.integers(2, 10).flatmap(
        lambda c: st.lists(st.floats(-30, 30, allow_nan=False), min_size=n * c, max_size=n * c).map(
            lambda v: torch.tensor(v, dtype=torch.float64).reshape(n, c)
        )
    )
)


@FAST
@given(LOGITS, st.booleans())
def test_confidence_penalty_is_a_negative_entropy(logits, clamp):
    """Mean of sum p log p: between -log C (uniform) and 0 (one-hot), finite."""
    value = confidence_penalty(logits, clamp_logits=clamp)
    c = logits.shape[1]
    assert torch.isfinite(value)
    assert -math.log(c) - 1e-9 <= value <= 1e-12
    if clamp:  # the official clamp: the logits, not the probabilities, at 1e-12
        clamped = confidence_penalty(logits.clamp(min=1e-12), clamp_logits=False)
        assert torch.isclose(value, clamped)
    else:  # the textbook penalty only sees the softmax: shift invariant
        shifted = confidence_penalty(logits + 7.5, clamp_logits=False)
        assert torch.isclose(value, shifted, atol=1e-9)
    uniform = confidence_penalty(torch.zeros_like(logits), clamp_logits=clamp)
    assert torch.isclose(uniform, torch.tensor(-math.log(c), dtype=torch.float64))


# ---------------------------------------------------------------------------- configuration


def _fields() -> list[tuple[str, str, typing.Any]]:
    """(section, key, annotation) of every setting, and ("", key, annotation) at the top."""
    out = []
    for name, annotation in typing.get_type_hints(RunConfig).items():
        if name in SECTIONS:
            out += [(name, k, a) for k, a in typing.get_type_hints(annotation).items()]
        else:
            out.append(("", name, annotation))
    return out


FIELDS = _fields()
PRESET_NAMES = list_presets()


def _values(annotation) -> st.SearchStrategy:
    """Well-typed Python values of `annotation` (not necessarily within its range)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is not None and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return st.one_of(st.none(), _values(inner))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-5, 500)
    if annotation is float:
        return st.floats(-2.0, 200.0, allow_nan=False)
    return st.text(alphabet="abcdefgh0123456789_:,.-", min_size=1, max_size=12)


def _text(value) -> str:
    """How a user writes `value` after `--set key=`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _get(cfg: RunConfig, section: str, key: str):
    return getattr(getattr(cfg, section) if section else cfg, key)


@FAST
@given(st.sampled_from(PRESET_NAMES))
def test_every_preset_round_trips_through_config_yaml(name):
    cfg = get_preset(name)
    assert from_dict(to_dict(cfg)) == cfg
    assert from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))) == cfg


@FAST
@given(st.sampled_from(PRESET_NAMES), st.sampled_from(FIELDS), st.data())
def test_a_well_typed_override_applies_or_is_refused_by_its_range_check(name, field, data):
    """The field gets exactly the value (everything else unchanged), or a UserError names it;
    a value that applies also survives the round trip through config.yaml."""
    section, key, annotation = field
    value = data.draw(_values(annotation))
    dotted = f"{section}.{key}" if section else key
    cfg = get_preset(name)
    try:
        new = apply_overrides(cfg, [f"{dotted}={_text(value)}"])
    except UserError as err:
        assert str(err).strip() and "\n" not in str(err)
        return
    assert _get(new, section, key) == value
    for other_section, other_key, _ in FIELDS:
        if (other_section, other_key) != (section, key):
            assert _get(new, other_section, other_key) == _get(cfg, other_section, other_key)
    assert from_dict(yaml.safe_load(yaml.safe_dump(to_dict(new)))) == new


VALID = {
    "train.epochs": st.integers(1, 10_000).map(str),
    "train.warmup_epochs": st.integers(0, 10_000).map(str),
    "data.batch_size": st.integers(1, 4096).map(str),
    "noise.rate": st.floats(0.0, 0.999).map(repr),
    "noise.seed": st.integers(0, 2**31).map(str),
    "method.tau": st.floats(1e-6, 10.0).map(repr),
    "optim.lr": st.floats(1e-6, 10.0).map(repr),
    "train.progress": st.sampled_from(["true", "True", "YES", "on", "1", "false", "No", "off"]),
    "data.subset": st.one_of(st.just("none"), st.integers(1, 10**6).map(str)),
    "method.mining_gate": st.sampled_from(["per_batch", "per_epoch", "latched"]),
    "train.device": st.sampled_from(["auto", "cpu", "cuda:1"]),
}


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_any_valid_override_applies(key, data):
    text = data.draw(VALID[key])
    section, name = key.split(".")
    new = apply_overrides(get_preset("quickstart"), [f"{key}={text}", f"{key}={text}"])
    value = getattr(getattr(new, section), name)
    if text.lower() in ("true", "yes", "on", "1", "false", "no", "off") and isinstance(value, bool):
        assert value == (text.lower() in ("true", "yes", "on", "1"))
    elif text == "none":
        assert value is None
    else:
        assert str(value) == text or value == float(text)


def _never_crashes(overrides: list[str]) -> None:
    try:
        apply_overrides(get_preset("quickstart"), overrides)
    except UserError as err:
        message = str(err)
        assert message.strip() and "\n" not in message and len(message) < 600


@FAST
@given(st.sampled_from(FIELDS), st.text(max_size=30))
def test_any_text_for_a_known_key_applies_or_is_a_user_error(field, text):
    section, key, _ = field
    _never_crashes([f"{section}.{key}={text}" if section else f"{key}={text}"])


@FAST
@given(st.lists(st.text(max_size=40), max_size=4))
def test_any_override_strings_apply_or_give_a_user_error(overrides):
    _never_crashes(overrides)


@FAST
@given(st.text(max_size=20).filter(lambda s: "=" not in s))
def test_an_override_without_equals_is_refused(item):
    with pytest.raises(UserError, match=r"section\.key=value"):
        apply_overrides(RunConfig(), [item])


@FAST
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=20),
    st.text(max_size=5),
)
def test_unknown_settings_are_refused(key, value):
    known = {f"{s}.{k}" if s else k for s, k, _ in FIELDS}
    assume(key.strip() not in known)
    with pytest.raises(UserError, match="unknown setting"):
        apply_overrides(RunConfig(), [f"{key}={value}"])


ANY_YAML = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@FAST
@given(st.sampled_from(PRESET_NAMES), st.sampled_from(FIELDS), ANY_YAML)
def test_from_dict_with_any_value_applies_or_gives_a_user_error(name, field, value):
    """A hand-edited config.yaml: every value either is taken as is or named in a UserError."""
    section, key, _ = field
    values = to_dict(get_preset(name))
    (values[section] if section else values)[key] = value
    try:
        cfg = from_dict(values)
    except UserError as err:
        assert str(err).strip() and "\n" not in str(err)
        return
    assert _get(cfg, section, key) == value or (value != value)  # NaN never equals itself


@FAST
@given(
    st.one_of(
        ANY_YAML,
        st.dictionaries(st.sampled_from([*SECTIONS, "preset", "junk"]), ANY_YAML, max_size=4),
        st.builds(
            lambda section, key, value: {section: {key: value}},
            st.sampled_from(SECTIONS),
            st.text(max_size=10),
            ANY_YAML,
        ),
    )
)
def test_from_dict_of_anything_gives_a_config_or_a_user_error(values):
    try:
        cfg = from_dict(values)
    except UserError as err:
        assert str(err).strip() and "\n" not in str(err)
        return
    assert isinstance(cfg, RunConfig)
    assert from_dict(to_dict(cfg)) == cfg


def test_field_list_covers_every_section():
    """Guard for the strategies above: every section's settings are generated."""
    assert {s for s, _, _ in FIELDS} == {"", *SECTIONS}
    assert all(dataclasses.is_dataclass(type(getattr(RunConfig(), s))) for s in SECTIONS)

"""ACT's selection rules and losses (act-spec A.2, A.3, A.5, G.3), pure functions and ACT steps."""

import pytest
import torch
import torch.nn.functional as F

from asymco.batch import Batch
from asymco.methods.act import ACT, ACTSettings
from asymco.methods.selection import (
    confidence_penalty,
    historical_weights,
    memorization_gap,
    mining_open,
    pseudo_labels,
    select,
)

# ---------------------------------------------------------------------------- truth table

# (variant, rtm_hit, ntm_hit, mining, selected, mined): paper Fig. 2 / main.py and main_web.py.
TRUTH_TABLE = [
    ("paper_main", True, True, False, True, False),
    ("paper_main", True, True, True, True, False),
    ("paper_main", True, False, False, False, False),  # only RTM fits: never selected
    ("paper_main", True, False, True, False, False),
    ("paper_main", False, True, False, False, False),  # only NTM fits: mined while mining
    ("paper_main", False, True, True, True, True),
    ("paper_main", False, False, False, False, False),
    ("paper_main", False, False, True, False, False),
    ("web", True, True, False, True, False),
    ("web", True, True, True, True, False),
    ("web", True, False, False, True, False),  # web always adds the "only RTM fits" cell
    ("web", True, False, True, True, False),
    ("web", False, True, False, False, False),
    ("web", False, True, True, True, True),
    ("web", False, False, False, False, False),
    ("web", False, False, True, False, False),
]


@pytest.mark.parametrize("mining_as_tensor", [False, True])
@pytest.mark.parametrize(("variant", "rtm", "ntm", "mining", "want_sel", "want_mined"),
                         TRUTH_TABLE)
def test_select_truth_table_cell(variant, rtm, ntm, mining, want_sel, want_mined,
                                 mining_as_tensor):
    """Each cell of the truth table, in both mining states and both variants."""
    gate = torch.tensor(mining) if mining_as_tensor else mining
    selected, mined = select(torch.tensor([rtm]), torch.tensor([ntm]), gate, variant=variant)
    assert selected.dtype == torch.bool
    assert mined.dtype == torch.bool
    assert selected.tolist() == [want_sel]
    assert mined.tolist() == [want_mined]


@pytest.mark.parametrize("variant", ["paper_main", "web"])
@pytest.mark.parametrize("mining", [False, True])
def test_select_truth_table_batched(variant, mining):
    """All four cells in one batch give the same element-wise answers as the table."""
    rows = [r for r in TRUTH_TABLE if r[0] == variant and r[3] == mining]
    rtm = torch.tensor([r[1] for r in rows])
    ntm = torch.tensor([r[2] for r in rows])
    selected, mined = select(rtm, ntm, torch.tensor(mining), variant=variant)
    assert selected.tolist() == [r[4] for r in rows]
    assert mined.tolist() == [r[5] for r in rows]


def _all_cells():
    rtm = torch.tensor([True, True, False, False])
    ntm = torch.tensor([True, False, True, False])
    return rtm, ntm


def test_paper_main_while_mining_equals_ntm_hits():
    """Spec simplification: while mining, paper_main selects exactly {NTM fits the label}."""
    rtm, ntm = _all_cells()
    selected, _ = select(rtm, ntm, True, variant="paper_main")
    assert torch.equal(selected, ntm)


@pytest.mark.parametrize("variant", ["paper_main", "web"])
@pytest.mark.parametrize("mining", [False, True])
def test_without_asm_never_mines(variant, mining):
    """use_asm=False: nothing is mined and the (RTM miss, NTM hit) cell is not selected."""
    rtm, ntm = _all_cells()
    selected, mined = select(rtm, ntm, mining, variant=variant, use_asm=False)
    assert not mined.any()
    assert not selected[2]
    closed, _ = select(rtm, ntm, False, variant=variant)
    assert torch.equal(selected, closed)


@pytest.mark.parametrize("variant", ["paper_main", "web"])
@pytest.mark.parametrize("mining", [False, True])
def test_without_ass_selects_everything(variant, mining):
    """use_ass=False: every sample is selected (the RTM trains on everything)."""
    rtm, ntm = _all_cells()
    selected, mined = select(rtm, ntm, mining, variant=variant, use_ass=False)
    assert selected.all()
    assert not mined.any()


@pytest.mark.parametrize("variant", ["paper_main", "web"])
def test_mined_only_in_rtm_miss_ntm_hit_cell(variant):
    """`mined` is True only in (RTM miss, NTM hit) while mining; never while closed."""
    rtm, ntm = _all_cells()
    _, mined_open = select(rtm, ntm, True, variant=variant)
    _, mined_closed = select(rtm, ntm, False, variant=variant)
    assert mined_open.tolist() == [False, False, True, False]
    assert mined_closed.tolist() == [False, False, False, False]


# ---------------------------------------------------------------------------- memorization gate


def _hits(n_true, n):
    return torch.arange(n) < n_true


def test_memorization_gap_value():
    """gap = (Acc_N - Acc_R) / Acc_R, with accuracies in percent."""
    gap, acc_rtm = memorization_gap(_hits(2, 4), _hits(3, 4))
    assert acc_rtm.item() == pytest.approx(50.0)
    assert gap.item() == pytest.approx(0.5)
    gap, _ = memorization_gap(_hits(4, 4), _hits(2, 4))
    assert gap.item() == pytest.approx(-0.5)


def test_gate_closed_when_rtm_accuracy_zero():
    """Acc_R = 0 closes the gate (and the gap is finite), whatever the NTM does."""
    for ntm_true in (0, 3):
        gap, acc_rtm = memorization_gap(_hits(0, 4), _hits(ntm_true, 4))
        assert torch.isfinite(gap)
        assert acc_rtm.item() == 0.0
        assert not bool(mining_open(gap, acc_rtm, 0.025))


@pytest.mark.parametrize(("rtm", "ntm", "is_open"), [
    (40, 40, True),   # gap 0 < tau
    (40, 30, True),   # negative gap: RTM ahead
    (40, 42, False),  # gap 0.05 >= tau
    (40, 80, False),  # gap 1.0
])
def test_gate_from_batch_accuracies(rtm, ntm, is_open):
    """The gate is open exactly while the relative gap is below tau = 0.025."""
    gap, acc_rtm = memorization_gap(_hits(rtm, 100), _hits(ntm, 100))
    assert bool(mining_open(gap, acc_rtm, 0.025)) is is_open


@pytest.mark.parametrize(("gap", "is_open"), [(0.0249, True), (0.025, False), (0.03, False),
                                              (-1.0, True)])
def test_gate_threshold_is_strict(gap, is_open):
    """open iff gap < tau: a gap equal to tau closes it."""
    assert bool(mining_open(torch.tensor(gap), torch.tensor(50.0), 0.025)) is is_open


# ---------------------------------------------------------------------------- weights, penalty


@pytest.mark.parametrize("epoch", [0, 1, 19, 49, 149])
def test_historical_weights_in_unit_interval(epoch):
    """w = c / (e + 1) lies in (0, 1] for counts 1..e+1, with 1 for always-selected."""
    counts = torch.arange(1, epoch + 2, dtype=torch.int32)
    w = historical_weights(counts, epoch)
    assert w.dtype.is_floating_point
    assert (w > 0).all()
    assert (w <= 1).all()
    assert w[-1].item() == 1.0
    assert w[0].item() == pytest.approx(1 / (epoch + 1))


def test_historical_weights_lower_bound_example():
    """Spec example: W=50 and selected now at e=149 gives at least 51/150 = 0.34."""
    w = historical_weights(torch.tensor([51], dtype=torch.int32), 149)
    assert w.item() == pytest.approx(0.34)


def test_confidence_penalty_is_negative_entropy():
    """For positive logits (clamp inactive) the penalty is -H(softmax(z)), batch-averaged."""
    torch.manual_seed(0)
    z = torch.rand(6, 5) * 3 + 0.1
    expected = -torch.distributions.Categorical(logits=z).entropy().mean()
    for clamp in (True, False):
        got = confidence_penalty(z, clamp_logits=clamp)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() < 0


def test_confidence_penalty_clamp_blocks_negative_logit_gradient():
    """clamp_logits=True: negative logits get zero gradient; clamp_logits=False: they do not."""
    torch.manual_seed(0)
    base = torch.randn(8, 6)
    base[:, 0] = -1.0  # guarantee negative entries
    base[:, 1] = 1.5  # and positive ones
    negative = base < 0

    z = base.clone().requires_grad_(True)
    confidence_penalty(z, clamp_logits=True).backward()
    assert torch.all(z.grad[negative] == 0)
    assert torch.any(z.grad[~negative] != 0)

    z2 = base.clone().requires_grad_(True)
    confidence_penalty(z2, clamp_logits=False).backward()
    assert torch.all(z2.grad[negative] != 0)


def test_pseudo_labels():
    """Selected -> observed label; not selected -> argmax of the EMA distribution."""
    selected = torch.tensor([True, False, True, False])
    label = torch.tensor([0, 1, 2, 3])
    ema = torch.tensor([[0.1, 0.9, 0.0, 0.0],
                        [0.1, 0.2, 0.7, 0.0],
                        [0.9, 0.1, 0.0, 0.0],
                        [0.0, 0.0, 0.4, 0.6]])
    assert pseudo_labels(selected, label, ema).tolist() == [0, 2, 2, 3]


# ---------------------------------------------------------------------------- ACT steps

K = 4


def tiny_model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, K))


def make_act(labels, cfg=None, seed=0):
    torch.manual_seed(seed)
    return ACT(cfg or ACTSettings(), num_classes=K, observed_labels=labels,
               make_model=tiny_model)


def force_class(net, cls, strength=20.0):
    """Make a tiny net predict `cls` for every input (zero weights, one large bias)."""
    linear = net[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[cls] = strength


def make_batch(index, label, seed=0):
    g = torch.Generator().manual_seed(seed)
    weak = torch.randn(len(index), 3, 2, 2, generator=g)
    strong = torch.randn(len(index), 3, 2, 2, generator=g)
    return Batch(index=index, views=(weak, strong), label=label)


def test_ema_argmax_moves_only_after_four_updates():
    """q starts one-hot(label); with RTM sure of another class, argmax q flips at k = 4."""
    n = 6
    labels = torch.zeros(n, dtype=torch.long)
    act = make_act(labels)
    force_class(act.nets["rtm"], 2)
    batch = make_batch(torch.arange(n), labels)
    assert (act.ema_probs.argmax(1) == 0).all()
    for k in range(1, 6):
        act.on_epoch_start(k - 1, warmup=False)
        act.training_step(batch)
        argmax = act.ema_probs.argmax(1)
        assert act.ema_probs[:, 0].tolist() == pytest.approx([0.8**k] * n, abs=1e-6)
        if k <= 3:
            assert (argmax == 0).all(), k
        else:
            assert (argmax == 2).all(), k


def test_ema_updated_for_unvisited_samples_only_when_visited():
    """Only the batch's rows of q change; the others keep their one-hot."""
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    act = make_act(labels)
    before = act.ema_probs.clone()
    act.on_epoch_start(0, warmup=False)
    act.training_step(make_batch(torch.tensor([0, 2, 4]), labels[[0, 2, 4]]))
    assert torch.equal(act.ema_probs[[1, 3, 5]], before[[1, 3, 5]])
    assert not torch.equal(act.ema_probs[[0, 2, 4]], before[[0, 2, 4]])
    assert torch.allclose(act.ema_probs.sum(1), torch.ones(6))


@pytest.mark.parametrize("rtm_class", [0, 3])  # RTM right (gate open) or wrong (gate closed)
@pytest.mark.parametrize("use_cr", [False, True])
def test_empty_selection_guard(rtm_class, use_cr):
    """No sample selected: finite loss, L_sel contributes exactly 0, every RTM param gets a grad."""
    n = 8
    labels = torch.zeros(n, dtype=torch.long)
    act = make_act(labels, ACTSettings(use_cr=use_cr))
    force_class(act.nets["rtm"], rtm_class, strength=3.0)
    force_class(act.nets["ntm"], 1, strength=3.0)  # NTM wrong on every sample
    batch = make_batch(torch.arange(n), labels)
    act.on_epoch_start(0, warmup=False)
    out = act.training_step(batch)

    assert out["empty_selection"].item() == 1.0
    assert out["selected_share"].item() == 0.0
    assert not act.is_selected.any()
    assert torch.isfinite(out["loss"])
    with torch.no_grad():
        loss_ntm = F.cross_entropy(act.nets["ntm"](batch.weak), labels)
        # Nothing selected: the CR targets are argmax q = the label after one update.
        loss_cr = F.cross_entropy(act.nets["rtm"](batch.views[1]), labels)
    expected_rtm = 0.2 * loss_cr if use_cr else torch.tensor(0.0)
    assert out["loss_rtm"].item() == pytest.approx(expected_rtm.item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx((expected_rtm + loss_ntm).item(), rel=1e-5)

    out["loss"].backward()
    for name, p in act.nets["rtm"].named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if not use_cr:
            assert torch.all(p.grad == 0), name  # L_sel = 0 exactly, no CR term


def test_selected_loss_is_weighted_mean_over_selection():
    """L_sel = (1/|S|) sum_S w_i CE_i with w = c / (e + 1) counting the current selection."""
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    act = make_act(labels, ACTSettings(use_cr=False))
    force_class(act.nets["rtm"], 1, strength=1.0)
    force_class(act.nets["ntm"], 1, strength=1.0)
    act.select_count.copy_(torch.tensor([4, 2, 0, 3, 3, 3], dtype=torch.int32))
    batch = make_batch(torch.arange(6), labels)
    act.on_epoch_start(4, warmup=False)
    out = act.training_step(batch)
    assert act.is_selected.tolist() == [True, True, True, False, False, False]
    assert act.select_count.tolist() == [5, 3, 1, 3, 3, 3]
    with torch.no_grad():
        ce = F.cross_entropy(act.nets["rtm"](batch.weak), labels, reduction="none")
    w = torch.tensor([5, 3, 1]) / 5.0
    expected = (w * ce[:3]).sum() / 3  # mean over |S|, not |B|
    assert out["loss_rtm"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["empty_selection"].item() == 0.0


@pytest.mark.parametrize(("variant", "want"), [("paper_main", False), ("web", True)])
def test_act_uses_configured_variant(variant, want):
    """RTM right, NTM wrong everywhere: paper_main selects nobody, web selects everybody."""
    labels = torch.zeros(4, dtype=torch.long)
    act = make_act(labels, ACTSettings(selection_variant=variant))
    force_class(act.nets["rtm"], 0)
    force_class(act.nets["ntm"], 1)
    act.on_epoch_start(0, warmup=False)
    act.training_step(make_batch(torch.arange(4), labels))
    assert act.is_selected.tolist() == [want] * 4


def _run_epoch(act, opt, labels, epoch, warmup, batch_size=8, visit=None):
    n = len(labels)
    act.on_epoch_start(epoch, warmup=warmup)
    order = torch.randperm(n) if visit is None else visit
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = make_batch(idx, labels[idx], seed=epoch * 1000 + start)
        out = act.training_step(batch)
        if opt is not None:
            opt.zero_grad()
            out["loss"].backward()
            opt.step()


def test_weights_in_unit_interval_after_warmup_and_robust_epochs():
    """After W warmup and a few robust epochs, w of currently selected samples is in (0, 1]."""
    torch.manual_seed(1)
    n, warmup = 32, 2
    labels = torch.randint(0, 3, (n,))
    act = make_act(labels)
    opt = torch.optim.SGD(act.parameters(), lr=0.1)
    for epoch in range(warmup):
        _run_epoch(act, opt, labels, epoch, warmup=True)
    assert (act.select_count == warmup).all()
    for epoch in range(warmup, warmup + 4):
        _run_epoch(act, opt, labels, epoch, warmup=False)
        chosen = act.is_selected
        assert chosen.any()
        w = historical_weights(act.select_count[chosen], epoch)
        assert (w > 0).all()
        assert (w <= 1).all()
        assert (w >= (warmup + 1) / (epoch + 1) - 1e-7).all()
        assert (act.select_count >= warmup).all()
        assert (act.select_count <= epoch + 1).all()


def test_warmup_counts_every_visit_once():
    """Warmup: every visited sample counts as selected; select_count +1 per visit exactly."""
    n = 16
    labels = torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(0))
    act = make_act(labels)
    visited = torch.tensor([3, 0, 7, 9, 12, 1, 5, 10, 14, 2])
    _run_epoch(act, None, labels, 0, warmup=True, batch_size=4, visit=visited)
    expected = torch.zeros(n, dtype=torch.int32)
    expected[visited] = 1
    assert torch.equal(act.select_count, expected)
    assert torch.equal(act.is_selected, expected.bool())

    _run_epoch(act, None, labels, 1, warmup=True, batch_size=4, visit=torch.randperm(n))
    assert torch.equal(act.select_count, expected + 1)
    assert act.is_selected.all()
    # Warmup does not touch the EMA label distribution.
    assert torch.equal(act.ema_probs, F.one_hot(labels, K).float())


def test_warmup_loss_includes_confidence_penalty():
    """Warmup RTM loss = CE + 1.0 * negative entropy (clamped logits)."""
    labels = torch.tensor([0, 1, 2, 3])
    act = make_act(labels)
    batch = make_batch(torch.arange(4), labels)
    act.on_epoch_start(0, warmup=True)
    out = act.training_step(batch)
    with torch.no_grad():
        z = act.nets["rtm"](batch.weak)
        expected = F.cross_entropy(z, labels) + confidence_penalty(z, clamp_logits=True)
    assert out["loss_rtm"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_state_dict_round_trip():
    """Loading an ACT state_dict into a fresh instance reproduces every buffer and parameter."""
    torch.manual_seed(2)
    n = 16
    labels = torch.randint(0, K, (n,))
    act = make_act(labels, seed=0)
    opt = torch.optim.SGD(act.parameters(), lr=0.1)
    _run_epoch(act, opt, labels, 0, warmup=True)
    for epoch in (1, 2):
        _run_epoch(act, opt, labels, epoch, warmup=False)

    fresh = make_act(labels, seed=5)
    assert not torch.equal(fresh.select_count, act.select_count)
    assert not torch.equal(fresh.ema_probs, act.ema_probs)
    fresh.load_state_dict(act.state_dict())

    buffers = dict(fresh.named_buffers())
    assert set(buffers) == {name for name, _ in act.named_buffers()}
    for name, value in act.named_buffers():
        assert buffers[name].dtype == value.dtype, name
        assert torch.equal(buffers[name], value), name
    params = dict(fresh.named_parameters())
    for name, value in act.named_parameters():
        assert torch.equal(params[name], value), name
    for key in ("select_count", "ema_probs", "is_selected", "is_mined", "gate_closed",
                "epoch_hits", "last_epoch_hits"):
        assert key in buffers

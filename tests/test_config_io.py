"""Settings owned by their method: `method.name` chooses which `method.*` keys exist, settings
that moved keep their old spelling, and config.yaml files and checkpoints written before the
move still load."""

from __future__ import annotations

import dataclasses

import pytest

from asymco import api
from asymco.config_io import apply_overrides, from_dict, to_dict
from asymco.engine.checkpoint import load_checkpoint, save_checkpoint
from asymco.errors import UserError
from asymco.methods.act import ACTSettings
from asymco.methods.coteaching import CoTeachingSettings
from asymco.methods.jocor import JoCoRSettings
from asymco.presets import get_preset

WEB = get_preset("web-bird")  # ACT with label smoothing and its own NTM plan


def test_method_name_applies_first_wherever_it_stands():
    for overrides in (["method.name=jocor", "method.co_lambda=0.5"],
                      ["method.co_lambda=0.5", "method.name=jocor"]):
        cfg = apply_overrides(WEB, overrides)
        assert cfg.method == JoCoRSettings(label_smoothing=0.35, co_lambda=0.5)


def test_switching_methods_keeps_the_settings_they_share():
    cfg = apply_overrides(WEB, ["method.name=coteaching", "method.forget_rate=0.3"])
    assert cfg.method == CoTeachingSettings(label_smoothing=0.35, forget_rate=0.3)
    back = apply_overrides(cfg, ["method.name=jocor"])  # the Co-teaching family's schedule stays
    assert back.method == JoCoRSettings(label_smoothing=0.35, forget_rate=0.3)


def test_a_key_of_another_method_names_its_owners():
    with pytest.raises(UserError) as err:
        apply_overrides(get_preset("quickstart"), ["method.name=standard", "method.tau=0.1"])
    message = str(err.value)
    assert "unknown setting 'method.tau'" in message and "method standard has:" in message
    assert "(tau is a setting of act)" in message
    with pytest.raises(UserError, match=r"forget_rate is a setting of coteaching, "
                                        r"coteaching_plus, jocor"):
        apply_overrides(get_preset("quickstart"), ["method.forget_rate=0.2"])
    with pytest.raises(UserError, match="unknown method 'nope'; choose one of: act, "):
        apply_overrides(get_preset("quickstart"), ["method.name=nope"])


def test_moved_settings_keep_their_old_spelling():
    cfg = apply_overrides(get_preset("quickstart"), ["optim.ntm_lr_mode=separate_step",
                                                     "optim.ntm_lr=0.002"])
    assert (cfg.method.ntm_lr_mode, cfg.method.ntm_lr) == ("separate_step", 0.002)
    assert "ntm_lr" not in to_dict(cfg)["optim"]
    moved = r"unknown setting 'optim\.ntm_lr \(now method\.ntm_lr\)'.*method standard"
    with pytest.raises(UserError, match=moved):
        apply_overrides(get_preset("quickstart"), ["method.name=standard", "optim.ntm_lr=0.1"])


def _written_before_the_move(cfg) -> dict:
    """config.yaml as asymco 0.1 wrote it: one method section holding every method's keys,
    and the NTM's learning rate under optim."""
    values = to_dict(cfg)
    method = values["method"]
    values["optim"].update(ntm_lr_mode=method.pop("ntm_lr_mode", "same_as_rtm"),
                           ntm_lr=method.pop("ntm_lr", 0.08))
    old = {**to_dict(get_preset("quickstart"))["method"], "forget_rate": None, "num_gradual": 10,
           "exponent": 1.0, "init_epoch": 20, "co_lambda": 0.9}
    old.pop("ntm_lr_mode"), old.pop("ntm_lr")
    values["method"] = {**old, **method}
    return values


@pytest.mark.parametrize("name", ["web-bird", "quickstart", "cifar100n-sym20"])
def test_a_config_written_before_the_move_loads_as_it_meant(name):
    cfg = get_preset(name)
    assert from_dict(_written_before_the_move(cfg)) == cfg
    standard = apply_overrides(cfg, ["method.name=standard"])
    assert from_dict(_written_before_the_move(standard)) == standard


def test_another_methods_setting_away_from_its_default_is_refused():
    values = _written_before_the_move(get_preset("quickstart"))
    values["method"]["co_lambda"] = 0.5  # information a run of ACT cannot use: say so
    with pytest.raises(UserError, match=r"unknown setting 'method\.co_lambda'.*setting of jocor"):
        from_dict(values)


def test_a_checkpoint_written_before_the_move_matches_its_run(tmp_path):
    cfg = dataclasses.replace(
        get_preset("quickstart"), method=ACTSettings(ntm_lr_mode="separate_cosine")
    )
    path = tmp_path / "checkpoint.pt"
    state = {"method": {}, "optimizer": {}, "rng": [{}], "world_size": 1, "history": [],
             "step": 0, "sums": [{}], "num_samples": 7}
    save_checkpoint(path, **state, config=_written_before_the_move(cfg))
    assert load_checkpoint(path, num_samples=7, config=to_dict(cfg))["num_samples"] == 7
    other = apply_overrides(cfg, ["method.ntm_lr=0.5"])
    with pytest.raises(UserError, match=r"another configuration \(method\.ntm_lr: 0\.08 in the "
                                        r"checkpoint, 0\.5 now\)"):
        load_checkpoint(path, num_samples=7, config=to_dict(other))


def test_image_files_refuse_a_loader_meant_for_arrays(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(tmp_path / label / f"{i}.png")
    assert api.resolve_own_data(f"folder:{tmp_path}").data.loader == "auto"
    for loader in ("device", "pil"):
        message = f"data.loader={loader} applies to the built-in CNNs' in-memory images"
        with pytest.raises(UserError, match=message):
            api.resolve_own_data(f"folder:{tmp_path}", None, [f"data.loader={loader}"])


def test_resolved_settings_fill_the_forget_rate_once():
    cfg = apply_overrides(get_preset("quickstart"), ["method.name=coteaching"])
    assert cfg.method.forget_rate is None
    assert cfg.method.resolved(cfg.noise).forget_rate == cfg.noise.rate == 0.4
    human = apply_overrides(get_preset("cifar100n-human"), ["method.name=jocor"])
    with pytest.raises(UserError, match=r"needs method\.forget_rate for human noise"):
        human.method.resolved(human.noise)

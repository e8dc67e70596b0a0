"""Typed model configs and the typed solid / mergenet / text groups (issue 36).

Every ``conf/model/*.yaml`` composes into its model's config class and builds the model; an unknown key or a
value of the wrong type under ``model``, ``solid``, ``mergenet`` or ``text`` is refused at the entry point,
naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from lsc4rec.config import compose_config, config_dir
from lsc4rec.models.mergenet.mergenet_config import MergeNetSettings
from lsc4rec.models.solid import SolidRecommender
from lsc4rec.models.solid.solid_config import SolidConfig, SolidSettings
from lsc4rec.models.srm import SRM_CLASSES, SRM_CONFIGS, SequentialRecommender, TTT4RecConfig
from lsc4rec.settings import SettingsError, federated_settings_from_overrides, model_config
from lsc4rec.text.text_settings import TextSettings
from lsc4rec.training import MODEL_CONFIGS, build_model_from_config

PRESETS = sorted(path.stem for path in (config_dir() / "model").glob("*.yaml"))
#: Keys a preset needs before it builds: model=custom names a class by its dotted path (a built-in one here;
#: a user's own: tests/test_custom_model.py).
PRESET_KEYS = {"custom": ["model.target=lsc4rec.models.srm.gru4rec.GRU4Rec"]}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_composes_to_its_config_and_builds(preset: str) -> None:
    cfg = compose_config([f"model={preset}", *PRESET_KEYS.get(preset, [])])
    config = model_config(cfg.model)
    assert type(config) is MODEL_CONFIGS[str(cfg.model.name)]
    assert config.name == cfg.model.name
    # Every key of the preset reaches the config (SOLID's base_params become the base's config).
    for key, value in cfg.model.items():
        if key not in ("name", "base_params", "ttt"):
            got = getattr(config, str(key))
            assert got == (tuple(value) if isinstance(got, tuple) else value), key
    model = build_model_from_config(config, 50, 20)
    assert isinstance(model, SequentialRecommender) and model.num_items == 50
    classes = {**SRM_CLASSES, "custom": SRM_CLASSES["gru4rec"]}
    expected = SolidRecommender if cfg.model.name == "solid" else classes[str(cfg.model.name)]
    assert isinstance(model, expected)


def test_config_defaults_are_the_constructors_defaults() -> None:
    for name, config in SRM_CONFIGS.items():
        parameters = inspect.signature(SRM_CLASSES[name]).parameters
        for spec in dataclasses.fields(config):
            if spec.name in ("item_text", "ttt"):
                continue
            default = spec.default
            constructor = parameters[spec.name].default
            assert default == (tuple(constructor) if isinstance(default, tuple) else constructor), (
                name,
                spec,
            )
    assert TTT4RecConfig().ttt == SRM_CLASSES["ttt4rec"](5).ttt_options
    parameters = inspect.signature(SolidRecommender).parameters
    for spec in dataclasses.fields(SolidConfig):
        if spec.name not in ("item_text", "base_params"):
            assert spec.default == (
                tuple(d) if isinstance(d := parameters[spec.name].default, list | tuple) else d
            )


def test_the_same_seed_builds_the_same_weights_from_config_and_constructor() -> None:
    torch.manual_seed(0)
    direct = SRM_CLASSES["sasrec"](20, hidden_size=16, num_blocks=1, max_len=7).state_dict()
    torch.manual_seed(0)
    built = model_config({"name": "sasrec", "hidden_size": 16, "num_blocks": 1}).build(20, 7).state_dict()
    assert direct.keys() == built.keys() and all(torch.equal(direct[k], built[k]) for k in direct)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=gru4rec", "+model.num_blocks=2"],
            r"unknown key model\.num_blocks for model\.name=gru4rec "
            r"\(accepted: hidden_size, num_layers, dropout, gru_size, item_text\)",
        ),
        (["model=sasrec", "model.hidden_size=abc"], r"model\.hidden_size must be an integer, got 'abc'"),
        (["model=sasrec", "model.dropout=high"], r"model\.dropout must be a number, got 'high'"),
        (["model=ttt4rec", "+model.ttt.depth=2"], r"unknown key model\.ttt\.depth"),
        (["model=ttt4rec", "model.ttt.layer=lstm"], r"ttt\.layer must be one of"),
        (
            ["model=solid", "+model.base_params.foo=1"],
            r"unknown key model\.base_params\.foo for model\.base=sasrec",
        ),
        (["model=solid", "model.base=din"], r"model\.base must be one of"),
        (["model=solid", "model.meta_size=x"], r"model\.meta_size must be an integer, got 'x'"),
        (["model=sasrec", "model.item_text=frozen"], r"model\.item_text='frozen' is not one of"),
        (["model.name=bert4rec"], r"model\.name must be one of"),
        (["+solid.nosuch=1"], r"unknown key solid\.nosuch"),
        (["solid.attribute_dim=wide"], r"solid\.attribute_dim must be an integer, got 'wide'"),
        (
            ["+solid.feature_weights.text=heavy"],
            r"solid\.feature_weights\.text must be a number, got 'heavy'",
        ),
        (["+mergenet.nosuch=1"], r"unknown key mergenet\.nosuch"),
        (["mergenet.rank=1.5"], r"mergenet\.rank must be an integer, got 1\.5"),
        (["mergenet.aligned=maybe"], r"mergenet\.aligned must be auto, true or false, got 'maybe'"),
        (["+text.nosuch=1"], r"unknown key text\.nosuch"),
        (["text.batch_size=many"], r"text\.batch_size must be an integer, got 'many'"),
    ],
)
def test_a_bad_key_or_value_is_refused_naming_it(overrides: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        federated_settings_from_overrides(overrides)


def test_the_groups_are_typed_with_the_yaml_defaults() -> None:
    run = federated_settings_from_overrides(["model=solid"])
    assert isinstance(run.model, SolidConfig) and run.model.codebook_sizes == run.solid.codebook_sizes
    assert run.model.base_params.name == "sasrec" and run.model.base_params.dropout == run.model.dropout
    assert run.solid == SolidSettings(features=run.solid.features)
    # conf/federated_run.yaml transfers every round; the other keys are conf/mergenet's defaults.
    assert dataclasses.replace(run.mergenet, every_rounds=0) == MergeNetSettings()
    assert run.text == TextSettings()

"""The typed ``llm`` group (issue 36): one settings class per kind of cloud LLM, chosen by ``llm.name``.

Every ``conf/llm/*.yaml`` composes into its kind's settings with every key reaching them; an unknown key, a
key of another kind and a value of the wrong type are refused at the entry point, naming the dotted key.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from lsc4rec.config import compose_config, config_dir
from lsc4rec.models.llm.llm_settings import (
    LLM_SETTINGS,
    LLMTrainSettings,
    PretrainedLLMSettings,
    ScratchLLMSettings,
    plain_llm_settings,
)
from lsc4rec.models.llm.pretrained import build_llm
from lsc4rec.models.llm.recommender import CloudLLM
from lsc4rec.settings import (
    MERGENET_STUDY_IGNORES,
    REQUEST_CURVE_IGNORES,
    MergeNetStudySettings,
    RequestCurveSettings,
    SettingsError,
    federated_settings_from_overrides,
    llm_settings,
    typed_run,
)

KINDS = sorted(path.stem for path in (config_dir() / "llm").glob("*.yaml"))
#: What a kind needs on the command line besides its YAML (``llm=pretrained`` has no base of its own).
NEEDS = {"pretrained": ["llm.base=/models/any-causal-lm"]}


def test_every_kind_has_its_settings_class() -> None:
    assert set(KINDS) == set(LLM_SETTINGS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_llm_yaml_composes_to_its_typed_settings(kind: str) -> None:
    cfg = compose_config([f"llm={kind}", *NEEDS.get(kind, [])])
    settings = llm_settings(cfg.llm)
    assert type(settings) is LLM_SETTINGS[kind] and settings.name == kind
    for key, value in cfg.llm.items():
        got = getattr(settings, str(key))
        if key == "train":
            assert dataclasses.asdict(got) == OmegaConf.to_container(value)
        else:
            assert got == value, key
    # The same settings on every entry point that reads the group.
    federated = compose_config([f"llm={kind}", *NEEDS.get(kind, [])], "federated_run")
    assert federated_settings_from_overrides([f"llm={kind}", *NEEDS.get(kind, [])]).llm == llm_settings(
        federated.llm
    )
    assert typed_run(cfg, RequestCurveSettings, REQUEST_CURVE_IGNORES).llm == settings
    mergenet = compose_config([f"llm={kind}", *NEEDS.get(kind, [])], "mergenet_run")
    assert typed_run(mergenet, MergeNetStudySettings, MERGENET_STUDY_IGNORES).llm == llm_settings(
        mergenet.llm
    )


def test_the_kinds_and_their_defaults() -> None:
    scratch = llm_settings(compose_config().llm)
    assert isinstance(scratch, ScratchLLMSettings) and not scratch.semantic_items
    # LLMTrainSettings' defaults are conf/llm/scratch.yaml's train section.
    assert scratch.train == LLMTrainSettings()
    assert llm_settings({**compose_config().llm, "item_tokens": "semantic"}).semantic_items
    smollm2 = llm_settings(compose_config(["llm=smollm2"]).llm)
    assert isinstance(smollm2, PretrainedLLMSettings) and smollm2.base == "smollm2"
    assert smollm2.local_files_only and smollm2.bos_token_id is None and not smollm2.semantic_items
    # The GPU payload's command line (below lsc4rec.settings) builds the same settings from plain values.
    assert plain_llm_settings(OmegaConf.to_container(compose_config(["llm=smollm2"]).llm)) == smollm2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+llm.foo=1"], r"unknown key llm\.foo for llm\.name=scratch \(accepted: name, path, "),
        (["llm=smollm2", "+llm.hidden_size=64"], r"unknown key llm\.hidden_size for llm\.name=smollm2"),
        (["llm=smollm2", "+llm.item_tokens=semantic"], r"unknown key llm\.item_tokens for llm\.name=smollm2"),
        (["+llm.base=smollm2"], r"unknown key llm\.base for llm\.name=scratch"),
        (["+llm.train.foo=1"], r"unknown key llm\.train\.foo"),
        (["llm.name=gpt"], r"llm\.name must be one of \['pretrained', 'scratch', 'smollm2'\], got 'gpt'"),
        (["llm.hidden_size=abc"], r"llm\.hidden_size must be an integer, got 'abc'"),
        (["llm.dropout=high"], r"llm\.dropout must be a number, got 'high'"),
        (["llm.train.lr=fast"], r"llm\.train\.lr must be a number, got 'fast'"),
        (["llm.train.progress=sometimes"], r"llm\.train\.progress must be true or false, got 'sometimes'"),
        (
            ["llm=smollm2", "llm.prompt_max_tokens=1.5"],
            r"llm\.prompt_max_tokens must be an integer, got 1\.5",
        ),
        (["llm=pretrained"], r"llm\.base is mandatory for llm\.name=pretrained"),
        (["llm.item_init=words"], r"llm\.item_init must be one of"),
        (["llm.item_tokens=words"], r"llm\.item_tokens must be 'item' or 'semantic'"),
        (["llm.history_format=prose"], r"llm\.history_format must be one of"),
        (["llm.train.epochs=0"], r"llm\.train\.epochs must be >= 1, got 0"),
        (["llm.max_len=0"], r"llm\.max_len must be >= 1, got 0"),
    ],
)
def test_a_bad_llm_key_or_value_is_refused_naming_it(overrides: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        federated_settings_from_overrides(overrides)
    with pytest.raises(SettingsError, match=message):
        typed_run(compose_config(overrides), RequestCurveSettings, REQUEST_CURVE_IGNORES)


def test_an_unset_lists_path_is_none_and_a_given_one_reaches_the_settings() -> None:
    # The export command composes conf/pretrained_cloud.yaml without a lists_path (??? there).
    unset = typed_run(compose_config([], "pretrained_cloud"), RequestCurveSettings, REQUEST_CURVE_IGNORES)
    assert unset.llm.name == "smollm2" and unset.llm.lists_path is None
    given = compose_config(["llm.lists_path=/lists"], "pretrained_cloud")
    assert typed_run(given, RequestCurveSettings, REQUEST_CURVE_IGNORES).llm.lists_path == "/lists"


def test_build_llm_takes_typed_settings_and_builds_the_same_weights() -> None:
    settings = llm_settings(
        {**compose_config().llm, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    )
    built = build_llm(settings, 12, seed=3, item_text=None)
    direct = CloudLLM.from_scratch(
        12, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=50, dropout=0.3, seed=3
    )
    assert built.item_init == "random"
    ours, theirs = built.state_dict(), direct.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(TypeError, match="needs scratch or pretrained LLM settings"):
        build_llm(compose_config().llm, 12)  # type: ignore[arg-type]

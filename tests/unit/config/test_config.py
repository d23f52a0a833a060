from __future__ import annotations

import pytest
import yaml

from foldstack.config import Config, apply_overrides, config_from_dict, load_config
from foldstack.errors import ConfigError

MODELS = [{"name": "a", "kind": "tfidf_lr", "params": {}}]


def test_defaults_validate_and_fill_model_params(tmp_path):
    cfg = config_from_dict({"base_models": MODELS})
    assert cfg.folds.k == 5 and cfg.meta.kind == "auto"
    # The spec holds the complete, defaulted params (they are what a fold identity hashes).
    assert cfg.base_models[0].params, "defaults of the kind are filled in"


def test_project_params_file_is_valid():
    cfg = load_config("params.yaml")
    assert [m.name for m in cfg.base_models]


@pytest.mark.parametrize("raw, fragment", [
    ({"base_models": MODELS, "folds": {"k": 1}}, "folds.k"),
    ({"base_models": MODELS, "foldz": {}}, "foldz: unknown key"),
    ({"base_models": MODELS, "meta": {"kind": "xgboost"}}, "meta.kind: must be one of"),
    ({"base_models": MODELS, "split": {"holdout_fraction": "lots"}}, "split.holdout_fraction"),
    ({"base_models": []}, "at least one base model"),
    ({"base_models": [{"name": "a", "kind": "no_such_kind"}]}, "unknown model kind 'no_such_kind'"),
    ({"base_models": [{"name": "a", "kind": "tfidf_lr", "params": {"bogus": 1}}]}, "bogus"),
    ({"base_models": MODELS * 2}, "repeated: a"),
    ({"base_models": MODELS, "data": {"min_text_chars": 10, "max_text_chars": 5}}, "min_text_chars"),
])
def test_bad_params_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert fragment in str(err.value)


def test_unknown_kind_lists_available_kinds():
    with pytest.raises(ConfigError, match="available kinds: .*tfidf_lr"):
        config_from_dict({"base_models": [{"name": "a", "kind": "nope"}]})


def test_overrides_by_dotted_path_including_named_models(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base_models": MODELS}))
    cfg = load_config(path, ["meta.kind=vote", "folds.k=3", "base_models.a.params.C=2.5"])
    assert cfg.meta.kind == "vote" and cfg.folds.k == 3
    assert cfg.base_models[0].params["C"] == 2.5
    with pytest.raises(ConfigError, match="no entry named 'b'"):
        apply_overrides({"base_models": MODELS}, ["base_models.b.params.C=1"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(path, ["meta.kind"])


def test_missing_and_broken_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_relative_paths_resolve_against_params_dir(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base_models": MODELS, "data": {"path": "d/x.csv"}}))
    cfg = load_config(path)
    assert cfg.resolve_path(cfg.data.path) == tmp_path.resolve() / "d" / "x.csv"
    assert isinstance(cfg, Config)


def test_base_models_as_a_mapping_of_names():
    cfg = config_from_dict({"base_models": {"lr": {"kind": "tfidf_lr", "params": {"C": 2}}, "nb": {"kind": "nb_svm"}}})
    assert [m.name for m in cfg.base_models] == ["lr", "nb"] and cfg.base_models[0].params["C"] == 2
    raw = apply_overrides({"base_models": {"lr": {"kind": "tfidf_lr"}}}, ["base_models.lr.params.C=3"])
    assert config_from_dict(raw).base_model("lr").params["C"] == 3
    with pytest.raises(ConfigError, match="base model 'lr': expected a mapping"):
        config_from_dict({"base_models": {"lr": "tfidf_lr"}})

"""presets/*.yaml: complete params files that differ from params.yaml only where they say, with paths that
point at the project's own folders; base models' max_data_rows decided at load on the data's row count."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from foldstack.config import config_from_dict, load_config
from foldstack.errors import ConfigError
from tests.paths import REPO_ROOT

PRESETS = sorted((REPO_ROOT / "presets").glob("*.yaml"))
# What each preset changes on purpose; everything else is params.yaml's.
INTENDED = {"cpu-quality.yaml": {"base_models"}, "gpu.yaml": {"base_models", "runtime.device", "runtime.fits_per_gpu"}}


def _flat(cfg, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "params":
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _resolved(path: Path) -> dict[str, object]:
    cfg = load_config(path)
    flat = _flat(cfg.model_dump(mode="json"))
    for key, value in flat.items():  # relative paths compared where they point, not as written
        if isinstance(value, str) and key.endswith(("path", "_dir", ".dir")) and value:
            flat[key] = str(cfg.resolve_path(value).resolve())
    flat["base_models"] = [m["name"] for m in cfg.model_dump(mode="json")["base_models"]]
    return {k: v for k, v in flat.items() if not k.startswith("base_models.")}


def test_there_are_the_two_presets() -> None:
    assert [p.name for p in PRESETS] == ["cpu-quality.yaml", "gpu.yaml"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_a_preset_is_params_yaml_but_for_what_it_changes(preset: Path) -> None:
    default, mine = _resolved(REPO_ROOT / "params.yaml"), _resolved(preset)
    changed = {key for key in default.keys() | mine.keys() if default.get(key) != mine.get(key)}
    assert changed == INTENDED[preset.name], sorted(changed)
    assert preset.read_text(encoding="utf-8").startswith(f"# presets/{preset.name} — ")  # says what it is and costs


def test_cpu_quality_adds_mpnet_and_a_small_data_fine_tune_to_the_default_bases() -> None:
    raw = yaml.safe_load((REPO_ROOT / "presets" / "cpu-quality.yaml").read_text(encoding="utf-8"))
    default = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert {k: raw["base_models"][k] for k in default["base_models"]} == default["base_models"]
    assert raw["base_models"]["mpnet_lr"]["params"]["model"] == "package:all_mpnet_base_v2"
    assert raw["base_models"]["minilm_ft"]["kind"] == "finetune" and raw["base_models"]["minilm_ft"]["max_data_rows"]


def _data(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / f"data-{rows}.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(rows)], "label": ["a", "b"] * (rows // 2)}).to_csv(
        path, index=False)
    return path


def test_max_data_rows_leaves_a_model_out_on_bigger_data_with_a_log_line(tmp_path: Path, caplog) -> None:
    models = {"tfidf_lr": {"kind": "tfidf_lr"}, "nb_svm": {"kind": "nb_svm", "max_data_rows": 100}}
    small = config_from_dict({"data": {"path": str(_data(tmp_path, 100))}, "base_models": models})
    assert [m.name for m in small.base_models] == ["tfidf_lr", "nb_svm"]
    with caplog.at_level(logging.WARNING, logger="foldstack.config"):
        big = config_from_dict({"data": {"path": str(_data(tmp_path, 102))}, "base_models": models})
    assert [m.name for m in big.base_models] == ["tfidf_lr"]
    assert "base model nb_svm is left out: the data has 102 rows, over its max_data_rows 100" in caplog.text
    capped = config_from_dict({"data": {"path": str(_data(tmp_path, 102)), "max_rows": 100}, "base_models": models})
    assert [m.name for m in capped.base_models] == ["tfidf_lr", "nb_svm"]  # data.max_rows counts
    # A rule for taking part, not a model param: the spec's dump (hashed into fold identities) is unchanged.
    assert small.base_models[1].model_dump(mode="json") == {"name": "nb_svm", "kind": "nb_svm",
                                                           "params": small.base_models[1].params}


def test_every_model_left_out_is_an_error_and_no_data_file_leaves_all_in(tmp_path: Path) -> None:
    models = {"nb_svm": {"kind": "nb_svm", "max_data_rows": 10}}
    with pytest.raises(ConfigError, match="every base model is left out on 100 rows by its max_data_rows"):
        config_from_dict({"data": {"path": str(_data(tmp_path, 100))}, "base_models": models})
    cfg = config_from_dict({"data": {"path": str(tmp_path / "absent.csv")}, "base_models": models})
    assert [m.name for m in cfg.base_models] == ["nb_svm"]  # a serving machine without the data


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_the_cli_validates_each_preset_from_the_repository_root(preset: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "foldstack.cli", "validate-params", "-p",
                             str(preset.relative_to(REPO_ROOT))], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr

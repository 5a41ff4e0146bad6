"""params.yaml -> typed Params: defaults, the shipped file, and errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pspnet.config import Params, load_params, parse_params
from pspnet.errors import ConfigError


def test_shipped_params_file_is_valid_and_complete(repo_root: Path) -> None:
    """params.yaml parses strictly and spells out every parameter (so `dvc params diff` shows all)."""
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    params = parse_params(raw, "params.yaml")
    assert set(Params().to_flat_dict()) == set(params.to_flat_dict())
    flat_raw: set[str] = set()

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat_raw.add(prefix)

    walk("", raw)
    assert flat_raw == set(Params().to_flat_dict()), "params.yaml must list every parameter explicitly"


def test_unknown_keys_are_named_with_the_accepted_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_params({"train": {"lrr": 0.1}, "colour": 1}, "params.yaml")
    msg = str(info.value)
    assert "params.yaml" in msg
    assert "train.lrr: unknown key" in msg and "lr, " in msg
    assert "colour: unknown key" in msg and "train" in msg


def test_bad_values_name_field_value_and_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse_params({"train": {"epochs": 0, "scale_range": [2.0, 0.5]}, "model": {"encoder": "vgg"}}, "p.yaml")
    msg = str(info.value)
    assert "train.epochs" in msg and "(got 0)" in msg
    assert "train.scale_range" in msg
    assert "model.encoder" in msg and "'vgg'" in msg
    assert "Fix the value in p.yaml" in msg


def test_yaml_sections_that_shadow_python_names_load_by_their_yaml_names(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("validate:\n  min_samples_per_split: 3\nregister:\n  model_name: roads\n")
    params = load_params(path)
    assert params.validate_.min_samples_per_split == 3
    assert params.register_.model_name == "roads"
    assert params.to_flat_dict()["register.model_name"] == "roads"


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(scalar)


def test_params_are_immutable() -> None:
    params = Params()
    with pytest.raises(Exception):
        params.train.lr = 1.0  # type: ignore[misc]

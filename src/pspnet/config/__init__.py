"""Typed, validated parameters: ``params.yaml`` -> :class:`Params`.

Every knob of every stage lives here, with its default, its range and a one-line meaning.
Unknown keys are rejected by name (a typo never silently falls back to a default), and a bad
value names the file, the field and what would be accepted.

One module per ``params.yaml`` section (``data``, ``model``, ``train``, ``evaluate``,
``register``, ``services``: schedule and mlflow; ``base``: what they share); this package joins
them into :class:`Params` and re-exports every name, so callers import from ``pspnet.config``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pspnet.config.base import TEST_SPLIT, VAL_SPLIT, StrictModel
from pspnet.config.data import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PIL_PIXEL_CAP,
    SOURCE_NAMES,
    ColorJitterConfig,
    DataConfig,
    HoldoutConfig,
    PathsConfig,
    SourceConfig,
    SyntheticConfig,
    ValidateConfig,
)
from pspnet.config.evaluate import EvaluateConfig, TestConfig
from pspnet.config.model import SHALLOW_RESNETS, ModelConfig, resolve_stem
from pspnet.config.register import PROMOTION_LOCK_SUFFIX, RegisterConfig
from pspnet.config.services import TRACKING_SCHEMES, MlflowConfig, MultinodeConfig, ScheduleConfig
from pspnet.config.train import LEGACY_AMP, TrainConfig
from pspnet.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_PARAMS_FILE", "LEGACY_AMP", "PIL_PIXEL_CAP", "PROMOTION_LOCK_SUFFIX",
    "SHALLOW_RESNETS", "SOURCE_NAMES", "TEST_SPLIT", "TRACKING_SCHEMES", "VAL_SPLIT",
    "ColorJitterConfig", "DataConfig", "EvaluateConfig", "HoldoutConfig", "MlflowConfig", "ModelConfig", "Params",
    "MultinodeConfig", "PathsConfig", "RegisterConfig", "ScheduleConfig", "SourceConfig", "StrictModel", "SyntheticConfig", "TestConfig",
    "TrainConfig", "ValidateConfig", "deep_merge", "flatten", "load_params", "parse_params", "resolve_stem",
]  # fmt: skip

DEFAULT_PARAMS_FILE = "params.yaml"


class Params(StrictModel):
    """The whole of ``params.yaml``."""

    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    test: TestConfig = TestConfig()
    register_: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    mlflow: MlflowConfig = MlflowConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"train.lr": 0.01, ...}``: the form MLflow params and DVC ``-S`` use."""
        return flatten(self.model_dump(mode="json", by_alias=True))


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}`` (sequences stay values, as lists)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = list(value) if isinstance(value, tuple) else value
    return flat


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` on top, merged section by section; a new dict (copies), the inputs unchanged."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _accepted_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys accepted by the section that holds ``loc`` (by their params.yaml names)."""
    model: Any = Params
    for part in loc[:-1]:
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid parameters ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            accepted = ", ".join(_accepted_keys(e["loc"]))
            lines.append(f"  - {loc}: unknown key. Remove it or fix its spelling; accepted here: {accepted}.")
        else:
            given = e.get("input")
            lines.append(f"  - {loc}: {e['msg']} (got {given!r}). Fix the value in {source}.")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "<params>") -> Params:
    """Validate a raw mapping into :class:`Params`, raising :class:`ConfigError` with every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}.")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file (``params.yaml`` by default)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found. Run from the project root or pass --params PATH.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))

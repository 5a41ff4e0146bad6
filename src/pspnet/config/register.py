"""Section ``register``: the promotion gate and the registered artefact."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pspnet.config.base import (
    NonNegativeFloat,
    NonNegativeInt,
    StrictModel,
)

#: Registered models named ``<register.model_name>`` + this are promotion locks
#: (:mod:`pspnet.registry.lock`), so no model name may end with it.
PROMOTION_LOCK_SUFFIX = ".promotion-lock"
#: MLflow's alias rules: letters, digits, ``_`` and ``-``, at most 255 characters; ``latest`` and
#: ``v<number>`` are reserved.
_ALIAS_PATTERN = re.compile(r"[\w-]+")
_VERSION_ALIAS_PATTERN = re.compile(r"[vV]\d+")
_MAX_ALIAS_CHARS = 255


class RegisterConfig(StrictModel):
    """The promotion gate of the ``register`` stage (see :mod:`pspnet.registry.gate`)."""

    model_name: str = "pspnet"
    #: Alias of the best model so far; only the gate moves it.
    champion_alias: str = "champion"
    #: Alias of the newest registered version, whatever the gate decided.
    challenger_alias: str = "challenger"
    #: The headline score compared: ``miou`` (classes absent from prediction and ground truth
    #: skipped) or ``miou_absent_as_zero`` (the official code's mean over all classes).
    metric: Literal["miou", "miou_absent_as_zero"] = "miou"
    #: (a) The challenger's metric must beat the champion's by at least this much (absolute,
    #: e.g. 0.005 = half a point of mIoU) ...
    min_improvement: NonNegativeFloat = 0.005
    #: ... and the one-sided lower confidence bound of the improvement, from a paired bootstrap
    #: over validation images, must be above zero at this confidence.
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    #: Bootstrap resamples of the validation images.
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 2000
    bootstrap_seed: NonNegativeInt = 0
    #: (b) No class may lose more than this IoU against the champion (absolute, 0..1).
    max_class_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    #: The model card lists classes with a validation IoU below this as weak.
    weak_class_iou: Annotated[float, Field(ge=0, le=1)] = 0.3
    #: (height, width) of the example batch (2 images) the exported graph is traced with; it is
    #: stored with the model, so keep it small. Batch, height and width stay dynamic.
    export_example_size: tuple[Annotated[int, Field(ge=16, le=1024)], Annotated[int, Field(ge=16, le=1024)]] = (64, 96)
    #: (height, width) of a probe image fed to the logged model after loading it back; the
    #: registration fails if the artefact rejects it (e.g. shapes frozen at export).
    probe_size: tuple[Annotated[int, Field(ge=16, le=4096)], Annotated[int, Field(ge=16, le=4096)]] = (120, 160)
    #: Also log the network as an ONNX graph with dynamic batch / height / width (artifact
    #: ``network_onnx``), checked against the checkpoint at ``probe_size`` before registering.
    export_onnx: bool = True
    #: Runtime of the served model (its MLflow model config; a load can override it):
    #: ``torch`` (the ``torch.export`` program) or ``onnxruntime`` (needs ``export_onnx``).
    serving_runtime: Literal["torch", "onnxruntime"] = "torch"
    #: Seconds a registration waits for the promotion lock (another registration against the
    #: same store is reading the champion, gating and moving the alias) before it fails.
    lock_timeout: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    #: Seconds a held promotion lock stays valid; a lock older than this (its holder crashed)
    #: may be broken by the next registration. Far longer than the critical section (seconds).
    lock_lease: Annotated[float, Field(ge=10, le=86_400)] = 300.0

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        """MLflow's rules for registered model names, plus the name reserved for the promotion lock."""
        if not value.strip() or value != value.strip() or any(c in value for c in "/:"):
            raise ValueError(f"{value!r} is not a valid MLflow model name: non-empty, no surrounding spaces, no '/' or ':'")
        if value.endswith(PROMOTION_LOCK_SUFFIX):
            raise ValueError(f"names ending in {PROMOTION_LOCK_SUFFIX!r} are reserved for the promotion lock")
        return value

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        """MLflow's rules for aliases (checked here so a bad one fails before training, not after)."""
        if not _ALIAS_PATTERN.fullmatch(value) or len(value) > _MAX_ALIAS_CHARS:
            raise ValueError(f"{value!r}: an alias is 1-{_MAX_ALIAS_CHARS} letters, digits, '_' or '-'")
        if value.lower() == "latest" or _VERSION_ALIAS_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is reserved by MLflow ('latest' and v<number> name versions)")
        return value

    @model_validator(mode="after")
    def _settings_agree(self) -> RegisterConfig:
        if self.champion_alias == self.challenger_alias:
            raise ValueError(f"champion_alias and challenger_alias must differ (both {self.champion_alias!r})")
        if self.serving_runtime == "onnxruntime" and not self.export_onnx:
            raise ValueError("serving_runtime onnxruntime serves the ONNX graph: set export_onnx: true, or serving_runtime: torch")
        return self


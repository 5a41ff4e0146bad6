"""Typed, validated parameters: ``params.yaml`` -> :class:`Params`.

Every knob of every stage lives here, with its default, its range and a one-line meaning.
Unknown keys are rejected by name (a typo never silently falls back to a default), and a bad
value names the file, the field and what would be accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pspnet.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(StrictModel):
    """Where stages read and write, relative to the project root (also used by dvc.yaml)."""

    prepared: str = "data/prepared"
    reports: str = "reports"
    models: str = "models"
    metrics: str = "metrics"
    plots: str = "plots"


class SyntheticConfig(StrictModel):
    """The embedded "context scenes" dataset (see :mod:`pspnet.data.synthetic`)."""

    seed: NonNegativeInt = 0
    train_size: PositiveInt = 240
    val_size: PositiveInt = 60
    height: Annotated[int, Field(ge=32, le=4096)] = 96
    width: Annotated[int, Field(ge=32, le=4096)] = 128
    #: Width in pixels of the ignore (255) ring drawn around every object's outline.
    border_ignore: NonNegativeInt = 1
    #: Standard deviation of the per-pixel Gaussian noise, in 0..255 intensity units.
    noise_std: NonNegativeFloat = 6.0


class SourceConfig(StrictModel):
    """Which dataset to prepare. ``synthetic`` is generated; others read ``location``."""

    name: Literal["synthetic"] = "synthetic"
    location: str | None = None


class DataConfig(StrictModel):
    source: SourceConfig = SourceConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    ignore_index: Annotated[int, Field(ge=0, le=255)] = 255


class ValidateConfig(StrictModel):
    """The Great Expectations gate between ``prepare`` and ``train``."""

    #: Every split listed here must hold at least ``min_samples_per_split`` samples.
    required_splits: tuple[str, ...] = ("train", "val")
    min_samples_per_split: PositiveInt = 1
    #: Every class must appear in at least one train mask: a class never seen in training
    #: cannot be learnt, and its IoU would silently be 0.
    require_all_classes_in_train: bool = True
    #: How many failing samples the error message lists before summarising the rest.
    max_failures_listed: PositiveInt = 20
    #: Split names a manifest row may carry; any other value fails validation.
    known_splits: tuple[str, ...] = ("train", "val", "test")
    #: Threads that open and decode the image and mask files while profiling the dataset.
    num_workers: Annotated[int, Field(ge=1, le=64)] = 4


class ModelConfig(StrictModel):
    """PSPNet: dilated ResNet encoder + pyramid pooling module + head (+ auxiliary head)."""

    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet18"
    #: ``none`` (random init), ``imagenet`` (downloads; needs internet) or a local state-dict path.
    encoder_weights: str = "none"
    output_stride: Literal[8, 16] = 8
    ppm_bins: tuple[PositiveInt, ...] = (1, 2, 3, 6)
    #: Dropout2d before the classifier of the head and the auxiliary head (paper: 0.1).
    dropout: Probability = 0.1
    #: Weight of the auxiliary (stage-3 / layer3) loss; 0 turns deep supervision off.
    aux_weight: NonNegativeFloat = 0.4
    #: Width of the head's 3x3 conv; ``null``: PPM output channels / 8 (512 for ResNet-50+, as
    #: in the paper; 128 for ResNet-18/34).
    head_channels: PositiveInt | None = None
    #: Width of the auxiliary head's 3x3 conv; ``null``: layer3 channels / 4 (256 for
    #: ResNet-50+, as in the paper; 64 for ResNet-18/34).
    aux_channels: PositiveInt | None = None
    #: Per-channel RGB mean and std, as fractions of 255, subtracted / divided at the model's
    #: input (ImageNet statistics, which the encoders were pretrained with).
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    input_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)


class TrainConfig(StrictModel):
    """SGD with the poly schedule, as in the paper (base LR for the encoder, x10 for new layers)."""

    seed: NonNegativeInt = 0
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 8
    #: Random crop (height, width) taken after random scaling; padded with ignore where needed.
    crop_size: tuple[PositiveInt, PositiveInt] = (96, 128)
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.75, 1.5)
    hflip: bool = True
    #: Base learning rate (the encoder's). The paper uses 0.01 for an ImageNet-pretrained
    #: encoder at batch 16; the default here trains from scratch on the embedded data.
    lr: PositiveFloat = 0.05
    #: Learning-rate multiplier of the new layers (PPM, head, aux head) over the encoder's.
    head_lr_multiplier: PositiveFloat = 10.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    poly_power: NonNegativeFloat = 0.9
    #: ``auto`` uses CUDA when present, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Mixed precision: forward pass under bfloat16 autocast (weights, gradients and loss stay
    #: float32). ``auto``: on where bfloat16 is fast (CUDA GPUs that support it, CPUs with
    #: AVX512-BF16 / AMX), off elsewhere (emulated bfloat16 is slower than float32).
    amp: bool | Literal["auto"] = "auto"
    num_workers: NonNegativeInt = 0
    #: Log the running loss to MLflow every this many optimisation steps.
    log_every_n_steps: PositiveInt = 10

    @field_validator("scale_range")
    @classmethod
    def _ordered_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"scale_range must be (low, high) with low <= high, got {list(v)}")
        return v


class EvaluateConfig(StrictModel):
    """Validation-set scoring, plots and overlays (``evaluate`` stage)."""

    #: Images per forward pass; a batch whose images differ in size runs as same-size sub-batches.
    batch_size: PositiveInt = 8
    #: Inference mode: ``whole`` runs the full image once (sliding / flip / multi-scale: later).
    mode: Literal["whole"] = "whole"
    #: How many validation images get a prediction-overlay PNG.
    num_overlays: NonNegativeInt = 4
    #: Opacity of the class colours over the image in overlay PNGs.
    overlay_alpha: Probability = 0.5


class RegisterConfig(StrictModel):
    model_name: str = "pspnet"
    champion_alias: str = "champion"
    #: The metric of ``metrics/eval.json`` that decides promotion (higher is better).
    metric: str = "miou"
    #: A new version takes the champion alias only if its metric exceeds the champion's by
    #: more than this (0: any strict improvement).
    min_improvement: NonNegativeFloat = 0.0
    #: (height, width) of the example batch (2 images) the exported graph is traced with; it is
    #: stored with the model, so keep it small. Batch, height and width stay dynamic.
    export_example_size: tuple[Annotated[int, Field(ge=16, le=1024)], Annotated[int, Field(ge=16, le=1024)]] = (64, 96)
    #: (height, width) of a probe image fed to the logged model after loading it back; the
    #: registration fails if the artefact rejects it (e.g. shapes frozen at export).
    probe_size: tuple[Annotated[int, Field(ge=16, le=4096)], Annotated[int, Field(ge=16, le=4096)]] = (120, 160)


class MlflowConfig(StrictModel):
    experiment_name: str = "pspnet"
    #: ``null``: a SQLite store + artifact folder at the project root. ``MLFLOW_TRACKING_URI``
    #: in the environment overrides both.
    tracking_uri: str | None = None


class Params(StrictModel):
    """The whole of ``params.yaml``."""

    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(default=RegisterConfig(), alias="register")
    mlflow: MlflowConfig = MlflowConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"train.lr": 0.01, ...}``: the form MLflow params and DVC ``-S`` use."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = list(value) if isinstance(value, tuple) else value

        walk("", self.model_dump(mode="json", by_alias=True))
        return flat


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

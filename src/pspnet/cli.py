"""The ``pspnet`` command: one subcommand per pipeline stage. No logic lives here.

Each subcommand loads ``params.yaml`` into :class:`pspnet.config.Params`, calls the stage's
library function with the project root, and prints its summary as JSON. Expected failures
(:class:`pspnet.errors.PspnetError`) print a message, not a traceback, and exit with the
error's code: 2 for a bad configuration, 3 for bad data, 1 otherwise. Orchestration relies on
these codes to decide whether a retry can help.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pspnet.config import DEFAULT_PARAMS_FILE, TEST_SPLIT, VAL_SPLIT, load_params, parse_params
from pspnet.data.classes import CLASSES_FILE, load_classes
from pspnet.errors import ConfigError, PspnetError
from pspnet.stages import STAGE_NAMES

app = typer.Typer(
    name="pspnet",
    help="PSPNet scene parsing: pipeline stages (run them through `dvc repro`) and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="Parameters file (relative to the project root).")
]
RootOption = Annotated[
    Path, typer.Option("--root", help="Project root: stage inputs and outputs are relative to it.")
]


def resolve_stage(name: str) -> Callable[..., dict[str, Any]]:
    """``pspnet.stages.<name>.run``, imported only when called (one stage's heavy imports never
    slow another's start, and ``pspnet --help`` stays fast)."""
    if name not in STAGE_NAMES:
        raise KeyError(name)
    return importlib.import_module(f"pspnet.stages.{name}").run


#: Third-party loggers that are chatty at INFO (internal registrations, table creation).
QUIET_LOGGERS = ("great_expectations", "mlflow.store", "alembic")


def _configure_logging() -> None:
    level = os.environ.get("PSPNET_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


@contextmanager
def exits_on_error(command: str) -> Iterator[None]:
    """Print an expected failure as one line (no traceback) and exit with its code."""
    try:
        yield
    except PspnetError as err:
        typer.echo(f"pspnet {command}: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None


def _params_path(params_file: Path, root: Path) -> Path:
    """``--params`` as given when absolute, else relative to the project root."""
    return params_file if params_file.is_absolute() else root / params_file


def run_stage(name: str, params_file: Path, root: Path) -> dict[str, Any]:
    """Load params, run stage ``name`` in ``root`` and print its summary; exit non-zero on failure."""
    _configure_logging()
    root = root.resolve()
    with exits_on_error(name):
        summary = resolve_stage(name)(load_params(_params_path(params_file, root)), root)
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


def _make_stage_command(name: str, doc: str) -> None:
    def command(
        params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
        root: RootOption = Path("."),
    ) -> None:
        run_stage(name, params, root)

    command.__doc__ = doc
    app.command(name)(command)


_make_stage_command("prepare", "Write the canonical dataset (images/, masks/, manifest.csv, classes.json).")
_make_stage_command("validate", "Check the prepared dataset with Great Expectations; fail on any bad sample.")
_make_stage_command("train", "Train PSPNet; write the checkpoint and log the run to MLflow.")
_make_stage_command("test", "Score the labelled test split apart from val, when test.enabled (off: record the skip).")
_make_stage_command("register", "Log + register the model in MLflow; move the champion alias if it is better.")


@app.command("evaluate")
def evaluate_command(
    model: Annotated[
        Optional[str],
        typer.Option(help="Score this model instead (checkpoint path or MLflow URI, e.g. models:/pspnet@official-ade20k); "
                     "reports go to --out and a new MLflow run, the pipeline's outputs are untouched."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="With --model: report folder (default: <paths.metrics>/models/<model>).")] = None,
    split: Annotated[
        str,
        typer.Option(help=f"{VAL_SPLIT}: the evaluate stage | {TEST_SPLIT}: the labelled test split of the trained checkpoint, "
                     f"scored apart into <paths.metrics>/{TEST_SPLIT}/ and the train run, never the promotion gate "
                     "(whatever test.enabled says; see pspnet.stages.test)."),
    ] = VAL_SPLIT,
    runtime: Annotated[str, typer.Option(help="With --model: torch | onnxruntime | onnxruntime-int8 (quantised on "
                                              "evaluate.int8_calibration_images prepared train images).")] = "torch",
    params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
    root: RootOption = Path("."),
) -> None:
    """Score the checkpoint on val: metrics/eval.json, plots, overlays (or any --model, see pspnet.stages.evaluate;
    or the test split, --split test)."""
    if split not in (VAL_SPLIT, TEST_SPLIT):
        raise typer.BadParameter(f"{split!r}: {VAL_SPLIT} or {TEST_SPLIT}. Other splits of evaluate.extra_splits "
                                 "(e.g. holdout) are scored beside val by `pspnet evaluate`.", param_hint="--split")
    if split == TEST_SPLIT:
        if model is not None or out is not None:
            raise typer.BadParameter(f"--split {TEST_SPLIT} scores the trained checkpoint into <paths.metrics>/{TEST_SPLIT}/; "
                                     "--model / --out score val only.", param_hint="--split")
        _score_test(params, root)
        return
    if model is None:
        if out is not None or runtime != "torch":
            raise typer.BadParameter("--out and --runtime go with --model; the pipeline's evaluate scores the checkpoint "
                                     "on PyTorch into paths.metrics / paths.plots.")
        run_stage("evaluate", params, root)
        return
    import functools

    from pspnet.registry.segmenter import load_model
    from pspnet.stages.evaluate import evaluate_model

    _configure_logging()
    root = root.resolve()
    with exits_on_error("evaluate"):
        loader = functools.partial(load_model, runtime=runtime)
        summary = {**evaluate_model(load_params(_params_path(params, root)), root, model, loader, out), "runtime": runtime}
    typer.echo(json.dumps(summary, indent=2, default=str))


def _score_test(params_file: Path, root: Path) -> None:
    """``evaluate --split test``: the test stage's scoring, on request."""
    from pspnet.stages.test import score_test

    _configure_logging()
    root = root.resolve()
    with exits_on_error("evaluate"):
        summary = score_test(load_params(_params_path(params_file, root)), root)
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command("import-data")
def import_data_command(params: ParamsOption = Path(DEFAULT_PARAMS_FILE), root: RootOption = Path(".")) -> None:
    """Bring data.source's raw data under DVC: `dvc import-url` into data/raw/<name> (a URL or a
    folder outside data/raw), `dvc update` when already imported, `dvc add` inside data/raw.
    With PREFECT_API_URL set, each new version is a Prefect event (the retraining trigger's)."""
    from pspnet.data_events import emit, import_events
    from pspnet.ops.import_data import import_data

    _configure_logging()
    root = root.resolve()
    with exits_on_error("import-data"):
        loaded = load_params(_params_path(params, root))
        summary = import_data(loaded, root)
        emit(import_events(summary, loaded))
    typer.echo(json.dumps(summary, indent=2))


@app.command("experiment")
def experiment_command(
    preset: Annotated[str, typer.Argument(help="A preset in configs/ (e.g. camvid-cpu) or the path of one.")],
    name: Annotated[Optional[str], typer.Option(help="Experiment name (default: <preset>-<UTC time>).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Report path without suffix (default: docs/results/<preset>).")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="KEY=VALUE over the preset, e.g. data.source.location=/data/CamVid.")
    ] = None,
    root: RootOption = Path("."),
) -> None:
    """Run a named parameter preset as one `dvc exp run` (data imported first) and write its
    report: val mIoU, per-class IoU, the exact commands (see pspnet.presets)."""
    from pspnet.presets import parse_overrides, run_preset

    _configure_logging()
    with exits_on_error("experiment"):
        summary = run_preset(root, preset, name=name, out=out, overrides=parse_overrides(set_ or []))
    typer.echo(json.dumps(summary, indent=2))


@app.command("compare")
def compare_command(
    reports: Annotated[list[Path], typer.Argument(help="Report JSONs of `pspnet experiment` runs (docs/results/*.json).")],
    out: Annotated[Path, typer.Option(help="The Markdown to write.")],
    title: Annotated[str, typer.Option(help="Its heading.")] = "Recipes compared over seeds",
) -> None:
    """Group runs that differ only in train.seed into recipes and write mean ± std of val and
    held-out mIoU per recipe, then every run (see pspnet.comparison)."""
    from pspnet.comparison import compare_reports

    with exits_on_error("compare"):
        typer.echo(compare_reports(reports, out, title))


def _parse_size(text: str) -> tuple[int, int]:
    """``"473"`` -> (473, 473); ``"512x1024"`` -> (512, 1024) (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise typer.BadParameter(f"{text!r}: give one positive size (473) or HEIGHTxWIDTH (512x1024).")
    return values[0], values[1]


@app.command("model-info")
def model_info_command(
    encoder: Annotated[Optional[str], typer.Option(help="resnet18 | resnet34 | resnet50 | resnet101 | resnet152.")] = None,
    stem: Annotated[Optional[str], typer.Option(help="deep | standard | auto.")] = None,
    output_stride: Annotated[Optional[int], typer.Option(help="8 (paper) or 16.")] = None,
    classes: Annotated[Optional[int], typer.Option(help="Number of classes (default: the prepared dataset's).")] = None,
    size: Annotated[str, typer.Option(help="Input size: 473 or HEIGHTxWIDTH.")] = "473",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
    root: RootOption = Path("."),
) -> None:
    """Parameter counts (with / without the auxiliary head) and feature / output shapes.

    The model section of the params file (when there is one) is the base; options override it.
    Nothing is trained or downloaded.
    """
    from pspnet.model.info import model_info

    root = root.resolve()
    height_width = _parse_size(size)
    with exits_on_error("model-info"):
        params_path = _params_path(params, root)
        base = load_params(params_path) if params_path.is_file() else parse_params({}, "<defaults>")
        overrides = {"encoder": encoder, "stem": stem, "output_stride": output_stride}
        raw = base.model.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        cfg = parse_params({"model": raw}, "model-info options").model
        if classes is None:
            classes_file = root / base.paths.prepared / CLASSES_FILE
            if not classes_file.is_file():
                raise ConfigError(f"no --classes given and {classes_file} does not exist; pass --classes K.")
            classes = load_classes(root / base.paths.prepared, base.data.ignore_index).num_classes
        if classes < 1:
            raise ConfigError(f"--classes must be positive, got {classes}.")
        info = model_info(cfg, classes, height_width)
    if as_json:
        typer.echo(json.dumps(info))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        typer.echo(f"{key:<{width}}  {shown}")


@app.command("ablation")
def ablation_command(
    seed: Annotated[list[int], typer.Option(help="Seed(s); each row runs once per seed.")] = [0],  # noqa: B006
    row: Annotated[Optional[list[str]], typer.Option(help="Rows to run (default: all of them).")] = None,
    out: Annotated[
        Optional[str], typer.Option(help="Report path without suffix (.md and .json are written; default docs/ablation).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Keep the rows already in the report; run the others.")] = False,
    preset: Annotated[
        Optional[str], typer.Option(help="Run on a preset's settings (configs/<name>.yaml), e.g. context-hard; its name is the dataset's.")
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="KEY=VALUE over the preset, e.g. train.epochs=16 (a stated fraction of its budget).")
    ] = None,
    root: RootOption = Path("."),
) -> None:
    """The paper's ablations in miniature as `dvc exp run` experiments (see pspnet.ablation)."""
    from pspnet.ablation import ROW_NAMES, run_ablation
    from pspnet.presets import parse_overrides

    _configure_logging()
    with exits_on_error("ablation"):
        overrides = parse_overrides(set_ or [])
        summary = run_ablation(root, seeds=seed, rows=row or ROW_NAMES, out=out, resume=resume, preset=preset, overrides=overrides)
    typer.echo(json.dumps(summary, indent=2))


@app.command("erf")
def erf_command(
    checkpoint: Annotated[Optional[list[str]], typer.Option(help="NAME=PATH of a checkpoint to measure (repeat to compare; default: the trained model).")] = None,
    split: Annotated[str, typer.Option(help="Prepared split whose images are averaged over.")] = "val",
    images: Annotated[int, typer.Option(help="Evenly spaced images of the split (of the first image's size).")] = 16,
    out: Annotated[Path, typer.Option(help="Report path without suffix (.json and .png are written).")] = Path("metrics/erf"),
    params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
    root: RootOption = Path("."),
) -> None:
    """Effective receptive field (Luo et al. 2016) of trained models: radii and a figure."""
    from pspnet.receptive_fields import measure_checkpoints

    _configure_logging()
    with exits_on_error("erf"):
        summary = measure_checkpoints(_params_path(params, root), root, checkpoint or [], split, images, out)
    typer.echo(json.dumps(summary, indent=2))


@app.command("import-weights")
def import_weights_command(
    source: Annotated[Path, typer.Argument(help="The release file: a semseg train_epoch_*.pth or a Keras-port .h5.")],
    format_: Annotated[str, typer.Option("--format", help="semseg (hszhao/semseg PyTorch checkpoint) | keras-h5 (the Keras port of the Caffe models).")],
    dataset: Annotated[str, typer.Option(help="What the weights were trained on: ade20k | voc | cityscapes (class names and colours).")],
    alias: Annotated[Optional[str], typer.Option(help="Registry alias (default: official-<dataset>).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Converted checkpoint (default: <paths.models>/imported/<dataset>-<encoder>.pt).")] = None,
    block_stride: Annotated[Optional[str], typer.Option(help="3x3 | 1x1: override where downsampling blocks stride (default: the release's own).")] = None,
    allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Load what fits; leave unfilled layers initialised (reported).")] = False,
    params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
    root: RootOption = Path("."),
) -> None:
    """Convert the authors' pretrained PSPNet weights, then log and register them in MLflow (see
    pspnet.registry.import_weights); `predict` / `evaluate --model models:/<name>@official-<dataset>` use them."""
    from pspnet.registry.import_weights import import_weights

    _configure_logging()
    root = root.resolve()
    with exits_on_error("import-weights"):
        params_path = _params_path(params, root)
        loaded = load_params(params_path) if params_path.is_file() else parse_params({}, "<defaults>")
        summary = import_weights(
            loaded, root, source, format_, dataset, out=out, alias=alias, block_stride=block_stride,
            allow_partial=allow_partial,
        )
    typer.echo(json.dumps(summary, indent=2))


@app.command("predict")
def predict_command(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns ('photos/**/*.jpg').")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the masks and overlays (created).")],
    model: Annotated[
        Optional[str], typer.Option(help="Checkpoint path or MLflow model URI (default: models:/<register.model_name>@<register.champion_alias>).")
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also search the subfolders of folders.")] = False,
    mode: Annotated[Optional[str], typer.Option(help="whole | slide (default: evaluate.mode).")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Average with the mirrored image (default: evaluate.flip).")] = None,
    scales: Annotated[Optional[str], typer.Option(help="Test scales, e.g. 0.75,1.0,1.25 (default: evaluate.scales).")] = None,
    crop_size: Annotated[Optional[str], typer.Option(help="slide window: 473 or HEIGHTxWIDTH (default: evaluate.crop_size).")] = None,
    base_size: Annotated[Optional[int], typer.Option(help="Long side that scale 1.0 maps to (default: evaluate.base_size).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass (default: evaluate.batch_size).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda (default: train.device).")] = None,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Write <name>_overlay.png too.")] = True,
    alpha: Annotated[Optional[float], typer.Option(help="Overlay opacity 0..1 (default: evaluate.overlay_alpha).")] = None,
    summary: Annotated[Optional[Path], typer.Option(help="Write a JSON summary here (class pixel shares per image).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Warn about unreadable images and go on (default: fail).")] = False,
    runtime: Annotated[str, typer.Option(help="torch | onnxruntime (the model's ONNX graph, CPU; a checkpoint is exported first) | "
                                              "onnxruntime-int8 (that graph quantised on prepared train images).")] = "torch",
    params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
    root: RootOption = Path("."),
) -> None:
    """Segment images: class-id PNG masks, colour overlays and an optional JSON summary (see pspnet.predict)."""
    from pspnet.predict import PredictOptions, parse_scales, predict

    _configure_logging()
    root = root.resolve()
    with exits_on_error("predict"):
        params_path = _params_path(params, root)
        loaded = load_params(params_path) if params_path.is_file() else parse_params({}, "<defaults>")
        inference = {
            "mode": mode, "flip": flip, "base_size": base_size, "batch_size": batch_size,
            "scales": parse_scales(scales) if scales is not None else None,
            "crop_size": _parse_size(crop_size) if crop_size is not None else None,
        }
        options = PredictOptions(
            inputs=tuple(inputs), out_dir=out, model=model, recursive=recursive, overlay=overlay, alpha=alpha,
            summary=summary, skip_bad=skip_bad, device=device, inference=inference, runtime=runtime,
        )
        result = predict(loaded, root, options)
    typer.echo(json.dumps(result, indent=2))


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

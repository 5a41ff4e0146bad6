"""Package a trained checkpoint as the registered MLflow model (the writer side).

Logged with ``mlflow.pyfunc.log_model`` ("models from code"): the code
:mod:`pspnet.registry.serving_model`; ``network``, the raw-RGB
:class:`~pspnet.model.export.SegmentationModel` as a ``torch.export`` program with dynamic
batch / height / width (and ``network_onnx``, the same as an ONNX graph); ``classes``;
``serving`` (:class:`ServingSpec`'s settings) and ``test_time_code``
(:mod:`pspnet.evaluate.multiscale`); the request params' schema, the runtime as model config,
pinned requirements and the metadata that :mod:`pspnet.registry.segmenter` reads back.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pspnet.config import DEFAULT_MAX_IMAGE_PIXELS, EvaluateConfig, Params
from pspnet.errors import PspnetError
from pspnet.evaluate import multiscale
from pspnet.model.checkpoint import LoadedCheckpoint
from pspnet.model.export import export_program
from pspnet.model.normalize import to_pixel_units
from pspnet.registry import serving_model

#: The models-from-code file MLflow copies into every version.
SERVING_MODEL_FILE = Path(serving_model.__file__)
#: The test-time protocol's code, shipped with every version (artifact ``test_time_code``).
TEST_TIME_CODE_FILE = Path(multiscale.__file__)
#: Name of the model inside the run (MLflow 3 "logged model" name).
LOGGED_MODEL_NAME = "model"
#: Side (pixels) of the tiny request stored as the model's input example.
EXAMPLE_SIDE = 16
#: Metadata key telling the loader which artefact layout this version uses.
FORMAT_KEY = "pspnet_format"
FORMAT = "pyfunc-pt2-v1"
#: Metadata key of the ONNX graph's check (opset, probe size, max logit difference, class agreement).
ONNX_METADATA_KEY = "onnx"
#: Largest share of probe pixels whose class may differ between the ONNX graph and the checkpoint.
ONNX_MAX_MISMATCH = 0.001


@dataclass(frozen=True)
class ServingSpec:
    """How the served model runs: its default ``runtime`` (model config, overridable at load),
    the largest image it takes (``data.max_image_pixels``) and the test-time settings a
    request's ``scales`` / ``flip`` run with (``evaluate``'s mode, window, stride, base size)."""

    runtime: str = serving_model.RUNTIMES[0]
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    test_time: dict[str, Any] = field(default_factory=lambda: test_time_settings(EvaluateConfig()))

    @classmethod
    def from_params(cls, params: Params) -> ServingSpec:
        return cls(params.register_.serving_runtime, params.data.max_image_pixels, test_time_settings(params.evaluate))


def test_time_settings(cfg: EvaluateConfig) -> dict[str, Any]:
    """The protocol settings a served request does not choose (it chooses scales and flip)."""
    return {"mode": cfg.mode, "batch_size": cfg.batch_size, "crop_size": list(cfg.crop_size),
            "stride_rate": cfg.stride_rate, "base_size": cfg.base_size}  # fmt: skip


def export_network(ckpt: LoadedCheckpoint, example_size: tuple[int, int], path: Path) -> None:
    """Write ``ckpt``'s network, wrapped to take raw RGB, as a ``torch.export`` program."""
    from pspnet.model.export import SegmentationModel

    cfg = ckpt.model_cfg
    wrapped = SegmentationModel(ckpt.model, cfg.input_mean, cfg.input_std).cpu()
    torch.export.save(export_program(wrapped, example_size), str(path))


def pip_requirements(with_onnx: bool) -> list[str]:
    """Pinned requirements of the artefact (MLflow adds its own pin): torch, numpy and pillow,
    and onnxruntime when the ONNX graph comes with it."""
    from importlib.metadata import version

    from packaging.version import Version

    pins = [f"torch=={Version(torch.__version__).base_version}", f"numpy=={np.__version__}", f"pillow=={version('pillow')}"]
    return pins + ([f"onnxruntime=={version('onnxruntime')}"] if with_onnx else [])


def model_metadata(ckpt: LoadedCheckpoint, checkpoint_sha: str) -> dict[str, Any]:
    cfg = ckpt.model_cfg
    return {
        FORMAT_KEY: FORMAT,
        "class_names": list(ckpt.meta.get("class_names", [])),
        "class_colors": [list(c) for c in ckpt.meta.get("class_colors", [])],
        "num_classes": int(ckpt.num_classes),
        "input_mean": list(cfg.input_mean),
        "input_std": list(cfg.input_std),
        "input": "uint8 RGB (N, H, W, 3), any N/H/W; or a list of base64 PNG / JPEG images of any sizes",
        "params": "scales (list of floats, default [1.0]), flip (bool, default false)",
        "output": "int32 class ids (N, H, W); a list of (H, W) maps for images of differing sizes",
        "encoder": cfg.encoder,
        "output_stride": cfg.output_stride,
        "checkpoint_sha256": checkpoint_sha,
    }


def export_onnx_checked(ckpt: LoadedCheckpoint, example_size: tuple[int, int], probe_size: tuple[int, int], path: Path) -> dict[str, Any]:
    """Write ``ckpt``'s raw-RGB network as an ONNX graph with dynamic N/H/W and check it against
    the checkpoint at ``probe_size`` (batch 1: neither the traced size nor batch); returns the
    check's figures for the model's metadata. A graph that disagrees fails the registration."""
    from pspnet.model.export import SegmentationModel
    from pspnet.model.onnx_export import OPSET, agreement, export_onnx, onnx_session

    cfg = ckpt.model_cfg
    wrapped = SegmentationModel(ckpt.model, cfg.input_mean, cfg.input_std).cpu()
    try:
        export_onnx(wrapped, path, example_size)
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; all mean "not exportable"
        raise PspnetError(f"ONNX export of the model failed: {type(err).__name__}: {str(err)[:300]}. "
                          "Set register.export_onnx: false to register without it.") from err  # fmt: skip
    scores = agreement(onnx_session(path), wrapped, [tuple(probe_size)])
    if scores["class_agreement"] < 1 - ONNX_MAX_MISMATCH:
        raise PspnetError(
            f"the ONNX graph disagrees with the checkpoint on {1 - scores['class_agreement']:.2%} of a "
            f"{probe_size[0]}x{probe_size[1]} probe's pixels (max logit difference "
            f"{scores['max_abs_logit_diff']:.3g}); set register.export_onnx: false and report it."
        )
    return {"opset": OPSET, "probe_size": list(probe_size), **scores}


def log_segmentation_model(
    ckpt: LoadedCheckpoint, run_id: str, checkpoint_sha: str, example_size: tuple[int, int],
    onnx_probe_size: tuple[int, int] | None = None, serving: ServingSpec | None = None,
) -> Any:
    """Log ``ckpt`` into MLflow run ``run_id`` as the pyfunc described above (with an ONNX graph
    beside it, checked at ``onnx_probe_size``, when that is given); returns MLflow's ModelInfo."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    serving = serving or ServingSpec()
    if serving.runtime != "torch" and onnx_probe_size is None:
        raise PspnetError(f"register.serving_runtime {serving.runtime!r} needs the ONNX graph: set register.export_onnx: true")
    names = list(ckpt.meta.get("class_names", [])) or [str(i) for i in range(int(ckpt.num_classes))]
    colors = [list(c) for c in ckpt.meta.get("class_colors", [])]
    # No input schema: a request is a uint8 array or a list of encoded images, checked by the
    # model itself (clear 400s); the params are MLflow-checked.
    signature = ModelSignature(params=ParamSchema([
        ParamSpec(serving_model.SCALES_PARAM, "double", list(serving_model.DEFAULT_SCALES), (-1,)),
        ParamSpec(serving_model.FLIP_PARAM, "boolean", False),
    ]))  # fmt: skip
    example = np.zeros((1, EXAMPLE_SIDE, EXAMPLE_SIDE, 3), dtype=np.uint8)
    cfg = ckpt.model_cfg
    with tempfile.TemporaryDirectory(prefix="pspnet-package-") as tmp:
        files = {key: Path(tmp) / name for key, name in [
            (serving_model.NETWORK_ARTIFACT, "network.pt2"), (serving_model.CLASSES_ARTIFACT, "classes.json"),
            (serving_model.SERVING_ARTIFACT, "serving.json")]}  # fmt: skip
        export_network(ckpt, example_size, files[serving_model.NETWORK_ARTIFACT])
        files[serving_model.CLASSES_ARTIFACT].write_text(json.dumps({"names": names, "colors": colors}), encoding="utf-8")
        settings = {**asdict(serving), "input_mean": to_pixel_units(cfg.input_mean), "input_std": to_pixel_units(cfg.input_std)}
        files[serving_model.SERVING_ARTIFACT].write_text(json.dumps(settings), encoding="utf-8")
        artifacts = {key: str(path) for key, path in files.items()}
        artifacts[serving_model.TEST_TIME_CODE_ARTIFACT] = str(TEST_TIME_CODE_FILE)
        metadata = model_metadata(ckpt, checkpoint_sha)
        if onnx_probe_size is not None:
            onnx_file = Path(tmp) / "network.onnx"
            metadata[ONNX_METADATA_KEY] = export_onnx_checked(ckpt, example_size, onnx_probe_size, onnx_file)
            artifacts[serving_model.ONNX_ARTIFACT] = str(onnx_file)
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name=LOGGED_MODEL_NAME,
                python_model=str(SERVING_MODEL_FILE),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(onnx_probe_size is not None),
                metadata=metadata,
                model_config={serving_model.RUNTIME_KEY: serving.runtime},
            )

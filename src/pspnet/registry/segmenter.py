"""Load a model for inference from a checkpoint file or any MLflow model URI (the reader side).

Sources: a checkpoint path (``models/checkpoint.pt``) or an MLflow model URI
(``models:/pspnet@champion``, ``models:/pspnet/3``, ``runs:/<run id>/model``, ``models:/m-<id>``,
a local model folder), in either registered layout. Nothing here runs code that came with a
model (see :func:`load_program`). The result, a :class:`Segmenter`, takes NORMALISED images of
any size and returns logits, so :func:`pspnet.evaluate.inference.predict_logits` runs every
test-time mode on it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pspnet.config import Params
from pspnet.errors import ConfigError, PspnetError
from pspnet.model.export import MEAN_BUFFER, STD_BUFFER
from pspnet.model.normalize import STATS_SHAPE, denormalize, to_fractions
from pspnet.registry import serving_model

log = logging.getLogger(__name__)

#: Smallest side a forward pass gets: exported networks reject smaller inputs (their shape
#: guards need 9+ pixels at output stride 8), so smaller passes (images, slide windows, test
#: scales) are edge-padded to this and the logits cropped back, as the served model does.
MIN_SIDE = serving_model.MIN_SIDE
#: (height, width) an ONNX graph is traced at when a checkpoint is run on ONNX Runtime.
ONNX_TRACE_SIZE = (64, 96)
#: File suffixes treated as checkpoint paths rather than MLflow URIs.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
#: The explicit opt-in to unpickling model files (MLflow's own switch, so one setting covers
#: both): a pickled legacy version, or a ``.pt2`` archive with pickle records. Only for a store
#: you trust: unpickling runs whatever code the file holds.
ALLOW_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
#: The network file of the earlier layout (MLflow's pytorch flavour, ``pt2`` serialisation).
LEGACY_PROGRAM_FILE = "model.pt2"


@dataclass(frozen=True)
class Segmenter:
    """A model ready for :func:`~pspnet.evaluate.inference.predict_logits`, and what it predicts.

    ``model``: normalised ``(N, 3, H, W)`` -> logits ``(N, C, H, W)``, in eval mode.
    ``input_mean`` / ``input_std``: the RGB normalisation (fractions of 255) its inputs need.
    """

    model: nn.Module
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class FromNormalized(nn.Module):
    """Feeds a raw-RGB network from normalised input: ``net(x * std + mean)``.

    ``net`` takes float32 RGB ``(N, 3, H, W)`` in 0..255 (a loaded ``torch.export`` program);
    ``mean`` / ``std`` are its own normalisation in 0..255 units. A loaded program refuses
    ``.train()`` / ``.eval()``, and it always runs as exported (eval mode), so this wrapper
    keeps the mode to itself.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().float().reshape(STATS_SHAPE).clone())
        self.register_buffer("std", std.detach().float().reshape(STATS_SHAPE).clone())
        self.training = False

    def train(self, mode: bool = True) -> FromNormalized:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, H, W)`` -> logits ``(N, C, H, W)``."""
        return self.net(denormalize(x, self.mean, self.std))


class MinSideInput(nn.Module):
    """Runs ``net`` on passes at least ``min_side`` pixels a side: a smaller input is
    edge-padded at the bottom / right and the logits cropped back to its size.

    Inference-only: it stays in eval mode, and so does ``net`` (a loaded ``torch.export``
    program cannot switch modes and always runs as exported).
    """

    def __init__(self, net: nn.Module, min_side: int = MIN_SIDE) -> None:
        super().__init__()
        self.net = net
        self.min_side = min_side
        self.net.eval()
        self.training = False

    def train(self, mode: bool = True) -> MinSideInput:
        """Kept in eval mode whatever is asked (see the class docstring)."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, H, W)`` -> logits ``(N, C, H, W)`` for any ``H, W >= 1``."""
        height, width = x.shape[-2:]
        pad_h, pad_w = max(0, self.min_side - height), max(0, self.min_side - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out[..., :height, :width]


def is_checkpoint_path(source: str) -> bool:
    """True for an existing file, or a path ending in a checkpoint suffix (so a typo is named as a missing file)."""
    return Path(source).is_file() or (source.lower().endswith(CHECKPOINT_SUFFIXES) and "://" not in source)


def _onnx_network(graph: Path, mean: torch.Tensor, std: torch.Tensor, calibration: Sequence[np.ndarray] | None = None) -> nn.Module:
    """Normalised input -> logits through an ONNX Runtime session of ``graph`` (read at once);
    with ``calibration`` images, of the graph quantised to int8 on them."""
    from pspnet.model.onnx_export import OnnxNetwork, onnx_session, quantize_int8

    if calibration is not None:
        graph = quantize_int8(graph, graph.with_name(f"{graph.stem}-int8.onnx"), calibration)
    return MinSideInput(FromNormalized(OnnxNetwork(onnx_session(graph)), mean, std))


def _from_checkpoint(path: Path, runtime: str = "torch", calibration: Sequence[np.ndarray] | None = None) -> Segmenter:
    from pspnet.model.checkpoint import load_checkpoint

    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint. Pass a checkpoint file or an MLflow URI such as models:/pspnet@champion.")
    ckpt = load_checkpoint(path, map_location="cpu")
    names = tuple(ckpt.meta.get("class_names") or (str(i) for i in range(ckpt.num_classes)))
    colors = tuple(tuple(int(v) for v in c) for c in ckpt.meta.get("class_colors") or ())
    cfg = ckpt.model_cfg
    model: nn.Module = MinSideInput(ckpt.model.eval())
    if runtime != "torch":  # a checkpoint has no graph yet: export one (seconds)
        from pspnet.model.export import SegmentationModel
        from pspnet.model.onnx_export import export_onnx

        wrapped = SegmentationModel(ckpt.model, cfg.input_mean, cfg.input_std)
        with tempfile.TemporaryDirectory(prefix="pspnet-onnx-") as tmp:
            graph = export_onnx(wrapped, Path(tmp) / "network.onnx", ONNX_TRACE_SIZE)
            model = _onnx_network(graph, wrapped.mean.flatten(), wrapped.std.flatten(), calibration)
    return Segmenter(model, names, colors, tuple(cfg.input_mean), tuple(cfg.input_std), str(path))


def pickle_allowed() -> bool:
    """Whether the user opted in to unpickling model files (:data:`ALLOW_PICKLE_ENV` = true)."""
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def load_program(path: Path, source: str) -> nn.Module:
    """A ``torch.export`` program (``.pt2``) as a module, refused when any record in it would be
    unpickled (``torch.export.load`` unpickles weights, constants and example inputs with
    ``weights_only=False``; a crafted archive runs code). The check is MLflow's own, the one
    ``mlflow.pytorch.load_model`` applies; :data:`ALLOW_PICKLE_ENV` skips it."""
    from mlflow.exceptions import MlflowException

    if not pickle_allowed():
        try:
            from mlflow.pytorch import _validate_pt2_archive_is_pickle_free
        except ImportError:  # fail closed: never load what cannot be checked
            raise PspnetError(
                f"{source}: this MLflow version cannot check {path.name} for pickle payloads, so it is not loaded. "
                f"Install the locked MLflow (make install), or set {ALLOW_PICKLE_ENV}=true if you trust this store."
            ) from None
        try:
            _validate_pt2_archive_is_pickle_free(str(path))
        except MlflowException as err:
            raise PspnetError(
                f"{source}: refused to load {path.name}: it holds data that would be unpickled (running any code "
                f"stored in it): {err.message.split('. ')[0]}. Register the model again from its checkpoint "
                f"(`pspnet register`), or set {ALLOW_PICKLE_ENV}=true for this command only if you trust this store."
            ) from None
    import torch

    return torch.export.load(str(path)).module()


def _artifact_path(local: Path, flavors: dict[str, Any], key: str, uri: str) -> Path:
    artifacts = (flavors.get("python_function") or {}).get("artifacts") or {}
    relative = (artifacts.get(key) or {}).get("path")
    path = (local / relative).resolve() if relative else None
    if path is None or not path.is_file() or not path.is_relative_to(local.resolve()):
        raise PspnetError(f"{uri}: the model has no '{key}' artifact file; it was not logged by `pspnet register`.")
    return path


def _program_and_classes(uri: str, local: Path, flavors: dict[str, Any], meta: dict[str, Any]) -> tuple[nn.Module, list[str], list[list[int]]]:
    """The raw-RGB program of an MLflow model (downloaded to ``local``) and its classes, for either
    artefact layout. No code from the model is run: the logged pyfunc code is not imported, and
    the network is a pickle-checked ``torch.export`` program."""
    from pspnet.registry.packaging import FORMAT, FORMAT_KEY

    if meta.get(FORMAT_KEY) == FORMAT:
        network = _artifact_path(local, flavors, serving_model.NETWORK_ARTIFACT, uri)
        classes_file = _artifact_path(local, flavors, serving_model.CLASSES_ARTIFACT, uri)
        try:
            classes = json.loads(classes_file.read_text(encoding="utf-8"))
            names, colors = list(classes["names"]), [list(c) for c in classes["colors"]]
        except (ValueError, KeyError, TypeError) as err:
            raise PspnetError(f"{uri}: its class file {classes_file.name} is malformed ({err}).") from None
        return load_program(network, uri), names, colors
    if "pytorch" in flavors:  # the earlier layout: MLflow's pytorch flavour around the same program
        data = local / str(flavors["pytorch"].get("model_data", "data"))
        if (data / LEGACY_PROGRAM_FILE).is_file():
            return load_program(data / LEGACY_PROGRAM_FILE, uri), [], []
        if not pickle_allowed():
            raise PspnetError(
                f"{uri}: this version stores its network as a Python pickle (MLflow's pytorch flavour, "
                "serialization_format 'pickle'); unpickling runs any code stored in the file, so it is refused. "
                "Register the model again from its checkpoint (`pspnet register` logs a pickle-free torch.export "
                f"program), or set {ALLOW_PICKLE_ENV}=true for this command only if you trust this store."
            )
        import mlflow.pytorch

        return mlflow.pytorch.load_model(str(local)), [], []
    raise PspnetError(
        f"{uri}: not a PSPNet model logged by this project (flavours: {', '.join(sorted(flavors))}; "
        f"metadata {FORMAT_KEY!r}: {meta.get(FORMAT_KEY)!r}). Register it with `pspnet register`, or pass a checkpoint file."
    )


def _onnx_from_mlflow(
    uri: str, local: Path, flavors: dict[str, Any], meta: dict[str, Any], calibration: Sequence[np.ndarray] | None
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The version's logged ONNX graph as a network on normalised input (the session reads the
    file at once, so the download may go), and its normalisation (0..255 units)."""
    artifacts = (flavors.get("python_function") or {}).get("artifacts") or {}
    if serving_model.ONNX_ARTIFACT not in artifacts:
        raise ConfigError(
            f"{uri}: this version holds no ONNX graph (registered with register.export_onnx: false, or before "
            "ONNX export existed). Use --runtime torch, or register the model again from its checkpoint."
        )
    graph = _artifact_path(local, flavors, serving_model.ONNX_ARTIFACT, uri)
    try:
        mean = torch.tensor(meta["input_mean"], dtype=torch.float32) * 255
        std = torch.tensor(meta["input_std"], dtype=torch.float32) * 255
    except (KeyError, TypeError, ValueError) as err:
        raise PspnetError(f"{uri}: the model records no usable input_mean / input_std ({err}).") from None
    return _onnx_network(graph, mean, std, calibration), mean, std


def _from_mlflow(uri: str, runtime: str = "torch", calibration: Sequence[np.ndarray] | None = None) -> Segmenter:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="pspnet-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            info = Model.load(str(local))
        except (MlflowException, OSError) as err:
            raise PspnetError(
                f"{uri}: cannot load this model ({err}). Check the name / alias / version, and that "
                f"MLFLOW_TRACKING_URI points at the store holding it (now {mlflow.get_tracking_uri()!r})."
            ) from None
        meta = info.metadata or {}
        if runtime != "torch":
            model, mean, std = _onnx_from_mlflow(uri, local, info.flavors, meta, calibration)
            names, colors = [], []
        else:
            program, names, colors = _program_and_classes(uri, local, info.flavors, meta)
            buffers = dict(program.named_buffers())
            if MEAN_BUFFER not in buffers or STD_BUFFER not in buffers:
                raise PspnetError(f"{uri}: the network has no '{MEAN_BUFFER}' / '{STD_BUFFER}' normalisation buffers; not a PSPNet export.")
            mean, std = buffers[MEAN_BUFFER].flatten(), buffers[STD_BUFFER].flatten()
            model = MinSideInput(FromNormalized(program, mean, std))
    names = names or list(meta.get("class_names") or [])
    colors = colors or [list(c) for c in meta.get("class_colors") or []]
    if not names:
        raise PspnetError(f"{uri}: the model records no class names (metadata 'class_names').")
    return Segmenter(
        model=model,
        class_names=tuple(names),
        class_colors=tuple(tuple(int(v) for v in c) for c in colors),
        input_mean=to_fractions(mean.tolist()),
        input_std=to_fractions(std.tolist()),
        source=uri,
    )


def load_segmenter(source: str | Path, runtime: str = "torch", calibration: Sequence[np.ndarray] | None = None) -> Segmenter:
    """A :class:`Segmenter` from a checkpoint path or an MLflow model URI (see the module docstring),
    running on PyTorch or, with ``runtime="onnxruntime"``, on ONNX Runtime (the version's logged
    ONNX graph; a checkpoint is exported first), or on ONNX Runtime int8 (``onnxruntime-int8``:
    the graph quantised on the ``calibration`` images, raw RGB ``(1, 3, H, W)``).

    MLflow URIs resolve against the current tracking / registry URI (call
    :func:`pspnet.tracking.store.setup_mlflow` first to use the project's store).
    """
    from pspnet.model.onnx_export import INT8_RUNTIME, RUNTIMES

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}.")
    if (runtime == INT8_RUNTIME) != (calibration is not None):
        raise ValueError(f"calibration images go with runtime {INT8_RUNTIME} and only with it")
    text = str(source)
    if is_checkpoint_path(text):
        return _from_checkpoint(Path(text), runtime, calibration)
    return _from_mlflow(text, runtime, calibration)


# --------------------------------------------------------------------------- by name or path

#: URI schemes resolved through the tracking / registry store (which must then exist).
STORE_SCHEMES = ("models:", "runs:")
#: Prefix of a local SQLite store URI; the database path follows it.
SQLITE_PREFIX = "sqlite:///"


def default_model_uri(params: Params) -> str:
    """``models:/<register.model_name>@<register.champion_alias>``: the current champion."""
    return f"models:/{params.register_.model_name}@{params.register_.champion_alias}"


def model_source(model: str | None, params: Params) -> str:
    """``model`` (a local path made absolute, so the summary names it anywhere) or the champion's URI."""
    if model is None:
        return default_model_uri(params)
    local = Path(model).expanduser()
    return os.path.abspath(local) if local.exists() else model


def _require_store(tracking_uri: str, source: str) -> None:
    """A ConfigError when ``source`` needs a local SQLite store that does not exist (MLflow
    would create an empty one and then fail to find the model)."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return
    database = Path(tracking_uri[len(SQLITE_PREFIX) :])
    if not database.is_file():
        raise ConfigError(
            f"--model {source}: the MLflow store {database} does not exist. Run the pipeline (`dvc repro`) to "
            "register a model, point MLFLOW_TRACKING_URI at your store, or pass a checkpoint with --model models/checkpoint.pt."
        )


def load_model(source: str, params: Params, root: Path, runtime: str = "torch") -> Segmenter:
    """The :class:`Segmenter` for a checkpoint path, a local MLflow model
    folder or an MLflow URI (resolved against the project's store), on ``runtime``."""
    from pspnet.tracking.store import resolve_tracking_uri, setup_mlflow

    from pspnet.model.onnx_export import INT8_RUNTIME

    if not is_checkpoint_path(source) and not Path(source).is_dir():
        if source.startswith(STORE_SCHEMES):
            _require_store(resolve_tracking_uri(params.mlflow, root), source)
        setup_mlflow(params.mlflow, root)
    calibration = calibration_images(params, root) if runtime == INT8_RUNTIME else None
    return load_segmenter(source, runtime, calibration)


def calibration_images(params: Params, root: Path) -> list[np.ndarray]:
    """``evaluate.int8_calibration_images`` images of the prepared train split, evenly spaced,
    as raw RGB ``(1, 3, H, W)`` float32: what int8 quantisation measures activation ranges on."""
    from pspnet.data.dataset import SegmentationDataset, load_image
    from pspnet.layout import Layout

    prepared = Layout(root, params.paths).prepared
    try:
        train = SegmentationDataset(prepared, "train", max_image_pixels=params.data.max_image_pixels)
    except (OSError, PspnetError) as err:
        raise ConfigError(
            f"--runtime onnxruntime-int8 calibrates on the prepared train split, which {prepared} does not hold "
            f"({err}). Run `dvc repro validate` (or `pspnet prepare`) first."
        ) from None
    count = min(params.evaluate.int8_calibration_images, len(train))
    picks = np.linspace(0, len(train) - 1, count).round().astype(int)
    return [load_image(train.image_paths[i], params.data.max_image_pixels).transpose(2, 0, 1)[None].astype(np.float32) for i in picks]

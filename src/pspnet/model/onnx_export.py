"""ONNX export of the raw-RGB :class:`~pspnet.model.export.SegmentationModel` with dynamic
batch, height and width, exact at any size.

The pyramid's adaptive pooling is the obstacle: the ONNX exporter turns the built-in adaptive
pooling into index arithmetic fixed at the traced size, so other sizes give wrong logits or
fail in ONNX Runtime. The exported copy pools with
:class:`~pspnet.model.ppm.ExactAdaptivePool2d` (bin-membership matrices built from the
symbolic size), which computes the same numbers; the model being trained is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pspnet import atomic_files
from pspnet.model.export import EXPORT_BATCH
from pspnet.model.ppm import with_exact_pooling

log = logging.getLogger(__name__)

#: ONNX opset of the exported graph (ONNX Runtime 1.20+ runs it).
OPSET = 18
#: Names of the graph's input (float32 RGB, 0..255, NCHW) and output (logits, NCHW).
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: Smallest side the graph accepts: the encoder downsamples by 8, and a side below that
#: leaves no feature map to pool.
MIN_SIDE = 16
#: Runtimes a loaded model can run on (``pspnet predict / evaluate --runtime``); ``-int8``: the
#: graph statically quantised (:func:`quantize_int8`).
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
INT8_RUNTIME = "onnxruntime-int8"


def export_onnx(model: nn.Module, path: Path, example_size: tuple[int, int]) -> Path:
    """Write ``model`` (raw RGB ``(N, 3, H, W)`` -> logits ``(N, C, H, W)``) as an ONNX graph
    with symbolic N, H and W to ``path`` (atomically); traced at ``example_size`` (h, w)."""
    exportable = with_exact_pooling(copy.deepcopy(model)).cpu().eval()
    h, w = example_size
    example = torch.rand(EXPORT_BATCH, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=MIN_SIDE),
            3: torch.export.Dim("width", min=MIN_SIDE)}  # fmt: skip
    # The exporter prints progress lines and warns about its own internals: keep them off stdout.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            exportable, (example,), dynamo=True, dynamic_shapes=(dims,), opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        )  # fmt: skip
    with atomic_files.atomic_path(path) as tmp:
        program.save(str(tmp))
    return path


def onnx_session(path: Path, threads: int | None = None):  # noqa: ANN201 - onnxruntime is imported lazily
    """An ONNX Runtime CPU session of the graph at ``path`` (``threads``: intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Logits ``(N, C, H, W)`` of raw RGB ``images`` ``(N, 3, H, W)`` (float32, 0..255)."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def quantize_int8(graph: Path, out: Path, calibration: Sequence[np.ndarray]) -> Path:
    """``graph`` statically quantised to int8 into ``out`` (atomically): per-channel int8 weights,
    uint8 activations whose ranges (min-max) come from running ``calibration``, raw RGB images
    ``(1, 3, H, W)`` float32 of the data the model will see (e.g. the prepared train split).
    QDQ format, which ONNX Runtime fuses into int8 convolutions on the CPU."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("int8 quantisation needs at least one calibration image")

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.images, None)
            return None if image is None else {INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)}

    with atomic_files.atomic_path(out) as tmp:
        quantize_static(str(graph), str(tmp), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)  # fmt: skip
    return out


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session (CPU) as a raw-RGB network: float32 ``(N, 3, H, W)`` in 0..255
    -> logits ``(N, C, H, W)`` on the input's device. Inference-only: modes are ignored."""

    def __init__(self, session) -> None:  # noqa: ANN001 - an onnxruntime.InferenceSession
        super().__init__()
        self.session = session
        self.training = False

    def train(self, mode: bool = True) -> OnnxNetwork:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_onnx(self.session, x.detach().float().cpu().numpy())).to(x.device)


def agreement(session, model: nn.Module, sizes: Sequence[tuple[int, int]], batch: int = 1, seed: int = 0) -> dict[str, float]:  # noqa: ANN001
    """How closely the graph reproduces ``model`` on random images of ``sizes``: the largest
    absolute logit difference and the share of pixels with the same class."""
    generator = torch.Generator().manual_seed(seed)
    worst, same, pixels = 0.0, 0, 0
    for h, w in sizes:
        images = torch.randint(0, 256, (batch, 3, h, w), generator=generator).float()
        with torch.inference_mode():
            expected = model(images).numpy()
        got = run_onnx(session, images.numpy())
        worst = max(worst, float(np.abs(got - expected).max()))
        same += int((got.argmax(1) == expected.argmax(1)).sum())
        pixels += batch * h * w
    return {"max_abs_logit_diff": worst, "class_agreement": same / pixels}

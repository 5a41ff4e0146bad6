"""The registered model's code: an MLflow pyfunc that turns RGB images into class maps.

Logged as MLflow "models from code" (copied into every version, run on load / serve), so it
imports only numpy, torch and mlflow, never ``pspnet``. Artifacts: ``network`` (a
``torch.export`` program, float32 RGB ``(N, 3, H, W)`` in 0..255 -> logits, dynamic N / H / W)
and ``classes`` (JSON ``{"names": [...], "colors": [[r, g, b], ...]}``).

Request / response (``POST /invocations``)::

    {"inputs": [[[[r, g, b], ...], ...]]}      # uint8 RGB, (N, H, W, 3); one image: N = 1
    -> {"predictions": [[[c, ...], ...]]}      # int32 class ids, (N, H, W)

One request's images share a size. Images under :data:`MIN_SIDE` are edge-padded and cropped
back. The pass is the single-scale forward; ``pspnet predict`` adds slide / flip / multi-scale.
"""

import json
from typing import Any

import mlflow
import numpy as np
import torch

#: Artifact keys of the model (see the module docstring).
NETWORK_ARTIFACT = "network"
CLASSES_ARTIFACT = "classes"
#: The same network as an ONNX graph (dynamic N/H/W), for ONNX Runtime (``register.export_onnx``).
ONNX_ARTIFACT = "network_onnx"
#: Largest value of an 8-bit channel: inputs are RGB in 0..255.
MAX_PIXEL_VALUE = 255
#: Channel axis of an (N, H, W, 3) request.
CHANNEL_AXIS = -1
#: Images per forward pass: bounds memory for large requests.
MAX_BATCH = 8
#: Smallest side the exported network accepts safely (its guards need at least 9 pixels at
#: output stride 8); smaller images are edge-padded to this and the class map cropped back.
MIN_SIDE = 32


def to_batch(images: Any) -> np.ndarray:
    """``images`` as float32 ``(N, H, W, 3)``: accepts one ``(H, W, 3)`` image or a batch."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[CHANNEL_AXIS] != 3:
        raise ValueError(
            f"expected RGB images shaped (N, H, W, 3) or (H, W, 3) with values 0..{MAX_PIXEL_VALUE}, "
            f"got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"expected numeric pixel values, got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """RGB images in, class maps out (see the module docstring for the exact formats)."""

    def load_context(self, context: Any) -> None:
        self.network = torch.export.load(context.artifacts[NETWORK_ARTIFACT]).module()
        with open(context.artifacts[CLASSES_ARTIFACT], encoding="utf-8") as f:
            classes = json.load(f)
        self.class_names: list[str] = list(classes["names"])
        self.class_colors: list[list[int]] = [list(c) for c in classes["colors"]]

    def logits(self, images: np.ndarray) -> torch.Tensor:
        """Logits ``(N, C, H, W)`` for float32 RGB ``(N, H, W, 3)`` in ``0..255`` (any H, W >= 1)."""
        _, h, w, _ = images.shape
        pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
        if pad_h or pad_w:
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        with torch.inference_mode():
            out = torch.cat([self.network(x[i : i + MAX_BATCH]) for i in range(0, len(x), MAX_BATCH)])
        return out[:, :, :h, :w]

    # ``np.ndarray`` is a hint MLflow derives no schema from (and does not warn about): the
    # logged signature is the schema.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:  # noqa: ANN001
        """Class ids ``(N, H, W)`` int32 for RGB ``(N, H, W, 3)``.

        Called directly (not through MLflow's signature check) it also takes one ``(H, W, 3)`` image.
        """
        batch = to_batch(model_input)
        if len(batch) == 0:
            return np.zeros((0, *batch.shape[1:3]), dtype=np.int32)
        return self.logits(batch).argmax(dim=1).to(torch.int32).numpy()


mlflow.models.set_model(SegmentationPyfunc())

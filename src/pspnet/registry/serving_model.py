"""The registered model's code: an MLflow pyfunc that turns RGB images into class maps.

Logged as MLflow "models from code" (copied into every version, run on load / serve), so it
imports only numpy, torch, pillow and mlflow (onnxruntime for that runtime), never ``pspnet``.
Artifacts: ``network`` (a ``torch.export`` program, float32 RGB ``(N, 3, H, W)`` in 0..255 ->
logits, dynamic N / H / W), ``network_onnx`` (the same as an ONNX graph, when registered with
it), ``classes`` (``{"names": [...], "colors": [[r, g, b], ...]}``), ``serving`` (the settings
below) and ``test_time_code`` (:mod:`pspnet.evaluate.multiscale`, the protocol ``pspnet
evaluate`` runs, so the served scales and flip are the same code).

Request / response (``POST /invocations``)::

    {"inputs": [[[[r, g, b], ...], ...]]}           # uint8 RGB, (N, H, W, 3) or one (H, W, 3)
    {"inputs": ["<base64 PNG or JPEG>", ...]}       # encoded images; sizes may differ
    optional "params": {"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "flip": true}
    -> {"predictions": [[[c, ...], ...]]}           # int32 class ids (N, H, W); a list of
                                                    # (H_i, W_i) maps when the sizes differ

A bad request (undecodable image, over ``max_image_pixels``, wrong shape or dtype, bad
params) raises ``MlflowException`` INVALID_PARAMETER_VALUE: HTTP 400 with the reason.
The runtime is the model config's ``runtime`` (``torch`` or ``onnxruntime``), chosen at
registration (``register.serving_runtime``) and overridable at load time
(``mlflow.pyfunc.load_model(uri, model_config={"runtime": "onnxruntime"})``, or
``SERVING_MODEL_CONFIG='{"runtime": "onnxruntime"}'`` for ``mlflow models serve``).
"""

import base64
import binascii
import importlib.util
import io
import json
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException

#: Artifact keys of the model (see the module docstring).
NETWORK_ARTIFACT = "network"
CLASSES_ARTIFACT = "classes"
#: The same network as an ONNX graph (dynamic N/H/W), for ONNX Runtime (``register.export_onnx``).
ONNX_ARTIFACT = "network_onnx"
SERVING_ARTIFACT = "serving"
TEST_TIME_CODE_ARTIFACT = "test_time_code"
#: Model-config key naming the runtime, and the runtimes the served model knows.
RUNTIME_KEY = "runtime"
RUNTIMES = ("torch", "onnxruntime")
#: Largest value of an 8-bit channel: inputs are RGB in 0..255.
MAX_PIXEL_VALUE = 255
#: Channel axis of an (N, H, W, 3) request.
CHANNEL_AXIS = -1
#: Images (or windows) per forward pass: bounds memory for large requests.
MAX_BATCH = 8
#: Smallest side the exported network accepts safely (its guards need at least 9 pixels at
#: output stride 8); smaller passes are edge-padded to this and the logits cropped back.
MIN_SIDE = 32
#: Request params: test scales (each in (0, MAX_SCALE], at most MAX_SCALES) and the flip.
SCALES_PARAM, FLIP_PARAM = "scales", "flip"
DEFAULT_SCALES = (1.0,)
MAX_SCALE = 2.0
MAX_SCALES = 8
#: Encoded formats a request may carry (what Pillow reports), and the data-URI prefix it may have.
ENCODED_FORMATS = ("PNG", "JPEG")
DATA_URI_SEPARATOR = ";base64,"


def bad_request(message: str) -> MlflowException:
    """A client error: the scoring server answers HTTP 400 with ``message``."""
    return MlflowException.invalid_parameter_value(message)


def to_batch(images: Any) -> np.ndarray:
    """``images`` as float32 ``(N, H, W, 3)``: accepts one ``(H, W, 3)`` image or a batch."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[CHANNEL_AXIS] != 3:
        raise bad_request(
            f"expected RGB images shaped (N, H, W, 3) or (H, W, 3) with values 0..{MAX_PIXEL_VALUE}, "
            f"or a list of base64 PNG / JPEG strings; got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise bad_request(f"expected numeric pixel values, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > MAX_PIXEL_VALUE):
        raise bad_request(f"pixel values must lie in 0..{MAX_PIXEL_VALUE}, got {array.min()}..{array.max()}")
    return array.astype(np.float32, copy=False)


def check_pixels(what: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse ``what`` (``width x height``) when it is over ``max_pixels``, the data gate's limit."""
    if width * height > max_pixels:
        raise bad_request(f"{what}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
                          "(the data gate's data.max_image_pixels); downscale first")  # fmt: skip


def decode_image(text: str, index: int, max_pixels: int) -> np.ndarray:
    """Image ``index`` of a request, base64 PNG / JPEG (a ``data:`` URI prefix allowed), as
    uint8 RGB ``(H, W, 3)``; its header is checked against ``max_pixels`` before decoding."""
    from PIL import Image

    payload = text.split(DATA_URI_SEPARATOR, 1)[-1]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"image {index}: not valid base64 (send the PNG / JPEG file's bytes base64-encoded)") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ENCODED_FORMATS:
                raise bad_request(f"image {index}: {image.format} is not accepted; send PNG or JPEG")
            check_pixels(f"image {index}", *image.size, max_pixels)
            return np.asarray(image.convert("RGB"))
    except MlflowException:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a broken file
        raise bad_request(f"image {index}: not a readable PNG / JPEG ({type(err).__name__}: {err})") from None


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """RGB images in, class maps out (see the module docstring for the exact formats)."""

    def load_context(self, context: Any) -> None:
        runtime = (context.model_config or {}).get(RUNTIME_KEY, RUNTIMES[0])
        if runtime not in RUNTIMES:
            raise MlflowException(f"model config {RUNTIME_KEY!r} is {runtime!r}; choose one of {list(RUNTIMES)}")
        self.network = self._load_network(context.artifacts, runtime)
        with open(context.artifacts[CLASSES_ARTIFACT], encoding="utf-8") as f:
            classes = json.load(f)
        self.class_names: list[str] = list(classes["names"])
        self.class_colors: list[list[int]] = [list(c) for c in classes["colors"]]
        with open(context.artifacts[SERVING_ARTIFACT], encoding="utf-8") as f:
            serving = json.load(f)
        self.max_image_pixels = int(serving["max_image_pixels"])
        self.test_time = dict(serving["test_time"])
        self.mean = torch.tensor(serving["input_mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = torch.tensor(serving["input_std"], dtype=torch.float32).reshape(1, 3, 1, 1)
        spec = importlib.util.spec_from_file_location("pspnet_served_multiscale", context.artifacts[TEST_TIME_CODE_ARTIFACT])
        self.multiscale = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.multiscale)

    @staticmethod
    def _load_network(artifacts: dict[str, str], runtime: str) -> Any:
        """``raw RGB (N, 3, H, W) tensor -> logits tensor`` on ``runtime``."""
        if runtime == "torch":
            return torch.export.load(artifacts[NETWORK_ARTIFACT]).module()
        if ONNX_ARTIFACT not in artifacts:
            raise MlflowException("this version holds no ONNX graph (registered with register.export_onnx: false); "
                                  f"serve it with model config {RUNTIME_KEY}: torch")  # fmt: skip
        import onnxruntime

        session = onnxruntime.InferenceSession(artifacts[ONNX_ARTIFACT], providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        # The same call as pspnet.model.onnx_export.run_onnx: this file may not import pspnet.
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    def _raw_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C, H, W)`` of raw RGB ``(N, 3, H, W)``, any ``H, W >= 1``, ``MAX_BATCH`` at a time."""
        h, w = x.shape[-2:]
        pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out = torch.cat([self.network(x[i : i + MAX_BATCH].contiguous()) for i in range(0, len(x), MAX_BATCH)])
        return out[:, :, :h, :w]

    def _normalized_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The network fed from normalised input, as the shared protocol expects."""
        return self._raw_pass(x * self.std + self.mean)

    def scores(self, images: np.ndarray, scales: tuple[float, ...] = DEFAULT_SCALES, flip: bool = False) -> torch.Tensor:
        """Scores ``(N, C, H, W)`` of float32 RGB ``(N, H, W, 3)`` in 0..255 under the registered
        test-time settings with the given ``scales`` and ``flip`` (logits for one scale, no flip)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        cfg = SimpleNamespace(**self.test_time, scales=tuple(scales), flip=bool(flip))
        return self.multiscale.predict_scores(self._normalized_pass, (x - self.mean) / self.std, cfg)  # inference mode inside

    def _test_time(self, params: dict[str, Any] | None) -> tuple[tuple[float, ...], bool]:
        params = params or {}
        scales = tuple(float(s) for s in np.atleast_1d(params.get(SCALES_PARAM, DEFAULT_SCALES)))
        if not scales or len(scales) > MAX_SCALES or not all(0 < s <= MAX_SCALE for s in scales):
            raise bad_request(f"params.{SCALES_PARAM} must hold 1 to {MAX_SCALES} scales in (0, {MAX_SCALE}], got {list(scales)}")
        return scales, bool(params.get(FLIP_PARAM, False))

    def _images(self, model_input: Any) -> list[np.ndarray]:
        """The request's images: a float32 ``(N, H, W, 3)`` batch as one entry, or one
        ``(1, H, W, 3)`` entry per encoded image."""
        try:
            array = np.asarray(model_input) if not hasattr(model_input, "to_numpy") else model_input.to_numpy().ravel()
        except ValueError:  # a ragged nested list
            raise bad_request("the images of an array request must share one size; send images of differing "
                              "sizes as a list of base64 PNG / JPEG strings") from None  # fmt: skip
        if array.dtype.kind in "UO" and array.ndim == 1:
            if not all(isinstance(item, str) for item in array):
                raise bad_request("a list of images must hold only base64 strings")
            return [decode_image(item, i, self.max_image_pixels)[None].astype(np.float32) for i, item in enumerate(array)]
        batch = to_batch(array)
        check_pixels("the images", batch.shape[2], batch.shape[1], self.max_image_pixels)
        return [batch]

    def class_maps(self, batch: np.ndarray, scales: tuple[float, ...] = DEFAULT_SCALES, flip: bool = False) -> np.ndarray:
        """Class ids int32 ``(N, H, W)`` of float32 RGB ``(N, H, W, 3)``."""
        if len(batch) == 0:
            return np.zeros(batch.shape[:3], dtype=np.int32)
        return self.scores(batch, scales, flip).argmax(dim=1).to(torch.int32).numpy()

    # ``np.ndarray`` is a hint MLflow derives no schema from (and does not warn about): the
    # request's layouts are checked here, with messages that say what to send.
    def predict(self, context, model_input: np.ndarray, params=None) -> Any:  # noqa: ANN001
        """Class ids int32: ``(N, H, W)``, or a list of ``(H_i, W_i)`` maps for encoded images of
        differing sizes. Called directly it also takes one ``(H, W, 3)`` image."""
        scales, flip = self._test_time(params)
        images = self._images(model_input)
        if len(images) == 1:
            return self.class_maps(images[0], scales, flip)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[1:3], []).append(i)
        maps: list[np.ndarray] = [np.empty(0)] * len(images)
        for indices in by_size.values():  # each size in one batch
            batch = np.concatenate([images[i] for i in indices])
            for i, class_map in zip(indices, self.class_maps(batch, scales, flip)):
                maps[i] = class_map
        return np.stack(maps) if len(by_size) == 1 else maps


mlflow.models.set_model(SegmentationPyfunc())

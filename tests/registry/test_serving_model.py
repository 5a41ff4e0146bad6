"""The served model (the registered pyfunc, loaded as `mlflow models serve` loads it): arrays and
base64 PNG / JPEG images of mixed sizes in one request, scales and flip as request params (the
protocol `pspnet evaluate` runs), both runtimes, and a 400-class error for every kind of bad
request. Over HTTP: tests/integration/test_tracking_server.py."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from PIL import Image

from pspnet.config import EvaluateConfig, ModelConfig
from pspnet.evaluate.inference import predict_logits
from pspnet.model.checkpoint import load_checkpoint, save_checkpoint
from pspnet.model.pspnet import build_model
from pspnet.model.normalize import normalize, pixel_stats
from pspnet.registry.logged_model import png_base64
from pspnet.registry.packaging import ServingSpec, log_segmentation_model

NAMES = ["road", "car", "sky"]
COLORS = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
CFG = ModelConfig(encoder="resnet18", head_channels=8, aux_channels=8, input_mean=(0.5, 0.4, 0.3), input_std=(0.2, 0.25, 0.3))
#: The served model's pixel limit here: small, so an "oversized" image stays cheap to make.
MAX_PIXELS = 120 * 160
#: Class maps of two runtimes / two paths may differ by float rounding on near-ties only.
MAX_DIFFERING_SHARE = 0.001
PAPER_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]

# A model exported (torch.export and ONNX) and logged into a real store: not the fast tier.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny random PSPNet logged with its ONNX graph into a SQLite store; the pyfunc loaded back."""
    base = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    save_checkpoint(base / "ckpt.pt", build_model(CFG, len(NAMES)), CFG, len(NAMES), {"class_names": NAMES, "class_colors": COLORS})
    tracking = f"sqlite:///{base / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.create_experiment("serving", artifact_location=(base / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    ckpt = load_checkpoint(base / "ckpt.pt")
    info = log_segmentation_model(ckpt, run.info.run_id, "sha", (64, 96), (40, 56), ServingSpec(max_image_pixels=MAX_PIXELS))
    return {"uri": info.model_uri, "pyfunc": mlflow.pyfunc.load_model(info.model_uri), "ckpt": ckpt, "tracking": tracking}


@pytest.fixture(autouse=True)
def _store(served: dict, _isolated_mlflow: None) -> None:
    """Every test reads the module's store (the suite resets the store before each test)."""
    mlflow.set_tracking_uri(served["tracking"])


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _expected(ckpt, image: np.ndarray, cfg: EvaluateConfig) -> np.ndarray:  # noqa: ANN001
    """The checkpoint's class map under ``cfg``: what `pspnet evaluate` would predict."""
    mean, std = pixel_stats(CFG.input_mean, CFG.input_std)
    x = normalize(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float(), mean, std)
    return predict_logits(ckpt.model.eval(), x, cfg).argmax(1)[0].numpy()


def _agree(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float((a != b).mean()) <= MAX_DIFFERING_SHARE


def test_png_and_jpeg_of_mixed_sizes_in_one_request_come_back_in_order(served: dict) -> None:
    pyfunc, ckpt = served["pyfunc"], served["ckpt"]
    images = [_image(45, 70, 0), _image(61, 53, 1), _image(45, 70, 2), _image(13, 20, 3)]
    request = [png_base64(images[0]), png_base64(images[1]), "data:image/png;base64," + png_base64(images[2]),
               _jpeg_base64(images[3])]  # fmt: skip
    maps = pyfunc.predict(np.array(request))
    assert isinstance(maps, list) and [m.shape for m in maps] == [img.shape[:2] for img in images]
    single = EvaluateConfig()
    for class_map, image in zip(maps[:3], images):
        assert class_map.dtype == np.int32 and _agree(class_map, _expected(ckpt, image, single))
    # The tiny JPEG (edge-padded for the pass, like `pspnet predict` does) as its decoded pixels.
    decoded_jpeg = np.asarray(Image.open(io.BytesIO(base64.b64decode(request[3]))).convert("RGB"))
    assert np.array_equal(maps[3], pyfunc.predict(decoded_jpeg[None])[0])
    # Encoded images of one size come back as one (N, H, W) array, like the array request.
    same = pyfunc.predict(np.array(request[:1] + request[2:3]))
    assert same.shape == (2, 45, 70) and np.array_equal(same, np.stack([maps[0], maps[2]]))


def test_scales_and_flip_run_the_evaluate_protocol(served: dict) -> None:
    pyfunc, ckpt = served["pyfunc"], served["ckpt"]
    image = _image(97, 131, 4)  # every scale's pass is over MIN_SIDE (smaller ones are padded)
    got = pyfunc.predict(image[None], params={"scales": PAPER_SCALES, "flip": True})
    expected = _expected(ckpt, image, EvaluateConfig(scales=PAPER_SCALES, flip=True))
    assert got.shape == (1, 97, 131) and _agree(got[0], expected)
    assert not np.array_equal(expected, _expected(ckpt, image, EvaluateConfig()))  # the option changes the answer


def test_the_onnx_runtime_serves_the_same_maps(served: dict) -> None:
    onnx = mlflow.pyfunc.load_model(served["uri"], model_config={"runtime": "onnxruntime"})
    batch = np.stack([_image(49, 75, 5), _image(49, 75, 6)])
    assert _agree(onnx.predict(batch), served["pyfunc"].predict(batch))
    with pytest.raises(MlflowException, match="choose one of"):
        mlflow.pyfunc.load_model(served["uri"], model_config={"runtime": "tensorrt"})


def _not_a_png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(_image(20, 20, 7)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


BAD_REQUESTS = {
    "not base64": (["@@not base64@@"], None, "not valid base64"),
    "not an image": ([base64.b64encode(b"hello, world").decode()], None, "not a readable PNG / JPEG"),
    "truncated png": ([png_base64(_image(30, 30, 8))[:200]], None, "not a readable PNG / JPEG"),
    "gif": ([_not_a_png()], None, "GIF is not accepted"),
    "oversized png": ([png_base64(_image(121, 160, 9))], None, "over the limit of 19200"),
    "oversized array": (np.zeros((1, 121, 160, 3), np.uint8), None, "over the limit of 19200"),
    "four channels": (np.zeros((1, 20, 20, 4), np.uint8), None, "expected RGB images shaped"),
    "flat list": (np.array([1, 2, 3]), None, "expected RGB images shaped"),
    "out of range": (np.full((1, 20, 20, 3), 300), None, "must lie in 0..255"),
    "mixed list": (np.array(["abc", 1], dtype=object), None, "only base64 strings"),
    "ragged arrays": ([np.zeros((20, 20, 3)).tolist(), np.zeros((30, 20, 3)).tolist()], None, "must share one size"),
    "scale too large": (np.zeros((1, 20, 20, 3), np.uint8), {"scales": [1.0, 5.0]}, "params.scales must hold"),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_every_bad_request_is_an_invalid_parameter_error_that_says_why(served: dict, kind: str) -> None:
    inputs, params, message = BAD_REQUESTS[kind]
    with pytest.raises(MlflowException, match=message) as err:
        served["pyfunc"].predict(inputs, params=params)
    assert err.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and err.value.get_http_status_code() == 400


def test_the_model_says_how_to_call_it(served: dict, tmp_path: Path) -> None:
    info = mlflow.models.get_model_info(served["uri"])
    assert {p.name for p in info.signature.params.params} == {"scales", "flip"}
    assert "base64 PNG / JPEG" in info.metadata["input"] and "onnxruntime" in " ".join(
        Path(mlflow.pyfunc.get_model_dependencies(served["uri"])).read_text().split())

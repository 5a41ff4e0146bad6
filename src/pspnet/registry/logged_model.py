"""Log a checkpoint as an MLflow model, check that it serves, and register it as a version.

The logged model (:mod:`pspnet.registry.packaging`) is loaded back as a pyfunc and must
reproduce the checkpoint's class map on a probe image of another size before it is
registered. A version already made from the same run and checkpoint (a retry) is reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pspnet.config import Params
from pspnet.errors import PspnetError
from pspnet.registry.tags import TAG_CHECKPOINT_SHA, class_tags

#: Largest share of probe pixels whose class may differ between the logged model and the
#: checkpoint (float rounding in the exported graph can flip near-ties, nothing more).
PROBE_MAX_MISMATCH = 0.001
#: Bytes read at a time when hashing a file.
HASH_CHUNK = 1 << 20
#: Characters of a serving error quoted in the probe's message.
ERROR_PREVIEW_CHARS = 500


def sha256_file(path: Path, chunk: int = HASH_CHUNK) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_existing_version(client: Any, model_name: str, run_id: str, checkpoint_sha: str) -> Any | None:
    """A version of ``model_name`` already made from this run's checkpoint (a retry), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except MlflowException:
        return None
    for mv in sorted(versions, key=lambda m: int(m.version), reverse=True):
        if mv.name == model_name and mv.tags.get(TAG_CHECKPOINT_SHA) == checkpoint_sha:
            return mv
    return None


def probe_logged_model(model_uri: str, ckpt: Any, size: tuple[int, int]) -> None:
    """Load the logged model back as a pyfunc (the serving path) and check that it reproduces the
    checkpoint's class map on a random image of ``size`` (neither the export example's size nor
    its batch), sent as an array and as a PNG."""
    import mlflow.pyfunc
    import torch

    from pspnet.model.export import SegmentationModel

    h, w = size
    image = np.random.default_rng(0).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        served = np.asarray(pyfunc.predict(image))
        encoded = np.asarray(pyfunc.predict([png_base64(image[0])]))
    except Exception as err:  # noqa: BLE001 - any failure means the artefact is unusable
        raise PspnetError(
            f"the logged model {model_uri} rejects a (1, {h}, {w}, 3) image: {type(err).__name__}: "
            f"{str(err)[:ERROR_PREVIEW_CHARS]}. Its input shapes were probably frozen at export."
        ) from None
    if served.shape != (1, h, w) or not np.array_equal(served, encoded):
        raise PspnetError(f"the logged model maps a (1, {h}, {w}, 3) image to {served.shape}, expected (1, {h}, {w}), "
                          "the same for the image sent as a PNG.")  # fmt: skip
    cfg = ckpt.model_cfg
    reference = SegmentationModel(ckpt.model, cfg.input_mean, cfg.input_std)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(image).permute(0, 3, 1, 2).float()).argmax(1).numpy()
    mismatch = float((served != expected).mean())
    if mismatch > PROBE_MAX_MISMATCH:
        raise PspnetError(
            f"the logged model {model_uri} disagrees with the checkpoint on {mismatch:.2%} of a probe image's "
            "pixels; the export is broken. Report this with the model's encoder and torch version."
        )


def png_base64(image: np.ndarray) -> str:
    """``image`` (uint8 RGB ``(H, W, 3)``) as the base64 PNG a served request may carry."""
    import base64

    from pspnet.data.convert import png_bytes

    return base64.b64encode(png_bytes(image)).decode("ascii")


def register_checkpoint(
    ckpt: Any, run_id: str, checkpoint_sha: str, model_name: str, params: Params, extra_tags: dict[str, str] | None = None
) -> tuple[Any, str]:
    """Log ``ckpt`` into run ``run_id``, probe it and register it as a new version of
    ``model_name`` tagged with its checkpoint SHA-256, ``extra_tags`` and its classes; returns
    ``(model version, logged model URI)``."""
    import mlflow

    from pspnet.registry.packaging import ServingSpec, log_segmentation_model

    cfg = params.register_
    onnx_probe = cfg.probe_size if cfg.export_onnx else None
    info = log_segmentation_model(ckpt, run_id, checkpoint_sha, cfg.export_example_size, onnx_probe, ServingSpec.from_params(params))
    probe_logged_model(info.model_uri, ckpt, cfg.probe_size)
    tags = {TAG_CHECKPOINT_SHA: checkpoint_sha, **(extra_tags or {}), **class_tags(ckpt)}
    # Creates the registered model on first use (and tolerates a concurrent creation).
    return mlflow.register_model(info.model_uri, model_name, tags=tags), info.model_uri

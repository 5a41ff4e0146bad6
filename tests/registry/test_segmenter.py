"""load_segmenter: checkpoints, this project's pyfunc versions and the earlier pytorch-flavour
layout all give a model that scores normalised images like the checkpoint; nothing stored with
a model runs on load (a pickle inside a network archive is refused, a pickled legacy version
loads only on the user's explicit opt-in)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch

from pspnet.config import ModelConfig
from pspnet.errors import ConfigError, PspnetError
from pspnet.evaluate.inference import predict_logits
from pspnet.model.checkpoint import load_checkpoint, save_checkpoint
from pspnet.model.export import SegmentationModel
from pspnet.model.pspnet import build_model
from pspnet.registry.segmenter import MIN_SIDE, load_segmenter

NAMES = ["road", "car", "sky"]
COLORS = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
CFG = ModelConfig(encoder="resnet18", head_channels=8, aux_channels=8, input_mean=(0.5, 0.4, 0.3), input_std=(0.2, 0.25, 0.3))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, build_model(CFG, len(NAMES)), CFG, len(NAMES), {"class_names": NAMES, "class_colors": COLORS})
    return path


def _normalised(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    raw = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32))
    mean = torch.tensor(CFG.input_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(CFG.input_std).view(1, 3, 1, 1) * 255
    return (raw - mean) / std


def test_a_checkpoint_loads_with_its_classes_and_normalisation(checkpoint: Path) -> None:
    seg = load_segmenter(checkpoint)
    assert seg.class_names == tuple(NAMES) and seg.class_colors == tuple(tuple(c) for c in COLORS)
    assert seg.input_mean == CFG.input_mean and seg.input_std == CFG.input_std
    x = _normalised((1, 3, 45, 70))
    expected = load_checkpoint(checkpoint).model(x)
    assert torch.allclose(predict_logits(seg.model, x), expected, atol=1e-5)
    assert predict_logits(seg.model, _normalised((1, 3, 3, 5))).shape == (1, len(NAMES), 3, 5)  # padded to MIN_SIDE
    assert MIN_SIDE > 5


def test_the_earlier_pytorch_flavour_layout_still_loads(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Versions registered before the pyfunc layout (MLflow's pytorch flavour around the same
    exported program) can still be champion; the gate must be able to re-score them."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    ckpt = load_checkpoint(checkpoint)
    wrapped = SegmentationModel(ckpt.model, CFG.input_mean, CFG.input_std)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(NAMES), -1, -1))]),
    )
    experiment = mlflow.create_experiment("legacy", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(
            wrapped, name="model", signature=signature, serialization_format="pt2",
            input_example=np.zeros((2, 3, 32, 48), np.float32), metadata={"class_names": NAMES, "class_colors": COLORS},
            pip_requirements=["torch"],
        )
    seg = load_segmenter(info.model_uri)
    assert seg.class_names == tuple(NAMES)
    assert seg.input_mean == pytest.approx(CFG.input_mean) and seg.input_std == pytest.approx(CFG.input_std)
    x = _normalised((2, 3, 41, 67), seed=1)
    expected = ckpt.model(x).argmax(1)
    assert (predict_logits(seg.model, x).argmax(1) == expected).float().mean() > 0.999


def test_unknown_sources_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="missing.pt: no such checkpoint"):
        load_segmenter(tmp_path / "missing.pt")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(PspnetError, match="models:/nope@champion: cannot load this model"):
        load_segmenter("models:/nope@champion")


# Untrusted files: nothing stored with a model runs on load.

class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: proof that a loader executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.mkdir, (str(self.marker),))


class _TinyExport(torch.nn.Module):
    """Shaped like the registered network: raw RGB in, logits out, ``mean`` / ``std`` buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CFG.input_mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(CFG.input_std).view(1, 3, 1, 1) * 255)
        self.conv = torch.nn.Conv2d(3, len(NAMES), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv((x - self.mean) / self.std)


def _model_folder(tmp_path: Path, payload: _Payload | None = None) -> Path:
    """A local model folder in this project's layout (pyfunc, ``network`` + ``classes`` artifacts);
    with ``payload``, a record of the network archive is replaced by that pickle."""
    import io
    import json
    import zipfile

    from mlflow.models import Model

    from pspnet.registry.packaging import FORMAT, FORMAT_KEY

    folder = tmp_path / "model"
    (folder / "artifacts").mkdir(parents=True)
    dynamic = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.export.export(_TinyExport(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=(dynamic,))
    clean = tmp_path / "clean.pt2"
    torch.export.save(program, str(clean))
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(folder / "artifacts" / "network.pt2", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if payload is not None and info.filename.endswith("data/sample_inputs/model.pt"):
                buffer = io.BytesIO()
                torch.save([payload], buffer)
                data = buffer.getvalue()
            dst.writestr(info, data)
    (folder / "artifacts" / "classes.json").write_text(json.dumps({"names": NAMES, "colors": COLORS}))
    model = Model(metadata={FORMAT_KEY: FORMAT})
    model.add_flavor("python_function", artifacts={"network": {"path": "artifacts/network.pt2"},
                                                   "classes": {"path": "artifacts/classes.json"}})
    model.save(str(folder / "MLmodel"))
    return folder


def test_a_network_archive_is_loaded_without_running_the_logged_code(tmp_path: Path) -> None:
    seg = load_segmenter(str(_model_folder(tmp_path)))
    assert seg.class_names == tuple(NAMES) and seg.input_mean == pytest.approx(CFG.input_mean)
    assert predict_logits(seg.model, _normalised((1, 3, 20, 24))).shape == (1, len(NAMES), 20, 24)


def test_a_network_archive_holding_a_pickle_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = _model_folder(tmp_path, _Payload(marker))
    with pytest.raises(PspnetError, match=r"refused to load network\.pt2: it holds data that would be unpickled.*MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"):
        load_segmenter(str(folder))
    assert not marker.exists()
    # torch.export.load alone would have run it (the reason for the check):
    with pytest.raises(Exception):
        torch.export.load(str(folder / "artifacts" / "network.pt2"))
    assert marker.exists()


def test_a_pickled_legacy_version_is_refused_unless_the_user_opts_in(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = load_checkpoint(checkpoint)
    folder = tmp_path / "pickled"
    mlflow.pytorch.save_model(
        SegmentationModel(ckpt.model, CFG.input_mean, CFG.input_std), str(folder), serialization_format="pickle",
        metadata={"class_names": NAMES, "class_colors": COLORS}, pip_requirements=["torch"],
    )
    with pytest.raises(PspnetError, match=r"stores its network as a Python pickle.*refused.*pspnet register.*MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"):
        load_segmenter(str(folder))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # the explicit opt-in, for a trusted store
    seg = load_segmenter(str(folder))
    x = _normalised((1, 3, 41, 67), seed=2)
    assert torch.allclose(predict_logits(seg.model, x), ckpt.model(x), atol=1e-4)

"""Checkpoint round trip, bad-file errors, and loading local encoder weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pspnet.config import ModelConfig
from pspnet.errors import ConfigError, PspnetError
from pspnet.model.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from pspnet.model.encoder import ResNetEncoder
from pspnet.model.pspnet import build_model

CFG = ModelConfig(encoder="resnet18", head_channels=16, aux_channels=8, dropout=0.2)
META = {"class_names": ["a", "b", "c"], "class_colors": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "epoch": 3, "step": 12}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = build_model(CFG, 3)
    # Make BN running stats non-trivial so buffers are checked too.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 40))
    path = tmp_path_factory.mktemp("ckpt") / "models" / "checkpoint.pt"
    save_checkpoint(path, model, CFG, 3, META)
    return path, model


def test_round_trip_restores_weights_config_and_meta(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.model_cfg == CFG
    assert loaded.num_classes == 3
    assert loaded.meta == META
    assert not loaded.model.training
    original = model.state_dict()
    restored = loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    model.eval()
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))


def test_save_is_atomic_and_leaves_no_temp_files(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_loads_with_weights_only(saved: tuple[Path, torch.nn.Module]) -> None:
    payload = torch.load(saved[0], weights_only=True)
    assert payload["format"] == "pspnet-checkpoint"


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(PspnetError, match="nope.pt.*not found"):
        load_checkpoint(path)


def test_garbage_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(PspnetError, match="garbage.pt.*not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_truncated_file_is_reported(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path = tmp_path / "truncated.pt"
    path.write_bytes(saved[0].read_bytes()[:5000])
    with pytest.raises(PspnetError, match="truncated.pt"):
        load_checkpoint(path)


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(PspnetError, match="weights.pt.*not a pspnet checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_are_reported(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    payload = torch.load(saved[0], weights_only=True)
    payload["num_classes"] = 4
    path = tmp_path / "mismatch.pt"
    torch.save(payload, path)
    with pytest.raises(PspnetError, match="mismatch.pt.*do not fit"):
        load_checkpoint(path)


def test_non_json_meta_is_refused(tmp_path: Path) -> None:
    model = build_model(CFG, 3)
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c.pt", model, CFG, 3, {"bad": object()})
    assert not (tmp_path / "c.pt").exists()


def test_local_encoder_state_dict_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = ResNetEncoder("resnet18", output_stride=32)
    state = {f"module.{k}": v for k, v in source.body.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # classifier keys of an ImageNet model are dropped
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = build_model(CFG.model_copy(update={"encoder_weights": str(path)}), 3)
    for key, value in source.body.state_dict().items():
        assert torch.equal(model.encoder.body.state_dict()[key], value), key


def test_bad_encoder_weights_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="encoder_weights"):
        build_model(CFG.model_copy(update={"encoder_weights": str(tmp_path / "missing.pth")}), 3)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(PspnetError, match="wrong.pth.*does not fit"):
        build_model(CFG.model_copy(update={"encoder_weights": str(wrong)}), 3)

"""Pretrained encoder weights: local state dicts (both stems), bad files named key by key, and the
download path failing at model construction with a clear message when offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pspnet.config import ModelConfig
from pspnet.errors import ConfigError, PspnetError
from pspnet.model.encoder import ResNetEncoder
from pspnet.model.pspnet import build_model


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_official_style_deep_stem_state_dict_loads(tmp_path: Path) -> None:
    # The official ImageNet ResNets name their deep stem conv1/bn1/conv2/bn2/conv3/bn3 and carry
    # an fc classifier; our deep stem uses the same names, so such a file loads without mapping.
    torch.manual_seed(1)
    source = ResNetEncoder("resnet18", output_stride=32, stem="deep")
    state = dict(source.body.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = _save(state, tmp_path / "resnet18_deep.pth")
    model = build_model(ModelConfig(encoder="resnet18", stem="deep", encoder_weights=str(path)), 3)
    loaded = model.encoder.body.state_dict()
    for key, value in source.body.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert "conv3.weight" in loaded and "bn3.running_var" in loaded


def test_state_dict_wrapped_and_prefixed_loads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = ResNetEncoder("resnet18", stem="standard")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.body.state_dict().items()}}
    path = _save(wrapped, tmp_path / "ddp.pth")
    model = build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 3)
    assert torch.equal(model.encoder.body.conv1.weight, source.body.conv1.weight)


def test_wrong_architecture_names_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    standard = ResNetEncoder("resnet18", stem="standard").body.state_dict()
    path = _save(dict(standard), tmp_path / "standard.pth")
    with pytest.raises(PspnetError) as err:
        build_model(ModelConfig(encoder="resnet18", stem="deep", encoder_weights=str(path)), 3)
    message = str(err.value)
    assert "standard.pth" in message
    assert "missing keys [bn2.bias, bn2.num_batches_tracked" in message and "... and 8 more]" in message
    assert "shape mismatches" in message and "conv1.weight (64, 3, 7, 7) vs (64, 3, 3, 3)" in message
    assert "model.stem" in message

    extra = dict(standard)
    extra["layer5.0.conv1.weight"] = torch.zeros(1)
    path = _save(extra, tmp_path / "extra.pth")
    with pytest.raises(PspnetError, match=r"unexpected keys \[layer5\.0\.conv1\.weight\]"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 3)


def test_files_that_are_not_state_dicts_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PspnetError, match="garbage.pth: not a loadable PyTorch state dict"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(garbage)), 3)
    listing = _save({"weights": [1, 2, 3]}, tmp_path / "list.pth")  # type: ignore[dict-item]
    with pytest.raises(PspnetError, match="list.pth: expected a mapping"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(listing)), 3)
    with pytest.raises(ConfigError, match="neither 'none'"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(tmp_path / "absent.pth")), 3)


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # would run on an unsafe torch.load
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(PspnetError, match="evil.pth"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 3)
    assert not (tmp_path / "pwned").exists()


def test_imagenet_weights_with_the_deep_stem_are_refused_before_any_download() -> None:
    with pytest.raises(ConfigError, match="standard 7x7 stem only"):
        build_model(ModelConfig(encoder="resnet50", encoder_weights="imagenet"), 3)


def test_imagenet_download_offline_fails_at_construction_with_a_clear_message(monkeypatch, tmp_path) -> None:
    # The hub client reads HF_HUB_OFFLINE / its cache path once, at import (earlier tests have
    # imported it), so set its constants: it then fails at once, never retries the network, and
    # never finds (or fills) the user's real cache.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(PspnetError) as err:
        build_model(ModelConfig(encoder="resnet18", encoder_weights="imagenet"), 3)
    message = str(err.value)
    assert "model.encoder_weights='imagenet'" in message and "needs internet" in message
    assert "\n" not in message  # one clear line, not a traceback

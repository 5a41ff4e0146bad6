"""Converting the authors' released PSPNet weights (``pspnet.model.official``).

The release files are written by the test with the official key names and shapes
(``tests/model/official_reference.py``), and the converted model's output is compared with an
independent re-implementation of the original network run on the same tensors.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pspnet.errors import ConfigError, PspnetError
from pspnet.model.encoder import ResNetEncoder
from pspnet.model.export import SegmentationModel
from pspnet.model.official import convert
from pspnet.model.pspnet import count_parameters
from tests.model.official_reference import (
    keras_reference_forward,
    semseg_checkpoint,
    semseg_reference_forward,
    semseg_state_dict,
    write_keras_h5,
)

#: Input side: 41 -> 6x6 features, which every pyramid bin divides (the Caffe pooling's condition).
SIDE = 41
#: float32 through 50 / 101 layers: the two implementations differ by ~3e-5 on logits of ~5-25.
ATOL = RTOL = 1e-3


def _image(seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(batch, SIDE, SIDE, 3), dtype=np.uint8)


def _raw_rgb(image: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in 0..255, what the registered model takes."""
    return torch.from_numpy(image).permute(0, 3, 1, 2).float()


def _forward(conversion, image: np.ndarray) -> torch.Tensor:
    """Our converted model through the normalisation it records (the registered model's path)."""
    cfg = conversion.model_cfg
    with torch.no_grad():
        return SegmentationModel(conversion.model, cfg.input_mean, cfg.input_std).eval()(_raw_rgb(image))


def _imagenet_normalised(image: np.ndarray) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    return (_raw_rgb(image) - mean) / std


@pytest.mark.parametrize(
    ("layers", "classes", "encoder", "module_prefix", "batches_tracked"),
    [(50, 150, "resnet50", True, True), (101, 21, "resnet101", False, False)],
    ids=["pspnet50-ade20k-ddp", "pspnet101-voc-bare-old-torch"],
)
def test_semseg_checkpoint_converts_strictly_and_computes_the_original(
    tmp_path: Path, layers: int, classes: int, encoder: str, module_prefix: bool, batches_tracked: bool
) -> None:
    path = tmp_path / "train_epoch_100.pth"
    if module_prefix:  # as the authors' DDP training saves it: {'epoch', 'state_dict', 'optimizer'}
        saved = semseg_checkpoint(layers=layers, classes=classes, num_batches_tracked=batches_tracked)
        state = saved["state_dict"]
    else:  # a bare state dict, without the batch counters of PyTorch < 0.4.1
        saved = state = semseg_state_dict(layers=layers, classes=classes, num_batches_tracked=batches_tracked)
    torch.save(saved, path)

    conversion = convert(path, "semseg", num_classes=classes)

    assert conversion.unmapped == [] and conversion.missing == []
    assert conversion.model_cfg.encoder == encoder and conversion.model_cfg.resolved_stem == "deep"
    assert conversion.model_cfg.block_stride == "3x3" and conversion.model.aux_head is not None
    assert count_parameters(conversion.model) == sum(v.numel() for k, v in state.items() if v.is_floating_point()
                                                     and "running_" not in k)
    image = _image()
    expected = semseg_reference_forward(state, _imagenet_normalised(image))
    torch.testing.assert_close(_forward(conversion, image), expected, atol=ATOL, rtol=RTOL)
    # The aux head converted too: training mode returns it, at the input size.
    conversion.model.train()
    with torch.no_grad():
        _, aux = conversion.model(_imagenet_normalised(image))
    assert aux.shape == (2, classes, SIDE, SIDE)


@pytest.mark.parametrize(
    ("layers", "classes", "block_stride"), [(50, 150, "1x1"), (101, 19, "3x3")], ids=["pspnet50-ade20k", "pspnet101-cityscapes"]
)
def test_keras_h5_converts_strictly_and_computes_the_caffe_original(
    tmp_path: Path, layers: int, classes: int, block_stride: str
) -> None:
    path = tmp_path / f"pspnet{layers}.h5"
    weights = write_keras_h5(path, layers=layers, classes=classes)

    conversion = convert(path, "keras-h5", num_classes=classes)

    assert conversion.unmapped == [] and conversion.missing == []
    # The Caffe PSPNet50 strides on the 1x1 conv of conv3_1, the PSPNet101 on the 3x3.
    assert conversion.model_cfg.block_stride == block_stride
    assert conversion.model.aux_head is None  # the deploy nets have none
    # Caffe's input: BGR, mean subtracted, no std: recorded as the model's normalisation.
    assert np.allclose(np.array(conversion.model_cfg.input_std) * 255, 1.0)
    image = _image(seed=1)
    expected = keras_reference_forward(weights, image, layers=layers)
    ours = _forward(conversion, image)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)


def test_keras_port_stride_placement_is_an_option_and_matters(tmp_path: Path) -> None:
    """The Keras port runs the 101 weights with conv3_1's stride on the 1x1 conv (the Caffe
    prototxt has it on the 3x3): ``block_stride='1x1'`` reproduces the port, and the two
    placements give clearly different outputs, so the default above is really checked."""
    path = tmp_path / "pspnet101_voc2012.h5"
    weights = write_keras_h5(path, layers=101, classes=21, seed=3)
    image = _image(seed=2, batch=1)

    as_port = _forward(convert(path, "keras-h5", block_stride="1x1"), image)

    torch.testing.assert_close(as_port, keras_reference_forward(weights, image, 101, conv3_stride="reduce"), atol=ATOL, rtol=RTOL)
    caffe = keras_reference_forward(weights, image, 101, conv3_stride="3x3")
    assert (as_port - caffe).abs().max() > 100 * ATOL


def test_keras1_names_and_model_save_layout_give_the_same_weights(tmp_path: Path) -> None:
    write_keras_h5(tmp_path / "k2.h5", layers=50, classes=150, seed=4)
    write_keras_h5(tmp_path / "k1.h5", layers=50, classes=150, seed=4, style="keras1", model_weights_group=True)

    k2 = convert(tmp_path / "k2.h5", "keras-h5").model.state_dict()
    k1 = convert(tmp_path / "k1.h5", "keras-h5").model.state_dict()

    assert k1.keys() == k2.keys()
    assert all(torch.equal(k1[k], k2[k]) for k in k2)


# ------------------------------------------------------------------------------- bad files


def _save_state(tmp_path: Path, state: dict, name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save({"epoch": 1, "state_dict": state}, path)
    return path


def test_missing_extra_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    state = semseg_state_dict(layers=50, classes=150, module_prefix=True)
    del state["module.ppm.features.2.1.weight"]
    state["module.fc.weight"] = torch.zeros(1000, 2048)

    with pytest.raises(PspnetError) as err:
        convert(_save_state(tmp_path, state), "semseg", num_classes=150)
    message = str(err.value)
    assert "bad.pth" in message and "fc.weight" in message and "ppm.branches.2.1.weight" in message
    assert "--allow-partial" in message

    # Asked for, a partial load keeps what fits and reports the rest.
    partial = convert(_save_state(tmp_path, state), "semseg", num_classes=150, allow_partial=True)
    assert partial.missing == ["ppm.branches.2.1.weight"] and partial.unmapped == ["fc.weight"]

    state = semseg_state_dict(layers=50, classes=150)
    state["cls.0.weight"] = torch.zeros(256, 4096, 3, 3)
    with pytest.raises(PspnetError, match=r"shape mismatches.*cls\.0\.weight \(256, 4096, 3, 3\) vs head\.0\.weight"):
        convert(_save_state(tmp_path, state), "semseg", allow_partial=True)  # never loaded, even partially


def test_other_class_count_and_other_architectures_are_refused(tmp_path: Path) -> None:
    path = _save_state(tmp_path, semseg_state_dict(layers=50, classes=150), "ade20k.pth")
    with pytest.raises(PspnetError, match=r"ade20k\.pth: the classifier cls\.4\.weight has 150 classes but the dataset has 21"):
        convert(path, "semseg", num_classes=21)

    # A plain ImageNet ResNet-50 (torchvision names) is no PSPNet.
    resnet = ResNetEncoder("resnet50", stem="standard").body.state_dict()
    with pytest.raises(PspnetError, match=r"resnet\.pth: no classifier 'cls\.4\.weight'"):
        convert(_save_state(tmp_path, resnet, "resnet.pth"), "semseg")

    # A depth no release has (2 blocks in layer3): the count is named.
    cut = ("layer3.2", "layer3.3", "layer3.4", "layer3.5")
    shallow = {k: v for k, v in semseg_state_dict(layers=50, classes=150).items() if not k.startswith(cut)}
    with pytest.raises(PspnetError, match=r"found 2 blocks under 'layer3\.\*'"):
        convert(_save_state(tmp_path, shallow), "semseg")

    # An h5 given as semseg and a .pth given as keras-h5: the format is named.
    h5 = tmp_path / "pspnet50.h5"
    write_keras_h5(h5, layers=50, classes=150)
    with pytest.raises(PspnetError, match=r"pspnet50\.h5: not a readable PyTorch file.*--format"):
        convert(h5, "semseg")
    with pytest.raises(PspnetError, match=r"ade20k\.pth: not an HDF5 file.*--format"):
        convert(path, "keras-h5")


def test_keras_file_without_a_layer_names_it(tmp_path: Path) -> None:
    path = tmp_path / "cut.h5"
    write_keras_h5(path, layers=50, classes=150)
    with h5py.File(path, "r+") as f:
        del f["conv5_4_bn"]
        names = [n for n in f.attrs["layer_names"] if n != b"conv5_4_bn"]
        f.attrs["layer_names"] = np.array(names)

    with pytest.raises(PspnetError, match=r"cut\.h5: .*model keys the file does not fill \[head\.1\.bias, head\.1\.running_mean"):
        convert(path, "keras-h5")


def test_pickled_objects_and_bad_options_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": semseg_state_dict(layers=50, classes=150), "args": Path("x")}, path)
    with pytest.raises(PspnetError, match=r"objects\.pth: holds Python objects.*refused"):
        convert(path, "semseg")
    with pytest.raises(PspnetError, match=r"--format: unknown format 'caffe'"):
        convert(path, "caffe")
    with pytest.raises(PspnetError, match=r"--block-stride: unknown value '2x2'"):
        convert(path, "semseg", block_stride="2x2")
    with pytest.raises(PspnetError, match=r"missing\.pth: file not found"):
        convert(tmp_path / "missing.pth", "semseg")


def test_block_stride_moves_the_stride_and_needs_bottlenecks() -> None:
    encoder = ResNetEncoder("resnet50", block_stride="1x1")
    first = encoder.body.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in encoder.eval()(torch.zeros(1, 3, 57, 75))]
    assert shapes == [(1, 1024, 8, 10), (1, 2048, 8, 10)]
    with pytest.raises(ConfigError, match=r"model\.block_stride='1x1' needs bottleneck blocks.*resnet18"):
        ResNetEncoder("resnet18", block_stride="1x1")


def test_an_imported_checkpoint_initialises_a_new_models_encoder(tmp_path: Path) -> None:
    """Fine-tuning from the authors' weights: model.encoder_weights may name an imported (or any
    pspnet) checkpoint; its encoder is loaded, and a block-stride mismatch is refused by name."""
    from pspnet.config import ModelConfig
    from pspnet.model.checkpoint import save_checkpoint
    from pspnet.model.pspnet import build_model

    write_keras_h5(tmp_path / "pspnet50_ade20k.h5", layers=50, classes=150, seed=5)
    conversion = convert(tmp_path / "pspnet50_ade20k.h5", "keras-h5")
    ckpt = tmp_path / "ade20k-resnet50.pt"
    save_checkpoint(ckpt, conversion.model, conversion.model_cfg, 150, {})

    cfg = ModelConfig(encoder="resnet50", stem="deep", block_stride="1x1", encoder_weights=str(ckpt))
    model = build_model(cfg, num_classes=11)  # another dataset: new head, the official encoder
    ours, theirs = model.encoder.state_dict(), conversion.model.encoder.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    with pytest.raises(ConfigError, match=r"stride on their 1x1 conv, but model\.block_stride is '3x3'.*block_stride: 1x1"):
        build_model(cfg.model_copy(update={"block_stride": "3x3"}), num_classes=11)

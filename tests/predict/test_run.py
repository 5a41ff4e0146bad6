"""``pspnet predict``: masks equal to the model's own argmax on image sizes never seen anywhere,
every inference mode, a registered MLflow model, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pspnet.cli import app
from pspnet.config import ModelConfig, Params, parse_params
from pspnet.errors import ConfigError, DataError
from pspnet.model.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from pspnet.model.export import SegmentationModel
from pspnet.model.pspnet import build_model
from pspnet.predict import PredictOptions, parse_scales, predict
from pspnet.predict.run import inference_config
from pspnet.registry.segmenter import MIN_SIDE

NAMES = ("sky", "road", "car person")
COLORS = ((70, 130, 180), (128, 64, 128), (0, 0, 142))
MODEL_CFG = ModelConfig(encoder="resnet18", head_channels=8, aux_channels=8)
#: (height, width) of the test images: sizes no training or test data of the project uses.
ODD_SIZE = (77, 131)
GREY_SIZE = (50, 61)
#: Smaller than a forward pass may be (MIN_SIDE): edge-padded for the pass, cropped back.
TINY_SIZE = (13, 20)
#: A registered model may differ from the checkpoint by float rounding only: at most this share of pixels.
MAX_DIFFERING_SHARE = 0.001

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint of a tiny random PSPNet and images: two RGB ones of the same odd size and
    the same stem in two folders, one greyscale, one tiny, plus files never to be picked up."""
    base = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    meta = {"class_names": list(NAMES), "class_colors": [list(c) for c in COLORS]}
    save_checkpoint(base / "ckpt.pt", build_model(MODEL_CFG, len(NAMES)), MODEL_CFG, len(NAMES), meta)
    rng = np.random.default_rng(0)
    images = base / "images"
    for folder in ("day", "night"):
        (images / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (*ODD_SIZE, 3), dtype=np.uint8)).save(images / folder / "scene.png")
    Image.fromarray(rng.integers(0, 256, GREY_SIZE, dtype=np.uint8), mode="L").save(images / "grey.PNG")
    Image.fromarray(rng.integers(0, 256, (*TINY_SIZE, 3), dtype=np.uint8)).save(images / "speck.png")
    (images / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(images / ".hidden.png")
    return {"base": base, "ckpt": base / "ckpt.pt", "images": images}


def _reference_ids(ckpt: LoadedCheckpoint, image_path: Path) -> np.ndarray:
    """The class map straight from the network: ``SegmentationModel(...)(raw RGB).argmax(1)``;
    an image under MIN_SIDE a side edge-padded to it first and the map cropped back."""
    with Image.open(image_path) as image:
        rgb = np.array(image.convert("RGB"))
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, max(0, MIN_SIDE - height)), (0, max(0, MIN_SIDE - width)), (0, 0)), mode="edge")
    net = SegmentationModel(ckpt.model, ckpt.model_cfg.input_mean, ckpt.model_cfg.input_std)
    with torch.no_grad():
        logits = net(torch.from_numpy(padded).permute(2, 0, 1)[None].float())
    return logits.argmax(1)[0, :height, :width].numpy()


def _options(workspace: dict[str, Path], out: Path, **kwargs: object) -> PredictOptions:
    defaults = {"inputs": (str(workspace["images"]),), "out_dir": out, "model": str(workspace["ckpt"]),
                "recursive": True, "device": "cpu"}
    return PredictOptions(**{**defaults, **kwargs})  # type: ignore[arg-type]


def _params() -> Params:
    return parse_params({"evaluate": {"batch_size": 4}})


@pytest.fixture(scope="module")
def checkpoint_run(workspace: dict[str, Path]) -> dict[str, object]:
    """``predict`` over every workspace image with the checkpoint: its result and its folders."""
    base = workspace["base"]
    result = predict(_params(), base, _options(workspace, base / "out", summary=base / "summary.json"))
    return {"result": result, "out": base / "out", "summary": base / "summary.json"}


def test_masks_equal_the_models_argmax_on_unseen_sizes(workspace: dict[str, Path], checkpoint_run: dict) -> None:
    out, result = checkpoint_run["out"], checkpoint_run["result"]
    assert result["images"] == 4 and result["skipped"] == 0 and result["overlays"] == 4

    ckpt = load_checkpoint(workspace["ckpt"])
    summary = json.loads(checkpoint_run["summary"].read_text())
    assert summary["class_names"] == list(NAMES) and summary["model"] == str(workspace["ckpt"])
    assert summary["inference"]["mode"] == "whole" and summary["inference"]["batch_size"] == 4
    records = {Path(r["image"]).relative_to(workspace["images"]).as_posix(): r for r in summary["images"]}
    assert sorted(records) == ["day/scene.png", "grey.PNG", "night/scene.png", "speck.png"]
    expected_names = {"day/scene.png": "day__scene", "night/scene.png": "night__scene", "grey.PNG": "grey",
                      "speck.png": "speck"}
    sizes = {"day/scene.png": ODD_SIZE, "night/scene.png": ODD_SIZE, "grey.PNG": GREY_SIZE, "speck.png": TINY_SIZE}
    for rel, record in records.items():
        name = expected_names[rel]
        assert record["mask"] == str(out / f"{name}.png") and record["overlay"] == str(out / f"{name}_overlay.png")
        with Image.open(record["mask"]) as mask_png:
            assert mask_png.mode == "L"
            mask = np.array(mask_png)
        image_path = workspace["images"] / rel
        height, width = sizes[rel]
        assert mask.shape == (height, width) == (record["height"], record["width"])
        np.testing.assert_array_equal(mask, _reference_ids(ckpt, image_path))
        with Image.open(record["overlay"]) as overlay:
            assert overlay.mode == "RGB" and overlay.size == (width, height)
        shares = record["class_shares"]
        assert set(shares) <= set(NAMES) and all(v > 0 for v in shares.values())
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
        counts = np.bincount(mask.ravel(), minlength=len(NAMES)) / mask.size
        assert shares == pytest.approx({NAMES[c]: counts[c] for c in np.flatnonzero(counts)})
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f for n in expected_names.values() for f in (f"{n}.png", f"{n}_overlay.png")
    )


def test_inference_modes_give_masks_of_the_input_size(workspace: dict[str, Path], tmp_path: Path) -> None:
    grey = workspace["images"] / "grey.PNG"
    modes = {
        "slide-larger-crop": {"mode": "slide", "crop_size": (96, 160)},
        "slide-tiles-flip": {"mode": "slide", "crop_size": (32, 48), "flip": True},
        "multi-scale": {"scales": (0.75, 1.0, 1.25), "flip": True, "base_size": 80},
    }
    for label, inference in modes.items():
        out = tmp_path / label
        result = predict(_params(), tmp_path, _options(workspace, out, inputs=(str(grey),), inference=inference,
                                                       overlay=False, summary=out / "s.json"))
        assert result["images"] == 1 and result["overlays"] == 0
        with Image.open(out / "grey.png") as mask:
            assert mask.size == (GREY_SIZE[1], GREY_SIZE[0]), label
            assert int(np.array(mask).max()) < len(NAMES)
        assert not (out / "grey_overlay.png").exists()
        settings = json.loads((out / "s.json").read_text())["inference"]
        assert {k: settings[k] for k in inference} == {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in inference.items()}


def test_options_are_validated_naming_the_option() -> None:
    base = parse_params({}).evaluate
    assert parse_scales("0.75, 1.0,1.25") == (0.75, 1.0, 1.25)
    for bad in ("", "a,b", "1,-1", "nan"):
        with pytest.raises(ConfigError, match="--scales"):
            parse_scales(bad)
    assert inference_config(base, {"mode": "slide", "flip": None}).mode == "slide"
    with pytest.raises(ConfigError, match="--mode"):
        inference_config(base, {"mode": "tiles"})
    with pytest.raises(ConfigError, match="--batch-size"):
        inference_config(base, {"batch_size": 0})


def test_cli_errors_exit_codes_and_skip_bad(workspace: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("evaluate: {batch_size: 2}\n")
    base = ["predict", "--root", str(tmp_path), "--device", "cpu"]
    nothing = runner.invoke(app, [*base, str(tmp_path / "none*.png"), "--out", str(tmp_path / "o")])
    assert nothing.exit_code == ConfigError.exit_code == 2
    assert "no images found in" in nothing.output and "none*.png" in nothing.output
    assert "Traceback" not in nothing.output

    no_store = runner.invoke(app, [*base, str(workspace["images"] / "grey.PNG"), "--out", str(tmp_path / "o")])
    assert no_store.exit_code == 2 and "models:/pspnet@champion" in no_store.output
    assert "mlflow.db does not exist" in no_store.output and not (tmp_path / "mlflow.db").exists()

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.full((23, 41, 3), 90, np.uint8)).save(inputs / "ok.jpg")
    args = [*base, str(inputs), "--model", str(workspace["ckpt"])]
    overwrite = runner.invoke(app, [*args, "--out", str(inputs)])
    assert overwrite.exit_code == 2 and "would overwrite the input image" in overwrite.output

    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert bad.exit_code == DataError.exit_code == 3
    assert "broken.png: cannot read this image" in bad.output and "--skip-bad" in bad.output
    assert not (tmp_path / "o").exists(), "nothing is written when an image is unreadable"

    skipped = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--skip-bad", "--summary", str(tmp_path / "s.json")])
    assert skipped.exit_code == 0, skipped.output
    printed = json.loads(skipped.stdout[skipped.stdout.index("{"):])
    assert (printed["images"], printed["skipped"]) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["ok.png", "ok_overlay.png"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [s["image"] for s in summary["skipped"]] == [str(inputs / "broken.png")]


def test_registered_mlflow_model_gives_the_checkpoints_masks(
    workspace: dict[str, Path], checkpoint_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pspnet.registry.packaging import log_segmentation_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    info = log_segmentation_model(load_checkpoint(workspace["ckpt"]), run.info.run_id, "sha", (64, 96), (40, 56))
    version = mlflow.register_model(info.model_uri, "tiny").version
    mlflow.MlflowClient().set_registered_model_alias("tiny", "best", version)

    masks = sorted(p for p in checkpoint_run["out"].iterdir() if not p.stem.endswith("_overlay"))
    # The registered program, its ONNX graph on ONNX Runtime, and the checkpoint exported on the fly.
    for name, model, runtime in [("registry", "models:/tiny@best", "torch"), ("onnx", "models:/tiny@best", "onnxruntime"),
                                 ("ckpt-onnx", str(workspace["ckpt"]), "onnxruntime")]:  # fmt: skip
        out = tmp_path / name
        result = runner.invoke(app, ["predict", str(workspace["images"]), "-r", "--out", str(out), "--model", model,
                                     "--runtime", runtime, "--root", str(tmp_path), "--device", "cpu", "--no-overlay"])
        assert result.exit_code == 0, result.output
        differing = total = 0
        assert sorted(p.name for p in out.iterdir()) == [p.name for p in masks]
        for mask_file in masks:
            expected = np.array(Image.open(mask_file))
            got = np.array(Image.open(out / mask_file.name))
            assert got.shape == expected.shape
            differing += int((got != expected).sum())
            total += expected.size
        print(f"{name} vs checkpoint: {differing} of {total} pixels differ")
        assert differing <= MAX_DIFFERING_SHARE * total, name

    # A version logged without the graph says so and how to get one.
    plain = log_segmentation_model(load_checkpoint(workspace["ckpt"]), run.info.run_id, "sha", (64, 96))
    result = runner.invoke(app, ["predict", str(workspace["images"]), "-r", "--out", str(tmp_path / "none"), "--model",
                                 plain.model_uri, "--runtime", "onnxruntime", "--root", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2 and "holds no ONNX graph" in result.output and "--runtime torch" in result.output

    # The exported program rejects passes under 9 px: windows and scales that small still work.
    tiny_out = tmp_path / "tiny"
    result = runner.invoke(app, ["predict", str(workspace["images"] / "speck.png"), "--out", str(tiny_out),
                                 "--model", "models:/tiny@best", "--root", str(tmp_path), "--device", "cpu",
                                 "--mode", "slide", "--crop-size", "8x8", "--scales", "0.5,1.0", "--flip"])
    assert result.exit_code == 0, result.output
    with Image.open(tiny_out / "speck.png") as mask:
        assert mask.size == (TINY_SIZE[1], TINY_SIZE[0])
    result = runner.invoke(app, ["predict", str(workspace["images"] / "speck.png"), "--out", str(tmp_path / "tiny-onnx"),
                                 "--model", "models:/tiny@best", "--runtime", "onnxruntime", "--root", str(tmp_path),
                                 "--device", "cpu", "--mode", "slide", "--crop-size", "8x8", "--flip"])
    assert result.exit_code == 0, result.output


def test_min_side_matches_the_serving_model() -> None:
    from pspnet.registry import serving_model

    assert MIN_SIDE == serving_model.MIN_SIDE

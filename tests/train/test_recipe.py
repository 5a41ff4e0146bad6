"""The training recipe end to end on tiny data: a frozen encoder stays frozen, seeded runs
repeat exactly, and the stage wires warm-up, class weights and OHEM (logged to MLflow)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pspnet.config import ModelConfig, Params, parse_params
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.transforms import train_transform
from pspnet.errors import ConfigError
from pspnet.model.pspnet import PSPNet, build_model
from pspnet.stages import train as train_stage
from pspnet.tracking.runs import RunRef
from pspnet.train.loop import EpochPlan, TrainStep, set_train_mode, train_one_epoch
from pspnet.train.loss import SegmentationCriterion
from pspnet.train.optim import build_optimizer, build_scheduler, freeze_encoder
from pspnet.train.recipe import make_train_loader, seed_everything
from tests.train.tinydata import write_prepared

CPU = torch.device("cpu")
TINY_MODEL = {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8}
TINY_TRAIN = {"epochs": 1, "batch_size": 4, "crop_size": [32, 40], "lr": 0.01, "device": "cpu", "precision": "fp32"}


def _params(**train: object) -> Params:
    return parse_params(
        {"model": TINY_MODEL, "train": {**TINY_TRAIN, **train}, "mlflow": {"experiment_name": "unit-recipe"}}
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipe") / "prepared"
    write_prepared(root, n_train=8, n_val=2, height=32, width=40)
    return root


def _encoder_state(model: PSPNet) -> dict[str, torch.Tensor]:
    """Parameters AND buffers (BatchNorm running mean / var / batch count) of the encoder."""
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def test_a_frozen_encoder_keeps_its_weights_and_batchnorm_statistics(prepared: Path) -> None:
    params = _params(freeze_encoder=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_MODEL), 3)
    freeze_encoder(model)
    before = _encoder_state(model)
    head_before = [p.detach().clone() for p in model.head.parameters()]
    head_bn = next(m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d))
    head_bn_before = head_bn.running_mean.clone()

    loader = make_train_loader(SegmentationDataset(prepared, "train", train_transform(params)), params, CPU)
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, max_iter=4, power=0.9)
    criterion = SegmentationCriterion(aux_weight=0.4)
    step = TrainStep(model, optimizer, scheduler, criterion, CPU, frozen=[model.encoder])
    for epoch in (1, 2):
        train_one_epoch(step, loader, EpochPlan(epoch=epoch, progress=False))

    after = _encoder_state(model)
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    for key in before:
        assert torch.equal(before[key], after[key]), f"encoder {key} changed"
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True)), "the head did not train"
    assert not torch.equal(head_bn_before, head_bn.running_mean), "the head's BatchNorm should still update"


def test_set_train_mode_keeps_frozen_batchnorm_in_eval() -> None:
    model = build_model(ModelConfig(**TINY_MODEL), 3)
    set_train_mode(model, [model.encoder])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    encoder_bns = {id(m) for m in model.encoder.modules()}
    assert all(not m.training for m in bns if id(m) in encoder_bns)
    assert all(m.training for m in bns if id(m) not in encoder_bns)
    assert model.head.training and model.ppm.training


def _step_losses(prepared: Path, params: Params) -> list[float]:
    """Seed like the train stage, then train two epochs on the tiny split; every step's loss."""
    seed_everything(params.train.seed)
    loader = make_train_loader(SegmentationDataset(prepared, "train", train_transform(params)), params, CPU)
    model = build_model(params.model, 3)
    optimizer = build_optimizer(model, params.train)
    scheduler = build_scheduler(optimizer, max_iter=4, power=0.9)
    criterion = SegmentationCriterion(aux_weight=0.4)
    losses: list[float] = []
    step = TrainStep(model, optimizer, scheduler, criterion, CPU)
    for epoch in (1, 2):
        train_one_epoch(step, loader, EpochPlan(epoch=epoch, on_step=lambda _at, loss: losses.append(loss), progress=False))
    return losses


def test_seeded_runs_give_identical_losses_whatever_the_number_of_workers(prepared: Path) -> None:
    """seed_everything + the per-sample augmentation seeds + the loader's own generator fix
    everything random: initialisation, shuffling, scale / rotation / blur / flip / crop,
    dropout; and the loader workers do not change any of it."""
    params = _params(num_workers=0, rotate_p=0.5, blur_p=0.5, seed=3)
    first = _step_losses(prepared, params)
    assert len(first) == 4
    assert _step_losses(prepared, params) == first
    assert _step_losses(prepared, _params(num_workers=2, rotate_p=0.5, blur_p=0.5, seed=3)) == first
    other = _step_losses(prepared, _params(num_workers=0, rotate_p=0.5, blur_p=0.5, seed=4))
    assert other != first  # the seed does matter


def test_augmentation_steps_draw_independent_random_numbers(prepared: Path) -> None:
    """One shared stream for all steps: a flip and a blur with p=0.5 are not always applied
    together (albumentations 2.0's Compose(seed=...) gives every step the same seed)."""
    import albumentations as A

    from pspnet.data.transforms import reseed

    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    transform = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    reseed(transform, 0)
    outcomes = set()
    for _ in range(64):
        out = transform(image=image)["image"]
        outcomes.add((bool(out[0, 0] in (image[0, 3], image[3, 3])), bool(out[0, 0] in (image[3, 0], image[3, 3]))))
    assert outcomes == {(False, False), (True, False), (False, True), (True, True)}


def test_stage_runs_the_full_recipe_and_logs_the_class_weights(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = _params(
        epochs=2,
        log_every_n_steps=1,
        warmup_iters=2,
        class_weights="median_frequency",
        ohem=True,
        ohem_min_kept=500,
        freeze_encoder=True,
        rotate_p=1.0,
        blur_p=1.0,
    )
    with caplog.at_level(logging.INFO, logger="pspnet.train.trainer"):
        summary = train_stage.run(params, root)
    recipe = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe:")]
    assert len(recipe) == 1
    line = recipe[0]
    assert "2 warm-up iters from x0.1" in line and "OHEM thresh 0.7, min_kept 500" in line
    assert "encoder frozen" in line and "encoder 0 params" in line and "class weights [" in line
    assert "random initialisation" in caplog.text  # freezing a random encoder is worth a warning

    ref = RunRef.load(root / "models" / "mlflow_run.json")
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    logged = client.get_run(summary["run_id"]).data.params
    weights = json.loads(logged["train.class_weights_used"])
    assert len(weights) == 3 and all(w > 0 for w in weights)
    assert logged["train.class_weights"] == "median_frequency" and logged["train.ohem"] == "True"
    # The encoder group's LR of each of the 4 steps: warm-up over 2 iterations, then poly.
    lrs = [m.value for m in sorted(client.get_metric_history(ref.run_id, "step_lr"), key=lambda m: m.step)]
    poly = [(1 - i / 4) ** 0.9 for i in range(4)]
    assert lrs == pytest.approx([0.01 * 0.1, 0.01 * poly[1] * 0.55, 0.01 * poly[2], 0.01 * poly[3]])


def test_stage_rejects_a_class_weight_list_of_the_wrong_length(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ConfigError, match="2 weight.*3 classes"):
        train_stage.run(_params(class_weights=[1.0, 2.0]), root)
    assert not (root / "models").exists()

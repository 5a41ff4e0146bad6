"""The GPU path, run on the CPU: precision and the fp16 gradient scaler, channels_last,
torch.compile, gradient accumulation and activation checkpointing, each through the real model
and the real training loop, and resume with accumulation through the real train stage."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from pspnet.config import ModelConfig, Params, TrainConfig, parse_params
from pspnet.data.dataset import SegmentationDataset
from pspnet.data.transforms import train_transform
from pspnet.errors import ConfigError
from pspnet.model.checkpoint import load_checkpoint
from pspnet.model.pspnet import PSPNet, build_model
from pspnet.stages import train as train_stage
from pspnet.train.accel import (
    checkpoint_blocks,
    compile_model,
    make_scaler,
    micro_batches,
    resolve_precision,
)
from pspnet.train.loop import EpochPlan, TrainStep, train_one_epoch
from pspnet.train.loss import SegmentationCriterion
from pspnet.train.optim import build_optimizer, build_scheduler
from pspnet.train.recipe import make_train_loader
from pspnet.train.resume import STATE_DIR, StateStore, fingerprint_fields

CPU = torch.device("cpu")
TINY_MODEL = {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8, "ppm_channels": 8}
SIZE = (32, 40)
NUM_CLASSES = 3


def _model(**overrides: object) -> PSPNet:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY_MODEL, "dropout": 0.0, **overrides}), NUM_CLASSES)


def _batches(count: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images and labels; no ignored pixel, so equal micro-batches hold equally many
    labelled pixels (the loss is a mean over labelled pixels)."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, *SIZE, generator=g), torch.randint(0, NUM_CLASSES, (batch, *SIZE), generator=g)) for _ in range(count)]


def _train(
    model: torch.nn.Module, batches: list, *, frozen: bool = False, state: PSPNet | None = None,
    device: torch.device = CPU, **loop: object,
) -> list[float]:  # fmt: skip
    """Train ``model`` over ``batches`` with the recipe's optimizer and poly schedule; the losses."""
    owner = state or model
    optimizer = build_optimizer(owner, TrainConfig(lr=0.01))
    scheduler = build_scheduler(optimizer, max_iter=len(batches), power=0.9)
    losses: list[float] = []
    step = TrainStep(
        model, optimizer, scheduler, SegmentationCriterion(0.4).to(device), device, frozen=[owner] if frozen else (), **loop,
    )  # fmt: skip
    train_one_epoch(step, batches, EpochPlan(on_step=lambda _, loss: losses.append(loss), progress=False))
    return losses


def _fp16_autocast_or_skip() -> None:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3))
    except RuntimeError as err:
        pytest.skip(f"this torch build has no float16 autocast on the CPU ({err})")


# --------------------------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------------------------


def test_two_accumulated_micro_batches_of_2_equal_one_batch_of_4() -> None:
    # BatchNorm in training mode normalises each micro-batch with its own statistics, which
    # couples the samples of a batch: 2 + 2 then differs from 4 by design (that is what
    # SyncBatchNorm-style large batches are about). With BatchNorm in eval mode (frozen: the
    # running statistics, a fixed per-channel affine map) every sample's loss depends on that
    # sample alone, so accumulation must reproduce the batch-of-4 step up to float rounding.
    batches = _batches(3, 4)
    whole, split = _model(), _model()
    losses_whole = _train(whole, batches, frozen=True)
    losses_split = _train(split, batches, frozen=True, micro_batch=2)
    assert losses_split == pytest.approx(losses_whole, rel=1e-5)
    for (name, a), b in zip(whole.state_dict().items(), split.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    assert not torch.equal(whole.head[0].weight, _model().head[0].weight)  # it did train


def test_micro_batches_split_evenly_and_weight_by_share() -> None:
    image, mask = torch.zeros(16, 3, 2, 2), torch.zeros(16, 2, 2)
    parts = list(micro_batches(image, mask, 8))
    assert [p[0].shape[0] for p in parts] == [8, 8] and [p[2] for p in parts] == [0.5, 0.5]
    parts = list(micro_batches(image[:5], mask[:5], 2))  # never a part smaller than the size
    assert [p[0].shape[0] for p in parts] == [3, 2] and sum(p[2] for p in parts) == pytest.approx(1.0)
    assert [p[2] for p in micro_batches(image[:3], mask[:3], 4)] == [1.0]
    assert [p[2] for p in micro_batches(image, mask, None)] == [1.0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.train.tinydata import write_prepared

    root = tmp_path_factory.mktemp("accel") / "prepared"
    write_prepared(root, n_train=8, n_val=2, height=SIZE[0], width=SIZE[1])
    return root


def test_the_loader_yields_the_effective_batch_with_persistent_workers(prepared: Path) -> None:
    params = parse_params({"train": {"batch_size": 2, "accumulate_steps": 2, "num_workers": 2, "crop_size": list(SIZE)}})
    loader = make_train_loader(SegmentationDataset(prepared, "train", train_transform(params)), params, CPU)
    assert loader.batch_size == 4 and len(loader) == 2  # 8 samples: 2 optimizer steps of 2 x 2
    assert loader.persistent_workers and not loader.pin_memory  # pinned memory is for CUDA


# --------------------------------------------------------------------------------------------
# Precision, layout, compilation, checkpointing
# --------------------------------------------------------------------------------------------


def test_fp16_with_a_gradient_scaler_trains_on_the_cpu() -> None:
    _fp16_autocast_or_skip()
    model = _model()
    before = copy.deepcopy(model.state_dict())
    scaler = make_scaler("fp16", CPU)
    assert scaler is not None and make_scaler("bf16", CPU) is None  # bf16 needs no scaler
    losses = _train(model, _batches(6, 2), precision="fp16", scaler=scaler)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    state = scaler.state_dict()
    assert 0 < state["scale"] <= 2.0**16  # started at 2**16; halved on every overflowing step
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed), "no step was applied"


def test_bf16_autocast_keeps_float32_weights_and_loss() -> None:
    model = _model()
    losses = _train(model, _batches(2, 2), precision="bf16")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert resolve_precision("auto", CPU) in ("bf16", "fp32")


def test_channels_last_gives_the_loss_and_weights_of_contiguous_memory() -> None:
    batches = _batches(2, 2)
    plain, nhwc = _model(), _model().to(memory_format=torch.channels_last)
    losses_plain = _train(plain, batches)
    losses_nhwc = _train(nhwc, batches, channels_last=True)
    assert nhwc.head[0].weight.is_contiguous(memory_format=torch.channels_last)  # stayed NHWC
    assert losses_nhwc == pytest.approx(losses_plain, rel=1e-5)
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


def test_gradient_checkpointing_gives_the_same_training_bit_for_bit() -> None:
    # The same gradients AND the same BatchNorm running statistics: the recomputation in the
    # backward pass must not update them a second time.
    batches = _batches(2, 2)
    plain, checkpointed = _model(), _model()
    keys = list(checkpointed.state_dict())
    wrapped = checkpoint_blocks(checkpointed.encoder)
    assert wrapped == 8  # resnet18: 4 stages x 2 blocks
    assert checkpoint_blocks(checkpointed.encoder) == 8  # wrapping again changes nothing
    assert list(checkpointed.state_dict()) == keys  # checkpoints stay loadable either way
    assert _train(checkpointed, batches) == _train(plain, batches)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_gradient_checkpointing_needs_resnet_stages() -> None:
    with pytest.raises(ConfigError, match=r"train\.grad_checkpoint.*layer1"):
        checkpoint_blocks(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))


def test_compile_is_refused_on_the_cpu() -> None:
    # On the CPU, torch 2.13's compiled PSPNet of these widths got all-zero gradients (seen with
    # bench/compile_check.py): it would train nothing, so the setting is refused there.
    with pytest.raises(ConfigError, match=r"train\.compile: true on cpu.*only used on CUDA"):
        compile_model(_model(), True, CPU)
    model = _model()
    assert compile_model(model, False, CPU) is model


@pytest.mark.slow  # compiling takes a minute or more
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile is used on CUDA only; no GPU here")
def test_compiled_model_trains_like_the_eager_one_on_cuda() -> None:
    cuda = torch.device("cuda")
    batches = [(x.to(cuda), y.to(cuda)) for x, y in _batches(2, 2)]
    eager, original = _model().to(cuda), _model().to(cuda)
    compiled = compile_model(original, True, cuda)
    losses_eager = _train(eager, batches, device=cuda)
    losses_compiled = _train(compiled, batches, state=original, device=cuda)
    assert losses_compiled == pytest.approx(losses_eager, rel=1e-3)
    assert list(original.state_dict()) == list(eager.state_dict())  # saved from the original
    moved = [k for k, v in original.state_dict().items() if v.is_floating_point() and not torch.equal(v, _model().state_dict()[k].to(cuda))]
    assert any(k.startswith("encoder.") for k in moved), "the compiled model's encoder did not train"


# --------------------------------------------------------------------------------------------
# The train stage: resume with accumulation (and the fp16 scaler) stays bit for bit
# --------------------------------------------------------------------------------------------


def _stage_params(precision: str) -> Params:
    return parse_params(
        {
            "model": TINY_MODEL,
            "train": {
                "epochs": 2, "batch_size": 2, "accumulate_steps": 2, "crop_size": list(SIZE), "lr": 0.01,
                "device": "cpu", "precision": precision, "checkpoint_every_n_steps": 1, "keep_checkpoints": 10,
                "log_every_n_steps": 1,
            },
            "mlflow": {"experiment_name": "accel"},
        }
    )  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_with_accumulation_continues_bit_for_bit(project: Path, tmp_path: Path, precision: str) -> None:
    if precision == "fp16":
        _fp16_autocast_or_skip()
    params = _stage_params(precision)
    kept = tmp_path / "kept"
    original_clear = StateStore.clear

    def clear_but_copy(self: StateStore) -> None:
        if self.files():
            shutil.copytree(self.directory, kept, dirs_exist_ok=True)
        original_clear(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StateStore, "clear", clear_but_copy)
        reference = train_stage.run(params, project)
    assert reference["steps"] == 4 and reference["effective_batch_size"] == 4  # 8 images, 2 x 2 per step
    expected = load_checkpoint(project / "models" / "checkpoint.pt").model.state_dict()
    history = (project / "metrics" / "train_history.csv").read_text()

    # Step 1 is mid-epoch 1: its state holds one whole optimizer step (both micro-batches).
    state_dir = project / "models" / STATE_DIR
    state_dir.mkdir(parents=True)
    shutil.copy(kept / "step-000000001.pt", state_dir)
    state = torch.load(state_dir / "step-000000001.pt", weights_only=True)
    assert state["position"] == {"epoch": 1, "batch": 1, "global_step": 1}
    assert state["epoch_progress"]["images"] == 4
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None

    resumed = train_stage.run(params, project)
    assert resumed["resumed_from_steps"] == [1] and resumed["steps"] == 4
    actual = load_checkpoint(project / "models" / "checkpoint.pt").model.state_dict()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), f"{key} differs from the uninterrupted run"
    resumed_history = (project / "metrics" / "train_history.csv").read_text()
    assert _curve(resumed_history) == _curve(history) and len(_curve(history)) == 3  # header + 2 epochs


def _curve(history_csv: str) -> list[list[str]]:
    """epoch, step, loss, lr of each row (the seconds differ between runs)."""
    return [row.split(",")[:4] for row in history_csv.splitlines()]


def test_layout_and_compilation_settings_do_not_block_a_resume() -> None:
    base = parse_params({})
    fields = fingerprint_fields(base, ["a"], "v1")
    for key, value in {"channels_last": True, "compile": True, "cudnn_benchmark": False, "grad_checkpoint": True}.items():
        other = parse_params({"train": {key: value}})
        assert fingerprint_fields(other, ["a"], "v1") == fields, key
    for key, value in {"precision": "fp16", "accumulate_steps": 2}.items():
        other = parse_params({"train": {key: value}})
        assert fingerprint_fields(other, ["a"], "v1") != fields, key


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train_section", "message"),
    [
        ({"precision": "fp8"}, r"train\.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ({"accumulate_steps": 0}, r"train\.accumulate_steps: Input should be greater than 0"),
        ({"channels_last": "sometimes"}, r"train\.channels_last"),
        ({"compile": "maybe"}, r"train\.compile"),
        ({"amp": "yes please"}, r"train\.amp \(now train\.precision\) must be true, false or auto"),
        ({"amp": True, "precision": "fp16"}, r"train\.amp: True \(the old name\) contradicts train\.precision: 'fp16'"),
        ({"grad_chekpoint": True}, r"train\.grad_chekpoint: unknown key.*grad_checkpoint"),
    ],
)
def test_bad_settings_are_rejected_by_name(train_section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params({"train": train_section}, "params.yaml")


def test_the_old_amp_key_still_reads_as_a_precision() -> None:
    assert parse_params({"train": {"amp": True}}).train.precision == "bf16"
    assert parse_params({"train": {"amp": False}}).train.precision == "fp32"
    assert parse_params({"train": {"amp": "auto"}}).train.precision == "auto"
    assert "train.amp" not in parse_params({"train": {"amp": True}}).to_flat_dict()
    assert json.loads(json.dumps(parse_params({}).to_flat_dict()))["train.precision"] == "auto"

"""``register`` end to end on a real SQLite MLflow store: challenger alias, promotion gate
against a champion scored on the same data, model card, re-scoring when the data changes."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from pspnet.config import Params, parse_params
from pspnet.data.manifest import DATASET_FILE
from pspnet.errors import PspnetError
from pspnet.evaluate.scores import ImageScores
from pspnet.model.checkpoint import save_checkpoint
from pspnet.model.export import SegmentationModel
from pspnet.model.onnx_export import agreement, onnx_session
from pspnet.model.pspnet import PSPNet, build_model
from pspnet.stages import register as reg
from pspnet.stages.evaluate import run as evaluate
from pspnet.tracking.runs import RunRef
from pspnet.tracking.store import setup_mlflow
from tests.train.tinydata import COLORS, NAMES, write_prepared

#: Steps of head-only training that make a model clearly better than a random one on tinydata.
HEAD_STEPS = 40
HEAD_LR = 1e-2


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Params]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    params = parse_params(
        {
            "model": {"encoder": "resnet18", "head_channels": 16, "aux_channels": 8},
            "train": {"device": "cpu"},
            "evaluate": {"batch_size": 12, "num_overlays": 0},
            # ONNX export (9 s a registration) only where a test looks at it.
            "register": {"export_example_size": [32, 48], "probe_size": [40, 56], "bootstrap_samples": 500,
                         "export_onnx": False},
        }
    )
    root = tmp_path / "proj"
    write_data(root, params, seed=0, version="data-v1")
    return root, params


def write_data(root: Path, params: Params, seed: int, version: str) -> None:
    prepared = root / params.paths.prepared
    write_prepared(prepared, n_train=8, n_val=12, seed=seed)
    (prepared / DATASET_FILE).write_text(json.dumps({"source": "test", "version": version}))


def head_trained(params: Params, root: Path, seed: int = 0) -> PSPNet:
    """A random encoder with the PPM and head fitted on the train split: clearly better than chance."""
    from pspnet.data.dataset import SegmentationDataset
    from pspnet.data.transforms import eval_transform

    torch.manual_seed(seed)
    model = build_model(params.model, len(NAMES)).eval()
    data = SegmentationDataset(root / params.paths.prepared, "train", eval_transform(params))
    images = torch.stack([torch.as_tensor(data[i][0]) for i in range(len(data))])
    masks = torch.stack([torch.as_tensor(data[i][1]) for i in range(len(data))]).long()
    with torch.no_grad():
        _, c4 = model.encoder(images)
    trained = [*model.ppm.parameters(), *model.head.parameters()]
    optimizer = torch.optim.Adam(trained, HEAD_LR)
    model.ppm.train()
    model.head.train()
    for _ in range(HEAD_STEPS):
        logits = F.interpolate(model.head(model.ppm(c4)), size=images.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def make_candidate(root: Path, params: Params, model: PSPNet, note: str) -> str:
    """What train + evaluate leave behind: a checkpoint, an MLflow run + RunRef, eval.json, per_image.npz."""
    meta = {"class_names": list(NAMES), "class_colors": [list(c) for c in COLORS], "note": note}
    save_checkpoint(root / "models" / "checkpoint.pt", model, params.model, len(NAMES), meta)
    experiment_id = setup_mlflow(params.mlflow, root)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tag("note", note)
    RunRef(run.info.run_id, experiment_id, mlflow.get_tracking_uri()).save(root / "models" / "mlflow_run.json")
    history = {"epoch": [1], "step": [1], "loss": [1.0], "lr": [0.01], "seconds": [1.0]}
    (root / "metrics").mkdir(exist_ok=True)
    pd.DataFrame(history).to_csv(root / "metrics" / "train_history.csv", index=False)
    evaluate(params, root)
    return run.info.run_id


def aliases(client: MlflowClient) -> tuple[str, str]:
    get = client.get_model_version_by_alias
    return str(get("pspnet", "champion").version), str(get("pspnet", "challenger").version)


@pytest.mark.integration  # six registrations in a row (export, pyfunc, probe) through a real store
def test_gate_promotes_only_real_gains_and_rescores_the_champion_on_new_data(project: tuple[Path, Params]) -> None:
    root, params = project
    client = MlflowClient()
    torch.manual_seed(0)
    random_model = build_model(params.model, len(NAMES)).eval()
    trained = head_trained(params, root)

    # 1. The first version is champion (and challenger).
    make_candidate(root, params, random_model, "random")
    first = reg.run(params, root)
    assert (first["version"], first["decision"], first["champion_version"]) == ("1", "promoted", "1")
    assert aliases(client) == ("1", "1")

    # 2. A clearly better model is promoted; the champion's scores came from its cache.
    run2 = make_candidate(root, params, trained, "trained")
    second = reg.run(params, root)
    assert second["decision"] == "promoted", second["reason"]
    assert second["previous_champion_version"] == "1" and second["previous_champion_scores"] == "cached"
    assert second["gate"]["bootstrap"]["lower_bound"] > 0
    assert second["metric_value"] > second["previous_champion_metric"] + params.register_.min_improvement
    assert aliases(client) == ("2", "2")

    # 3. The same weights again (a new checkpoint file, so a new version): no gain, not promoted.
    make_candidate(root, params, trained, "trained, again")
    third = reg.run(params, root)
    assert third["decision"] == "rejected" and "below the margin" in third["reason"]
    assert third["gate"]["bootstrap"]["gain"] == pytest.approx(0.0, abs=1e-12)
    assert aliases(client) == ("2", "3")  # the newest version is the challenger, the champion stays

    # 4. One class never predicted any more: rejected, and the card says which class broke.
    broken = head_trained(params, root)
    with torch.no_grad():
        broken.head[-1].bias[2] = -1e4
    make_candidate(root, params, broken, "green never predicted")
    fourth = reg.run(params, root)
    assert fourth["decision"] == "rejected"
    assert fourth["gate"]["worst_class"] == NAMES[2] and f"class '{NAMES[2]}' loses" in fourth["reason"]
    assert aliases(client) == ("2", "4")
    card = (root / "reports" / "model_card.md").read_text()
    assert card.startswith("# pspnet v4") and "Gate decision: rejected" in card
    assert f"- {NAMES[2]}: 0.0000" in card  # listed as a known weak class

    # Decisions and numbers live on the versions too.
    tags = client.get_model_version("pspnet", "4").tags
    assert tags["decision"] == "rejected" and tags["previous_champion_version"] == "2"
    assert tags["gate.worst_class"] == NAMES[2] and tags["data.version"] == "data-v1"
    assert json.loads(tags["class_names"]) == list(NAMES)
    assert client.get_model_version("pspnet", "2").description.startswith("# pspnet v2")
    run_files = {a.path for a in client.list_artifacts(run2, "registry")}
    assert {"registry/model_card.md", "registry/registry.json", "registry/scores"} <= run_files
    assert client.get_run(run2).data.tags["mlflow.note.content"].startswith("# pspnet v2")  # the run's description

    # 5. New data: the same challenger is judged again, the champion re-scored on the new data
    #    through its registered artefact, exactly as scoring its checkpoint would.
    write_data(root, params, seed=7, version="data-v2")
    evaluate(params, root)
    fifth = reg.run(params, root)
    assert fifth["version"] == "4" and fifth["data_version"] == "data-v2"
    assert fifth["previous_champion_scores"] == "re-evaluated"
    champion_v2 = ImageScores.load(root / "metrics" / "per_image.npz")  # v4's scores, for the ids
    assert champion_v2.data_version == "data-v2"
    save_checkpoint(root / "models" / "checkpoint.pt", trained, params.model, len(NAMES),
                    {"class_names": list(NAMES), "class_colors": [list(c) for c in COLORS]})
    evaluate(params, root)
    direct = ImageScores.load(root / "metrics" / "per_image.npz")
    assert fifth["previous_champion_metric"] == pytest.approx(direct.metric("miou"), abs=1e-3)

    # ... and the re-scored champion is cached for the next decision on the same data.
    make_candidate(root, params, broken, "green never predicted, data v2")
    sixth = reg.run(params, root)
    assert sixth["previous_champion_scores"] == "cached" and sixth["decision"] == "rejected"

    # The champion serves any image size: its class map equals the checkpoint's.
    image = np.random.default_rng(1).integers(0, 256, (2, 77, 131, 3), dtype=np.uint8)
    served = mlflow.pyfunc.load_model("models:/pspnet@champion").predict(image)
    with torch.inference_mode():
        expected = SegmentationModel(trained, params.model.input_mean, params.model.input_std)(
            torch.from_numpy(image).permute(0, 3, 1, 2).float()
        ).argmax(1).numpy()
    assert served.shape == (2, 77, 131) and served.dtype == np.int32
    assert (served == expected).mean() > 0.999


def test_scores_of_stale_data_are_refused_before_anything_is_logged(project: tuple[Path, Params]) -> None:
    root, params = project
    torch.manual_seed(0)
    make_candidate(root, params, build_model(params.model, len(NAMES)).eval(), "random")
    write_data(root, params, seed=3, version="data-v2")  # new data, evaluate not re-run
    with pytest.raises(PspnetError, match=r"data version 'data-v1'.*current data is 'data-v2'.*Re-run `evaluate`"):
        reg.run(params, root)
    assert MlflowClient().search_registered_models() == []


def test_a_retry_reuses_the_version_and_the_pyfunc_takes_any_image(project: tuple[Path, Params]) -> None:
    root, params = project
    params = params.model_copy(update={"register_": params.register_.model_copy(update={"export_onnx": True})})
    torch.manual_seed(0)
    model = build_model(params.model, len(NAMES)).eval()
    make_candidate(root, params, model, "random")
    eval_json = root / "metrics" / "eval.json"  # as evaluate writes it with a held-out split (tests/evaluate)
    held = {"miou": 0.25, "macc": 0.5, "allacc": 0.75, "num_images": 3}
    eval_json.write_text(json.dumps(json.loads(eval_json.read_text()) | {"splits": {"holdout": held}}))
    first = reg.run(params, root)
    assert "| holdout | 3 | 0.2500 | 0.5000 | 0.7500 |" in (root / "reports" / "model_card.md").read_text()
    again = reg.run(params, root)
    assert again["version"] == first["version"] == "1"
    assert again["decision"] == "promoted" and "already the champion" in again["reason"]
    assert len(MlflowClient().search_model_versions("name = 'pspnet'")) == 1

    pyfunc = mlflow.pyfunc.load_model("models:/pspnet/1")
    reference = SegmentationModel(model, params.model.input_mean, params.model.input_std)
    rng = np.random.default_rng(0)
    for shape in [(1, 2, 3, 3), (1, 5, 40, 3), (11, 33, 35, 3)]:  # tiny (padded), more than one pass
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
        served = pyfunc.predict(batch)
        assert served.shape == batch.shape[:3]
        if min(batch.shape[1:3]) >= 32:
            with torch.inference_mode():
                expected = reference(torch.from_numpy(batch).permute(0, 3, 1, 2).float()).argmax(1).numpy()
            assert (served == expected).mean() > 0.999
    with pytest.raises(mlflow.exceptions.MlflowException, match="expected RGB images shaped"):
        pyfunc.predict(np.zeros((1, 8, 8), np.uint8))
    info = mlflow.models.get_model_info("models:/pspnet@champion")
    assert info.metadata["class_names"] == list(NAMES) and info.metadata["num_classes"] == len(NAMES)

    # The version carries the ONNX graph, checked at registration; it runs any other size too.
    assert info.metadata["onnx"]["class_agreement"] >= 0.999 and info.metadata["onnx"]["probe_size"] == [40, 56]
    (graph,) = Path(mlflow.artifacts.download_artifacts("models:/pspnet/1")).rglob("network.onnx")
    scores = agreement(onnx_session(graph), reference, [(37, 71), (64, 33)])
    assert scores["max_abs_logit_diff"] < 1e-4 and scores["class_agreement"] >= 0.999, scores

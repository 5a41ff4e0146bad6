"""`python -m bench --quick` (the `make bench` driver at toy sizes) runs every section for real
and writes a report with the machine, the versions, medians and ratios against the peers.

It writes into tmp_path only: docs/benchmarks.* are never touched by tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import report
from bench.run import QUICK, REPO, SECTIONS, main

#: A quick run of every section takes 1-4 minutes on 2 cores: `make test-all` / `make bench` run it.
pytestmark = pytest.mark.slow

DOCS_REPORT = REPO / "docs" / "benchmarks.json"


def _is_figure(fig: dict, runs: int | None = None) -> bool:
    ok = {"values", "runs", "median", "min", "max", "unit"} <= set(fig) and fig["runs"] == len(fig["values"]) >= 1
    ok = ok and fig["min"] <= fig["median"] <= fig["max"] and fig["median"] > 0
    return ok and (runs is None or fig["runs"] == runs)


def _is_ratio(r: dict) -> bool:
    return r["ratio"] > 0 and r["ours"] > 0 and r["peer"] > 0 and abs(r["ratio"] - r["ours"] / r["peer"]) < 1e-9


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    before = DOCS_REPORT.stat().st_mtime_ns if DOCS_REPORT.exists() else None
    assert main(["--quick", "--out-dir", str(out)]) == 0
    after = DOCS_REPORT.stat().st_mtime_ns if DOCS_REPORT.exists() else None
    assert before == after, "the quick run must not write docs/benchmarks.*"
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text()


def test_report_states_machine_versions_and_every_section(quick_run: tuple[dict, str]) -> None:
    data, markdown = quick_run
    assert data["quick"] is True and set(data["sections"]) == set(SECTIONS) and data["not_run"] == []
    assert not [name for name, s in data["sections"].items() if "error" in s]
    for package in ("python", "torch", "segmentation-models-pytorch", "mlflow", "dvc", "great-expectations", "albumentations"):
        assert data["versions"][package], package
        assert data["versions"][package] in markdown
    assert data["machine"]["cpu_model"] and data["machine"]["logical_cpus"] >= 1 and data["machine"]["memory_bytes"] > 0
    for title in report.SECTION_TITLES.values():
        assert f"## {title}" in markdown
    assert "Quick mode" in markdown and "median" in markdown


def test_training_and_inference_have_medians_flops_and_ratios(quick_run: tuple[dict, str]) -> None:
    data, _ = quick_run
    training = data["sections"]["training"]
    timed = QUICK["training"]["timed_steps"]
    assert set(training["flops"]) == {"pspnet", "deeplabv3"}
    for row in training["rows"]:
        for model in row["models"].values():
            assert _is_figure(model["step_s"], timed) and _is_figure(model["achieved_gflops"], timed)
            assert model["train_gflop_per_image"] > 0
        for key in ("ratio_step_time", "ratio_images_per_s", "ratio_flops_per_s"):
            assert _is_ratio(row[key]) and row[key]["paired_ratio_median"] > 0
    # Training FLOPs = forward + backward, about 3x the forward pass for both networks.
    for flops in training["flops"].values():
        assert 2.5 < flops["train"] / flops["forward_train"] < 3.5

    inference = data["sections"]["inference"]
    for key in ("pspnet_single", "deeplabv3_single", "pspnet_ms_flip"):
        assert _is_figure(inference[key])
    assert _is_ratio(inference["ratio_single"]) and _is_ratio(inference["ratio_ms_flip_vs_peer_single"])
    # 6 scales, each with a flipped pass: the MS+flip protocol does far more work than one pass.
    gflop = inference["gflop_per_image"]
    assert gflop["pspnet_ms_flip"] > 10 * gflop["pspnet_single"]


def test_data_sections_have_medians_and_ratios(quick_run: tuple[dict, str]) -> None:
    data, _ = quick_run
    pipeline = data["sections"]["pipeline"]
    assert [row["workers"] for row in pipeline["rows"]] == QUICK["pipeline"]["workers"]
    for row in pipeline["rows"]:
        assert _is_figure(row["ours"]["images_per_s"], QUICK["pipeline"]["epochs"]) and _is_ratio(row["ratio"])
        assert row["ours"]["images_per_s_per_core"]["median"] > 0

    validation = data["sections"]["validation"]
    assert [row["samples"] for row in validation["sizes"]] == QUICK["validation"]["sizes"]
    for row in validation["sizes"]:
        assert _is_figure(row["samples_per_s"]) and row["peak_rss_bytes"]["median"] > 0
    assert _is_ratio(validation["ratio_vs_peer"]) and "slope" in validation["time_fit"]

    dvc = data["sections"]["dvc"]
    assert dvc["settings"]["stages_run"] == QUICK["dvc"]["target"]
    assert _is_figure(dvc["noop_repro_s"], QUICK["dvc"]["runs"]) and _is_ratio(dvc["ratio_noop_vs_peer"])
    assert dvc["full_run_s"] > 0 and dvc["pipeline_overhead_s"] > 0


def test_memory_rows_and_gpu_section(quick_run: tuple[dict, str]) -> None:
    data, markdown = quick_run
    memory = data["sections"]["memory"]
    assert len(memory["rows"]) == len(QUICK["memory"]["configs"])
    for row in memory["rows"]:
        assert row["peak_rss_bytes"] >= row["rss_before_step_bytes"] > 0
    assert memory["ratio_vs_peer"] and memory["grad_checkpoint_effect"]

    gpu = data["sections"]["gpu"]
    assert gpu["available"] == (REPO / QUICK["gpu"]["json"]).is_file()
    if gpu["available"]:
        assert "not in this run" in markdown and "gpu-h100.md" in markdown
    # Without the GPU JSON the report says so.
    missing = copy.deepcopy(data)
    missing["sections"]["gpu"] = report.gpu_section(REPO, {"json": "docs/results/absent.json", "markdown": "docs/results/absent.md"})
    assert "No GPU figures yet" in report.render(missing)


def test_runtimes_section_compares_onnx_runtime_and_torch_export_with_eager(quick_run: tuple[dict, str]) -> None:
    data, markdown = quick_run
    section = data["sections"]["runtimes"]
    assert set(section["sizes"]) == {f"{h}x{w}" for h, w in QUICK["runtimes"]["sizes"]}
    for size in section["sizes"].values():
        assert set(size["ratio_vs_eager"]) == {"torch_export", "onnxruntime", "onnxruntime_int8"}
        assert all(r["ratio"] > 0 for r in size["ratio_vs_eager"].values())
        agreement = size["class_agreement_vs_eager"]
        assert agreement["torch_export"] >= 0.999 and agreement["onnxruntime"] >= 0.999  # the same model in fp32
    assert "ONNX Runtime (fp32)" in markdown
    assert all(lat["p99"] >= lat["p50"] > 0 for size in section["sizes"].values() for lat in size["latency_ms"].values())


def test_serving_section_loads_the_real_endpoint_of_each_runtime_without_errors(quick_run: tuple[dict, str]) -> None:
    data, markdown = quick_run
    section = data["sections"]["serving"]
    settings = QUICK["serving"]
    assert set(section["runtimes"]) == set(settings["runtimes"])
    for levels in section["runtimes"].values():
        assert [level["clients"] for level in levels] == settings["clients"]
        for level in levels:
            assert level["errors"] == 0 and level["replies"] == level["requests"] >= level["clients"]
            assert level["replies_per_s"] > 0 and level["latency_ms"]["p99"] >= level["latency_ms"]["p50"] > 0
    assert "9. The served endpoint under concurrent load" in markdown


def test_only_runs_the_chosen_sections(tmp_path: Path) -> None:
    assert main(["--quick", "--only", "gpu", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(data["sections"]) == {"gpu"} and set(data["not_run"]) == set(SECTIONS) - {"gpu"}
    assert "Not run (`--only`)" in (tmp_path / "benchmarks.md").read_text()


def test_profiling_in_worker_processes_gives_the_same_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation speed-up found by the benchmark (worker processes instead of threads)
    profiles every sample exactly as the calling thread does, bad samples included."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from pspnet.data import profile
    from pspnet.data.classes import ClassTable

    prepared = tmp_path / "prepared"
    (prepared / "images").mkdir(parents=True)
    (prepared / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = ["id,split,image,mask"]
    for i in range(150):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(prepared / "images" / f"s{i}.png")
        Image.fromarray(rng.integers(0, 3, (6, 8), dtype=np.uint8)).save(prepared / "masks" / f"s{i}.png")
        rows.append(f"s{i},{'val' if i % 5 == 0 else 'train'},images/s{i}.png,masks/s{i}.png")
    (prepared / "images" / "s7.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # undecodable
    Image.fromarray(np.full((6, 8), 9, dtype=np.uint8)).save(prepared / "masks" / "s8.png")  # unknown label
    (prepared / "masks" / "s9.png").unlink()  # missing
    rows.append("s0,train,images/s0.png,masks/s0.png")  # duplicate id
    (prepared / "manifest.csv").write_text("\n".join(rows) + "\n")
    classes = ClassTable(names=("a", "b", "c"), colors=((0, 0, 0), (1, 1, 1), (2, 2, 2)))

    in_thread = profile.profile_dataset(prepared, classes, num_workers=1, progress=False)
    monkeypatch.setattr(profile, "PROCESS_POOL_MIN_SAMPLES", 10)
    assert profile.profiling_processes(151, 2) >= 1
    in_processes = profile.profile_dataset(prepared, classes, num_workers=2, progress=False)
    pd.testing.assert_frame_equal(in_processes, in_thread)
    assert in_processes["id"].tolist()[:3] == ["s0", "s1", "s2"] and len(in_processes) == 151
    problems = dict(zip(in_processes["id"].iloc[:10], in_processes["problems"].iloc[:10]))
    assert "cannot be decoded" in problems["s7"] and "outside the class ids" in problems["s8"] and "not found" in problems["s9"]
    assert "used by 2 manifest rows" in problems["s0"]


def test_only_keeps_the_other_sections_of_the_report_it_replaces(quick_run: tuple[dict, str], tmp_path: Path) -> None:
    data, _ = quick_run
    earlier = {**copy.deepcopy(data), "quick": False, "date_utc": "2026-01-02T03:04:05Z"}
    (tmp_path / "benchmarks.json").write_text(json.dumps(earlier))
    assert main(["--only", "gpu", "--out-dir", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(merged["sections"]) == set(SECTIONS) and merged["not_run"] == []
    assert merged["sections"]["dvc"]["carried_over_from"] == "2026-01-02T03:04:05Z"
    assert "carried_over_from" not in merged["sections"]["gpu"]
    assert "From the run of 2026-01-02T03:04:05Z" in (tmp_path / "benchmarks.md").read_text()

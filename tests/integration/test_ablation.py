"""`pspnet ablation`: rows run as real `dvc exp run` experiments in a tiny project; the
multi-scale row re-tests the PSPNet row's model (`dvc exp apply`); the report and the user's params survive."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import make_tiny_project, run

# Two `dvc exp run` pipelines and a re-test: about 2.5 minutes, so `make test-all` only (the
# report's statistics and rendering are unit-tested in tests/test_ablation_report.py).
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ablation_rows_are_dvc_experiments_and_the_report_is_written(tmp_path: Path) -> None:
    project = make_tiny_project(tmp_path / "project")
    params_before = (project / "params.yaml").read_bytes()
    cli = [sys.executable, "-m", "pspnet.cli", "ablation", "--row", "pspnet", "--row", "pspnet-msflip", "--out", "docs/abl"]
    run(cli[:-4] + ["--out", "docs/abl"], project, timeout=1200)  # the pspnet row alone
    # The workspace no longer holds that model: the msflip row gets it back from its experiment.
    (project / "models/checkpoint.pt").unlink()
    run(cli + ["--resume"], project, timeout=1200)

    report = json.loads((project / "docs/abl.json").read_text())["results"]
    assert [r["row"] for r in report] == ["pspnet", "pspnet-msflip"]
    psp, msflip = report
    assert psp["settings"]["evaluate.flip"] is False and msflip["settings"]["evaluate.flip"] is True
    assert msflip["settings"]["evaluate.scales"] == [0.75, 1.0, 1.25, 1.5]
    for r in report:
        assert 0.0 <= r["miou"] <= 1.0 and r["per_class_iou"]
    # The PSPNet experiment was applied and DVC reran only evaluate/register: the same training record.
    assert msflip["train_seconds"] == psp["train_seconds"]

    # Statistics: the test-time comparison (same model, flip + scales) from the kept per-image scores.
    (test_time,) = json.loads((project / "docs/abl.json").read_text())["comparisons"]
    assert test_time["name"] == "test-time" and test_time["seeds"] == [0]
    assert test_time["gain"] == pytest.approx(msflip["miou"] - psp["miou"])
    assert test_time["shown"] == (test_time["lower_bound"] > 0)
    assert {p.name for p in (project / "docs/abl-scores").iterdir()} == {
        "abl-pspnet-s0.npz", "abl-pspnet-s0-erf.npy", "abl-pspnet-msflip-s0.npz", "abl-pspnet-msflip-s0-erf.npy"}
    assert psp["erf"]["r50"] <= psp["erf"]["r95"] and psp["dataset"] == "context-scenes"

    table = (project / "docs/abl.md").read_text()
    assert "| pspnet-msflip |" in table
    assert "dvc exp run -n abl-pspnet-msflip-s0" in table and "'evaluate.scales=[0.75,1.0,1.25,1.5]'" in table

    names = run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], project).stdout.split()
    assert {"abl-pspnet-s0", "abl-pspnet-msflip-s0"} <= set(names)
    assert (project / "params.yaml").read_bytes() == params_before

    # --resume keeps finished rows and runs nothing new for them.
    again = run(cli + ["--resume"], project)
    assert json.loads(again.stdout)["rows"] == 2

    _dvc_shows_the_experiments_side_by_side(project, "abl-pspnet-s0", "abl-pspnet-msflip-s0")


def _dvc_shows_the_experiments_side_by_side(project: Path, first: str, second: str) -> None:
    """`dvc plots diff` draws both experiments' data on each data plot, in a page that needs
    no network; `dvc exp show` lists mIoU, mAcc and the data version without extra flags."""
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "plots", "diff", first, second, "-o", "plots_html"], project)
    page = (project / "plots_html" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vega-lite@5.2.0" in page  # the inlined offline template
    specs = {}
    for match in re.finditer(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed', page, re.S):
        specs[match.group(1)] = json.loads(match.group(2))
    assert len(specs) == 4, list(specs)  # loss, val mIoU, per-class IoU, confusion
    for spec in specs.values():
        revs = {row["rev"] for row in spec["data"]["values"]}
        assert revs == {first, second}, (spec.get("title"), revs)
    loss = next(s for s in specs.values() if "loss" in json.dumps(s.get("title", "")).lower())
    assert {float(r["loss"]) for r in loss["data"]["values"]}  # the loss values themselves are in the page

    shown = json.loads(run([*dvc, "exp", "show", "--json"], project).stdout)
    experiments = {e["name"]: e for commit in shown for e in commit.get("experiments") or []}
    for name in (first, second):
        (rev,) = experiments[name]["revs"]
        metrics = {k: v for f in rev["data"]["metrics"].values() for k, v in f["data"].items()}
        assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["macc"] <= 1 and metrics["data_version"]

"""Multi-node training from the work pool: the documented ``torchrun`` command as a flow, one
flow run per node (docs/distributed-training.md).

The deployment ``schedule.multinode.deployment_name`` (``prefect.yaml``) runs
:func:`node_training` on one node: ``torchrun --nnodes N --nproc_per_node P --rdzv_backend c10d
--rdzv_endpoint HOST:PORT --rdzv_id ID -m pspnet train`` in the project the worker runs in. The
c10d rendezvous gives the ranks, so every node runs the same command. :func:`launch` starts a
job: one flow run per node, node ``k``'s on the work queue ``<queue_prefix><k>``, which the
worker on that node polls (``make worker WORK_QUEUE=node-1``)::

    python -m pipelines.distributed --rdzv-endpoint node0.example:29400 [--nnodes 2] [--nproc-per-node 8] [--wait]

Every node needs the prepared data (``dvc pull``) and a tracking store rank 0 reaches.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import ValidationError

from pipelines import schedule
from pspnet.config import DEFAULT_PARAMS_FILE, MultinodeConfig, load_params
from pspnet.errors import ConfigError, DataError, PspnetError
from pspnet.layout import Layout
from pspnet.train.distributed import TORCHRUN_MODULE

FLOW_NAME = "pspnet-train-node"
#: torchrun's rendezvous backend for several nodes (as in the documented command).
RDZV_BACKEND = "c10d"
#: Output lines of a failed torchrun quoted in the error.
TAIL_LINES = 40
#: Seconds between looks at the node runs while ``--wait`` waits for them.
WAIT_POLL_SECONDS = 5


def node_command(node: MultinodeConfig, rdzv_id: str, root: Path) -> list[str]:
    """This node's ``torchrun ... -m pspnet train`` (the documented multi-node command)."""
    return [
        sys.executable, "-m", TORCHRUN_MODULE, "--nnodes", str(node.nnodes), "--nproc_per_node", str(node.nproc_per_node),
        "--rdzv_backend", RDZV_BACKEND, "--rdzv_endpoint", str(node.rdzv_endpoint), "--rdzv_id", rdzv_id,
        "-m", "pspnet", "train", "--params", str(root / DEFAULT_PARAMS_FILE), "--root", str(root),
    ]  # fmt: skip


def node_settings(nnodes: int, nproc_per_node: int, rdzv_endpoint: str | None) -> MultinodeConfig:
    """The run's parameters, checked as ``schedule.multinode`` is; a :class:`ConfigError` names the bad one."""
    try:
        node = MultinodeConfig(nnodes=nnodes, nproc_per_node=nproc_per_node, rdzv_endpoint=rdzv_endpoint)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"multi-node training parameters: {problems}. Fix the run's parameters (-p NAME=VALUE).") from None
    if node.rdzv_endpoint is None:
        raise ConfigError(
            "multi-node training needs rdzv_endpoint (HOST:PORT on a node every other one reaches). Fix: pass "
            f"--rdzv-endpoint to `python -m pipelines.distributed`, or set schedule.multinode.rdzv_endpoint in {DEFAULT_PARAMS_FILE}."
        )
    return node


def _run_streamed(command: list[str], root: Path, logger: Any) -> tuple[int, str]:
    """Run ``command`` in ``root``, each output line to ``logger``; its exit code and last lines."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(command, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:  # fmt: skip
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                logger.info(line)
        return proc.wait(), "\n".join(tail)


@flow(name=FLOW_NAME, flow_run_name=FLOW_NAME)
def node_training(
    project_dir: str = ".", nnodes: int = 2, nproc_per_node: int = 1, rdzv_endpoint: str | None = None, rdzv_id: str = "pspnet"
) -> dict[str, Any]:
    """One node of a multi-node ``pspnet train``: ``torchrun`` with the c10d rendezvous.

    Returns ``{"node", "command", "seconds", "metrics"}``; ``metrics`` is ``metrics/train.json``
    when rank 0 ran on this node (else ``None``). A failed torchrun fails the flow run.
    """
    root = Path(project_dir).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml here; pass the project root as project_dir.")
    node = node_settings(nnodes, nproc_per_node, rdzv_endpoint)
    layout = Layout(root, load_params(root / DEFAULT_PARAMS_FILE).paths)
    if not layout.prepared.is_dir():
        raise DataError(f"{layout.prepared}: no prepared data on this node. Fix: `dvc pull` (or `dvc repro prepare`) in {root} first.")
    logger = get_run_logger()
    command = node_command(node, rdzv_id, root)
    logger.info("$ %s", shlex.join(command))
    started = time.time()
    code, tail = _run_streamed(command, root, logger)
    if code != 0:
        raise PspnetError(f"torchrun on {socket.gethostname()} exited with {code}. Last output:\n{tail}")
    metrics = layout.train_metrics
    fresh = metrics.is_file() and metrics.stat().st_mtime >= started
    return {"node": socket.gethostname(), "command": command, "seconds": round(time.time() - started, 1),
            "metrics": json.loads(metrics.read_text(encoding="utf-8")) if fresh else None}  # fmt: skip


def launch(project_dir: str | Path, nnodes: int | None, nproc_per_node: int | None, rdzv_endpoint: str | None,
           rdzv_id: str | None = None) -> list[Any]:  # fmt: skip
    """One flow run of the node deployment per node (node ``k`` on queue ``<queue_prefix><k>``),
    with ``params.yaml``'s ``schedule.multinode`` for what is not given; returns the flow runs."""
    from prefect.deployments import run_deployment

    root = Path(project_dir).resolve()
    defaults = load_params(root / DEFAULT_PARAMS_FILE).schedule.multinode
    node = node_settings(nnodes or defaults.nnodes, nproc_per_node or defaults.nproc_per_node, rdzv_endpoint or defaults.rdzv_endpoint)
    schedule.require_server()
    parameters = {"project_dir": ".", "nnodes": node.nnodes, "nproc_per_node": node.nproc_per_node,
                  "rdzv_endpoint": node.rdzv_endpoint, "rdzv_id": rdzv_id or f"pspnet-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    name = f"{FLOW_NAME}/{defaults.deployment_name}"
    return [
        run_deployment(name, parameters=parameters, work_queue_name=f"{defaults.queue_prefix}{k}", timeout=0)
        for k in range(node.nnodes)
    ]


def wait(runs: list[Any]) -> bool:
    """Wait until every run is final, saying which ended how; ``True`` when all completed."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pending = {run.id: run for run in runs}
        ok = True
        while pending:
            time.sleep(WAIT_POLL_SECONDS)
            for run_id in list(pending):
                state = client.read_flow_run(run_id).state
                if state and state.is_final():
                    print(f"{pending.pop(run_id).name}: {state.name}", flush=True)
                    ok = ok and state.is_completed()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.distributed", description="Launch multi-node training on the work pool: one flow run per node.")
    parser.add_argument("--project-dir", default=".", help="project root holding params.yaml (default: .)")
    parser.add_argument("--nnodes", type=int, help="nodes (default: schedule.multinode.nnodes)")
    parser.add_argument("--nproc-per-node", type=int, help="processes per node (default: schedule.multinode.nproc_per_node)")
    parser.add_argument("--rdzv-endpoint", help="HOST:PORT of the c10d rendezvous (default: schedule.multinode.rdzv_endpoint)")
    parser.add_argument("--rdzv-id", help="the job's rendezvous id (default: a new one)")
    parser.add_argument("--wait", action="store_true", help="wait for every node's run; exit 1 unless all completed")
    args = parser.parse_args(argv)
    try:
        runs = launch(args.project_dir, args.nnodes, args.nproc_per_node, args.rdzv_endpoint, args.rdzv_id)
    except PspnetError as err:
        print(f"distributed: {err}", file=sys.stderr)
        return err.exit_code
    for run in runs:
        print(f"{run.name}: queue {run.work_queue_name}, {run.id}", flush=True)
    return 0 if not args.wait or wait(runs) else 1


if __name__ == "__main__":
    sys.exit(main())

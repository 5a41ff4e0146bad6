"""The ``pspnet`` command: one subcommand per pipeline stage. No logic lives here.

Each subcommand loads ``params.yaml`` into :class:`pspnet.config.Params`, calls the stage's
library function with the project root, and prints its summary as JSON. Expected failures
(:class:`pspnet.errors.PspnetError`) print a message, not a traceback, and exit with the
error's code: 2 for a bad configuration, 3 for bad data, 1 otherwise. Orchestration relies on
these codes to decide whether a retry can help.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pspnet.config import DEFAULT_PARAMS_FILE, load_params
from pspnet.errors import PspnetError

app = typer.Typer(
    name="pspnet",
    help="PSPNet scene parsing: pipeline stages (run them through `dvc repro`) and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Stage name -> "module:function" of its one library implementation (imported lazily so
#: `pspnet --help` stays fast and one stage's heavy imports never slow another's start).
STAGES: dict[str, str] = {
    "prepare": "pspnet.data.prepare:prepare",
    "validate": "pspnet.data.validate:validate",
    "train": "pspnet.train.stage:train",
    "evaluate": "pspnet.evaluate.stage:evaluate",
    "register": "pspnet.registry.register:register",
}

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="Parameters file (relative to the project root).")
]
RootOption = Annotated[
    Path, typer.Option("--root", help="Project root: stage inputs and outputs are relative to it.")
]


def resolve_stage(name: str) -> Callable[..., dict[str, Any]]:
    """The library function that implements stage ``name``."""
    module_name, func_name = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


#: Third-party loggers that are chatty at INFO (internal registrations, table creation).
QUIET_LOGGERS = ("great_expectations", "mlflow.store", "alembic")


def _configure_logging() -> None:
    level = os.environ.get("PSPNET_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_stage(name: str, params_file: Path, root: Path) -> dict[str, Any]:
    """Load params, run stage ``name`` in ``root`` and print its summary; exit non-zero on failure."""
    _configure_logging()
    root = root.resolve()
    try:
        params = load_params(params_file if params_file.is_absolute() else root / params_file)
        summary = resolve_stage(name)(params, root)
    except PspnetError as err:
        typer.echo(f"pspnet {name}: error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


def _make_stage_command(name: str, doc: str) -> None:
    def command(
        params: ParamsOption = Path(DEFAULT_PARAMS_FILE),
        root: RootOption = Path("."),
    ) -> None:
        run_stage(name, params, root)

    command.__doc__ = doc
    app.command(name)(command)


_make_stage_command("prepare", "Write the canonical dataset (images/, masks/, manifest.csv, classes.json).")
_make_stage_command("validate", "Check the prepared dataset with Great Expectations; fail on any bad sample.")
_make_stage_command("train", "Train PSPNet; write the checkpoint and log the run to MLflow.")
_make_stage_command("evaluate", "Score the checkpoint on val: metrics/eval.json, plots, overlays.")
_make_stage_command("register", "Log + register the model in MLflow; move the champion alias if it is better.")


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

"""Run the real ``validate`` stage and read back what it reported, whether it passed or not."""

from __future__ import annotations

import json
from pathlib import Path

from pspnet.config import Params
from pspnet.layout import Layout
from pspnet.stages.validate import run as validate
from pspnet.errors import DataError


def run_validate(params: Params, root: Path) -> tuple[DataError | None, dict]:
    """``validate(params, root)``: the DataError it raised (or ``None``) and its summary.json."""
    try:
        validate(params, root)
        error = None
    except DataError as err:
        error = err
    return error, json.loads(Layout(root, params.paths).validation_summary.read_text())

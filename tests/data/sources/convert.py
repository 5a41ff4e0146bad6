"""All-or-nothing conversion for the adapter tests: a source's manifest when every sample
converts, else the :class:`DataError` listing the rejected samples (what ``prepare`` raises when
every sample is rejected)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pspnet.data.convert import WriteOptions, failure_message, convert_source
from pspnet.data.sources.base import SourceData
from pspnet.errors import DataError


def write_prepared(
    folder: Path, data: SourceData, source: str, num_workers: int, max_failures: int, options: WriteOptions = WriteOptions()
) -> pd.DataFrame:
    converted = convert_source(folder, data, source, num_workers, options)
    if len(converted.rejected):
        head = f"prepare: source {source!r} has {len(converted.rejected)} problem(s); nothing was written:"
        raise DataError(failure_message(head, converted.messages(), max_failures))
    return converted.manifest

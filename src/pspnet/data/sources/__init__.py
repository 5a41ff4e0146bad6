"""Source adapters: one module per dataset layout, each turning the dataset as it ships into
samples in our label space (see :mod:`pspnet.data.sources.base` for the contract).

``data.source.name`` picks one from :data:`SOURCES`; :mod:`pspnet.data.convert` writes what it
lists into the canonical prepared form. Adding a layout = one module + one entry here (and its
name in :data:`pspnet.config.SOURCE_NAMES`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pspnet.config import Params
from pspnet.data.sources.base import SourceData, SourceFolders
from pspnet.errors import DataError

#: An adapter: ``(params, folders) -> SourceData``.
SourceAdapter = Callable[[Params, SourceFolders], SourceData]

#: Source name -> "module:function" (imported on use, so one layout's imports never slow another).
SOURCES: dict[str, str] = {
    "synthetic": "pspnet.data.sources.synthetic:synthetic_source",
    "camvid": "pspnet.data.sources.camvid:camvid_source",
    "ade20k": "pspnet.data.sources.ade20k:ade20k_source",
    "voc": "pspnet.data.sources.voc:voc_source",
    "cityscapes": "pspnet.data.sources.cityscapes:cityscapes_source",
    "folder": "pspnet.data.sources.folder:folder_source",
}


def get_adapter(name: str) -> SourceAdapter:
    """The adapter of source ``name``."""
    if name not in SOURCES:
        raise DataError(f"data.source.name: unknown source {name!r}; known sources: {sorted(SOURCES)}. Fix it in params.yaml.")
    module_name, func_name = SOURCES[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)

"""The Great Expectations adapter: runs :class:`~.checks.Check` lists on tables, builds the Data Docs.

GE 1.x, in memory: an ephemeral context, a pandas data source, one whole-dataframe batch and
one expectation suite, validation definition and checkpoint per table. The only module of the
domain code that imports ``great_expectations`` (lazily: importing it takes seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pspnet.data.validation.checks import Check, Outcome

#: Name of our Data Docs site (the default ephemeral context's own site is ``local_site``).
DOCS_SITE_NAME = "pspnet_validation"
#: GE result format: every offending row, named by its ``id`` column.
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]}
#: Name of the pandas data source the tables are added to.
DATASOURCE_NAME = "pspnet"


def build_expectation(check: Check) -> Any:
    """The GE expectation of ``check``, tagged with the check's name (``meta.check``)."""
    import great_expectations as gx

    kind = getattr(gx.expectations, check.expectation)
    return kind(column=check.column, description=check.description, meta={"check": check.name}, **check.kwargs)


def _context(docs_dir: Path) -> Any:
    """An in-memory GE context (no analytics, no progress bars) with one Data Docs site in ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.add_data_docs_site(
        site_name=DOCS_SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def _run_table(context: Any, datasource: Any, table: str, frame: pd.DataFrame, checks: list[Check]) -> list[Any]:
    """Validate ``frame`` against ``checks`` through a checkpoint that updates the Data Docs."""
    import great_expectations as gx

    asset = datasource.add_dataframe_asset(name=table)
    batch = asset.add_batch_definition_whole_dataframe(name=f"{table}_all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"pspnet_{table}"))
    for check in checks:
        suite.add_expectation(build_expectation(check))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"pspnet_{table}_validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"pspnet_{table}_checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE_NAME])],
            result_format=RESULT_FORMAT,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return [r for run in result.run_results.values() for r in run.results]


def _raised(info: Any) -> str | None:
    """The message of an exception GE caught while evaluating an expectation, if any."""
    if isinstance(info, dict):
        if info.get("raised_exception"):
            return str(info.get("exception_message") or "unknown error")
        for value in info.values():
            message = _raised(value)
            if message:
                return message
    return None


def _outcomes(results: list[Any], checks: list[Check]) -> list[Outcome]:
    """Match GE results back to our checks (through the expectation's ``meta.check``)."""
    by_name = {c.name: c for c in checks}
    outcomes = []
    for result in results:
        check = by_name[result.expectation_config.meta["check"]]
        ids = [str(entry["id"]) for entry in result.result.get("unexpected_index_list") or []]
        error = _raised(result.exception_info)
        count = int(result.result.get("unexpected_count") or len(ids))
        outcomes.append(Outcome(check, bool(result.success) and error is None, count, list(dict.fromkeys(ids)), error))
    return outcomes


class ExpectationRunner:
    """One GE context whose Data Docs site is built in ``docs_dir``; tables are validated one
    call at a time (the dataset-level tables depend on which samples failed)."""

    def __init__(self, docs_dir: Path) -> None:
        self.context = _context(docs_dir)
        self.datasource = self.context.data_sources.add_pandas(name=DATASOURCE_NAME)

    def run(self, tables: dict[str, pd.DataFrame], checks: list[Check]) -> list[Outcome]:
        """Validate every table with its checks."""
        outcomes = []
        for table, frame in tables.items():
            table_checks = [c for c in checks if c.table == table]
            if table_checks:
                outcomes += _outcomes(_run_table(self.context, self.datasource, table, frame, table_checks), table_checks)
        return outcomes

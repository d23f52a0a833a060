"""The file-mode Great Expectations context: suites, validation definitions, checkpoints and Data Docs.

Everything is created once and re-saved only when params change it, so the committed suite files stay
stable; the stored validation results (and their Data Docs pages) are pruned to a bounded history.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

_DATASOURCE = "foldstack"
_BATCH_DEFINITION = "whole_frame"


# ------------------------------------------------------------------------------------ GX plumbing
class ExpectationsContext:
    """The file-mode GX context at `directory`, set up idempotently: suites, validation definitions and
    checkpoints are created once and re-saved only when params change them."""

    def __init__(self, directory: Path, *, data_docs: bool = True, max_examples: int = 5):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network: never try to send usage stats
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self.directory = Path(directory)
        self.data_docs = data_docs
        self.result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max_examples,
                              # the query string lists every unexpected index: too big to keep in history
                              "return_unexpected_index_query": False}
        self.context = gx.get_context(mode="file", context_root_dir=str(self.directory))
        variables = self.context.variables
        if variables.analytics_enabled is not False or getattr(variables.progress_bars, "globally", True):
            variables.analytics_enabled = False
            variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in CLI/flow logs
            variables.save()

    def _batch_definition(self, batch: str) -> Any:
        sources = self.context.data_sources
        try:
            source = sources.get(_DATASOURCE)
        except KeyError:
            source = sources.add_pandas(_DATASOURCE)
        asset = next((a for a in source.assets if a.name == batch), None) or source.add_dataframe_asset(batch)
        existing = [d for d in asset.batch_definitions if d.name == _BATCH_DEFINITION]
        return existing[0] if existing else asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)

    def _suite(self, name: str, expectations: list[Any]) -> Any:
        from great_expectations.exceptions import DataContextError

        try:
            existing = self.context.suites.get(name)
        except DataContextError:
            existing = None
        if existing is not None and _configs(existing.expectations) == _configs(expectations):
            return existing
        return self.context.suites.add_or_update(self._gx.ExpectationSuite(name=name, expectations=expectations))

    def _checkpoint(self, name: str, batch_definition: Any, suite: Any) -> Any:
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.exceptions import DataContextError

        try:
            definition = self.context.validation_definitions.get(name)
            if definition.suite.id != suite.id or definition.data.id != batch_definition.id:
                raise DataContextError(f"validation definition {name} points at an older suite or asset")
        except DataContextError:
            definition = self.context.validation_definitions.add_or_update(
                self._gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))
        actions = [UpdateDataDocsAction(name="update_data_docs")] if self.data_docs else []
        try:
            checkpoint = self.context.checkpoints.get(name)
            if ([a.name for a in checkpoint.actions] == [a.name for a in actions]
                    and checkpoint.result_format == self.result_format
                    and [v.name for v in checkpoint.validation_definitions] == [name]):
                return checkpoint
        except DataContextError:
            pass
        return self.context.checkpoints.add_or_update(self._gx.Checkpoint(
            name=name, validation_definitions=[definition], actions=actions, result_format=self.result_format))

    def validate(self, batch: str, frame: pd.DataFrame, expectations: list[Any]) -> list[Any]:
        """Validate `frame` against the suite `foldstack_<batch>`; return GX's per-expectation results."""
        name = f"foldstack_{batch}"
        suite = self._suite(name, expectations)
        checkpoint = self._checkpoint(name, self._batch_definition(batch), suite)
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        return [r for run in result.run_results.values() for r in run.results]

    def prune_history(self, keep: int) -> list[Any]:
        """Delete each suite's stored validation results beyond its newest `keep`, and their Data Docs pages;
        return the removed results' keys (GX `ValidationResultIdentifier`s), oldest first per suite.

        GX stores one result per checkpoint run at `uncommitted/validations/<suite>/<run name>/<run time>/
        <batch>.json` and, with Data Docs, renders it to the same path under the site's `validations/` as
        .html. Results are removed through GX's store; rebuilding the Data Docs index for the removed keys
        renders no page (their results are gone) but makes GX drop the pages whose results are missing, so
        the index never links to a deleted page.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the run just made), got {keep}")
        store = self.context.validation_results_store
        by_suite: dict[str, list[Any]] = defaultdict(list)
        for key in store.list_keys():
            by_suite[key.expectation_suite_identifier.name].append(key)
        removed = []
        for keys in by_suite.values():
            keys.sort(key=lambda key: key.run_id.run_time)
            removed += keys[:-keep]
        if not removed:
            return []
        for key in removed:
            store.remove_key(key)
        history_dirs = [Path(store.store_backend.full_base_directory)]
        if self.data_docs:
            self.context.build_data_docs(resource_identifiers=removed)
            history_dirs += [self.directory / site["store_backend"]["base_directory"] / "validations"
                             for site in (self.context.variables.data_docs_sites or {}).values()
                             if "base_directory" in site.get("store_backend", {})]
        # GX deletes the files but leaves each run's directories behind, empty: they would pile up instead.
        for base in history_dirs:
            for key in removed:
                _remove_empty_directories(base, base.joinpath(*key.to_tuple()[:-1]))
        return removed

    def docs_index(self) -> str | None:
        if not self.data_docs:
            return None
        sites = self.context.get_docs_sites_urls()
        return sites[0]["site_url"] if sites and sites[0].get("site_url") else None


def _remove_empty_directories(base: Path, directory: Path) -> None:
    """Remove `directory` and then its parents while they are empty, stopping below `base`."""
    base = base.resolve()
    directory = directory.resolve()
    while directory != base and base in directory.parents and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def _configs(expectations: list[Any]) -> list[str]:
    """Expectations compared by what they check, not by their stored ids."""
    keys = []
    for expectation in expectations:
        config = expectation.configuration.to_json_dict()
        config.pop("id", None)
        config.pop("rendered_content", None)
        keys.append(json.dumps(config, sort_keys=True, default=str))
    return keys

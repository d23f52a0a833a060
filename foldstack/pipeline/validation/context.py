"""The file-mode Great Expectations context: suites, validation definitions, checkpoints and Data Docs.

Everything is created once and re-saved only when params change it, so the committed suite files stay
stable; the stored validation results (and their Data Docs pages) are pruned to a bounded history.

Every validation of one gate run shares one GX run id named after the run: `foldstack-<UTC time, to the ms>-data-<hash of
the training data as validated>` (not GX's `__none__`), so the Data Docs index groups a run's suites together.

Data Docs are made readable offline (`docs_index` finishes the site after the last build): GX's pages load
Bootstrap, jQuery, bootstrap-table, Font Awesome, Vega and a logo from CDNs, and its index fills its tables
with that JavaScript, so offline the index lists nothing. Each page's CDN scripts and style sheets are
stripped (a small local style sheet keeps them readable, the logo comes from the site's own static/ folder),
and the index gets plain HTML tables of the stored results (each linking to its page) and of the suites.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

_DATASOURCE = "foldstack"
_BATCH_DEFINITION = "whole_frame"


# ------------------------------------------------------------------------------------ GX plumbing
class ExpectationsContext:
    """The file-mode GX context at `directory`, set up idempotently: suites, validation definitions and
    checkpoints are created once and re-saved only when params change them."""

    def __init__(self, directory: Path, *, data_docs: bool = True, max_examples: int = 5,
                 run_name: str | None = None):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network: never try to send usage stats
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self.directory = Path(directory)
        self.run_time = datetime.now(timezone.utc)
        self.run_name = run_name  # None: named after the first batch validated (the training data)
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
        result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=self._run_id(frame))
        return [r for run in result.run_results.values() for r in run.results]

    def _run_id(self, frame: pd.DataFrame) -> Any:
        """This gate run's GX run id; run_time is always given (without it GX tries to parse the name as one)."""
        from great_expectations.core.run_identifier import RunIdentifier

        if self.run_name is None:
            digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()
            # Milliseconds in the name: two gate runs within one second (a quick re-run) stay two entries.
            stamp = f"{self.run_time:%Y%m%dT%H%M%S}.{self.run_time.microsecond // 1000:03d}Z"
            self.run_name = f"foldstack-{stamp}-data-{digest[:12]}"
        return RunIdentifier(run_name=self.run_name, run_time=self.run_time)

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
        """Finish the Data Docs site for offline reading (call after the run's last build); its index URL."""
        if not self.data_docs:
            return None
        for site in self._site_directories():
            _make_site_offline(site, self._result_rows(site), sorted(self.context.suites.all(), key=_name))
        sites = self.context.get_docs_sites_urls()
        return sites[0]["site_url"] if sites and sites[0].get("site_url") else None

    def _site_directories(self) -> list[Path]:
        return [self.directory / site["store_backend"]["base_directory"]
                for site in (self.context.variables.data_docs_sites or {}).values()
                if "base_directory" in site.get("store_backend", {})]

    def _result_rows(self, site: Path) -> list[dict[str, Any]]:
        """One row per stored validation result, newest first, with its page under `site` if it exists."""
        store = self.context.validation_results_store
        rows = []
        for key in sorted(store.list_keys(), key=lambda key: key.run_id.run_time, reverse=True):
            result = store.get(key)
            page = Path("validations", *key.to_tuple()).with_suffix(".html")
            rows.append({"success": bool(result.success), "run_time": key.run_id.run_time,
                         "run_name": key.run_id.run_name, "suite": key.expectation_suite_identifier.name,
                         "asset": (result.meta.get("active_batch_definition") or {}).get("data_asset_name", ""),
                         "statistics": result.statistics or {},
                         "page": page.as_posix() if (site / page).is_file() else None})
        return rows


# ------------------------------------------------------------------------------ Data Docs offline
_OFFLINE_MARK = "<!-- foldstack: offline page -->"
_REMOTE_LINK = re.compile(r"""<link\b[^>]*\bhref=["']https?://[^>]*>\s*""", re.IGNORECASE)
_REMOTE_SCRIPT = re.compile(r"""<script\b[^>]*\bsrc=["']https?://[^>]*>\s*</script>\s*""", re.IGNORECASE)
_REMOTE_LOGO = re.compile(r"""src=["']https?://[^"']*/(logo-long\.png)[^"']*["']""", re.IGNORECASE)
# GX writes the site's own static/ one level too shallow on result pages (validations/<suite>/<run>/<time>/).
_LOCAL_STATIC = re.compile(r"""((?:src|href)=["'])(?:\./|(?:\.\./)+)static/""", re.IGNORECASE)
_EMPTY_TABLE = r"""<table\b[^>]*\b{cls}\b[^>]*>\s*</table>"""
_OFFLINE_STYLE = """<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 1.5rem; line-height: 1.4; }
  table { border-collapse: collapse; margin: 0.5rem 0; }
  th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
  th { background: #f3f3f3; } .text-success { color: #1a7f37; } .text-danger { color: #c62828; }
  .alert { padding: 0.5rem 0.75rem; background: #eef1f4; margin: 0.5rem 0; } img { max-width: 100%; }
  .modal, .btn, [id$="-body-table-toolbar"] { display: none; }
  .nav { list-style: none; padding: 0; } .nav-item { display: inline-block; margin-right: 1rem; }
</style>"""


def _name(suite: Any) -> str:
    return suite.name


def _make_site_offline(site: Path, rows: list[dict[str, Any]], suites: list[Any]) -> None:
    """Strip the CDN scripts and styles from every page of the site, point its links to the site's static/
    at the right depth, and fill the index's tables as plain HTML. Idempotent: pages finished before (older runs' pages GX did not rebuild) are left as they are."""
    if not site.is_dir():
        return
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if _OFFLINE_MARK in text:
            continue
        up = "../" * (len(page.relative_to(site).parts) - 1)
        text = _REMOTE_SCRIPT.sub("", _REMOTE_LINK.sub("", text))
        text = _REMOTE_LOGO.sub(lambda m: f'src="{up or "./"}static/images/{m.group(1)}"', text)
        text = _LOCAL_STATIC.sub(lambda m: f"{m.group(1)}{up or './'}static/", text)
        text = text.replace("</head>", f"{_OFFLINE_STYLE}\n{_OFFLINE_MARK}\n</head>", 1)
        if page == site / "index.html":
            text = _fill_index(text, rows, suites)
        page.write_text(text, encoding="utf-8")


def _fill_index(text: str, rows: list[dict[str, Any]], suites: list[Any]) -> str:
    """The index's results and suites tables as plain HTML (GX leaves them empty for bootstrap-table to fill)."""
    esc = html.escape
    results = ["<tr><th>Status</th><th>Run time</th><th>Run name</th><th>Asset</th><th>Expectations met</th>"
               "<th>Expectation suite</th></tr>"]
    for row in rows:
        status = ('<span class="text-success">Success</span>' if row["success"]
                  else '<span class="text-danger">Failed</span>')
        name = esc(row["run_name"] or "")
        if row["page"]:
            name = f'<a class="foldstack-result-link" href="{esc(row["page"])}">{name}</a>'
        stats = row["statistics"]
        met = f'{stats.get("successful_expectations", "?")} of {stats.get("evaluated_expectations", "?")}'
        results.append(f'<tr><td>{status}</td><td>{row["run_time"]:%Y-%m-%d %H:%M:%S} UTC</td><td>{name}</td>'
                       f'<td>{esc(row["asset"])}</td><td>{met}</td>'
                       f'<td><a href="expectations/{esc(row["suite"])}.html">{esc(row["suite"])}</a></td></tr>')
    suite_rows = ["<tr><th>Expectation suite</th><th>Expectations</th></tr>"] + [
        f'<tr><td><a href="expectations/{esc(s.name)}.html">{esc(s.name)}</a></td><td>{len(s.expectations)}</td></tr>'
        for s in suites]
    for cls, body in (("ge-index-page-validation-results-table", results),
                      ("ge-index-page-expectation_suites-table", suite_rows)):
        table = f'<table class="foldstack-offline-table {cls}">\n' + "\n".join(body) + "\n</table>"
        text, found = re.subn(_EMPTY_TABLE.format(cls=re.escape(cls)), lambda _: table, text, count=1)
        if not found:  # another GX layout: the tables go at the top of the page rather than nowhere
            text = re.sub(r"(<body\b[^>]*>)", lambda m: f"{m.group(1)}\n{table}", text, count=1)
    return text


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

"""The monitor's dashboard in Prefect: the monitoring report as a markdown artifact (its plots embedded) and
its checks as a table artifact. The keys are stable, so the Artifacts page shows each one's history: one entry
per `monitor` run, the latest on top.

The markdown is reports/monitoring.md as `run_monitor` wrote it, with every local PNG it links (and every plot
the report lists that it does not link) embedded as a base64 data URI, which the Prefect UI renders, within
the run report's budget (tasks/report.py's EMBED_BUDGET); beyond it a plot is named by its path.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from foldstack.config import Config
from foldstack.ops.monitor_tracking import check_rows
from tasks.report import EMBED_BUDGET

MONITORING_REPORT_KEY = "foldstack-monitoring"
MONITORING_CHECKS_KEY = "foldstack-monitoring-checks"
REPORT_MD = "monitoring.md"
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def embed_images(markdown: str, base: Path, budget: int = EMBED_BUDGET) -> str:
    """`markdown` with its links to local PNG files (relative to `base`) as data URIs while they fit in `budget`."""
    def embed(match: re.Match[str]) -> str:
        nonlocal budget
        alt, target = match.groups()
        path = base / target
        if target.startswith(("data:", "http:", "https:")) or path.suffix.lower() != ".png" or not path.is_file():
            return match.group(0)
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        if len(encoded) > budget:
            return f"**{alt or path.stem}**: `{path}` (too large to embed here)"
        budget -= len(encoded)
        return f"![{alt}](data:image/png;base64,{encoded})"

    return IMAGE_LINK.sub(embed, markdown)


def _summary(report: Mapping[str, Any]) -> str:
    """What the report says in one line (the artifact's description, and the markdown when no file exists)."""
    drifted = [row["name"] for row in check_rows(report) if row["verdict"] == "drift"]
    verdict = f"DRIFT in {', '.join(drifted)}" if drifted else "no drift"
    window = report.get("window") or {}
    return (f"{verdict}: {report.get('n_requests', 0)} requests ({window.get('first')} .. {window.get('last')}), "
            f"{report.get('n_feedback', 0)} with feedback, model {report.get('model_version')}")


def monitoring_markdown(cfg: Config, report: Mapping[str, Any]) -> str:
    """reports/monitoring.md with the plots embedded; the plots it lists but does not link are appended."""
    reports_dir = cfg.resolve_path(cfg.monitoring.reports_dir)
    md_file = reports_dir / REPORT_MD
    text = (md_file.read_text(encoding="utf-8") if md_file.is_file()
            else f"# foldstack monitoring\n\n{_summary(report)}\n")
    linked = {target for _, target in IMAGE_LINK.findall(text)}
    unlinked = [plot for plot in report.get("plots", []) if plot not in linked]
    if unlinked:
        text += "\n\n## Plots\n\n" + "\n\n".join(f"![{Path(plot).stem}]({plot})" for plot in unlinked) + "\n"
    return embed_images(text, reports_dir)


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def publish_monitoring_artifacts(cfg: Config, report: Mapping[str, Any]) -> dict[str, UUID]:
    """The markdown report and the table of checks (name, kind, statistic, threshold, verdict, detail)."""
    description = _summary(report)
    markdown = create_markdown_artifact(monitoring_markdown(cfg, report), key=MONITORING_REPORT_KEY,
                                        description=f"foldstack monitoring report: {description}")
    rows = [{column: _rounded(value) for column, value in row.items()} for row in check_rows(report)]
    table = create_table_artifact(rows, key=MONITORING_CHECKS_KEY,
                                  description=f"foldstack monitoring checks: {description}")
    return {"markdown": markdown, "table": table}

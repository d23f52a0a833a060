"""eval/report.html from a real tiny run, parsed as HTML: self-contained, every plot embedded, every section there;
and the Prefect run report's plots section."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest

from foldstack.config import load_config
from foldstack.pipeline.report import REPORT_HTML, render_report
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params


class _Page(HTMLParser):
    """The parts of a page the tests read: every attribute, the images, the text, each section's tables."""

    def __init__(self):
        super().__init__()
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.images: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.sections: dict[str, list[list[list[str]]]] = {}  # h2 title -> tables -> rows -> cells
        self._heading: str | None = None
        self._in_h2 = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "h2":
            self._in_h2, self._heading = True, ""
        elif tag == "table" and self._heading is not None:
            self.sections.setdefault(self._heading, []).append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
            self.sections.setdefault(self._heading, [])
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.sections[self._heading][-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self._heading += data
        if self._cell is not None:
            self._cell.append(data)

    def table(self, heading: str, index: int = 0) -> list[list[str]]:
        return self.sections[heading][index]


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_csv):
    directory = tmp_path_factory.mktemp("report")
    cfg = load_config(write_params(directory, demo_csv, evaluate={"plots": True}, meta={"kind": "auto"}))
    result = run_pipeline(cfg)
    eval_dir = Layout.of(cfg).eval
    return cfg, result, eval_dir, (eval_dir / REPORT_HTML).read_text(encoding="utf-8")


def test_report_is_self_contained(run):
    _, _, _, html = run
    assert "http://" not in html and "https://" not in html
    page = parse(html)
    assert "script" not in page.tags and "link" not in page.tags  # inline CSS, no script, nothing to fetch
    for tag, name, value in page.attributes:
        if name in ("src", "href"):
            assert value.startswith("data:"), (tag, name, value[:80])


def test_every_plot_is_embedded_as_a_png_with_a_caption(run):
    _, _, eval_dir, html = run
    pngs = sorted((eval_dir / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"confusion.png", "roc.png", "calibration.png"}
    page = parse(html)
    embedded = []
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        embedded.append(base64.b64decode(image["src"][len(prefix):], validate=True))
        assert image.get("alt")
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in embedded)
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)  # each plot once, byte for byte
    text = "".join(page.text)
    assert "The ensemble's confusion matrix on the holdout" in text and "calibration.png" in text


def test_leaderboard_has_one_row_per_model(run):
    _, result, eval_dir, html = run
    rows = parse(html).table("Holdout leaderboard")
    header, body = rows[0], rows[1:]
    assert header[:2] == ["model", "role"]
    reports = json.loads((eval_dir / "reports.json").read_text())
    assert len(body) == len(result.leaderboard) == len(reports)
    assert [r[0] for r in body] == [r["model"] for r in result.leaderboard]
    ensemble = next(r for r in body if r[0] == "ensemble")
    assert ensemble[header.index("accuracy")] == f"{reports['ensemble']['accuracy']:.4f}"


def test_header_meta_leakage_gate_and_groups(run):
    cfg, _, eval_dir, html = run
    layout = Layout.of(cfg)
    page = parse(html)
    text = "".join(page.text)
    snapshot = json.loads((layout.snapshot / "snapshot.json").read_text())
    assert snapshot["data_hash"] in text and cfg.data.path in text and "foldstack" in text
    stacked = json.loads((layout.stack / "meta_cv.json").read_text())
    assert stacked["reason"] in text
    candidates = page.table("Meta-learner")
    assert sorted(r[0] for r in candidates[1:]) == sorted(stacked["candidates"])
    leakage = json.loads((eval_dir / "leakage.json").read_text())
    assert len(page.table("Leakage diagnostics (out-of-fold vs holdout)")) == len(leakage["rows"]) + 1
    validation = json.loads((cfg.resolve_path(cfg.validation.report_dir) / "validation.json").read_text())
    assert f"Status: {validation['status']}; " in text
    groups = dict((r[0], r[1]) for r in page.table("Overlap groups")[1:])
    assert groups["n_groups"] == str(snapshot["grouping"]["n_groups"])
    assert "Distilled student" not in page.sections  # distillation is off in this run


def test_student_row_values_are_escaped_and_a_missing_gate_report_is_said(run, tmp_path):
    cfg, result, eval_dir, _ = run
    student = {**result.leaderboard[0], "model": "student <script>&</script>", "role": "student", "accuracy": 0.5}
    moved = cfg.model_copy(update={"validation": cfg.validation.model_copy(update={"report_dir": str(tmp_path)})})
    html = render_report(moved, eval_dir, [*result.leaderboard, student], {"rows": [], "warnings": ["x < y"], "z": 3})
    page = parse(html)
    assert "script" not in page.tags  # the model name stayed text
    assert "student <script>&</script>" in "".join(page.text) and "WARNING: x < y" in "".join(page.text)
    rows = page.table("Distilled student")
    assert rows[0] == ["metric", "student", "ensemble", "student - ensemble"]
    assert rows[1][:2] == ["accuracy", "0.5000"]
    assert f"No data-gate report at {tmp_path / 'validation.json'}" in "".join(page.text)


def test_prefect_run_report_embeds_the_key_plots(run):
    from tasks.report import KEY_PLOTS, plots_section  # deferred: prefect

    _, _, eval_dir, _ = run
    markdown = "\n".join(plots_section(eval_dir))
    assert str(eval_dir / REPORT_HTML) in markdown
    for name in KEY_PLOTS:
        encoded = base64.b64encode((eval_dir / "plots" / name).read_bytes()).decode("ascii")
        assert f"![{name[:-4]}](data:image/png;base64,{encoded})" in markdown
    assert f"`{eval_dir / 'plots' / 'roc.png'}`" in markdown  # the others by path
    small = "\n".join(plots_section(eval_dir, budget=10))
    assert "data:image" not in small and f"`{eval_dir / 'plots' / 'confusion.png'}` (too large" in small

"""The pages a user opens load nothing from the internet: the service's /docs and /redoc (Swagger UI and ReDoc
served from /static by the service itself, over uvicorn on 127.0.0.1) and the Great Expectations Data Docs the
validate stage builds (no CDN scripts or styles; the index lists every stored result under the foldstack run's
name, as plain HTML, linking to a result page that exists)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from foldstack.config import load_config
from foldstack.ops.serving import ModelSource, ServingLimits, create_app
from foldstack.pipeline import stages
from foldstack.pipeline.stages import Layout, run_pipeline
from tests.conftest import write_params
from tests.unit.ops.test_serving import ServerThread

REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)


class Page(HTMLParser):
    """The URLs a page loads (script src, link href, img src) and its links (a href -> text)."""

    def __init__(self, text: str):
        super().__init__()
        self.loads: list[tuple[str, str]] = []
        self.links: list[tuple[str, str]] = []
        self._anchor: list[str] | None = None
        self._href = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img") and attrs.get("src"):
            self.loads.append((tag, attrs["src"]))
        elif tag == "link" and attrs.get("href"):
            self.loads.append((tag, attrs["href"]))
        elif tag == "a" and attrs.get("href"):
            self._anchor, self._href = [], attrs["href"]

    def handle_data(self, data):
        if self._anchor is not None:
            self._anchor.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._anchor is not None:
            self.links.append((self._href, "".join(self._anchor).strip()))
            self._anchor = None


# ------------------------------------------------------------------------------------- /docs, /redoc
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, demo_csv):
    directory = tmp_path_factory.mktemp("offline-train")
    cfg = load_config(write_params(directory, demo_csv))
    run_pipeline(cfg)
    return Layout.of(cfg).bundle


@pytest.mark.parametrize("path, asset_kinds", [("/docs", {"script", "link"}), ("/redoc", {"script", "link"})])
def test_api_pages_load_only_local_assets(bundle_dir, path, asset_kinds):
    app = create_app(ModelSource(str(bundle_dir)), limits=ServingLimits(max_batch=8, max_text_chars=200),
                     reload_seconds=None)
    with ServerThread(app) as client:
        answer = client.get(path)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        page = Page(answer.text)
        assert {kind for kind, _ in page.loads} >= asset_kinds, page.loads
        remote = [url for _, url in page.loads if REMOTE.match(url)]
        assert not remote, f"{path} loads from the internet: {remote}"
        assert "https://" not in answer.text and "http://" not in answer.text
        for _, url in page.loads:
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, (url, asset.status_code)
        script = next(url for kind, url in page.loads if kind == "script")
        assert "javascript" in client.get(script).headers["content-type"]
        document = client.get("/openapi.json")
        assert document.status_code == 200 and "/predict" in document.json()["paths"]
        # The pages and their assets are not API endpoints: the document does not list them.
        assert not {p for p in document.json()["paths"] if p.startswith(("/docs", "/redoc", "/static"))}


# ----------------------------------------------------------------------------------------- Data Docs
def test_data_docs_list_each_run_offline_under_its_foldstack_name(tmp_path, demo_csv):
    cfg = load_config(write_params(tmp_path, demo_csv))
    stages.validate(cfg)
    summary = stages.validate(cfg)["validation"]  # a second run: the index lists both, older pages still work
    site = Path(summary["data_docs"].removeprefix("file://")).parent
    store = tmp_path / "gx" / "uncommitted" / "validations" / "foldstack_training_data"
    run_names = sorted(p.name for p in store.iterdir())
    assert len(run_names) == 2 and all(re.fullmatch(r"foldstack-\d{8}T\d{6}\.\d{3}Z-data-[0-9a-f]{12}", n)
                                       for n in run_names), run_names
    assert run_names[0].split("-data-")[1] == run_names[1].split("-data-")[1]  # the same data, the same hash

    index_text = (site / "index.html").read_text(encoding="utf-8")
    assert "__none__" not in index_text
    index = Page(index_text)
    result_links = [(href, text) for href, text in index.links if href.startswith("validations/")]
    # Each run validated two suites (training data, holdout): four results, each linked under its run's name.
    assert sorted(text for _, text in result_links) == sorted(run_names * 2), result_links
    for href, text in result_links:
        page = site / href
        assert page.is_file(), href
        assert f"/{text}/" in href
        result = Page(page.read_text(encoding="utf-8"))
        assert not [url for _, url in result.loads if REMOTE.match(url)], (href, result.loads)
        for _, url in result.loads:  # the logo and the favicon come from the site's own static/
            assert (page.parent / url).resolve().is_file(), url
    assert not [url for _, url in index.loads if REMOTE.match(url)], index.loads
    suites = {text for href, text in index.links if href.startswith("expectations/")}
    assert suites == {"foldstack_training_data", "foldstack_holdout"}
    assert all((site / "expectations" / f"{name}.html").is_file() for name in suites)
    assert "Success" in index_text and "10 of 10" in index_text
    report = (tmp_path / "reports" / "validation.md").read_text(encoding="utf-8")
    assert "open offline" in report.split("Data Docs:")[1]

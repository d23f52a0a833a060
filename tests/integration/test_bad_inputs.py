"""Every kind of bad input a user can give, through the real CLI: exit code 2, a message naming the file,
column, row or key, and never a traceback.

Each case is a directory with a params file and data files, run as `foldstack <command> --params ...` in a
subprocess. The module's fixture runs the selected cases two at a time (most stop within a second).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

FOLDSTACK = Path(sys.executable).parent / "foldstack"  # the console script pyproject installs
DIRECTORY = object()  # a `files` value: make a directory there instead of a file
DROP = object()  # a `params` value: remove that key from the cheap params

# Cheap params: one scikit-learn model, two folds, no GX gate (its cases say so), no W&B.
CHEAP_PARAMS: dict[str, Any] = {
    "seed": 0,
    "data": {"path": "data.csv"},
    "folds": {"k": 2},
    "base_models": {"tfidf_lr": {"kind": "tfidf_lr"}},
    "meta": {"kind": "logreg"},
    "evaluate": {"plots": False},
    "tracking": {"mode": "disabled"},
    "validation": {"enabled": False, "data_docs": False},
    "runtime": {"artifacts_dir": "artifacts", "cache_dir": "cache", "max_workers": 1, "device": "cpu"},
}
GATE_ON = {"validation": {"enabled": True}}


def _csv(rows: list[tuple[Any, ...]], header: tuple[str, ...] = ("text", "label"), delimiter: str = ",") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _jsonl(rows: list[tuple[str, str]]) -> list[str]:
    return [json.dumps({"text": text, "label": label}) for text, label in rows]


GOOD_ROWS = [(f"{label} sample number {i} with words", label) for label in ("neg", "pos") for i in range(12)]


def _rows_with(changes: dict[int, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """GOOD_ROWS with some replaced, by data row number (from 1, as foldstack counts rows)."""
    return [changes.get(number, row) for number, row in enumerate(GOOD_ROWS, start=1)]


GOOD_CSV = _csv(GOOD_ROWS)
GOOD_LINES = GOOD_CSV.splitlines()  # line 1 is the header, line N + 1 holds data row N
BLOCKED = {"data.csv": GOOD_CSV, "blocker": "a file"}  # a regular file where a case puts a directory


def _file_with_lines(lines: dict[int, str], good: list[str] = GOOD_LINES) -> str:
    """The lines `good` (the good CSV by default) with raw lines put in, each to become line N of the file
    (N from 1, a header included)."""
    out = list(good)
    for number in sorted(lines):
        out.insert(number - 1, lines[number])
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class BadInput:
    id: str
    expect: tuple[str, ...]  # fragments the output must contain, all on the `error:` line when one_line
    files: dict[str, Any] = field(default_factory=lambda: {"data.csv": GOOD_CSV})
    params: dict[str, Any] = field(default_factory=dict)  # merged into CHEAP_PARAMS
    params_text: str | None = None  # the params file verbatim instead
    params_name: str = "params.yaml"
    command: tuple[str, ...] = ("train",)
    args: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    one_line: bool = True  # False: the gate's multi-line summary, or typer's usage box


CASES = [
    # ------------------------------------------------------------------------------ the params file
    BadInput("params missing", ("nope.yaml: params file not found",), params_name="nope.yaml"),
    BadInput("params is a directory", ("conf: is a directory, expected a params file",),
             files={"conf": DIRECTORY}, params_name="conf"),
    BadInput("params bad yaml", ("params.yaml: not valid YAML", "line 2, column 1"), params_text="data: [1, 2\n"),
    BadInput("params empty", ("params.yaml: the params file is empty", "base_models"), params_text=""),
    BadInput("params only comments", ("params.yaml: the params file is empty",), params_text="# later\n"),
    BadInput("params not a mapping", ("params.yaml: expected a mapping of sections", "list"),
             params_text="- tfidf_lr\n- nb_svm\n"),
    BadInput("params not utf-8", ("params.yaml: not UTF-8 text",), params_text="seed: 0 # caf\udce9\n"),
    BadInput("no base models", ("base_models: at least one base model is needed",), params={"base_models": DROP}),
    BadInput("unknown top-level key", ("foldz: unknown key",), params={"foldz": {"k": 3}}),
    BadInput("unknown nested key", ("data.txt_column: unknown key",), params={"data": {"txt_column": "text"}}),
    BadInput("wrong type", ("folds.k: Input should be a valid integer",), params={"folds": {"k": "three"}}),
    BadInput("impossible value", ("folds.k: Input should be greater than or equal to 2",), params={"folds": {"k": 1}}),
    BadInput("unknown meta kind", ("meta.kind: must be one of",), params={"meta": {"kind": "xgboost"}}),
    BadInput("unknown data format", ("data.format: must be one of",), params={"data": {"format": "xml"}}),
    BadInput("bad cron", ("runtime.retrain_cron", "is not a cron schedule"),
             params={"runtime": {"retrain_cron": "every monday"}}),
    BadInput("min chars above max", ("min_text_chars (10) is larger than max_text_chars (5)",),
             params={"data": {"min_text_chars": 10, "max_text_chars": 5}}),
    BadInput("unknown model kind", ("base_models.lr: unknown model kind 'xgboost'", "available kinds"),
             params={"base_models": {"lr": {"kind": "xgboost"}}}),
    BadInput("model without kind", ("base_models.lr.kind: Field required",),
             params={"base_models": {"lr": {"params": {"C": 1}}}}),
    BadInput("bad model param", ("base_models.tfidf_lr: params of 'tfidf_lr': C: Input should be greater than 0",),
             params={"base_models": {"tfidf_lr": {"params": {"C": -1}}}}),
    BadInput("unknown model param", ("base_models.tfidf_lr: params of 'tfidf_lr': bogus: unknown key",),
             params={"base_models": {"tfidf_lr": {"params": {"bogus": 1}}}}),
    BadInput("duplicate model names", ("base model names must be unique; repeated: lr",),
             params={"base_models": [{"name": "lr", "kind": "tfidf_lr"}, {"name": "lr", "kind": "nb_svm"}]}),
    BadInput("duplicate model key", ("params.yaml: not valid YAML", "line 4", "the key 'lr' appears twice"),
             params_text="data: {path: data.csv}\nbase_models:\n  lr: {kind: tfidf_lr}\n  lr: {kind: nb_svm}\n"),
    BadInput("missing local model directory",
             ("base_models.emb.params.model", "model source 'models/minilm' is not a local directory",
              "A relative directory is looked for in"),
             params={"base_models": {"emb": {"kind": "embed_lr", "params": {"model": "models/minilm"}}}},
             absent=("tfidf_lr/r0",)),  # checked before tfidf_lr (listed first) trains a single fold
    BadInput("test_path missing", ("test.csv: data file not found",), params={"data": {"test_path": "test.csv"}}),
    # ------------------------------------------------------------------------- --set overrides, usage
    BadInput("set without value", ("override 'meta.kind': expected KEY.PATH=VALUE",), args=("--set", "meta.kind")),
    BadInput("set unknown base model", ("override 'base_models.nope.params.C'", "no entry named 'nope'"),
             args=("--set", "base_models.nope.params.C=1")),
    BadInput("set under a value", ("override 'seed.x': seed is a value, not a section",), args=("--set", "seed.x=1")),
    BadInput("set bad yaml value", ("override 'meta.kind=[vote'", "not valid YAML"), args=("--set", "meta.kind=[vote")),
    BadInput("unknown cli option", ("No such option", "--bogus"), args=("--bogus",), one_line=False),
    BadInput("stage of an unknown model", ("no base model named 'nope'",), command=("stage", "train-base", "nope")),
    # --------------------------------------------------------------------------- output directories
    BadInput("artifacts dir under a file", ("runtime.artifacts_dir", "blocker/artifacts cannot be created",
                                            "is a file"),
             files=BLOCKED, params={"runtime": {"artifacts_dir": "blocker/artifacts"}}),
    BadInput("artifacts dir is a file", ("runtime.artifacts_dir", "blocker is a file, not a directory"),
             files=BLOCKED, params={"runtime": {"artifacts_dir": "blocker"}}),
    BadInput("cache dir under a file", ("runtime.cache_dir", "blocker/cache cannot be created"),
             files=BLOCKED, params={"runtime": {"cache_dir": "blocker/cache"}}),
    BadInput("report dir under a file", ("validation.report_dir", "blocker/reports cannot be created"),
             files=BLOCKED,
             params={"validation": {"enabled": True, "report_dir": "blocker/reports"}}),
    # ------------------------------------------------------------------------------- the data file
    BadInput("data missing", ("data.csv: data file not found",), files={}),
    BadInput("data is a directory", ("data.csv: is a directory, expected a data file",), files={"data.csv": DIRECTORY}),
    BadInput("data empty", ("data.csv: the file is empty",), files={"data.csv": ""}),
    BadInput("header only", ("data.csv: the file has a header but no data rows",), files={"data.csv": "text,label\n"}),
    BadInput("non-utf-8 bytes", ("data.csv: not valid UTF-8 at byte", "(line 4)"),
             files={"data.csv": _file_with_lines({4: "caf\xe9 au lait,neg"}).encode("latin-1")}),
    BadInput("unknown extension", ("data.txt: cannot tell the format from the extension '.txt'", "data.format"),
             files={"data.txt": GOOD_CSV}, params={"data": {"path": "data.txt"}}),
    BadInput("corrupt parquet", ("data.parquet: cannot be read as parquet",),
             files={"data.parquet": b"this is not parquet"}, params={"data": {"path": "data.parquet"}}),
    BadInput("missing text column", ("data.csv: missing column(s) 'text'", "'review'", "data.text_column"),
             files={"data.csv": _csv(GOOD_ROWS, header=("review", "label"))}),
    BadInput("missing label column", ("data.csv: missing column(s) 'label'", "'sentiment'"),
             files={"data.csv": _csv(GOOD_ROWS, header=("text", "sentiment"))}),
    BadInput("null text", ("data.csv: column 'text' is empty (null) at row(s) 3",),
             files={"data.csv": _csv(_rows_with({3: ("", "neg")}))}),
    BadInput("blank text", ("data.csv: column 'text' is blank at row(s) 3, 7",),
             files={"data.csv": _csv(_rows_with({3: ("   ", "neg"), 7: ("\t", "neg")}))}),
    BadInput("too long text", ("data.csv: column 'text' is longer than data.max_text_chars=40 at row(s) 5",),
             files={"data.csv": _csv(_rows_with({5: ("word " * 20, "neg")}))}, params={"data": {"max_text_chars": 40}}),
    BadInput("null label", ("data.csv: column 'label' is empty at row(s) 2",),
             files={"data.csv": _csv(_rows_with({2: ("a text with no label at all", "")}))}),
    BadInput("single class", ("data.csv: column 'label' has a single class ['neg']",),
             files={"data.csv": _csv([(text, "neg") for text, _ in GOOD_ROWS])}),
    BadInput("too few rows per class for k", ("too few training rows for folds.k=5", "'rare' has"),
             files={"data.csv": _csv(GOOD_ROWS + [(f"a rare remark {i} about lids", "rare") for i in range(5)])},
             params={"folds": {"k": 5}}),
    BadInput("label outside data.labels", ("data.csv: column 'label' has label(s) ['pos'] outside data.labels",),
             params={"data": {"labels": ["neg", "meh"]}}),
    BadInput("test file label unseen", ("test.csv: label(s) ['meh'] never seen in the training data",),
             files={"data.csv": GOOD_CSV, "test.csv": _csv([("a meh sort of text", "meh"), ("neg thing", "neg")])},
             params={"data": {"test_path": "test.csv"}}),
    BadInput("extra fields in some rows", ("data.csv: cannot be read as csv: line 4 has 3 fields, the header has 2",
                                           "(so does line 9)", "double quotes"),
             files={"data.csv": _file_with_lines({4: "an, unquoted text,neg", 9: "another, unquoted text,neg"})}),
    BadInput("extra fields in the first rows",
             ("data.csv: cannot be read as csv: line 2 has 3 fields, the header has 2",),
             files={"data.csv": _file_with_lines({2: "an, unquoted text,neg"})}),
    BadInput("extra fields after a multi-line text", ("line 5 has 3 fields, the header has 2",),
             files={"data.csv": _file_with_lines({3: '"a text over\ntwo lines",neg', 4: "an, unquoted text,neg"})}),
    BadInput("extra fields in a tsv", ("data.tsv: cannot be read as tsv: line 3 has 3 fields, the header has 2", "tab"),
             files={"data.tsv": _csv(GOOD_ROWS[:1] + [("a tab\tinside", "neg")] + GOOD_ROWS[1:], delimiter="\t")},
             params={"data": {"path": "data.tsv"}}),
    BadInput("extra fields through the gate", ("line 2 has 3 fields, the header has 2", "Data validation FAILED"),
             files={"data.csv": _file_with_lines({2: "an, unquoted text,neg"})}, params=GATE_ON, one_line=False),
    BadInput("bad jsonl line", ("data.jsonl: line 3 is not valid JSON (Expecting value at column 32)",),
             files={"data.jsonl": _file_with_lines({3: '{"text": "cut short", "label": '}, _jsonl(GOOD_ROWS))},
             params={"data": {"path": "data.jsonl"}}),
    BadInput("jsonl line not an object", ("data.jsonl: line 2 is a JSON list, not an object",),
             files={"data.jsonl": _file_with_lines({2: '["a text", "neg"]'}, _jsonl(GOOD_ROWS))},
             params={"data": {"path": "data.jsonl"}}),
    # -------------------------------------------------------------------- found only once training starts
    BadInput("all-numeric texts", ("base_models.tfidf_lr (fold tfidf_lr/r0-k", "tfidf_lr: no term occurs in at least "
                                   "min_df=2", "lower params.min_df"),
             files={"data.csv": _csv([(str(1000 + 7 * i), label) for i, (_, label) in enumerate(GOOD_ROWS)])}),
    BadInput("fewer overlap groups than k", ("form only 4 overlap group(s), fewer than folds.k=5",),
             files={"data.csv": _csv([(f"{label} {word} example text", label) for label in ("neg", "pos")
                                      for word in ("alpha", "beta", "gamma") for _ in range(4)])},
             params={"folds": {"k": 5}}),
    BadInput("holdout swallows a class", ("went to the holdout", "split.holdout_fraction"),
             files={"data.csv": _csv([("the very same negative text", "neg")] * 10
                                     + [("another identical positive text", "pos")] * 10)}),
    # ------------------------------------------------------------------------- the Great Expectations gate
    BadInput("null label through the gate", ("ERROR label_not_null", "row=2"),
             files={"data.csv": _csv(_rows_with({2: ("a text with no label at all", "")}))},
             params=GATE_ON, command=("validate-data",), absent=("consistent_labels",), one_line=False),
]


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if value is DROP:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _prepare(case: BadInput, directory: Path) -> None:
    directory.mkdir(parents=True)
    for name, content in case.files.items():
        path = directory / name
        if content is DIRECTORY:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.params_name == "params.yaml":
        text = case.params_text if case.params_text is not None else \
            yaml.safe_dump(_merged(CHEAP_PARAMS, case.params), sort_keys=False)
        # surrogateescape: a lone surrogate in a case's text stands for a byte that is not UTF-8.
        (directory / "params.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))


def _run(case: BadInput, directory: Path) -> subprocess.CompletedProcess:
    _prepare(case, directory)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "GX_ANALYTICS_ENABLED": "false"}
    return subprocess.run([str(FOLDSTACK), *case.command, "--params", case.params_name, *case.args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The selected cases' runs, two at a time."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})}
    cases = [case for case in CASES if case.id in selected]
    root = tmp_path_factory.mktemp("bad_inputs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda case: _run(case, root / case.id.replace(" ", "_")), cases)
        return {case.id: run for case, run in zip(cases, runs)}


def test_the_corpus_is_broad_and_its_names_unique():
    assert len(CASES) >= 30 and len({case.id for case in CASES}) == len(CASES)
    assert sum(case.command == ("train",) for case in CASES) > len(CASES) / 2, "most go through `foldstack train`"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_gets_a_message_and_no_traceback(case: BadInput, outcomes):
    run = outcomes[case.id]
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    for fragment in case.expect:
        assert fragment in output, output
    for fragment in case.absent:
        assert fragment not in output, output
    if case.one_line:
        error_lines = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1, output
        for fragment in case.expect:
            assert fragment in error_lines[0], f"not on the error line: {fragment!r}\n{output}"


def test_an_unexpected_exception_is_one_line_with_its_traceback_in_a_log(tmp_path):
    # A stand-in bug: loading the params raises what no user input can cause.
    program = ("import sys\nimport foldstack.cli.main as cli\n"
               "def broken(*args, **kwargs):\n    raise RuntimeError('boom\\nsecond line')\n"
               "cli.load_config = broken\nsys.argv = ['foldstack', 'validate-params']\ncli.main()\n")
    run = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    [line] = output.strip().splitlines()
    assert line.startswith("internal error: RuntimeError: boom …; the traceback is in "), line
    [log] = (tmp_path / ".foldstack" / "logs").glob("foldstack-*.log")
    assert line.endswith(str(log))
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text and "command: foldstack validate-params" in text

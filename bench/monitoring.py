"""Monitoring benchmark (issue 17): against a real served model, how often does the monitor cry wolf on in-domain
traffic, and how many shifted requests does it take to notice another domain or a class-balance shift?

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/monitoring.py           # ~5 min on 2 busy cores
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/monitoring.py --quick   # smoke run, ~1 min

1. A bundle trained by the product's own pipeline (`run_pipeline`) on one shared data set (default rt_polarity,
   `<data-root>/<name>/all.csv`, read in place): seed 0, 20 % holdout, k=5, tfidf_lr + nb_svm + a logreg meta
   (embed_lr is left out: embedding 10k training texts would double the run). Its training snapshot
   (artifacts/snapshot/train.parquet) and holdout predictions are the monitor's reference. The work dir
   (default bench/.work/monitoring, git-ignored) is wiped first: nothing is resumed, the embedding cache is cold.
2. `foldstack serve-model --model <bundle> --params <work>/params.yaml` in its own process on 127.0.0.1, with
   `monitoring.store_texts: true` and the log under the work dir. The texts go in over HTTP (`POST /predict`,
   100 texts per request) and ground truth for a fifth of the in-domain and class-balance texts over
   `POST /feedback`; the server is stopped with SIGTERM (which flushes the log) before the log is read.
3. In-domain: 20 windows of `--window` (default 500 = monitoring.window_requests) holdout texts (never trained
   on), each a sample without replacement seeded per window. The holdout has ~2,100 rows, so windows overlap
   (share texts); the holdout is also the reference of the prediction, confidence and OOV checks, so this
   measures the checks' sampling noise on traffic like the holdout, not a slow real-world drift.
   `check_window` on each window of the real log (read once with `read_prediction_log`) -> false-alarm rate.
4. Shifted streams, each sent after a block of in-domain texts: another domain (ag_news_test texts, then
   sms_spam texts) and a class-balance shift (holdout texts, 80 % then 90 % of them of one class). After n
   shifted requests the window is the newest `--window` rows of the log: the last window-n in-domain rows and
   the first n shifted ones, exactly what `foldstack monitor` would see then. The detection delay is the
   smallest n of the grid at which drift_detected is true.
5. The real `foldstack monitor` CLI once at the end (newest window = the last shifted stream: exit code 3 expected)
   and its wall time, beside the time of one in-process `check_window`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/monitoring.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402
from foldstack.ops.monitoring.checks import ACCURACY_BOUND_Z  # noqa: E402

MODELS = [{"name": "tfidf_lr", "kind": "tfidf_lr", "params": {}}, {"name": "nb_svm", "kind": "nb_svm", "params": {}}]
IN_DOMAIN_WINDOWS = 20
DELAY_GRID = (25, 50, 100, 150, 200, 300, 400, 500)
QUICK_GRID = (25, 50, 75, 100)
BATCH = 100  # texts per POST /predict
FEEDBACK_SHARE = 0.2  # the share of in-domain / class-balance requests that get a ground-truth label
SEED = 0
CHECK_NAMES = ("text_length_psi", "oov_rate_increase", "embedding_auc", "prediction_psi", "confidence_psi",
               "accuracy_drop")
SHORT = {"text_length_psi": "length", "oov_rate_increase": "oov", "embedding_auc": "embedding",
         "prediction_psi": "prediction", "confidence_psi": "confidence", "accuracy_drop": "accuracy"}


# ------------------------------------------------------------------------------------------------------------
# pure helpers (tests/bench/test_monitoring_bench.py)
# ------------------------------------------------------------------------------------------------------------
def shifted_window(n_rows: int, shift_start: int, n: int, window: int) -> slice:
    """The newest `window` rows of a log after `n` shifted rows that begin at row `shift_start`."""
    end = shift_start + n
    if n < 1 or end > n_rows:
        raise ValueError(f"{n} shifted rows from row {shift_start} do not fit in a log of {n_rows} rows")
    return slice(max(0, end - window), end)


def detection_delay(drifted: dict[int, bool]) -> int | None:
    """The smallest n whose window was called drift (None: none was)."""
    return min((n for n, flag in drifted.items() if flag), default=None)


def balanced_sample(labels: np.ndarray, size: int, majority: int, share: float, seed: int) -> np.ndarray:
    """Row indices: round(share*size) rows of class `majority`, the rest of the other classes, shuffled."""
    rng = np.random.default_rng(seed)
    major = np.flatnonzero(labels == majority)
    minor = np.flatnonzero(labels != majority)
    k = round(share * size)
    if k > major.size or size - k > minor.size:
        raise ValueError(f"{size} rows at {share:.0%} of class {majority} need {k} and {size - k} rows")
    picked = np.concatenate([rng.choice(major, k, replace=False), rng.choice(minor, size - k, replace=False)])
    return rng.permutation(picked)


def accuracy_false_alarm(holdout_accuracy: float, n: int, drop: float, z: float = ACCURACY_BOUND_Z) -> float:
    """The chance that accuracy_drop calls drift on n labels of a model exactly as accurate as on the holdout:
    the binomial mass of live accuracies below the holdout's by more than `drop` whose Wilson bound (z) is below
    it too (the holdout accuracy taken as exact)."""
    from scipy.stats import binom

    from foldstack.core.drift import wilson_upper

    return float(sum(binom.pmf(k, n, holdout_accuracy) for k in range(n + 1)
                     if holdout_accuracy - k / n > drop and wilson_upper(k, n, z) < holdout_accuracy))


def firing(result: dict[str, Any]) -> list[str]:
    return [c["name"] for c in result["checks"] if c["verdict"] == "drift"]


def statistic(result: dict[str, Any], name: str) -> float | None:
    return next(c["statistic"] for c in result["checks"] if c["name"] == name)


# ------------------------------------------------------------------------------------------------------------
# the project, the server and the traffic
# ------------------------------------------------------------------------------------------------------------
def make_project(args: argparse.Namespace, work_dir: Path) -> Path:
    """A fresh work dir with params.yaml; the pipeline trained on it. Returns the params file."""
    import yaml

    from bench.quality import bench_params

    data_path = args.data_root / args.dataset / "all.csv"
    if not data_path.is_file():
        raise SystemExit(f"{data_path}: data set {args.dataset!r} not found (expected <data-root>/<name>/all.csv)")
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    params = bench_params(data_path, work_dir, work_dir / "cache", k=3 if args.quick else 5,
                          max_rows=3000 if args.quick else None)
    params["base_models"] = [dict(m) for m in MODELS]
    params["evaluate"] = {"plots": False}
    params["tracking"] = {"mode": "disabled"}
    params["monitoring"] = {"log_dir": str(work_dir / "monitoring"), "store_texts": True, "flush_seconds": 0.5,
                            "reports_dir": str(work_dir / "monitor-reports"), "window_requests": args.window,
                            "checks": {"embedding_reference": 300 if args.quick else 1000}}
    path = work_dir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def start_server(bundle: Path, params: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    from bench.serving import free_port

    port = free_port()
    command = [sys.executable, "-m", "foldstack.cli", "serve-model", "--model", str(bundle), "--params", str(params),
               "--port", str(port), "--reload-seconds", "0", "--max-batch", str(BATCH)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not become healthy in 300 s")


class Traffic:
    """One HTTP client sending blocks of texts in order, remembering where each block starts in the log."""

    def __init__(self, url: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=300)
        self.sent = 0
        self.ids: list[str] = []
        self.feedback = 0
        self.seconds = 0.0

    def send(self, texts: list[str], labels: list[str] | None, seed: int) -> int:
        """POST the texts (BATCH per request), then labels for a seeded FEEDBACK_SHARE of them; the block's
        first row in the log."""
        start, started = self.sent, time.perf_counter()
        block: list[str] = []
        for i in range(0, len(texts), BATCH):
            answer = self.http.post("/predict", json={"texts": texts[i:i + BATCH]})
            answer.raise_for_status()
            block += [item["request_id"] for item in answer.json()["predictions"]]
        if labels is not None:
            rng = np.random.default_rng(seed)
            chosen = rng.choice(len(texts), round(FEEDBACK_SHARE * len(texts)), replace=False)
            items = [{"request_id": block[j], "label": labels[j]} for j in sorted(chosen)]
            self.http.post("/feedback", json={"items": items}).raise_for_status()
            self.feedback += len(items)
        self.ids += block
        self.sent += len(block)
        self.seconds += time.perf_counter() - started
        return start


def other_domain_texts(data_root: Path, name: str, size: int, seed: int) -> list[str]:
    import pandas as pd

    texts = pd.read_csv(data_root / name / "all.csv")["text"].astype(str)
    return texts.iloc[np.random.default_rng(seed).permutation(len(texts))[:size]].tolist()


def send_everything(args: argparse.Namespace, url: str, holdout: Any, names: list[str]) -> tuple[Traffic, dict]:
    """The in-domain windows, then each shifted stream after an in-domain block; {stream: its first log row}."""
    texts = holdout["text"].astype(str).to_numpy()
    codes = holdout["label"].to_numpy()
    labels = np.array([names[c] for c in codes])
    w = args.window

    def in_domain(seed: int) -> int:
        rows = np.random.default_rng(seed).permutation(len(texts))[:w]
        return traffic.send(texts[rows].tolist(), labels[rows].tolist(), seed)

    traffic = Traffic(url)
    starts: dict[str, Any] = {"in-domain": [in_domain(1000 + i) for i in range(IN_DOMAIN_WINDOWS)]}
    majority = len(names) - 1
    for share in (0.8, 0.9):
        in_domain(2000 + round(100 * share))  # the stream starts after in-domain traffic
        rows = balanced_sample(codes, w, majority, share, SEED + round(100 * share))
        starts[f"class balance {share:.0%} '{names[majority]}'"] = traffic.send(
            texts[rows].tolist(), labels[rows].tolist(), 3000 + round(100 * share))
    for name in args.shift_domains:
        in_domain(4000 + len(starts))
        starts[f"other domain: {name}"] = traffic.send(other_domain_texts(args.data_root, name, w, SEED), None, 0)
    return traffic, starts


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)  # a graceful stop: the lifespan writes the buffered rows
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


# ------------------------------------------------------------------------------------------------------------
# the monitor over the real log
# ------------------------------------------------------------------------------------------------------------
def measure(cfg: Any, log: Any, feedback: Any, starts: dict[str, Any], window: int,
            grid: tuple[int, ...]) -> dict[str, Any]:
    from foldstack.ops.monitoring.checks import check_window
    from foldstack.ops.monitoring.reference import prepare_reference

    started = time.perf_counter()
    reference = prepare_reference(cfg)
    reference.embeddings()  # the 1000 reference texts, embedded once (cold cache): timed on its own
    reference_seconds = time.perf_counter() - started
    seconds: list[float] = []

    def check(rows: slice) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = check_window(log.iloc[rows], reference, cfg.monitoring.checks,
                              min_requests=cfg.monitoring.min_requests, feedback=feedback,
                              ece_bins=cfg.evaluate.ece_bins)
        seconds.append(time.perf_counter() - t0)
        return result

    in_domain = [check(slice(s, s + window)) for s in starts["in-domain"]]
    shifts = {name: {n: check(shifted_window(len(log), start, n, window)) for n in grid}
              for name, start in starts.items() if name != "in-domain"}
    return {"in_domain": in_domain, "shifts": shifts, "reference_seconds": reference_seconds,
            "check_seconds": seconds, "reference": reference.summary()}


def run_cli_monitor(params: Path) -> tuple[int, float, dict[str, Any], str]:
    """`foldstack monitor -p params` in a fresh process: (exit code, wall seconds, monitoring.json, stdout)."""
    from foldstack.common.files import read_json
    from foldstack.config import load_config

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "120"}  # rich's table, unwrapped
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "foldstack.cli", "monitor", "-p", str(params)], env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    cfg = load_config(params)
    report = read_json(cfg.resolve_path(cfg.monitoring.reports_dir) / "monitoring.json")
    return done.returncode, wall, report, done.stdout + done.stderr


def in_process_monitor(params: Path) -> float:
    from foldstack.config import load_config
    from foldstack.ops.monitoring.monitor import run_monitor

    cfg = load_config(params)
    started = time.perf_counter()
    run_monitor(cfg)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def in_domain_tables(results: list[dict[str, Any]], thresholds: dict[str, float]) -> tuple[str, str]:
    summary = []
    for name in CHECK_NAMES:
        values = [v for v in (statistic(r, name) for r in results) if v is not None]
        drifted = sum(name in firing(r) for r in results)
        summary.append([name, f"{thresholds[name]:g}", len(values), _fmt(min(values) if values else None),
                        _fmt(statistics.median(values) if values else None),
                        _fmt(max(values) if values else None), drifted])
    per_window = [[i + 1, *(_fmt(statistic(r, n)) for n in CHECK_NAMES), r["n_feedback"],
                   ", ".join(firing(r)) or "no"] for i, r in enumerate(results)]
    return (markdown_table(["check", "threshold", "windows with a statistic", "min", "median", "max",
                            "windows called drift"], summary),
            markdown_table(["window", *(SHORT[n] for n in CHECK_NAMES), "labelled", "drift"], per_window))


def delay_tables(shifts: dict[str, dict[int, dict[str, Any]]],
                 window: int) -> tuple[str, str, str, dict[str, Any]]:
    grid = sorted(next(iter(shifts.values())))
    rows, full, delays, psi = [], [], {}, []
    for stream, by_n in shifts.items():
        psi.append([stream, *(_fmt(statistic(by_n[n], "prediction_psi")) for n in grid)])
        delay = detection_delay({n: r["drift_detected"] for n, r in by_n.items()})
        delays[stream] = (delay, firing(by_n[delay]) if delay else [])
        cells = [", ".join(SHORT[c] for c in firing(by_n[n])) or "–" for n in grid]
        rows.append([stream, "not within " + str(grid[-1]) if delay is None else delay, *cells])
        last = by_n[grid[-1]]
        full.append([stream, *(_fmt(statistic(last, n)) for n in CHECK_NAMES)])
    return (markdown_table(["stream", "delay (requests)", *(f"n={n}" for n in grid)], rows),
            markdown_table([f"stream (n={grid[-1]} of {window})", *(SHORT[n] for n in CHECK_NAMES)], full),
            markdown_table(["prediction_psi of", *(f"n={n}" for n in grid)], psi), delays)


def run(args: argparse.Namespace) -> str:
    from foldstack.config import load_config
    from foldstack.ops.monitoring.feedback import read_feedback
    from foldstack.ops.monitoring.logfiles import read_prediction_log
    from foldstack.pipeline.layout import load_snapshot
    from foldstack.pipeline.stages import run_pipeline

    began, load_at_start = time.perf_counter(), os.getloadavg()[0]
    work_dir = args.work_dir.resolve()
    params = make_project(args, work_dir)
    cfg = load_config(params)
    print(f"[train] {args.dataset}: tfidf_lr + nb_svm under {work_dir}", flush=True)
    t0 = time.perf_counter()
    trained = run_pipeline(cfg, report=lambda event, info: None)
    train_seconds = time.perf_counter() - t0
    snapshot = load_snapshot(cfg)
    names = [str(n) for n in snapshot.label_map.names]

    t0 = time.perf_counter()
    server, url = start_server(trained.bundle, params)
    start_seconds = time.perf_counter() - t0
    try:
        print(f"[serve] up in {start_seconds:.1f} s on {url}; sending", flush=True)
        traffic, starts = send_everything(args, url, snapshot.holdout, names)
    finally:
        stop_server(server)
    log_dir = cfg.resolve_path(cfg.monitoring.log_dir)
    log, feedback = read_prediction_log(log_dir), read_feedback(log_dir)
    if sorted(log["request_id"]) != sorted(traffic.ids):
        raise RuntimeError(f"the log holds {len(log)} rows, {traffic.sent} texts were sent")
    in_order = log["request_id"].tolist() == traffic.ids
    if not in_order:  # the measurement needs the send order; say so in the report
        log = log.set_index("request_id").loc[traffic.ids].reset_index()

    print(f"[monitor] {len(log)} logged rows, {len(feedback)} labels; checking windows", flush=True)
    grid = tuple(n for n in (QUICK_GRID if args.quick else DELAY_GRID) if n <= args.window)
    measured = measure(cfg, log, feedback, starts, args.window, grid)
    code, cli_seconds, cli_report, cli_output = run_cli_monitor(params)
    run_monitor_seconds = in_process_monitor(params)
    thresholds = {c["name"]: c["threshold"] for c in measured["in_domain"][0]["checks"]}
    return write_report(args, locals())


def false_alarm_lines(results: list[dict[str, Any]], thresholds: dict[str, float], holdout_accuracy: float,
                      drop: float, min_feedback: int) -> list[str]:
    alarms = [i + 1 for i, r in enumerate(results) if r["drift_detected"]]
    n = len(results)
    which = "; ".join(f"window {i}: {', '.join(firing(results[i - 1]))}" for i in alarms)
    lines = [f"- False-alarm rate on in-domain traffic: {len(alarms)} of {n} windows ({len(alarms) / n:.0%}) called "
             f"drift{f' ({which})' if alarms else ''}; the issue asks for at most 1 of {n}."]
    without = [i for i in alarms if set(firing(results[i - 1])) - {"accuracy_drop"}]
    maxima = []
    for name in CHECK_NAMES:
        values = [x for x in (statistic(r, name) for r in results) if x is not None]
        if values:
            maxima.append(f"{name} {max(values):.3f} (threshold {thresholds[name]:g})")
    lines.append(f"- The input and prediction checks alone: {len(without)} of {n}. Largest in-domain statistics: "
                 + ", ".join(maxima) + ".")
    k = statistics.median_low([r["n_feedback"] for r in results])
    if k >= min_feedback:
        lines.append(
            f"- accuracy_drop is a one-sided test at 99% (the Wilson bound's z = {ACCURACY_BOUND_Z}): on {k} labels of "
            f"a model exactly as accurate as on the holdout ({holdout_accuracy:.3f}) it calls drift with probability "
            f"{accuracy_false_alarm(holdout_accuracy, k, drop):.1%} per window by construction (binomial, holdout "
            f"accuracy taken as exact); at 95% (z = 1.645) it would be "
            f"{accuracy_false_alarm(holdout_accuracy, k, drop, 1.645):.1%}, the whole 1-in-20 budget on its own.")
    return lines


def write_report(args: argparse.Namespace, v: dict[str, Any]) -> str:
    measured, window, names = v["measured"], args.window, v["names"]
    in_domain = measured["in_domain"]
    summary, per_window = in_domain_tables(in_domain, v["thresholds"])
    delay_table, full_table, psi_table, delays = delay_tables(measured["shifts"], window)
    cli = v["cli_report"]
    last_stream = list(measured["shifts"])[-1]
    cli_matches = [c["verdict"] for c in cli["checks"]] == [
        c["verdict"] for c in measured["shifts"][last_stream][max(measured["shifts"][last_stream])]["checks"]]
    checks = measured["check_seconds"]
    ref = measured["reference"]
    delay_lines = [f"- {stream}: " + (f"not detected within {max(measured['shifts'][stream])} shifted requests"
                                      if d is None else f"detected after {d} shifted requests (of a window of "
                                      f"{window}: {d / window:.0%} of it), by {', '.join(fired)}")
                   for stream, (d, fired) in delays.items()]
    overlap = IN_DOMAIN_WINDOWS * window / len(v["snapshot"].holdout)
    lines = [
        "# Monitoring benchmark: false alarms and detection delay against a served model", "",
        f"Command: `{' '.join(['python', 'bench/monitoring.py', *sys.argv[1:]])}`"
        + (" (quick smoke run)" if args.quick else ""), "",
        f"Model: tfidf_lr + nb_svm (k={v['cfg'].folds.k}) + logreg meta, trained by `run_pipeline` on "
        f"{args.dataset} ({ref['n_train']} training rows, {len(v['snapshot'].holdout)} holdout rows, labels "
        f"{', '.join(names)}) in {v['train_seconds']:.0f} s; holdout accuracy {ref['holdout']['accuracy']:.3f}. "
        f"Served by `foldstack serve-model` (one process, 127.0.0.1, up in {v['start_seconds']:.0f} s) with "
        f"`monitoring.store_texts: true`; {v['traffic'].sent} texts sent in {v['traffic'].seconds:.0f} s "
        f"({BATCH} per request), {v['traffic'].feedback} ground-truth labels posted to /feedback "
        f"({FEEDBACK_SHARE:.0%} of the in-domain and class-balance requests). The log was read back whole "
        f"({len(v['log'])} rows, {len(v['feedback'])} labels"
        + ("" if v["in_order"] else "; its time order differed from the send order, so rows were put back in "
                                     "send order") + ").", "",
        f"Monitor settings: the defaults of params.yaml (window {window} requests, min_requests "
        f"{v['cfg'].monitoring.min_requests}, thresholds below, embedding model "
        f"{v['cfg'].monitoring.checks.embedding_model}, {v['cfg'].monitoring.checks.embedding_reference} reference "
        f"training texts).", "",
        "## Reading", "",
        *false_alarm_lines(in_domain, v["thresholds"], ref["holdout"]["accuracy"],
                           v["cfg"].monitoring.checks.accuracy_drop, v["cfg"].monitoring.checks.min_feedback),
        f"- The in-domain windows are drawn from the {len(v['snapshot'].holdout)} holdout texts (never trained "
        f"on), without replacement within a window, seeded per window: {IN_DOMAIN_WINDOWS} windows of {window} "
        f"use each holdout text {overlap:.1f} times on average, so the windows overlap and are not independent "
        f"draws. The holdout is also the reference of the prediction, confidence and OOV checks: this measures "
        f"the checks' sampling noise on traffic like the holdout.",
        *delay_lines,
        f"- Delay means the smallest n of the grid ({', '.join(map(str, v['grid']))})"
        f" at which the newest {window} rows of the log (window-n in-domain rows, then n shifted) are called drift: "
        f"the true delay lies between the previous grid point and it.",
        f"- `foldstack monitor` (the CLI, a fresh process) on the final log: exit code {v['code']} "
        f"({'drift detected' if v['code'] == 3 else 'unexpected: 3 means drift'}) in {v['cli_seconds']:.1f} s wall "
        f"(interpreter start, imports, reading the log and the artifacts, the checks with a warm embedding cache, "
        f"the reports and plots); `run_monitor` in-process {v['run_monitor_seconds']:.1f} s; one `check_window` "
        f"(in-process, reference ready): median {statistics.median(checks):.2f} s, max {max(checks):.2f} s over "
        f"{len(checks)} windows (the slow ones embed texts not cached yet, up to {window} of them; embedding the "
        f"reference's training texts once, cold cache: {measured['reference_seconds']:.0f} s)."
        f" Its verdicts {'match' if cli_matches else 'DIFFER from'} the bench's in-process check of the same window.",
        "",
        f"## In-domain: {IN_DOMAIN_WINDOWS} windows of {window} holdout texts", "",
        summary, "", per_window, "",
        f"accuracy: holdout accuracy minus live accuracy on the window's labelled requests (drift also needs the "
        f"one-sided 99% Wilson bound). Holdout: accuracy {ref['holdout']['accuracy']:.3f}, OOV rate "
        f"{ref['holdout_oov_rate']:.4f} against a training vocabulary of {ref['vocabulary']} tokens.", "",
        f"## Shifted streams: which checks fire after n shifted requests (window = newest {window} rows)", "",
        delay_table, "",
        "The class-balance streams are holdout texts, a share of them of the last label; the other-domain streams "
        "are random texts of those data sets (no labels posted: they are not in the model's label set).", "",
        full_table, "",
        f"The prediction_psi statistic as the shifted share of the window grows (threshold "
        f"{v['thresholds']['prediction_psi']:g}; the largest of the {IN_DOMAIN_WINDOWS} in-domain windows: "
        f"{max(statistic(r, 'prediction_psi') for r in in_domain):.3f}):", "",
        psi_table, "",
        "## `foldstack monitor` on the final log", "",
        "```", v["cli_output"].strip()[-3000:], "```", "",
        "## Machine", "", machine_markdown(),
        f"- load average (1 min) when the run began: {v['load_at_start']:.2f} (other work shares the cores)",
        f"- the whole run took {time.perf_counter() - v['began']:.0f} s", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    for var, value in {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}.items():
        os.environ.setdefault(var, value)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="rt_polarity")
    parser.add_argument("--shift-domains", nargs="+", default=["ag_news_test", "sms_spam"])
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / ".work" / "monitoring")
    parser.add_argument("--window", type=int, default=None, help="requests per window (default 500, quick 100)")
    parser.add_argument("--quick", action="store_true", help="3000 rows, k=3, windows of 100: a smoke run")
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/monitoring.md "
                                                                  "(quick: bench/.work/monitoring-quick.md)")
    args = parser.parse_args(argv)
    args.window = args.window or (100 if args.quick else 500)
    output = args.output or (REPO_ROOT / "bench" / ("results/monitoring.md" if not args.quick
                                                    else ".work/monitoring-quick.md"))
    report = run(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report, encoding="utf-8")
    print(report)
    print(f"written: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

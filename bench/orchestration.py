"""Prefect's overhead: `foldstack train` (in-process, no Prefect) against the `train-ensemble` flow, same params,
same machine, plus a rerun of the flow with nothing changed.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/orchestration.py           # the default demo
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/orchestration.py --quick   # 600 rows, 2 tfidf models

Every run is a fresh process, timed wall clock from its start to its exit, and starts cold: its own artifacts
and embedding cache, so neither reuses the other's work. The flow runs as a user runs it with no server
configured (`python -m flows.train`: Prefect's embedded server, a fresh database under PREFECT_HOME, as on a
project's first run); then a no-change rerun, and a later cold-training run whose embedded server finds its
database made (as every run after a project's first does); then the cold run and the no-change rerun against
an already running `prefect server`, to separate Prefect's start-up from the flow's own cost. Registration to git and W&B tracking are switched off
for both (`foldstack train` does neither), so both do the same work.

The result replaces the section between the orchestration markers in `bench/results/orchestration.md` (the
other sections belong to other benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import REPO_ROOT, machine_markdown, markdown_table, write_section  # noqa: E402
from foldstack.config import load_config  # noqa: E402

START, END = "<!-- orchestration:start -->", "<!-- orchestration:end -->"
RUN_TIMEOUT_S = 3600
# Prefect log lines look like "13:01:45.577 | INFO    | Flow run 'x' - Beginning flow run ..."
LOG_TIME = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+\s+\| (.*)$")


def _env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", PREFECT_HOME=str(prefect_home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO", PREFECT_UI_ENABLED="false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def make_params(work: Path, name: str, quick: bool, rows: int) -> Path:
    """The project's params.yaml for one run: its own artifacts and cache, no registry or tracking."""
    from foldstack.core.demo import write_demo_data

    data = work / "reviews.csv"
    if not data.exists():
        write_demo_data(data, rows=rows, n_classes=3, noise=0.05, seed=0)
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["path"] = str(data)
    raw.setdefault("runtime", {}).update(artifacts_dir=str(work / name / "artifacts"),
                                         cache_dir=str(work / name / "cache"))
    raw.setdefault("registry", {})["git_registry"] = False
    raw.setdefault("tracking", {})["mode"] = "disabled"
    if quick:
        raw["folds"]["k"] = 3
        raw["base_models"] = [{"name": "tfidf_lr", "kind": "tfidf_lr", "params": {}},
                              {"name": "nb_svm", "kind": "nb_svm", "params": {}}]
    path = work / name / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def timed(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run `command`; its wall seconds, stdout, and the Prefect log's own timestamps (start-up vs flow body)."""
    started = time.perf_counter()
    wall_start = datetime.now()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    marks: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        match = LOG_TIME.match(line)
        if not match:
            continue
        clock = datetime.combine(wall_start.date(), datetime.strptime(match.group(1), "%H:%M:%S.%f").time())
        offset = (clock - wall_start).total_seconds()
        message = match.group(2)
        if "Beginning flow run" in message and "flow_begins" not in marks:
            marks["flow_begins"] = offset
        elif "Flow run" in message and "Finished in state" in message:
            marks["flow_ends"] = offset
    return {"seconds": seconds, "stdout": proc.stdout, **marks}


def flow_result(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads(run["stdout"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=_env(home), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit("the Prefect server did not start within 180 s")


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def measure(work: Path, quick: bool, rows: int, with_server: bool) -> dict[str, Any]:
    python = sys.executable
    in_process_params = make_params(work, "in-process", quick, rows)
    flow_params = make_params(work, "flow", quick, rows)
    home = work / "prefect-home"
    results: dict[str, Any] = {}
    print("in-process `foldstack train` ...", flush=True)
    results["in_process"] = timed([str(Path(python).parent / "foldstack"), "train", "--params",
                                   str(in_process_params)], _env(home), work)
    print(f"  {results['in_process']['seconds']:.1f}s\nflow `python -m flows.train` ...", flush=True)
    results["flow"] = timed([python, "-m", "flows.train", "--params", str(flow_params)], _env(home), work)
    print(f"  {results['flow']['seconds']:.1f}s\nflow rerun, nothing changed ...", flush=True)
    results["rerun"] = timed([python, "-m", "flows.train", "--params", str(flow_params)], _env(home), work)
    print(f"  {results['rerun']['seconds']:.1f}s\nflow, cold training, the server's database exists ...", flush=True)
    # What every run after a project's first one sees: the same cold training, Prefect's database made.
    later_params = make_params(work, "flow-later", quick, rows)
    results["flow_later"] = timed([python, "-m", "flows.train", "--params", str(later_params)], _env(home), work)
    print(f"  {results['flow_later']['seconds']:.1f}s", flush=True)
    if with_server:
        server_params = make_params(work, "flow-server", quick, rows)
        print("flow against a running Prefect server, cold, then its rerun ...", flush=True)
        server, url = start_server(work / "server-home")
        try:
            results["flow_server"] = timed([python, "-m", "flows.train", "--params", str(server_params)],
                                           _env(home, url), work)
            results["rerun_server"] = timed([python, "-m", "flows.train", "--params", str(server_params)],
                                            _env(home, url), work)
        finally:
            stop_server(server)
        print(f"  {results['flow_server']['seconds']:.1f}s, rerun {results['rerun_server']['seconds']:.1f}s",
              flush=True)
    for name in ("flow", "rerun", "flow_later", "flow_server", "rerun_server"):
        if name in results:
            results[name]["result"] = {k: v for k, v in flow_result(results[name]).items() if k != "metrics"}
    cfg = load_config(flow_params)
    results["models"] = [spec.name for spec in cfg.base_models]
    results["k"] = cfg.folds.k
    results["load_average_after"] = os.getloadavg()
    return results


def _fmt(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}"


def section(results: dict[str, Any], command: str, rows: int) -> str:
    base = results["in_process"]["seconds"]
    flow = results["flow"]
    ratio = flow["seconds"] / base

    def row(label: str, run: dict[str, Any] | None, note: str) -> list[Any]:
        if run is None:
            return [label, "", "", "", "", note]
        startup = run.get("flow_begins")
        body = (run["flow_ends"] - run["flow_begins"]) if "flow_ends" in run and startup is not None else None
        return [label, _fmt(run["seconds"]), f"{run['seconds'] / base:.2f}", _fmt(startup), _fmt(body), note]

    trained = flow["result"]["trained"]
    rerun = results["rerun"]["result"]
    rows_ = [
        row("`foldstack train` (in-process)", results["in_process"], "no Prefect"),
        row("`python -m flows.train`", flow, f"embedded server, fresh database; trained {trained} fold tasks"),
        row("rerun, nothing changed", results["rerun"],
            f"embedded server; trained {rerun['trained']}, reused {rerun['reused']}"),
        row("`python -m flows.train`, a later run", results["flow_later"],
            f"embedded server, its database made by the runs above; cold training, trained "
            f"{results['flow_later']['result']['trained']} fold tasks"),
    ]
    if "rerun_server" in results:
        cold, again = results["flow_server"]["result"], results["rerun_server"]["result"]
        rows_.append(row("`python -m flows.train`, running server", results["flow_server"],
                         f"`prefect server` already up (PREFECT_API_URL); trained {cold['trained']} fold tasks"))
        rows_.append(row("rerun, nothing changed, running server", results["rerun_server"],
                         f"`prefect server` already up; trained {again['trained']}, reused {again['reused']}"))
    overhead = flow["seconds"] - base
    later = results["flow_later"]["seconds"]
    later_line = (f" A later run on the embedded server (its database exists, as for every run after a project's "
                  f"first): **{later / base:.2f}** ({later - base:+.1f} s, {100 * (later - base) / base:+.1f}%).")
    server_line = ""
    if "flow_server" in results:
        server_overhead = results["flow_server"]["seconds"] - base
        server_line = (f" Against a running server: **{results['flow_server']['seconds'] / base:.2f}** "
                       f"({server_overhead:+.1f} s, {100 * server_overhead / base:+.1f}%).")
    fixed = (flow.get("flow_begins") or 0.0) + flow["seconds"] - flow.get("flow_ends", flow["seconds"])
    body = flow["seconds"] - fixed
    return "\n".join([
        START,
        "## Prefect overhead (`bench/orchestration.py`)",
        "",
        f"`{command}`: the demo ({rows} rows, k={results['k']}, base models {', '.join(results['models'])}), "
        "each run a fresh, cold process (own artifacts and embedding cache), registry and W&B off in both. "
        "Wall-clock seconds; *start-up* is process start to the flow's first log line (imports and the "
        "embedded server), *flow body* from there to the flow's end.",
        "",
        markdown_table(["run", "seconds", "x in-process", "start-up", "flow body", "note"], rows_),
        "",
        f"**Flow / in-process, first run: {ratio:.2f}** ({overhead:+.1f} s, {100 * overhead / base:+.1f}% of the "
        f"in-process time; target < 10%).{later_line}{server_line} Of the first embedded-server run, {fixed:.1f} s "
        "are start-up and shut-down (imports, and the embedded server creating and migrating its database, "
        "about 7 s, started before the imports so that the two overlap; flows/embedded_server.py): a cost per "
        "run, not per fold, so its share "
        f"shrinks as the training grows. The flow body took {body:.1f} s, the whole in-process run "
        f"{base:.1f} s ({'no slower' if body <= base else f'{body - base:+.1f} s'})."
        f" No-change rerun: {results['rerun']['seconds']:.1f} s on the embedded server"
        + (f", {results['rerun_server']['seconds']:.1f} s against a running server"
           if "rerun_server" in results else "") + " (target < 15 s, training nothing).",
        "",
        f"Load average after the runs: {', '.join(f'{x:.2f}' for x in results['load_average_after'])} "
        "(a shared machine: one run each, so the seconds carry that noise).",
        "",
        "Machine:",
        "",
        machine_markdown(),
        END,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 rows, k=3, two tfidf models (a smoke run)")
    parser.add_argument("--rows", type=int, default=None, help="demo rows (default 3000, or 600 with --quick)")
    parser.add_argument("--no-server", action="store_true", help="skip the rerun against a running server")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "orchestration.md")
    args = parser.parse_args()
    rows = args.rows or (600 if args.quick else 3000)
    command = "python bench/orchestration.py" + (" --quick" if args.quick else "") + \
        (f" --rows {args.rows}" if args.rows else "")
    with tempfile.TemporaryDirectory(prefix="foldstack-orchestration-bench-") as tmp:
        results = measure(Path(tmp), args.quick, rows, with_server=not args.no_server)
    text = section(results, command, rows)
    write_section(START, END, args.output, text)
    print(text)


if __name__ == "__main__":
    main()

"""Serving benchmark: requests per second and p50/p99 latency of `POST /predict` (batches of 1 and 32 texts) on
the demo ensemble, against calling the same bundle in-process; and the memory of the serving process.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py            # ~5-10 min on 2 cores
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/serving.py --quick    # smoke run (2 cheap models)

1. The demo ensemble: the project's params.yaml (its base models and meta-learner) trained on the demo data
   (`foldstack demo-data`, 3000 rows) under `--work-dir` (git-ignored); `--bundle DIR` skips training.
2. In-process: the bundle loaded once (`foldstack.ops.serving.LoadedModel`, the object the service calls), each
   batch timed around `predict` - normalisation, ensemble, response building, no HTTP, no JSON.
3. Served: `foldstack serve-model --model <bundle>` in its own process on 127.0.0.1 (uvicorn, one worker),
   requests sent by one client over one keep-alive connection (sequential: latency), then by 4 client threads
   (throughput). Latency is measured by the client, so it includes HTTP, JSON and the event loop.
4. Memory: the server's resident set (VmRSS) after loading, and its peak (VmHWM) after the load test.

Both sides predict the same texts (demo rows, cycled) for the same wall time per scenario (`--seconds`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/serving.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402

BATCH_SIZES = (1, 32)
CONCURRENT_CLIENTS = 4
QUICK_MODELS = [{"name": "tfidf_lr", "kind": "tfidf_lr", "params": {}},
                {"name": "nb_svm", "kind": "nb_svm", "params": {}}]


def demo_params(work_dir: Path, data_path: Path, quick: bool) -> Any:
    """The project's params.yaml, pointed at the bench's data and work directory (tracking off)."""
    import yaml

    from foldstack.config import apply_overrides, config_from_dict

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    overrides: dict[str, Any] = {
        "data.path": str(data_path), "evaluate.plots": False, "tracking.mode": "disabled",
        "runtime.artifacts_dir": str(work_dir / "artifacts"), "runtime.cache_dir": str(work_dir / "cache"),
        "runtime.device": "cpu", "validation.context_dir": str(work_dir / "gx"),
        "validation.report_dir": str(work_dir / "reports"), "validation.data_docs": False,
    }
    if quick:
        overrides.update({"base_models": QUICK_MODELS, "folds.k": 3})
    return config_from_dict(apply_overrides(raw, overrides), root=REPO_ROOT, source="bench params")


def build_bundle(work_dir: Path, quick: bool) -> tuple[Path, list[str], float]:
    """Train the demo ensemble; (bundle, the demo texts, training seconds)."""
    import pandas as pd

    from foldstack.core.demo import write_demo_data
    from foldstack.pipeline.stages import run_pipeline

    data_path = work_dir / "reviews.csv"
    write_demo_data(data_path, rows=600 if quick else 3000, n_classes=3, noise=0.05, seed=0)
    cfg = demo_params(work_dir, data_path, quick)
    started = time.perf_counter()
    result = run_pipeline(cfg)
    return result.bundle, pd.read_csv(data_path)["text"].astype(str).tolist(), time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarise(latencies: list[float], wall: float, batch: int) -> dict[str, float]:
    return {"requests": len(latencies), "req_per_s": len(latencies) / wall,
            "texts_per_s": len(latencies) * batch / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * percentile(latencies, 99)}


def batches(texts: list[str], size: int):
    start = 0
    while True:
        chunk = [texts[(start + i) % len(texts)] for i in range(size)]
        start = (start + size) % len(texts)
        yield chunk


def timed_loop(call, texts: list[str], batch: int, seconds: float, min_requests: int = 20) -> dict[str, float]:
    source = batches(texts, batch)
    call(next(source))  # warm-up: first-call allocations and lazy imports are not serving cost
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < min_requests:
        chunk = next(source)
        t0 = time.perf_counter()
        call(chunk)
        latencies.append(time.perf_counter() - t0)
    return summarise(latencies, time.perf_counter() - started, batch)


def concurrent_loop(url: str, texts: list[str], batch: int, seconds: float, clients: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(offset: int) -> None:
        source = batches(texts[offset:] + texts[:offset], batch)
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < stop_at:
                chunk = next(source)
                t0 = time.perf_counter()
                http.post(url, json={"texts": chunk}).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i * 97,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(latencies, time.perf_counter() - started, batch)


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, port: int) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "foldstack.cli", "serve-model", "--model", str(bundle), "--port", str(port),
               "--reload-seconds", "0", "--max-batch", "64", "--params", "/nonexistent-params.yaml"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not become healthy in 300 s")


def run(args: argparse.Namespace) -> str:
    import httpx

    from foldstack.bundle import load_bundle
    from foldstack.ops.serving import LoadedModel

    work_dir = args.work_dir.resolve()
    if args.bundle:
        import pandas as pd

        from foldstack.core.demo import write_demo_data

        bundle, train_seconds = args.bundle.resolve(), None
        write_demo_data(work_dir / "reviews.csv", rows=3000, n_classes=3, noise=0.05, seed=0)
        texts = pd.read_csv(work_dir / "reviews.csv")["text"].astype(str).tolist()
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        bundle, texts, train_seconds = build_bundle(work_dir, args.quick)
    manifest_models = [f"{m['name']} ({m['kind']}, {len(m['members'])} fold models)"
                       for m in load_bundle(bundle).manifest["base_models"]]

    load_at_start = os.getloadavg()[0]
    loaded = LoadedModel(load_bundle(bundle), "bench", bundle)
    in_process = {b: timed_loop(loaded.predict, texts, b, args.seconds) for b in BATCH_SIZES}

    port = free_port()
    server = start_server(bundle, port)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        idle_rss, _ = rss_mib(server.pid)
        served: dict[int, dict[str, float]] = {}
        concurrent: dict[int, dict[str, float]] = {}
        with httpx.Client(timeout=120) as http:
            def post(chunk: list[str]) -> None:
                http.post(url, json={"texts": chunk}).raise_for_status()

            for b in BATCH_SIZES:
                served[b] = timed_loop(post, texts, b, args.seconds)
        for b in BATCH_SIZES:
            concurrent[b] = concurrent_loop(url, texts, b, args.seconds, CONCURRENT_CLIENTS)
        rss, peak = rss_mib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    rows = []
    for b in BATCH_SIZES:
        for label, result in (("in-process", in_process[b]), ("HTTP, 1 client", served[b]),
                              (f"HTTP, {CONCURRENT_CLIENTS} clients", concurrent[b])):
            rows.append([b, label, result["requests"], f"{result['req_per_s']:.1f}", f"{result['texts_per_s']:.0f}",
                         f"{result['p50_ms']:.1f}", f"{result['p99_ms']:.1f}"])
    overhead = {b: served[b]["p50_ms"] - in_process[b]["p50_ms"] for b in BATCH_SIZES}
    lines = [
        "# Serving benchmark: `POST /predict` vs in-process", "",
        f"Command: `{' '.join(['python', 'bench/serving.py', *sys.argv[1:]])}`" + (" (quick smoke run)" if args.quick
                                                                                 else ""), "",
        "Model: the demo ensemble" + (" (quick: 2 cheap base models, k=3)" if args.quick else
                                       " (params.yaml's base models and meta-learner, trained on the 3000-row "
                                       "demo data)") + ":", "",
        *[f"- {m}" for m in manifest_models], "",
        f"Training took {train_seconds:.0f} s." if train_seconds else f"Bundle: {bundle}", "",
        f"Each scenario ran for {args.seconds:g} s after one warm-up request; the server is "
        f"`foldstack serve-model` (uvicorn, one worker, 127.0.0.1); latency is measured by the client.", "",
        markdown_table(["batch", "path", "requests", "req/s", "texts/s", "p50 ms", "p99 ms"], rows), "",
        f"Served p50 minus in-process p50: {overhead[1]:.1f} ms for 1 text, {overhead[32]:.1f} ms for 32 texts "
        f"(HTTP, JSON and the event loop, plus whatever else ran on the machine meanwhile).", "",
        f"Server memory (resident): {idle_rss:.0f} MiB after loading the model, {rss:.0f} MiB after the load "
        f"test, peak {peak:.0f} MiB.", "",
        "## Machine", "", machine_markdown(),
        f"- load average (1 min) when the measurements began: {load_at_start:.2f} (other work on the machine "
        f"shares its cores and inflates the tails)", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "bench" / ".work" / "serving")
    parser.add_argument("--bundle", type=Path, help="benchmark this bundle instead of training the demo ensemble")
    parser.add_argument("--seconds", type=float, default=20.0, help="wall time per scenario")
    parser.add_argument("--quick", action="store_true", help="2 cheap base models, 5 s per scenario")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "serving.md")
    args = parser.parse_args()
    if args.quick and args.seconds == 20.0:
        args.seconds = 5.0
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()

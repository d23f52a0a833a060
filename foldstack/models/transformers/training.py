"""The pieces of `finetune`'s training loop: one attempt at training (`TrainingLoop` -> `TrainingRun`), and
the steps it is made of (loading the classifier, a micro-batch's forward and backward pass, the validation
split, AdamW's parameter groups, bf16 autocast, the out-of-memory fallbacks).

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foldstack.errors import FoldstackError
from foldstack.models.base import ModelParams
from foldstack.models.transformers.batching import attention_mask_4d, length_grouped_batches, pad_batch, to_device
from foldstack.models.transformers.quiet import quiet_transformers
from foldstack.models.transformers.text_cache import RaggedArray, tokenize

if TYPE_CHECKING:
    import torch

__all__ = [
    "COMPILE_PAD_MULTIPLE", "EVAL_BATCH_FACTOR", "DeviceMemoryError", "TrainingLoop", "TrainingRun", "autocast",
    "forward_backward", "load_classifier", "model_accepts_4d_mask", "oom_message", "release_device_memory",
    "smaller_micro_batch", "validation_split",
]

# Improvements of the validation loss smaller than this count as no improvement (float noise).
_MIN_IMPROVEMENT = 1e-6
# Evaluation keeps no activations for a backward pass and no optimiser state: 4x the training batch fits.
EVAL_BATCH_FACTOR = 4
# With compile on, padded lengths are rounded up to this, so a run meets at most max_length/16 shapes.
COMPILE_PAD_MULTIPLE = 16


class DeviceMemoryError(FoldstackError):
    """The fine-tune does not fit in the device's memory even with one text per micro-batch."""


@dataclass
class TrainingRun:
    """What one attempt at training produced (fit keeps the one that did not run out of memory)."""

    model: Any
    attention_mask_4d: bool
    micro_batch: int
    grad_accum: int
    history: list[dict[str, Any]]
    best_step: int
    n_steps: int
    n_train_rows: int
    n_val_rows: int
    tokens: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)


class TrainingLoop:
    """One training attempt on a freshly loaded model: its optimiser and schedule, the running sums of the step
    loop, the evaluations and the best weights seen.

    Each optimiser step takes `batch_size * grad_accum` rows split into micro-batches of `micro_batch`; the
    loss is summed on the device and read once per evaluation. `validation_loss(batch_size)` scores the model
    on the validation rows (none: no early stopping).
    """

    def __init__(self, params: ModelParams, model: Any, token_ids: RaggedArray, y: np.ndarray, device: str, *,
                 micro_batch: int, pad_id: int, use_4d_mask: bool, train_rows: np.ndarray, val_rows: np.ndarray,
                 validation_loss: Callable[[int], float]) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        p = self.params = params
        self.model, self.token_ids, self.y, self.device = model, token_ids, y, device
        self.micro_batch, self.pad_id, self.use_4d_mask = micro_batch, pad_id, use_4d_mask
        self.train_rows, self.val_rows, self.validation_loss = train_rows, val_rows, validation_loss
        self.effective_batch = p.batch_size * p.grad_accum
        self.lengths = token_ids.lengths
        steps_per_epoch = math.ceil(len(train_rows) / self.effective_batch)
        self.total_steps = steps_per_epoch * p.epochs
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, p.weight_decay), lr=p.lr, fused=True if device.startswith("cuda") else None
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, round(p.warmup_fraction * self.total_steps), self.total_steps
        )
        self.eval_every = p.eval_every_steps or steps_per_epoch
        self.eval_batch = p.eval_batch_size or EVAL_BATCH_FACTOR * micro_batch
        self.forward_model = torch.compile(model) if p.compile else model
        self.pad_multiple = COMPILE_PAD_MULTIPLE if p.compile else 1
        self.history: list[dict[str, Any]] = []
        self.best_loss, self.best_step, self.best_state, self.evals_without_gain = math.inf, 0, None, 0
        self.step = 0
        self.loss_sum = torch.zeros((), device=device)  # summed on the device: read once per evaluation
        self.rows_summed = self.tokens_real = self.tokens_padded = 0
        self.eval_seconds = 0.0

    def run(self, rng: np.random.Generator, load_seconds: float) -> TrainingRun:
        """Train for the params' epochs (or until early stopping), restore the best weights seen, and report."""
        import torch

        train_started = time.perf_counter()
        self._epochs(rng)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)  # the clock below must include the work still queued on the GPU
        train_seconds = time.perf_counter() - train_started - self.eval_seconds
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return TrainingRun(
            model=self.model,
            attention_mask_4d=self.use_4d_mask,
            micro_batch=self.micro_batch,
            grad_accum=self.effective_batch // self.micro_batch,
            history=self.history,
            best_step=self.best_step if self.best_state is not None else self.step,
            n_steps=self.step,
            n_train_rows=int(self.train_rows.size),
            n_val_rows=int(self.val_rows.size),
            tokens={"real": self.tokens_real, "padded": self.tokens_padded},
            timings={"load_model": load_seconds, "train": train_seconds, "evaluate": self.eval_seconds},
        )

    def _epochs(self, rng: np.random.Generator) -> None:
        for epoch in range(self.params.epochs):
            self.model.train()
            # Batches index into train_rows; re-map to row numbers of `texts`.
            step_batches = [
                self.train_rows[b]
                for b in length_grouped_batches(self.lengths[self.train_rows], self.effective_batch, rng=rng)
            ]
            for rows in longest_first(step_batches, self.lengths):
                self._step(rows)
                if self.step % self.eval_every != 0 and self.step != self.total_steps:
                    continue
                if self._evaluate(epoch):
                    return

    def _step(self, rows: np.ndarray) -> None:
        """One optimiser step on `rows`, in micro-batches."""
        import torch

        scale = 1.0 / rows.size  # the step's gradient is the mean over its rows, however it is split
        for start in range(0, rows.size, self.micro_batch):
            micro_rows = rows[start : start + self.micro_batch]
            input_ids, mask = pad_batch(self.token_ids, micro_rows, self.pad_id, self.device,
                                        pad_to_multiple=self.pad_multiple)
            labels = to_device(self.y[micro_rows], self.device)
            self.loss_sum += forward_backward(
                self.forward_model, input_ids, attention_mask_4d(mask) if self.use_4d_mask else mask, labels, scale
            )
            self.tokens_real += int(self.lengths[micro_rows].sum())
            self.tokens_padded += input_ids.numel()  # shape metadata: no device sync
        self.rows_summed += rows.size
        if self.params.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _evaluate(self, epoch: int) -> bool:
        """Record the training loss since the last evaluation and the validation loss; True: stop early."""
        record = {"step": self.step, "epoch": epoch + 1, "train_loss": float(self.loss_sum) / max(self.rows_summed, 1)}
        self.loss_sum.zero_()
        self.rows_summed = 0
        stop = False
        if self.val_rows.size:
            eval_started = time.perf_counter()
            record["val_loss"] = self.validation_loss(self.eval_batch)
            self.model.train()
            if record["val_loss"] < self.best_loss - _MIN_IMPROVEMENT:
                self.best_loss, self.best_step, self.evals_without_gain = record["val_loss"], self.step, 0
                # A CPU copy: the best weights must survive the steps that follow.
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            else:
                self.evals_without_gain += 1
                stop = self.evals_without_gain >= self.params.patience
            self.eval_seconds += time.perf_counter() - eval_started
        self.history.append(record)
        return stop


def oom_message(error: BaseException) -> str:
    """The first line of a CUDA out-of-memory error (at most 300 characters), for messages and model.json."""
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else "CUDA out of memory"


def load_classifier(directory: Path, n_classes: int, pad_token_id: int, device: str) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        # float32 master weights whatever the checkpoint's dtype (an fp16 copy is upcast here); speed comes
        # from autocast on CUDA. ignore_mismatched_sizes: a checkpoint with a head of another size gets a new one.
        model = AutoModelForSequenceClassification.from_pretrained(
            directory, num_labels=n_classes, local_files_only=True, dtype=torch.float32, ignore_mismatched_sizes=True
        )
    model.config.pad_token_id = pad_token_id
    return model.to(device)


def forward_backward(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """Forward and backward pass of one micro-batch; returns its summed loss, still on the device."""
    import torch

    with autocast(input_ids.device.type):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    (loss * scale).backward()
    return loss.detach()


def model_accepts_4d_mask(model: Any, tokenizer: Any, device: str) -> bool:
    """Whether `model` gives the same logits for a ready 4-d boolean mask as for the usual 2-d 0/1 mask.

    Most transformers models built on its masking utilities use a 4-d mask as it is; some (older
    architectures with eager attention) read it differently. Two texts of different lengths, so that the
    mask has padding to hide; float32, no autocast; the model's train/eval mode is restored.
    """
    import torch

    token_ids = tokenize(tokenizer, ["a", "a somewhat longer text with more words in it"], 32)
    input_ids, mask = pad_batch(token_ids, np.arange(2), tokenizer.pad_token_id, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            plain = model(input_ids=input_ids, attention_mask=mask).logits.float()
            ready = model(input_ids=input_ids, attention_mask=attention_mask_4d(mask)).logits.float()
        return bool(torch.allclose(plain, ready, rtol=1e-4, atol=1e-5))
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError):  # the model refuses a 4-d mask: use the 2-d one
        return False
    finally:
        model.train(was_training)


def smaller_micro_batch(effective_batch: int, micro_batch: int) -> int | None:
    """The micro-batch to retry with after an out-of-memory: the largest divisor of the effective batch that
    is at most half the current one (so micro-batch x accumulation stays exactly the effective batch);
    None when the micro-batch is already 1."""
    if micro_batch <= 1:
        return None
    return max(d for d in range(1, micro_batch // 2 + 1) if effective_batch % d == 0)


def release_device_memory(device: str) -> None:
    """Collect the failed attempt's tensors and hand the cached blocks back, so a retry starts from free memory."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def longest_first(batches: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    """The batch holding the longest text moved to the front: if anything runs out of memory, it is the first
    step, not one minutes into the epoch."""
    if not batches:
        return batches
    longest = max(range(len(batches)), key=lambda i: int(lengths[batches[i]].max()))
    return [batches[longest], *batches[:longest], *batches[longest + 1 :]]


def validation_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers for training and for early stopping, stratified by class when every class allows it."""
    rows = np.arange(y.size)
    n_val = int(round(val_fraction * y.size))
    # Fewer than two validation rows, or no training rows left, make early stopping meaningless.
    if n_val < 2 or y.size - n_val < 2:
        return rows, rows[:0]
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(rows, test_size=n_val, stratify=y, random_state=seed)
    except ValueError:  # a class with a single row, or fewer validation rows than classes
        train, val = train_test_split(rows, test_size=n_val, random_state=seed)
    return np.sort(train), np.sort(val)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: decaying biases and LayerNorm gains just hurts."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast(device: str) -> Any:
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU autocast is slower than float32 for these sizes)."""
    import torch

    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""`finetune`: a transformer with a classification head, fine-tuned on each fold with a plain PyTorch loop.

The loop is written out (no HF Trainer) to keep control of what costs time on a GPU:

- texts are tokenised once per (tokenizer, truncation length, text) and the token ids kept on disk under
  `<cache_dir>/tokens/` (`hf.cached_tokenize`): folds 2..K and later runs read them;
- each optimiser step takes `batch_size * grad_accum` rows of similar length (length-grouped batches,
  padded per micro-batch), split into micro-batches of `batch_size`; the loss is summed over the step's
  rows and divided by their number, so the gradient of a step does not depend on how it was split;
- nothing inside the step loop waits for the GPU: host arrays go through pinned memory with non-blocking
  copies, the loss is summed on the device (read once per evaluation, not per step), AdamW is the fused
  kernel, and the attention mask is passed in the 4-d form that transformers uses as it is (the 2-d form
  makes it ask the GPU `mask.all()` on every forward pass); bf16 autocast, TF32 and the cuDNN-attention
  fix are set on CUDA (`hf.configure_torch_for_device`);
- evaluation and prediction run in batches 4x the training micro-batch (no activations are kept for a
  backward pass and there is no optimiser state);
- a CUDA out-of-memory error restarts the fit from scratch (fresh model, same seed) with half the
  micro-batch and twice the accumulation, so the effective batch and the schedule stay the same, down to
  one text per micro-batch; `model.json` records the micro-batch that worked and the attempts that did not;
- `compile: true` wraps the training forward pass in `torch.compile` and pads lengths to multiples of 16 so
  that few shapes are compiled; off by default because compiling costs more than it saves on short runs.

A validation slice carved from the fold's own training part drives early stopping, and the best weights seen
are restored at the end, so the fold's held-out rows are never looked at before prediction.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from pydantic import Field

from foldstack.errors import DataError, FoldstackError
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams, check_labels
from foldstack.runtime.devices import configure_torch_for_device, resolve_device, seed_everything
from foldstack.models.transformers.hf import (
    DEFAULT_EMBEDDING_MODEL,
    RaggedArray,
    attention_mask_4d,
    cached_tokenize,
    length_grouped_batches,
    load_tokenizer,
    model_identity,
    pad_batch,
    quiet_transformers,
    restore_model,
    write_model_json,
    resolve_model_source,
    to_device,
    tokenize,
    tokenizer_identity,
)

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 2
TRANSFORMER_SUBDIR = "transformer"
# Improvements of the validation loss smaller than this count as no improvement (float noise).
_MIN_IMPROVEMENT = 1e-6
# Evaluation keeps no activations for a backward pass and no optimiser state: 4x the training batch fits.
EVAL_BATCH_FACTOR = 4
# With compile on, padded lengths are rounded up to this, so a run meets at most max_length/16 shapes.
COMPILE_PAD_MULTIPLE = 16


class DeviceMemoryError(FoldstackError):
    """The fine-tune does not fit in the device's memory even with one text per micro-batch."""


@dataclass
class _TrainingRun:
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


@register_model
class FineTune:
    """AutoModelForSequenceClassification fine-tuned with AdamW, linear warmup/decay and early stopping."""

    kind: ClassVar[str] = "finetune"
    uses_gpu: ClassVar[bool] = True  # read by foldstack.runtime.gpu_slots: fold tasks of this kind take a GPU slot

    class Params(ModelParams):
        model: str = Field(
            DEFAULT_EMBEDDING_MODEL,
            description="pretrained model: a local Hugging Face directory, package:<module> or tiny:<seed>",
        )
        max_length: int = Field(128, ge=8, le=8192, description="tokens per text; longer texts are truncated")
        batch_size: int = Field(
            32, ge=1, le=4096, description="texts per micro-batch in training (halved on GPU out-of-memory)"
        )
        lr: float = Field(5e-5, gt=0, le=1.0, description="peak learning rate of AdamW")
        epochs: int = Field(3, ge=1, le=100, description="passes over the training data; early stopping may end sooner")
        weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and LayerNorms)")
        warmup_fraction: float = Field(0.1, ge=0, lt=1, description="share of the steps with a linear warmup")
        max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm; null disables clipping")
        val_fraction: float = Field(
            0.1, ge=0, lt=0.5, description="share of the fold's training part held out for early stopping; 0 disables"
        )
        patience: int = Field(2, ge=1, description="evaluations without a better validation loss before stopping")
        eval_every_steps: int | None = Field(
            None, ge=1, description="evaluate every N optimiser steps; null: at the end of every epoch"
        )
        grad_accum: int = Field(1, ge=1, le=1024, description="micro-batches per optimiser step")
        eval_batch_size: int | None = Field(
            None, ge=1, le=65536, description="texts per forward pass in evaluation and prediction; null: 4x batch_size"
        )
        compile: bool = Field(
            False, description="torch.compile the training forward pass (pays only on long runs; pads lengths to 16s)"
        )
        seed_offset: int = Field(0, ge=0, description="added to the task seed: several otherwise equal models differ")

    def __init__(self, params: Params, context: ModelContext):
        self.params = params
        self.context = context

    # ---------------------------------------------------------------------------------------------
    # training
    # ---------------------------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], y: np.ndarray) -> Self:
        import torch

        p = self.params
        y = check_labels(y, len(texts), self.context.n_classes, self.kind)
        classes = np.unique(y)
        if classes.size < 2:
            raise DataError(
                f"finetune: the training part holds the classes {classes.tolist()}; at least two are needed"
            )
        device = resolve_device(self.context.device)
        configure_torch_for_device(device)

        started = time.perf_counter()
        source = resolve_model_source(p.model, cache_dir=self.context.cache_dir,
                                      base_dir=self.context.base_dir)
        self.tokenizer_ = load_tokenizer(source)
        self.tokenizer_identity_ = tokenizer_identity(self.tokenizer_)
        self.source_identity_ = model_identity(source)
        tokenizer_loaded = time.perf_counter()
        token_ids = self._token_ids(texts)
        tokenized = time.perf_counter()

        effective_batch = p.batch_size * p.grad_accum
        micro_batch = p.batch_size
        failed_attempts: list[dict[str, Any]] = []
        while True:
            failure = None
            try:
                run = self._train(source, token_ids, y, device, micro_batch)
                break
            except torch.cuda.OutOfMemoryError as error:
                failure = str(error).strip().splitlines()[0][:300] if str(error).strip() else "CUDA out of memory"
            # Out of the except block, so the failed attempt's frames (model, activations) are gone before
            # the cached blocks are handed back to the driver.
            _release_device_memory(device)
            failed_attempts.append(
                {"micro_batch": micro_batch, "grad_accum": effective_batch // micro_batch, "error": failure}
            )
            smaller = _smaller_micro_batch(effective_batch, micro_batch)
            if smaller is None:
                raise DeviceMemoryError(
                    f"finetune ({p.model}): {device} ran out of memory even with one text per micro-batch "
                    f"(max_length {p.max_length}): {failure}. Lower max_length, free the GPU (other fine-tunes "
                    "packed onto it count too), or use a GPU with more memory."
                )
            micro_batch = smaller

        self.model_ = run.model
        self.attention_mask_4d_ = run.attention_mask_4d
        self.micro_batch_ = run.micro_batch
        self.grad_accum_ = run.grad_accum
        self.oom_retries_ = failed_attempts
        self.history_ = run.history
        self.best_step_ = run.best_step
        self.n_steps_ = run.n_steps
        self.n_train_rows_ = run.n_train_rows
        self.n_val_rows_ = run.n_val_rows
        self.tokens_ = run.tokens
        self.timings_ = {
            "load_tokenizer": tokenizer_loaded - started,
            "tokenize": tokenized - tokenizer_loaded,
            **run.timings,
            "fit_total": time.perf_counter() - started,
        }
        return self

    def _train(
        self, source: Path, token_ids: RaggedArray, y: np.ndarray, device: str, micro_batch: int
    ) -> _TrainingRun:
        """One complete training attempt from a freshly loaded model, with `micro_batch` texts per forward pass."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        p = self.params
        seed = self.context.seed + p.seed_offset
        seed_everything(seed)  # before loading: the new classification head is drawn from it
        rng = np.random.default_rng(seed)
        load_started = time.perf_counter()
        model = _load_classifier(source, self.context.n_classes, self.tokenizer_.pad_token_id, device)
        use_4d_mask = _model_accepts_4d_mask(model, self.tokenizer_, device)
        load_seconds = time.perf_counter() - load_started

        effective_batch = p.batch_size * p.grad_accum
        grad_accum = effective_batch // micro_batch
        pad_id = self.tokenizer_.pad_token_id
        train_rows, val_rows = _validation_split(y, p.val_fraction, seed)
        lengths = token_ids.lengths
        steps_per_epoch = math.ceil(len(train_rows) / effective_batch)
        total_steps = steps_per_epoch * p.epochs
        optimizer = torch.optim.AdamW(
            _parameter_groups(model, p.weight_decay), lr=p.lr, fused=True if device.startswith("cuda") else None
        )
        scheduler = get_linear_schedule_with_warmup(optimizer, round(p.warmup_fraction * total_steps), total_steps)
        eval_every = p.eval_every_steps or steps_per_epoch
        eval_batch = p.eval_batch_size or EVAL_BATCH_FACTOR * micro_batch
        forward_model = torch.compile(model) if p.compile else model
        pad_multiple = COMPILE_PAD_MULTIPLE if p.compile else 1

        history: list[dict[str, Any]] = []
        best_loss, best_step, best_state, evals_without_gain = math.inf, 0, None, 0
        step, stop = 0, False
        loss_sum = torch.zeros((), device=device)  # summed on the device: read once per evaluation
        rows_summed = tokens_real = tokens_padded = 0
        eval_seconds = 0.0
        train_started = time.perf_counter()
        for epoch in range(p.epochs):
            model.train()
            # Batches index into train_rows; re-map to row numbers of `texts`.
            step_batches = [
                train_rows[b] for b in length_grouped_batches(lengths[train_rows], effective_batch, rng=rng)
            ]
            for rows in _longest_first(step_batches, lengths):
                scale = 1.0 / rows.size  # the step's gradient is the mean over its rows, however it is split
                for start in range(0, rows.size, micro_batch):
                    micro_rows = rows[start : start + micro_batch]
                    input_ids, mask = pad_batch(token_ids, micro_rows, pad_id, device, pad_to_multiple=pad_multiple)
                    labels = to_device(y[micro_rows], device)
                    loss_sum += _forward_backward(
                        forward_model, input_ids, attention_mask_4d(mask) if use_4d_mask else mask, labels, scale
                    )
                    tokens_real += int(lengths[micro_rows].sum())
                    tokens_padded += input_ids.numel()  # shape metadata: no device sync
                rows_summed += rows.size
                if p.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % eval_every != 0 and step != total_steps:
                    continue
                record = {"step": step, "epoch": epoch + 1, "train_loss": float(loss_sum) / max(rows_summed, 1)}
                loss_sum.zero_()
                rows_summed = 0
                if val_rows.size:
                    eval_started = time.perf_counter()
                    record["val_loss"] = self._validation_loss(
                        token_ids, val_rows, y, device, model=model, use_4d_mask=use_4d_mask, batch_size=eval_batch
                    )
                    model.train()
                    if record["val_loss"] < best_loss - _MIN_IMPROVEMENT:
                        best_loss, best_step, evals_without_gain = record["val_loss"], step, 0
                        # A CPU copy: the best weights must survive the steps that follow.
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    else:
                        evals_without_gain += 1
                        stop = evals_without_gain >= p.patience
                    eval_seconds += time.perf_counter() - eval_started
                history.append(record)
                if stop:
                    break
            if stop:
                break
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)  # the clock below must include the work still queued on the GPU
        train_seconds = time.perf_counter() - train_started - eval_seconds
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return _TrainingRun(
            model=model,
            attention_mask_4d=use_4d_mask,
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            history=history,
            best_step=best_step if best_state is not None else step,
            n_steps=step,
            n_train_rows=int(train_rows.size),
            n_val_rows=int(val_rows.size),
            tokens={"real": tokens_real, "padded": tokens_padded},
            timings={"load_model": load_seconds, "train": train_seconds, "evaluate": eval_seconds},
        )

    def _token_ids(self, texts: Sequence[str]) -> RaggedArray:
        """Token ids of `texts`, through the on-disk token cache when the context has a cache directory."""
        token_ids, n_computed = cached_tokenize(
            self.tokenizer_, texts, self.params.max_length, self.context.cache_dir, self.tokenizer_identity_
        )
        # Running totals over this model's life, so callers and tests can see the cache at work.
        self.n_tokenized_ = getattr(self, "n_tokenized_", 0) + n_computed
        self.n_token_ids_from_cache_ = getattr(self, "n_token_ids_from_cache_", 0) + len(texts) - n_computed
        return token_ids

    def _validation_loss(
        self,
        token_ids: RaggedArray,
        rows: np.ndarray,
        y: np.ndarray,
        device: str,
        *,
        model: Any = None,
        use_4d_mask: bool | None = None,
        batch_size: int | None = None,
    ) -> float:
        proba = self._predict_token_ids(
            token_ids.take(rows), device, model=model, use_4d_mask=use_4d_mask, batch_size=batch_size
        )
        return float(-np.mean(np.log(np.clip(proba[np.arange(rows.size), y[rows]], 1e-12, None))))

    # ---------------------------------------------------------------------------------------------
    # prediction
    # ---------------------------------------------------------------------------------------------
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "model_"):
            raise RuntimeError("finetune: call fit (or load) before predict_proba")
        if len(texts) == 0:
            return np.zeros((0, self.context.n_classes))
        device = str(next(self.model_.parameters()).device)
        return self._predict_token_ids(self._token_ids(texts), device)

    def _predict_token_ids(
        self,
        token_ids: RaggedArray,
        device: str,
        *,
        model: Any = None,
        use_4d_mask: bool | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Class probabilities of already tokenised texts; on CUDA out-of-memory, again with half the batch."""
        import torch

        model = model if model is not None else self.model_
        use_4d_mask = use_4d_mask if use_4d_mask is not None else self.attention_mask_4d_
        batch = batch_size or self.params.eval_batch_size or EVAL_BATCH_FACTOR * self.micro_batch_
        while True:
            failure = None
            try:
                return self._predict_in_batches(model, token_ids, device, use_4d_mask, batch)
            except torch.cuda.OutOfMemoryError as error:
                failure = str(error).strip().splitlines()[0][:300] if str(error).strip() else "CUDA out of memory"
            _release_device_memory(device)
            if batch == 1:
                raise DeviceMemoryError(
                    f"finetune ({self.params.model}): {device} ran out of memory predicting one text at a time "
                    f"(max_length {self.params.max_length}): {failure}"
                )
            batch = max(1, batch // 2)

    def _predict_in_batches(
        self, model: Any, token_ids: RaggedArray, device: str, use_4d_mask: bool, batch_size: int
    ) -> np.ndarray:
        import torch

        model.eval()
        batches = length_grouped_batches(token_ids.lengths, batch_size)  # longest first: an OOM shows at once
        chunks = []
        with torch.inference_mode():
            for rows in batches:
                input_ids, mask = pad_batch(token_ids, rows, self.tokenizer_.pad_token_id, device)
                with _autocast(device):
                    logits = model(
                        input_ids=input_ids, attention_mask=attention_mask_4d(mask) if use_4d_mask else mask
                    ).logits
                chunks.append(torch.softmax(logits.float(), dim=-1))
            # One transfer at the end; float64 so rows sum to 1 to the protocol's tolerance after the cast.
            sorted_proba = torch.cat(chunks).cpu().numpy().astype(np.float64)
        proba = np.empty_like(sorted_proba)
        proba[np.concatenate(batches)] = sorted_proba
        return proba / proba.sum(axis=1, keepdims=True)

    # ---------------------------------------------------------------------------------------------
    # persistence
    # ---------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("finetune: nothing to save before fit")
        directory = Path(directory)
        with quiet_transformers():
            self.model_.save_pretrained(directory / TRANSFORMER_SUBDIR)
            self.tokenizer_.save_pretrained(directory / TRANSFORMER_SUBDIR)
        write_model_json(
            self,
            directory,
            FORMAT_VERSION,
            source={"name": self.params.model, "identity": self.source_identity_},
            training={
                "history": self.history_,
                "best_step": self.best_step_,
                "n_steps": self.n_steps_,
                "n_train_rows": self.n_train_rows_,
                "n_val_rows": self.n_val_rows_,
                # The micro-batch that fitted in memory; with grad_accum it makes the effective batch.
                "micro_batch": self.micro_batch_,
                "grad_accum": self.grad_accum_,
                "oom_retries": self.oom_retries_,
                "tokens": self.tokens_,
                "timings_seconds": {k: round(v, 4) for k, v in self.timings_.items()},
            },
        )

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Self:
        directory = Path(directory)
        model, meta = restore_model(cls, directory, FORMAT_VERSION, device=device, cache_dir=cache_dir)
        resolved = resolve_device(device)
        configure_torch_for_device(resolved)
        model.tokenizer_ = load_tokenizer(directory / TRANSFORMER_SUBDIR)
        model.tokenizer_identity_ = tokenizer_identity(model.tokenizer_)
        model.model_ = _load_classifier(
            directory / TRANSFORMER_SUBDIR, meta["n_classes"], model.tokenizer_.pad_token_id, resolved
        ).eval()
        model.attention_mask_4d_ = _model_accepts_4d_mask(model.model_, model.tokenizer_, resolved)
        training = meta["training"]
        model.source_identity_ = meta["source"]["identity"]
        model.history_ = training["history"]
        model.best_step_ = training["best_step"]
        model.n_steps_ = training["n_steps"]
        model.n_train_rows_ = training["n_train_rows"]
        model.n_val_rows_ = training["n_val_rows"]
        model.micro_batch_ = training["micro_batch"]
        model.grad_accum_ = training["grad_accum"]
        model.oom_retries_ = training["oom_retries"]
        model.tokens_ = training["tokens"]
        model.timings_ = training["timings_seconds"]
        return model


# -------------------------------------------------------------------------------------------------
# The pieces of the loop
# -------------------------------------------------------------------------------------------------
def _load_classifier(directory: Path, n_classes: int, pad_token_id: int, device: str) -> Any:
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


def _forward_backward(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """Forward and backward pass of one micro-batch; returns its summed loss, still on the device."""
    import torch

    with _autocast(input_ids.device.type):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    (loss * scale).backward()
    return loss.detach()


def _model_accepts_4d_mask(model: Any, tokenizer: Any, device: str) -> bool:
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


def _smaller_micro_batch(effective_batch: int, micro_batch: int) -> int | None:
    """The micro-batch to retry with after an out-of-memory: the largest divisor of the effective batch that
    is at most half the current one (so micro-batch x accumulation stays exactly the effective batch);
    None when the micro-batch is already 1."""
    if micro_batch <= 1:
        return None
    return max(d for d in range(1, micro_batch // 2 + 1) if effective_batch % d == 0)


def _release_device_memory(device: str) -> None:
    """Collect the failed attempt's tensors and hand the cached blocks back, so a retry starts from free memory."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _longest_first(batches: list[np.ndarray], lengths: np.ndarray) -> list[np.ndarray]:
    """The batch holding the longest text moved to the front: if anything runs out of memory, it is the first
    step, not one minutes into the epoch."""
    if not batches:
        return batches
    longest = max(range(len(batches)), key=lambda i: int(lengths[batches[i]].max()))
    return [batches[longest], *batches[:longest], *batches[longest + 1 :]]


def _validation_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: decaying biases and LayerNorm gains just hurts."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(device: str) -> Any:
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU autocast is slower than float32 for these sizes)."""
    import torch

    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

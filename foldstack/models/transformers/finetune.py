"""`finetune`: a transformer with a classification head, fine-tuned on each fold with a plain PyTorch loop.

The loop is written out (no HF Trainer) to keep control of what costs time on a GPU:

- texts are tokenised once per (tokenizer, truncation length, text) and the token ids kept on disk under
  `<cache_dir>/tokens/` (`text_cache.cached_tokenize`): folds 2..K and later runs read them;
- each optimiser step takes `batch_size * grad_accum` rows of similar length (length-grouped batches,
  padded per micro-batch), split into micro-batches of `batch_size`; the loss is summed over the step's
  rows and divided by their number, so the gradient of a step does not depend on how it was split;
- nothing inside the step loop waits for the GPU: host arrays go through pinned memory with non-blocking
  copies, the loss is summed on the device (read once per evaluation, not per step), AdamW is the fused
  kernel, and the attention mask is passed in the 4-d form that transformers uses as it is (the 2-d form
  makes it ask the GPU `mask.all()` on every forward pass); bf16 autocast, TF32 and the cuDNN-attention
  fix are set on CUDA (`foldstack.runtime.devices.configure_torch_for_device`);
- evaluation and prediction run in batches 4x the training micro-batch (no activations are kept for a
  backward pass and there is no optimiser state);
- a CUDA out-of-memory error restarts the fit from scratch (fresh model, same seed) with half the
  micro-batch and twice the accumulation, so the effective batch and the schedule stay the same, down to
  one text per micro-batch; `model.json` records the micro-batch that worked and the attempts that did not;
- `compile: true` wraps the training forward pass in `torch.compile` and pads lengths to multiples of 16 so
  that few shapes are compiled; off by default because compiling costs more than it saves on short runs.

A validation slice carved from the fold's own training part drives early stopping, and the best weights seen
are restored at the end, so the fold's held-out rows are never looked at before prediction. The loop itself
is `training.TrainingLoop`; this module is the kind: its params, the out-of-memory retries, prediction and
the saved form.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field

from foldstack.errors import DataError
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams, check_labels, check_soft_targets
from foldstack.models.persist import restore_model, write_model_json
from foldstack.models.transformers.batching import attention_mask_4d, length_grouped_batches, pad_batch
from foldstack.models.transformers.hf import (
    DEFAULT_EMBEDDING_MODEL,
    load_tokenizer,
    model_identity,
    quiet_transformers,
    resolve_model_source,
)
from foldstack.models.transformers.text_cache import RaggedArray, cached_tokenize, tokenizer_identity
from foldstack.models.transformers.training import (
    EVAL_BATCH_FACTOR,
    DeviceMemoryError,
    TrainingLoop,
    TrainingRun,
    autocast,
    load_classifier,
    model_accepts_4d_mask,
    oom_message,
    release_device_memory,
    smaller_micro_batch,
    validation_split,
)
from foldstack.runtime.devices import configure_torch_for_device, resolve_device, seed_everything

__all__ = ["TRANSFORMER_SUBDIR", "DeviceMemoryError", "FineTune"]

FORMAT_VERSION = 2
TRANSFORMER_SUBDIR = "transformer"


@register_model
class FineTune:
    """AutoModelForSequenceClassification fine-tuned with AdamW, linear warmup/decay and early stopping."""

    kind: ClassVar[str] = "finetune"
    soft_targets: ClassVar[bool] = True
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
        y = check_labels(y, len(texts), self.context.n_classes, self.kind)
        _require_two_classes(np.unique(y))
        return self._fit(texts, y)

    def fit_soft(self, texts: Sequence[str], targets: np.ndarray) -> Self:
        """Fit soft targets (a distilled student): torch's cross-entropy takes class probabilities in place of
        codes, for training and for the early-stopping loss alike."""
        targets = check_soft_targets(targets, len(texts), self.context.n_classes, self.kind)
        _require_two_classes(np.flatnonzero(targets.sum(axis=0) > 0))
        return self._fit(texts, targets.astype(np.float32))

    def _fit(self, texts: Sequence[str], y: np.ndarray) -> Self:
        """Train on `y`: class codes (n,) or soft targets (n, n_classes)."""
        p = self.params
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

        run, failed_attempts = self._train_within_memory(source, token_ids, y, device)
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

    def _train_within_memory(
        self, source: Path, token_ids: RaggedArray, y: np.ndarray, device: str
    ) -> tuple[TrainingRun, list[dict[str, Any]]]:
        """`_train` with the params' micro-batch; after a CUDA out-of-memory error, from scratch again with half
        the micro-batch and twice the accumulation. Returns the run that fitted and the attempts that did not."""
        import torch

        p = self.params
        effective_batch = p.batch_size * p.grad_accum
        micro_batch = p.batch_size
        failed_attempts: list[dict[str, Any]] = []
        while True:
            failure = None
            try:
                return self._train(source, token_ids, y, device, micro_batch), failed_attempts
            except torch.cuda.OutOfMemoryError as error:
                failure = oom_message(error)
            # Out of the except block, so the failed attempt's frames (model, activations) are gone before
            # the cached blocks are handed back to the driver.
            release_device_memory(device)
            failed_attempts.append(
                {"micro_batch": micro_batch, "grad_accum": effective_batch // micro_batch, "error": failure}
            )
            smaller = smaller_micro_batch(effective_batch, micro_batch)
            if smaller is None:
                raise DeviceMemoryError(
                    f"finetune ({p.model}): {device} ran out of memory even with one text per micro-batch "
                    f"(max_length {p.max_length}): {failure}. Lower max_length, free the GPU (other fine-tunes "
                    "packed onto it count too), or use a GPU with more memory."
                )
            micro_batch = smaller

    def _train(
        self, source: Path, token_ids: RaggedArray, y: np.ndarray, device: str, micro_batch: int
    ) -> TrainingRun:
        """One complete training attempt from a freshly loaded model, with `micro_batch` texts per forward pass."""
        p = self.params
        seed = self.context.seed + p.seed_offset
        seed_everything(seed)  # before loading: the new classification head is drawn from it
        rng = np.random.default_rng(seed)
        load_started = time.perf_counter()
        model = load_classifier(source, self.context.n_classes, self.tokenizer_.pad_token_id, device)
        use_4d_mask = model_accepts_4d_mask(model, self.tokenizer_, device)
        load_seconds = time.perf_counter() - load_started
        train_rows, val_rows = validation_split(y if y.ndim == 1 else y.argmax(axis=1), p.val_fraction, seed)

        def validation_loss(batch_size: int) -> float:
            return self._validation_loss(
                token_ids, val_rows, y, device, model=model, use_4d_mask=use_4d_mask, batch_size=batch_size
            )

        loop = TrainingLoop(p, model, token_ids, y, device, micro_batch=micro_batch,
                            pad_id=self.tokenizer_.pad_token_id, use_4d_mask=use_4d_mask, train_rows=train_rows,
                            val_rows=val_rows, validation_loss=validation_loss)
        return loop.run(rng, load_seconds)

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
        log_proba = np.log(np.clip(proba, 1e-12, None))
        if y.ndim == 2:  # soft targets: their cross-entropy
            return float(-np.mean((y[rows] * log_proba).sum(axis=1)))
        return float(-np.mean(log_proba[np.arange(rows.size), y[rows]]))

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
                failure = oom_message(error)
            release_device_memory(device)
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
                with autocast(device):
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
        model.model_ = load_classifier(
            directory / TRANSFORMER_SUBDIR, meta["n_classes"], model.tokenizer_.pad_token_id, resolved
        ).eval()
        model.attention_mask_4d_ = model_accepts_4d_mask(model.model_, model.tokenizer_, resolved)
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


def _require_two_classes(classes: np.ndarray) -> None:
    if classes.size < 2:
        raise DataError(f"finetune: the training part holds the classes {classes.tolist()}; at least two are needed")

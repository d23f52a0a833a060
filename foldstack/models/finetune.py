"""`finetune`: a transformer with a classification head, fine-tuned on each fold with a plain PyTorch loop.

The loop is written out (no HF Trainer) to keep control of what costs time on a GPU: texts are tokenised
once; batches group texts of similar length and are padded per batch; the loss is summed on the device (no
`.item()` per step, which would synchronise with the GPU every step); AdamW is the fused kernel and the
forward pass runs under bf16 autocast on CUDA. A validation slice carved from the fold's own training part
drives early stopping, and the best weights seen are restored at the end, so the fold's held-out rows are
never looked at before prediction.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from pydantic import Field

from foldstack.errors import DataError
from foldstack.fsutil import write_json
from foldstack.models import register_model
from foldstack.models.base import ModelContext, ModelParams, params_dict
from foldstack.models.hf import (
    DEFAULT_EMBEDDING_MODEL,
    check_labels,
    configure_torch_for_device,
    length_grouped_batches,
    load_tokenizer,
    model_identity,
    pad_batch,
    quiet_transformers,
    read_model_json,
    resolve_device,
    resolve_model_source,
    seed_everything,
    tokenize,
)

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
TRANSFORMER_SUBDIR = "transformer"
# Improvements of the validation loss smaller than this count as no improvement (float noise).
_MIN_IMPROVEMENT = 1e-6


@register_model
class FineTune:
    """AutoModelForSequenceClassification fine-tuned with AdamW, linear warmup/decay and early stopping."""

    kind: ClassVar[str] = "finetune"

    class Params(ModelParams):
        model: str = Field(
            DEFAULT_EMBEDDING_MODEL,
            description="pretrained model: a local Hugging Face directory, package:<module> or tiny:<seed>",
        )
        max_length: int = Field(128, ge=8, le=8192, description="tokens per text; longer texts are truncated")
        batch_size: int = Field(32, ge=1, le=4096, description="texts per micro-batch, in training and prediction")
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
        seed_offset: int = Field(0, ge=0, description="added to the task seed: several otherwise equal models differ")

    def __init__(self, params: Params, context: ModelContext):
        self.params = params
        self.context = context

    # ---------------------------------------------------------------------------------------------
    # training
    # ---------------------------------------------------------------------------------------------
    def fit(self, texts: Sequence[str], y: np.ndarray) -> Self:
        import torch
        from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

        p = self.params
        y = check_labels(y, len(texts), self.context.n_classes, self.kind)
        classes = np.unique(y)
        if classes.size < 2:
            raise DataError(
                f"finetune: the training part holds the classes {classes.tolist()}; at least two are needed"
            )
        device = resolve_device(self.context.device)
        configure_torch_for_device(device)
        seed = self.context.seed + p.seed_offset
        seed_everything(seed)
        rng = np.random.default_rng(seed)

        source = resolve_model_source(p.model, cache_dir=self.context.cache_dir)
        self.tokenizer_ = load_tokenizer(source)
        with quiet_transformers():
            # float32 master weights whatever the checkpoint's dtype; speed comes from autocast on CUDA.
            # ignore_mismatched_sizes: a checkpoint with a classification head of another size gets a new one.
            model = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=self.context.n_classes,
                local_files_only=True,
                dtype=torch.float32,
                ignore_mismatched_sizes=True,
            )
        model.config.pad_token_id = self.tokenizer_.pad_token_id
        model.to(device)
        self.model_ = model
        self.source_identity_ = model_identity(source)

        token_ids = tokenize(self.tokenizer_, texts, p.max_length)
        train_rows, val_rows = _validation_split(y, p.val_fraction, seed)
        lengths = np.array([len(t) for t in token_ids])

        batches_per_epoch = math.ceil(len(train_rows) / p.batch_size)
        steps_per_epoch = math.ceil(batches_per_epoch / p.grad_accum)
        total_steps = steps_per_epoch * p.epochs
        optimizer = torch.optim.AdamW(
            _parameter_groups(model, p.weight_decay), lr=p.lr, fused=True if device.startswith("cuda") else None
        )
        scheduler = get_linear_schedule_with_warmup(optimizer, round(p.warmup_fraction * total_steps), total_steps)
        labels = torch.from_numpy(y).to(device)
        eval_every = p.eval_every_steps or steps_per_epoch

        history: list[dict[str, Any]] = []
        best_loss, best_step, best_state, evals_without_gain = math.inf, 0, None, 0
        step, stop = 0, False
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        n_summed = 0
        for epoch in range(p.epochs):
            model.train()
            # Batches index into train_rows; re-map to row numbers of `texts`.
            epoch_batches = [train_rows[b] for b in length_grouped_batches(lengths[train_rows], p.batch_size, rng=rng)]
            for i, rows in enumerate(epoch_batches):
                input_ids, attention_mask = pad_batch(token_ids, rows, self.tokenizer_.pad_token_id, device)
                with _autocast(device):
                    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[torch.from_numpy(rows).to(device)])
                (loss / p.grad_accum).backward()
                loss_sum += loss.detach()
                n_summed += 1
                if (i + 1) % p.grad_accum != 0 and i + 1 != len(epoch_batches):
                    continue
                if p.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % eval_every != 0 and step != total_steps:
                    continue
                record = {"step": step, "epoch": epoch + 1, "train_loss": float(loss_sum) / max(n_summed, 1)}
                loss_sum.zero_()
                n_summed = 0
                if val_rows.size:
                    record["val_loss"] = self._validation_loss(token_ids, val_rows, y, device)
                    model.train()
                    if record["val_loss"] < best_loss - _MIN_IMPROVEMENT:
                        best_loss, best_step, evals_without_gain = record["val_loss"], step, 0
                        # A CPU copy: the best weights must survive the steps that follow.
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    else:
                        evals_without_gain += 1
                        stop = evals_without_gain >= p.patience
                history.append(record)
                if stop:
                    break
            if stop:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.history_ = history
        self.best_step_ = best_step if best_state is not None else step
        self.n_steps_ = step
        self.n_train_rows_ = int(train_rows.size)
        self.n_val_rows_ = int(val_rows.size)
        return self

    def _validation_loss(self, token_ids: list[list[int]], rows: np.ndarray, y: np.ndarray, device: str) -> float:
        proba = self._predict_token_ids([token_ids[i] for i in rows], device)
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
        return self._predict_token_ids(tokenize(self.tokenizer_, texts, self.params.max_length), device)

    def _predict_token_ids(self, token_ids: list[list[int]], device: str) -> np.ndarray:
        import torch

        self.model_.eval()
        batches = length_grouped_batches([len(t) for t in token_ids], self.params.batch_size)
        chunks = []
        with torch.inference_mode():
            for rows in batches:
                input_ids, attention_mask = pad_batch(token_ids, rows, self.tokenizer_.pad_token_id, device)
                with _autocast(device):
                    logits = self.model_(input_ids=input_ids, attention_mask=attention_mask).logits
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
        write_json(
            directory / "model.json",
            {
                "kind": self.kind,
                "format_version": FORMAT_VERSION,
                "params": params_dict(self.params),
                "n_classes": self.context.n_classes,
                "seed": self.context.seed,
                "source": {"name": self.params.model, "identity": self.source_identity_},
                "training": {
                    "history": self.history_,
                    "best_step": self.best_step_,
                    "n_steps": self.n_steps_,
                    "n_train_rows": self.n_train_rows_,
                    "n_val_rows": self.n_val_rows_,
                },
            },
        )

    @classmethod
    def load(cls, directory: Path, *, device: str = "cpu", cache_dir: Path | None = None) -> Self:
        import torch
        from transformers import AutoModelForSequenceClassification

        directory = Path(directory)
        meta = read_model_json(directory, cls.kind, FORMAT_VERSION)
        params = cls.Params.model_validate(meta["params"])
        context = ModelContext(n_classes=meta["n_classes"], device=device, seed=meta["seed"], cache_dir=cache_dir)
        model = cls(params, context)
        resolved = resolve_device(device)
        configure_torch_for_device(resolved)
        model.tokenizer_ = load_tokenizer(directory / TRANSFORMER_SUBDIR)
        with quiet_transformers():
            model.model_ = AutoModelForSequenceClassification.from_pretrained(
                directory / TRANSFORMER_SUBDIR, local_files_only=True, dtype=torch.float32
            )
        model.model_.to(resolved).eval()
        training = meta["training"]
        model.source_identity_ = meta["source"]["identity"]
        model.history_ = training["history"]
        model.best_step_ = training["best_step"]
        model.n_steps_ = training["n_steps"]
        model.n_train_rows_ = training["n_train_rows"]
        model.n_val_rows_ = training["n_val_rows"]
        return model


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

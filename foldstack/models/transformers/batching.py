"""Batches of token ids through a transformer: length-grouped batches, padding, device transfer, pooling,
and `SentenceEncoder` (a frozen model -> one vector per text).

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from foldstack.models.transformers.hf import load_tokenizer
from foldstack.models.transformers.quiet import quiet_transformers
from foldstack.models.transformers.text_cache import RaggedArray, tokenize
from foldstack.runtime.devices import configure_torch_for_device

if TYPE_CHECKING:
    import torch

__all__ = ["SentenceEncoder", "attention_mask_4d", "length_grouped_batches", "mean_pool", "pad_batch", "to_device"]


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    chunk_batches: int = 50,
) -> list[np.ndarray]:
    """Index batches in which texts have similar lengths, so that dynamic padding wastes little.

    Without `rng` (inference): all indices sorted by length, longest first (an out-of-memory shows up on
    the first batch, not the last). With `rng` (training): a shuffled order cut into chunks of
    `chunk_batches` batches, each chunk sorted by length and cut into batches, and the batches shuffled:
    batches stay random while their members have similar lengths.
    """
    lengths = np.asarray(lengths)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    chunk = batch_size * chunk_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        members = order[start : start + chunk]
        members = members[np.argsort(-lengths[members], kind="stable")]
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(
    token_ids: RaggedArray | Sequence[Sequence[int]],
    indices: np.ndarray,
    pad_id: int,
    device: str,
    *,
    pad_to_multiple: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of the texts at `indices`, right-padded to the batch's longest text
    (rounded up to a multiple of `pad_to_multiple`, which keeps the number of distinct shapes small for
    torch.compile), already on `device`."""
    ragged = token_ids if isinstance(token_ids, RaggedArray) else RaggedArray.from_rows(token_ids, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    starts = ragged.offsets[indices]
    lengths = ragged.offsets[indices + 1] - starts
    width = max(int(lengths.max(initial=0)), 1)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    positions = np.arange(width)
    real = positions[None, :] < lengths[:, None]
    # One gather for the whole batch; padded positions read element 0 and are then overwritten.
    source = ragged.values if ragged.values.size else np.zeros(1, dtype=np.int64)
    gathered = source[np.where(real, starts[:, None] + positions[None, :], 0)]
    input_ids = np.where(real, gathered, pad_id).astype(np.int64)
    return to_device(input_ids, device), to_device(real.astype(np.int64), device)


def to_device(array: np.ndarray, device: str) -> torch.Tensor:
    """A host array as a tensor on `device`. On CUDA it goes through pinned memory with a non-blocking copy,
    so the host queues the copy and moves on instead of waiting for it."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if not device.startswith("cuda"):
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def attention_mask_4d(attention_mask: torch.Tensor) -> torch.Tensor:
    """A (batch, 1, length, length) boolean mask (True: attend) from a (batch, length) 0/1 mask.

    transformers turns a 2-d mask into this form itself, but first asks `mask.all()` to see whether it can
    skip the mask, which copies a value to the host and so waits for the GPU on every forward pass; a
    ready 4-d mask is used as it is. Callers check once that their model treats both forms alike
    (`finetune` does, at the start of each fit).
    """
    batch, length = attention_mask.shape
    return attention_mask.bool()[:, None, None, :].expand(batch, 1, length, length)


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The average of the token vectors that the attention mask marks as real (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


class SentenceEncoder:
    """Frozen transformer -> one vector per text: mean of the last hidden state over real tokens.

    Runs in float32 (no bf16 autocast) on every device, so that embeddings cached by a GPU run and ones
    computed on a CPU agree closely (TF32 matmuls on the GPU differ in the 3rd-4th digit, harmless for a
    linear classifier). Vectors are returned unnormalised; callers normalise if they want.
    """

    def __init__(self, directory: Path, *, device: str = "cpu", max_length: int = 128, batch_size: int = 64):
        import torch
        from transformers import AutoModel

        self.directory = Path(directory)
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        configure_torch_for_device(device)
        self.tokenizer = load_tokenizer(self.directory)
        with quiet_transformers():
            self.model = AutoModel.from_pretrained(self.directory, local_files_only=True, dtype=torch.float32)
        self.model.to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.n_encoded = 0  # texts this encoder has run through the model (the cache tests read it)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 embeddings, in the order of `texts`."""
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        token_ids = tokenize(self.tokenizer, texts, self.max_length)
        batches = length_grouped_batches(token_ids.lengths, self.batch_size)
        pooled = []
        with torch.inference_mode():
            for indices in batches:
                input_ids, attention_mask = pad_batch(token_ids, indices, self.tokenizer.pad_token_id, self.device)
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                pooled.append(mean_pool(hidden, attention_mask).float())
            # One transfer at the end instead of a device sync per batch.
            vectors = torch.cat(pooled).cpu().numpy()
        out = np.empty_like(vectors)
        out[np.concatenate(batches)] = vectors
        self.n_encoded += len(texts)
        return out

"""The GPU-speed machinery of `finetune`, checked on CPU: token-id cache, micro-batching, no host syncs in the
step loop, out-of-memory retry and compile bucketing (the GPU packing planner: tests/bench/test_gpu_packing.py).

CI has no GPU. Where a test needs a CUDA out-of-memory error it raises `torch.cuda.OutOfMemoryError` itself
(the real class, which exists in CPU builds of torch too) from a patched step: a test double of the GPU
running out of memory, not of the handling code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from foldstack.models.base import ModelContext, check_proba
from foldstack.models.transformers import training
from foldstack.models.transformers.batching import pad_batch
from foldstack.models.transformers.finetune import FineTune
from foldstack.models.transformers.hf import load_tokenizer
from foldstack.models.transformers.text_cache import (
    RaggedArray,
    TextArrayStore,
    cached_tokenize,
    text_key,
    tokenize,
    tokenizer_identity,
)
from foldstack.models.transformers.training import DeviceMemoryError, smaller_micro_batch
from foldstack.models.transformers.tiny import build_tiny_model
from tests.conftest import FILLERS, toy_task


def finetune(model_dir: Path, cache_dir: Path | None = None, **params) -> FineTune:
    settings = {"lr": 1e-2, "epochs": 2, "batch_size": 8, "val_fraction": 0.0} | params
    return FineTune(FineTune.Params(model=str(model_dir), **settings),
                    ModelContext(n_classes=2, seed=0, cache_dir=cache_dir))


# ------------------------------------------------------------------------------------------------
# ragged token ids, padding and the per-text store
# ------------------------------------------------------------------------------------------------
def test_ragged_array_rows_take_and_validation() -> None:
    ragged = RaggedArray.from_rows([[1, 2, 3], [], [4]], dtype=np.int32)
    assert len(ragged) == 3 and ragged.lengths.tolist() == [3, 0, 1]
    assert [r.tolist() for r in ragged] == [[1, 2, 3], [], [4]]
    assert [r.tolist() for r in ragged.take([2, 0])] == [[4], [1, 2, 3]]
    vectors = RaggedArray.from_matrix(np.arange(6.0).reshape(3, 2))
    assert vectors[1].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="offsets must rise"):
        RaggedArray(np.arange(3), np.array([0, 2, 1, 3]))


def test_pad_batch_matches_row_by_row_padding_and_rounds_widths_up() -> None:
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, 100, size=n).tolist() for n in rng.integers(1, 30, size=40)]
    ragged = RaggedArray.from_rows(rows, dtype=np.int32)
    picked = np.array([3, 17, 0, 25, 39])
    ids, mask = pad_batch(ragged, picked, pad_id=0, device="cpu")
    width = max(len(rows[i]) for i in picked)
    expected = np.zeros((picked.size, width), dtype=np.int64)
    for j, i in enumerate(picked):
        expected[j, : len(rows[i])] = rows[i]
    np.testing.assert_array_equal(ids.numpy(), expected)
    np.testing.assert_array_equal(mask.numpy(), (expected != 0).astype(np.int64))
    bucketed, bucketed_mask = pad_batch(ragged, picked, pad_id=0, device="cpu", pad_to_multiple=16)
    assert bucketed.shape[1] % 16 == 0 and bucketed.shape[1] >= width
    assert int(bucketed_mask.sum()) == int(mask.sum())


def test_text_array_store_computes_only_missing_texts_and_other_processes_read_the_shards(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def lengths_as_rows(texts: list[str]) -> RaggedArray:
        calls.append(texts)
        return RaggedArray.from_rows([[len(w) for w in t.split()] for t in texts], dtype=np.int32)

    store = TextArrayStore(tmp_path / "store")
    rows, computed = store.lookup_or_compute(["a bb", "ccc", "a bb"], lengths_as_rows, namespace="f")
    assert computed == 2 and calls == [["a bb", "ccc"]]  # the repeated text is computed once
    assert [r.tolist() for r in rows] == [[1, 2], [3], [1, 2]]
    rows, computed = store.lookup_or_compute(["ccc", "dddd e"], lengths_as_rows, namespace="f")
    assert computed == 1 and calls[-1] == ["dddd e"]
    assert len(list((tmp_path / "store").glob("shard-*.npz"))) == 2
    # A process that has not seen the store yet reads everything from the shards.
    TextArrayStore._loaded.clear()
    found, missing = TextArrayStore(tmp_path / "store").get([text_key(t) for t in ("a bb", "dddd e", "new")])
    assert missing == [text_key("new")]
    assert found[text_key("dddd e")].tolist() == [4, 1] and found[text_key("a bb")].dtype == np.int32


def test_token_cache_is_shared_by_folds_and_keyed_by_tokenizer_and_length(tiny_dir: Path, tmp_path: Path) -> None:
    texts, y = toy_task(FILLERS)
    cache = tmp_path / "cache"
    folds = np.arange(len(texts)) % 3
    first = finetune(tiny_dir, cache, epochs=1)
    first.fit([t for t, f in zip(texts, folds, strict=True) if f != 0], y[folds != 0])
    first.predict_proba([t for t, f in zip(texts, folds, strict=True) if f == 0])
    assert first.n_tokenized_ == len(texts) and first.n_token_ids_from_cache_ == 0
    later = finetune(tiny_dir, cache, epochs=1)
    later.fit([t for t, f in zip(texts, folds, strict=True) if f != 1], y[folds != 1])
    later.predict_proba([t for t, f in zip(texts, folds, strict=True) if f == 1])
    assert later.n_tokenized_ == 0 and later.n_token_ids_from_cache_ == len(texts)

    tokenizer = load_tokenizer(tiny_dir)
    cached, n_new = cached_tokenize(tokenizer, texts, 128, cache)
    fresh = tokenize(tokenizer, texts, 128)
    assert n_new == 0 and cached.values.dtype == np.int32
    np.testing.assert_array_equal(cached.values, fresh.values)
    np.testing.assert_array_equal(cached.offsets, fresh.offsets)
    # Truncating elsewhere is another function of the text: its own store, and truncated ids.
    short, n_new = cached_tokenize(tokenizer, texts, 8, cache)
    assert n_new == len(set(texts)) and short.lengths.max() == 8
    assert len(list((cache / "tokens").iterdir())) == 2
    # The identity is the tokenizer's content: a saved copy elsewhere (the fine-tuned bundle) shares it,
    # and calling the tokenizer (which changes its truncation state) does not change it.
    tokenizer.save_pretrained(tmp_path / "copy")
    assert tokenizer_identity(load_tokenizer(tmp_path / "copy")) == tokenizer_identity(tokenizer)
    assert tokenizer_identity(build_tokenizer_of_other_vocabulary(tmp_path)) != tokenizer_identity(tokenizer)


def build_tokenizer_of_other_vocabulary(tmp_path: Path):
    from tests.conftest import FILLERS, toy_task

    return load_tokenizer(build_tiny_model(tmp_path / "other", seed=0, corpus=["zebra", "quokka", "okapi"]))


# ------------------------------------------------------------------------------------------------
# the step loop
# ------------------------------------------------------------------------------------------------
def test_a_steps_gradient_does_not_depend_on_how_it_is_split_into_micro_batches(tiny_dir: Path) -> None:
    import torch

    texts, y = toy_task(FILLERS[:4])
    tokenizer = load_tokenizer(tiny_dir)
    token_ids = tokenize(tokenizer, [t + " really" * i for i, t in enumerate(texts)], 64)  # different lengths
    model = training.load_classifier(tiny_dir, 2, tokenizer.pad_token_id, "cpu").double().eval()
    rows = np.arange(8)

    def gradient(micro_batch: int) -> torch.Tensor:
        model.zero_grad()
        for start in range(0, rows.size, micro_batch):
            part = rows[start : start + micro_batch]
            ids, mask = pad_batch(token_ids, part, tokenizer.pad_token_id, "cpu")
            training.forward_backward(model, ids, mask, torch.from_numpy(y[part]), 1.0 / rows.size)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    whole = gradient(8)
    torch.testing.assert_close(gradient(2), whole, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gradient(3), whole, rtol=1e-9, atol=1e-12)


def test_step_loop_reads_nothing_back_from_the_device_between_evaluations(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every host read of a tensor value (`.item()`, `bool()`, `float()`, `.tolist()`) is a GPU sync on CUDA.
    The loop may read once per evaluation; transformers' 2-d mask check (`mask.all()`) would read once per
    forward pass. CPU AdamW reads its step counters (`torch/optim`); on CUDA it is the fused kernel, which does not."""
    import torch

    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            if "torch/optim" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    texts, y = toy_task(FILLERS)
    model = finetune(tiny_dir, epochs=3, batch_size=4).fit(texts, y)
    assert model.attention_mask_4d_ and model.n_steps_ == 3 * 6
    assert len(reads) <= len(model.history_) + 1, reads  # one read per evaluation, one for the mask check


def test_compile_pads_to_multiples_of_16_and_eval_batches_are_four_times_the_micro_batch(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    compiled, widths, eval_batches = [], [], []
    # Only the wiring is checked: a real torch.compile takes far longer than this suite allows.
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(model) or model)
    step = training.forward_backward
    monkeypatch.setattr(training, "forward_backward",
                        lambda model, ids, *rest: widths.append(ids.shape[1]) or step(model, ids, *rest))
    predict = FineTune._predict_in_batches
    monkeypatch.setattr(FineTune, "_predict_in_batches",
                        lambda self, m, t, d, f, batch: eval_batches.append(batch) or predict(self, m, t, d, f, batch))
    texts, y = toy_task(FILLERS)
    model = finetune(tiny_dir, compile=True, epochs=1, batch_size=3, val_fraction=0.25).fit(texts, y)
    assert len(compiled) == 1 and all(w % 16 == 0 for w in widths)
    model.predict_proba(texts[:5])
    assert set(eval_batches) == {12}


# ------------------------------------------------------------------------------------------------
# out of memory
# ------------------------------------------------------------------------------------------------
def _fail_above(limit: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every forward/backward pass of more than `limit` texts raise CUDA's out-of-memory error."""
    import torch

    seen: list[int] = []
    step = training.forward_backward

    def step_with_small_memory(model, input_ids, *rest):
        seen.append(input_ids.shape[0])
        if input_ids.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test double)")
        return step(model, input_ids, *rest)

    monkeypatch.setattr(training, "forward_backward", step_with_small_memory)
    return seen


def test_out_of_memory_retries_with_half_the_micro_batch_and_the_same_effective_batch(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts, y = toy_task(FILLERS)
    # What the retry must reproduce: a clean fit, same seed, that started with micro-batches of 2.
    direct = finetune(tiny_dir, batch_size=2, grad_accum=4).fit(texts, y)
    seen = _fail_above(2, monkeypatch)
    model = finetune(tiny_dir, batch_size=8).fit(texts, y)
    assert seen[:2] == [8, 4] and max(seen[2:]) == 2  # 8 failed, 4 failed, then micro-batches of 2 only
    assert (model.micro_batch_, model.grad_accum_) == (2, 4)
    assert [a["micro_batch"] for a in model.oom_retries_] == [8, 4]
    assert model.n_steps_ == 2 * 3  # the same optimiser steps as with 8 per micro-batch: 24 rows, 8 per step
    proba = check_proba(model.predict_proba(texts), len(texts), 2, "finetune")
    np.testing.assert_array_equal(proba, direct.predict_proba(texts))

    model.save(tmp_path / "saved")
    training = json.loads((tmp_path / "saved" / "model.json").read_text())["training"]
    assert (training["micro_batch"], training["grad_accum"]) == (2, 4)
    assert "test double" in training["oom_retries"][0]["error"]
    loaded = FineTune.load(tmp_path / "saved")
    assert loaded.micro_batch_ == 2
    np.testing.assert_allclose(loaded.predict_proba(texts), proba, atol=1e-6)


def test_out_of_memory_with_one_text_per_micro_batch_is_a_clear_error(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_above(0, monkeypatch)
    texts, y = toy_task(FILLERS[:4])
    with pytest.raises(DeviceMemoryError, match="even with one text per micro-batch.*Lower max_length"):
        finetune(tiny_dir, batch_size=6).fit(texts, y)
    # The micro-batches tried: divisors of the effective batch 6, each at most half the previous.
    assert [smaller_micro_batch(6, m) for m in (6, 3, 1)] == [3, 1, None]
    assert [smaller_micro_batch(100, m) for m in (100, 50, 25, 10)] == [50, 25, 10, 5]


def test_prediction_out_of_memory_halves_the_eval_batch(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    texts, y = toy_task(FILLERS)
    model = finetune(tiny_dir, epochs=1).fit(texts, y)
    expected = model.predict_proba(texts)
    predict, tried = FineTune._predict_in_batches, []

    def predict_with_small_memory(self, m, token_ids, device, use_4d, batch):
        tried.append(batch)
        if batch > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test double)")
        return predict(self, m, token_ids, device, use_4d, batch)

    monkeypatch.setattr(FineTune, "_predict_in_batches", predict_with_small_memory)
    np.testing.assert_allclose(model.predict_proba(texts), expected, atol=1e-6)
    assert tried == [32, 16, 8, 4]

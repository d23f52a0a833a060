"""Token ids, and content-keyed caches of per-text results on disk.

- `RaggedArray`: rows of different lengths (the token ids of a data set, or embedding vectors) in one flat array;
- `tokenize` (texts -> a `RaggedArray` of token ids) and `cached_tokenize`, which keeps them under
  `<cache_dir>/tokens/`, keyed by `tokenizer_identity`;
- `TextArrayStore`: one array per text, keyed by the sha256 of the text (`text_key`); the embedding and
  token-id caches are both one of these; `texts_hash` names what a list of texts computed with one function.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from filelock import FileLock

__all__ = [
    "RaggedArray", "TextArrayStore", "cached_tokenize", "text_key", "texts_hash", "tokenize",
    "tokenizer_identity",
]

# Separates the model identity from the texts inside `texts_hash`; 0xFF never occurs in UTF-8.
_TEXT_SEPARATOR = b"\xff"
_TEXT_KEY_CHARS = 64  # a sha256 in hex: ASCII without NUL bytes, which numpy "S" strings would strip


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

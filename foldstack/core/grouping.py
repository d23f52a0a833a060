"""Overlap-aware groups: rows whose texts overlap must never be split between a fit and its validation.

A memorising model (word or character n-grams) scores a validation row well when the training part holds a
text that overlaps it, so an OOF prediction is honest only if overlapping texts share a fold (and the holdout
split). Three kinds of overlap are grouped, each switchable in `folds.grouping`:

- **exact**: equal after case-folding and dropping everything but letters and digits (re-posts that differ in
  case, punctuation, spacing or emoji);
- **containment**: a text of at least `min_contained_tokens` words that occurs, at word boundaries, inside a
  longer text of the same file joins that text's group. Each contained text attaches to one container only
  (the one with the most words; ties go to the first in the file), so generic phrases cannot chain thousands
  of texts together: the groups are trees rooted at texts contained in nothing. Matching is one pass of an
  Aho-Corasick automaton over every text (pyahocorasick), not pairwise comparison;
- **near_duplicates**: texts whose word-shingle sets have a Jaccard similarity of at least
  `jaccard_threshold` (MinHash signatures and LSH banding from datasketch, then the signatures' estimate is
  checked for each candidate pair), so lightly edited copies share a group.

What is *not* caught: paraphrases with few shared words, overlap below the thresholds (a quoted sentence of
fewer than `min_contained_tokens` words, an edit that leaves less than `jaccard_threshold` of the shingles),
and overlap with texts outside the file.

Everything is deterministic: no process-salted hashes, groups numbered by first appearance.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import GroupingConfig

log = logging.getLogger("foldstack")

_WORD = re.compile(r"\w+")
# datasketch seeds its permutations from this; fixed so that groups never depend on the process.
_MINHASH_SEED = 1


def exact_key(text: str) -> str:
    """Equal keys = the same text up to case, punctuation, spacing and emoji."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        # The smaller index becomes the root, so a group's root is its first text: stable numbering.
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return True


@dataclass
class GroupingResult:
    """An integer group per row (numbered by first appearance) and how the groups came about."""

    groups: np.ndarray
    links: dict[str, int] = field(default_factory=dict)  # rows (or texts) each kind of overlap joined
    seconds: dict[str, float] = field(default_factory=dict)

    def stats(self, k: int | None = None) -> dict[str, Any]:
        sizes = np.bincount(self.groups) if len(self.groups) else np.zeros(0, dtype=np.int64)
        n = int(len(self.groups))
        largest = int(sizes.max()) if len(sizes) else 0
        stats = {
            "n_rows": n,
            "n_groups": int(len(sizes)),
            "largest_group": largest,
            "largest_group_share": round(largest / n, 4) if n else 0.0,
            "rows_in_multi_row_groups": int(sizes[sizes > 1].sum()),
            "links": dict(self.links),
        }  # no timings: this goes into snapshot.json, which must be byte-identical for the same data
        if k is not None and n and largest > n / k:
            stats["warning"] = (
                f"the largest overlap group holds {largest} of {n} rows ({largest / n:.0%}), more than one "
                f"fold's share (1/{k}): its fold will be larger than the others and its class balance off; "
                f"raise folds.grouping.min_contained_tokens or jaccard_threshold if the overlap is generic")
        return stats


def group_texts(texts: list[str] | pd.Series, cfg: GroupingConfig) -> GroupingResult:
    """Groups of the texts under every overlap kind that `cfg` switches on."""
    texts = list(texts)
    n = len(texts)
    result = GroupingResult(groups=np.arange(n, dtype=np.int64))
    if n == 0 or not (cfg.exact or cfg.containment or cfg.near_duplicates):
        return result

    started = time.perf_counter()
    # Work on distinct texts: exact copies (or every copy of a text, when exact grouping is off) are one text.
    keys = [exact_key(t) for t in texts] if cfg.exact else list(range(n))
    key_codes, unique_keys = pd.factorize(pd.Series(keys, dtype=object))  # without exact: a row is a text
    first_row = np.full(len(unique_keys), -1, dtype=np.int64)
    first_row[key_codes[::-1]] = np.arange(n)[::-1]
    result.links["exact"] = int(n - len(unique_keys)) if cfg.exact else 0
    result.seconds["exact"] = time.perf_counter() - started

    # Overlap between distinct texts: one union-find over them, keyed by their word tokens.
    token_lists = [word_tokens(texts[i]) for i in first_row]
    union = _UnionFind(len(unique_keys))
    if cfg.containment:
        started = time.perf_counter()
        result.links["containment"] = _link_contained(token_lists, cfg.min_contained_tokens, union)
        result.seconds["containment"] = time.perf_counter() - started
    if cfg.near_duplicates:
        started = time.perf_counter()
        result.links["near_duplicates"] = _link_near_duplicates(token_lists, cfg, union)
        result.seconds["near_duplicates"] = time.perf_counter() - started

    labels = np.array([union.find(int(c)) for c in key_codes])
    result.groups = pd.factorize(labels)[0].astype(np.int64)
    return result


def _link_contained(token_lists: list[list[str]], min_tokens: int, union: _UnionFind) -> int:
    """Join each text of >= min_tokens words that occurs inside a longer text to its longest container."""
    import ahocorasick

    automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
    padded = [" " + " ".join(tokens) + " " for tokens in token_lists]
    for i, tokens in enumerate(token_lists):
        # Spaces around every pattern and haystack make a match a match at word boundaries.
        if len(tokens) >= min_tokens:
            automaton.add_word(padded[i], i)  # a text added twice keeps the first index
    if len(automaton) == 0:
        return 0
    automaton.make_automaton()
    lengths = np.array([len(tokens) for tokens in token_lists])
    container = np.full(len(token_lists), -1, dtype=np.int64)
    # Longest haystacks first: the first container a pattern meets is its longest (ties: first in the file).
    for h in np.lexsort((np.arange(len(lengths)), -lengths)):
        if lengths[h] <= min_tokens:
            break  # a shorter haystack cannot strictly contain a pattern of min_tokens words
        for _, p in automaton.iter(padded[h]):
            if container[p] < 0 and lengths[p] < lengths[h]:
                container[p] = h
    contained = np.flatnonzero(container >= 0)
    for p in contained:
        union.union(int(p), int(container[p]))
    return int(len(contained))


def _link_near_duplicates(token_lists: list[list[str]], cfg: GroupingConfig, union: _UnionFind) -> int:
    """Join texts whose word-shingle sets have an (estimated) Jaccard similarity >= cfg.jaccard_threshold."""
    from datasketch import MinHash, MinHashLSH

    size = cfg.shingle_tokens
    # A text shorter than a shingle has one shingle, its whole token list: equal token lists are already
    # exact duplicates, so only texts of at least one full shingle take part.
    members = [i for i, tokens in enumerate(token_lists) if len(tokens) >= size]
    if len(members) < 2:
        return 0
    shingles = [[" ".join(token_lists[i][j:j + size]).encode() for j in range(len(token_lists[i]) - size + 1)]
                for i in members]
    signatures = MinHash.bulk(shingles, num_perm=cfg.num_perm, seed=_MINHASH_SEED)
    lsh = MinHashLSH(threshold=cfg.jaccard_threshold, num_perm=cfg.num_perm)
    joined = 0
    for position, (i, signature) in enumerate(zip(members, signatures, strict=True)):
        for other in lsh.query(signature):  # earlier texts that share a band with this one
            j = members[other]
            if union.find(i) != union.find(j) and signature.jaccard(signatures[other]) >= cfg.jaccard_threshold:
                joined += union.union(i, j)
        lsh.insert(position, signature, check_duplication=False)
    return joined

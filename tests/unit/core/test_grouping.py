"""Overlap-aware groups: exact copies, contained texts and near-duplicates share a group; nothing else does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from foldstack.config import ConfigError, GroupingConfig, config_from_dict
from foldstack.core.grouping import group_texts

ALL = GroupingConfig()


def same(groups: np.ndarray, i: int, j: int) -> bool:
    return bool(groups[i] == groups[j])


def test_exact_copies_up_to_case_and_punctuation_share_a_group():
    groups = group_texts(["Hello, World", "hello world!", "other text here"], ALL).groups
    assert groups.tolist() == [0, 0, 1]


def test_a_contained_text_joins_its_container_at_word_boundaries_only():
    texts = [
        "the acting was wooden but the score was lovely",  # 0: container
        "the score was lovely",                              # 1: contained, 4 words
        "score was lovel",                                   # 2: not at a word boundary ("lovel")
        "was lovely",                                        # 3: two words: below min_contained_tokens
        "an entirely different sentence about cats",          # 4
    ]
    groups = group_texts(texts, ALL).groups
    assert same(groups, 0, 1)
    assert not same(groups, 0, 2)
    assert not same(groups, 0, 3)
    assert len({groups[0], groups[4]}) == 2


def test_a_phrase_attaches_to_its_longest_container_so_containers_do_not_chain():
    texts = [
        "it is one of the best films i have seen this year",   # 0: the longest container
        "honestly one of the best films",                       # 1: a shorter container
        "one of the best",                                      # 2: in both
    ]
    result = group_texts(texts, GroupingConfig(near_duplicates=False))
    groups = result.groups
    assert same(groups, 0, 2)
    # 1 contains 2 but 2 went to 0; 1 itself is in nothing, so the two sentences stay apart.
    assert not same(groups, 0, 1)
    assert result.links["containment"] == 1


def test_contained_texts_form_trees_not_one_giant_group():
    sentences = [f"sentence number {i} says something quite particular about topic {i}" for i in range(50)]
    generic = ["says something quite particular"] * 3  # contained in all 50
    groups = group_texts(sentences + generic, ALL).groups
    sizes = np.bincount(groups)
    assert sizes.max() <= 4  # the generic phrase (3 exact copies) joins one sentence, not all of them
    assert len(sizes) == 50


def test_lightly_edited_copies_are_near_duplicates_and_unrelated_texts_are_not():
    original = ("I bought this blender last month and it has been great for smoothies and soups, "
                "although it is a little loud in the morning")
    edited = ("I bought this blender last month and it has been great for smoothies and soups, "
              "though it is a little loud early in the morning")
    unrelated = "The train was late again and nobody told us why, which is typical for this line"
    groups = group_texts([original, edited, unrelated], ALL).groups
    assert same(groups, 0, 1)
    assert not same(groups, 0, 2)
    off = group_texts([original, edited, unrelated], GroupingConfig(near_duplicates=False)).groups
    assert not same(off, 0, 1)


def test_every_kind_off_gives_every_row_its_own_group():
    texts = ["same text", "same text", "same text and more words"]
    none = GroupingConfig(exact=False, containment=False, near_duplicates=False)
    assert group_texts(texts, none).groups.tolist() == [0, 1, 2]


def test_statistics_and_the_too_large_group_warning():
    texts = ["the one big shared sentence that everything quotes"] + \
            [f"the one big shared sentence that everything quotes {i}" for i in range(6)] + \
            [f"a distinct text number {i}" for i in range(3)]
    stats = group_texts(texts, ALL).stats(k=5)
    assert stats["n_rows"] == 10
    assert stats["largest_group"] == 7
    assert stats["rows_in_multi_row_groups"] == 7
    assert stats["n_groups"] == 4
    assert "more than one fold's share" in stats["warning"]
    assert set(stats["links"]) == {"exact", "containment", "near_duplicates"}


def test_groups_do_not_depend_on_the_process_hash_seed(tmp_path):
    texts = [f"review {i % 37} of the product was {'good' if i % 3 else 'bad'} and the delivery took {i % 5} days"
             for i in range(300)]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    code = ("import json,sys; from foldstack.core.grouping import group_texts; from foldstack.config import "
            "GroupingConfig; t=json.load(open(sys.argv[1])); print(group_texts(t, GroupingConfig()).groups.tolist())")
    outputs = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "texts.json")], capture_output=True,
                              text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert len(outputs) == 1


def test_the_old_grouping_key_names_its_replacement():
    with pytest.raises(ConfigError, match="group_near_duplicates was replaced by folds.grouping"):
        config_from_dict({"base_models": [{"name": "lr", "kind": "tfidf_lr"}],
                          "folds": {"group_near_duplicates": True}})

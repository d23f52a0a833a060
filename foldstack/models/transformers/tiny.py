"""Tiny, randomly initialised BERT models built on the fly: for tests and the demo's "fast" configs.

`build_tiny_model(directory, seed)` learns a small WordPiece vocabulary from a corpus, builds a 2-layer BERT with random
weights and writes an ordinary `save_pretrained` directory (config.json, model.safetensors, tokenizer files)
that `AutoModel`/`AutoTokenizer`/`AutoModelForSequenceClassification` load from disk like any other model.
The build is deterministic: the same seed and corpus give byte-identical files, so a model that recorded
`tiny:<seed>` as its source finds the same weights again on another machine.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from foldstack.common.files import write_json
from foldstack.models.transformers.quiet import quiet_transformers

TINY_MARKER_FILE = "foldstack_tiny.json"

# Shape of the network: small enough that a forward/backward pass over a few dozen short texts takes
# milliseconds on one CPU core, large enough to learn a toy task.
TINY_HIDDEN_SIZE = 32
TINY_LAYERS = 2
TINY_HEADS = 2
TINY_INTERMEDIATE_SIZE = 64
TINY_MAX_POSITIONS = 512
TINY_VOCAB_SIZE = 600

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The default tokenizer corpus: common English words plus review vocabulary. Any other word is still
# tokenised (into WordPiece fragments down to single characters), because every printable ASCII character
# is in the initial alphabet.
_DEFAULT_WORDS = """
the a an and or but if then so because of to in on at by for with from about as into over after before
is are was were be been being have has had do does did will would can could should may might must not no
yes very really quite too also just only even still again never always often sometimes here there this
that these those it its he she they we you i me my your our their his her them us what which who when
where why how all any each every some many much more most less few other such same new old good bad
great terrible awful excellent poor nice fine okay best worst better worse love hate like dislike enjoy
boring exciting funny sad happy angry beautiful ugly amazing horrible wonderful disappointing perfect
broken cheap expensive fast slow easy hard simple complex long short big small high low first last
movie film story plot actor acting scene music book product service food price quality delivery
customer staff hotel room restaurant phone battery screen app software update order package size
recommend return refund buy bought sell work works worked working use used using make made time day
week year people thing way place world life hand part case point money problem question number
positive negative neutral review rating star stars one two three four five ten hundred
""".split()


def default_corpus() -> list[str]:
    """The built-in tokenizer corpus (one word per line; frequencies do not matter for a toy vocab)."""
    return list(_DEFAULT_WORDS)


def tiny_vocabulary(texts: Iterable[str], size: int = TINY_VOCAB_SIZE) -> dict[str, int]:
    """A WordPiece vocabulary learnt from `texts`: special tokens, every printable ASCII character (alone and
    as a `##` continuation), then the corpus's most frequent words, ties broken alphabetically.

    Words are found with the BERT normaliser and pre-tokeniser of the tokenizers library. The vocabulary is
    counted here rather than with its WordPieceTrainer because that trainer breaks ties in a hash order that
    changes between processes, which would change the tiny model's bytes and so its identity.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = _SPECIAL_TOKENS + characters + [f"##{c}" for c in characters]
    taken = set(tokens)
    by_frequency = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    tokens += [word for word, _ in by_frequency if word not in taken][: max(size - len(tokens), 0)]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_model(directory: Path | str, seed: int = 0, corpus: Iterable[str] | None = None) -> Path:
    """Write a tiny random BERT (plus its tokenizer) into `directory` and return the directory.

    `corpus` (texts) shapes the tokenizer's vocabulary; by default a built-in English word list.
    The weights depend only on `seed` and the vocabulary size.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = list(corpus) if corpus is not None else default_corpus()
    if not texts:
        raise ValueError("build_tiny_model: the corpus is empty; give some texts or leave corpus=None")

    tokenizer = BertTokenizer(vocab=tiny_vocabulary(texts), do_lower_case=True, model_max_length=TINY_MAX_POSITIONS)

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN_SIZE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=TINY_INTERMEDIATE_SIZE,
        max_position_embeddings=TINY_MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed a private generator state: building a model must not disturb the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    with quiet_transformers():
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    write_json(directory / TINY_MARKER_FILE, {"seed": seed, "n_corpus_texts": len(texts), "vocab_size": len(tokenizer)})
    return directory

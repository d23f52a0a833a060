"""A synthetic product-review dataset: the project's own demo data.

Reviews are written from a small grammar: each mixes sentences about product aspects with positive,
negative or neutral opinions, negations ("not great"), hedges and off-topic filler, at varied length.
The label is the review's overall stance (the sign of the summed sentence polarities, with a neutral band
for three classes), so no single word decides it, and a share of labels is flipped to act as annotator noise.
A few reviews are re-posted with small edits, as real review sites have (near-duplicates the folds must group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PRODUCTS = ["blender", "headphones", "backpack", "coffee maker", "phone case", "desk lamp", "kettle", "keyboard",
            "running shoes", "air fryer", "monitor", "vacuum", "water bottle", "tent", "e-reader", "toaster"]
ASPECTS = ["battery life", "build quality", "price", "delivery", "sound", "design", "customer service", "setup",
           "instructions", "packaging", "size", "noise level", "warranty", "materials", "weight", "colour"]
POSITIVE = ["great", "excellent", "solid", "impressive", "lovely", "reliable", "fantastic", "decent", "sturdy",
            "well made", "worth every penny", "a pleasant surprise", "better than expected", "superb"]
NEGATIVE = ["terrible", "flimsy", "disappointing", "awful", "poor", "cheap-feeling", "broken", "useless",
            "overpriced", "a letdown", "worse than expected", "unreliable", "frustrating", "shoddy"]
NEUTRAL = ["okay", "average", "fine I guess", "as described", "standard", "nothing special", "acceptable"]
INTENSIFIERS = ["", "", "", "really ", "very ", "quite ", "extremely ", "pretty ", "somewhat "]
OPENERS = ["I bought this {p} last month.", "Got the {p} as a gift.", "Ordered the {p} for my office.",
           "This is my second {p} from this brand.", "Been using the {p} daily for a few weeks.",
           "Picked up the {p} on sale.", "", "", ""]
FILLER = ["Shipping took about a week.", "My partner uses it too.", "It came in a brown box.",
          "I compared a few models before choosing.", "The colour matches my kitchen.", "No complaints about the box.",
          "I will update this review later.", "Used it mostly on weekends."]
CLOSERS = {1: ["Would buy again.", "Highly recommend!", "Five stars from me.", "Happy with the purchase."],
           -1: ["Returning it.", "Would not recommend.", "Save your money.", "One star."],
           0: ["It does the job.", "Neither good nor bad.", "Three stars.", "It is what it is."]}
LABELS3 = {-1: "negative", 0: "neutral", 1: "positive"}


def _opinion(rng: np.random.Generator, polarity: int) -> tuple[str, int]:
    """One sentence about an aspect; returns (sentence, its polarity after negation)."""
    aspect = rng.choice(ASPECTS)
    negate = rng.random() < 0.15 and polarity != 0
    pool = {1: POSITIVE, -1: NEGATIVE, 0: NEUTRAL}[polarity]
    word = f"{rng.choice(INTENSIFIERS)}{rng.choice(pool)}"
    if negate:
        return f"The {aspect} is not {word}.", -polarity
    templates = ["The {a} is {w}.", "{A} was {w}.", "Honestly the {a} is {w}.", "I found the {a} {w}.",
                 "As for the {a}: {w}."]
    t = rng.choice(templates)
    return t.format(a=aspect, A=aspect.capitalize(), w=word), polarity


def _review(rng: np.random.Generator, stance: int, n_classes: int) -> tuple[str, int]:
    product = rng.choice(PRODUCTS)
    parts = [rng.choice(OPENERS).format(p=product)]
    n_sentences = int(rng.integers(1, 6))
    total = 0
    for _ in range(n_sentences):
        # Mostly sentences of the review's stance, some against it: the sum decides the label.
        if stance == 0:
            polarity = int(rng.choice([-1, 0, 0, 0, 1]))
        else:
            polarity = stance if rng.random() < 0.72 else int(rng.choice([-stance, 0]))
        sentence, signed = _opinion(rng, polarity)
        parts.append(sentence)
        total += signed
        if rng.random() < 0.3:
            parts.append(rng.choice(FILLER))
    if rng.random() < 0.6:
        parts.append(rng.choice(CLOSERS[stance]))
        total += stance
    text = " ".join(p for p in parts if p)
    if n_classes == 2:
        label = 1 if total > 0 else -1 if total < 0 else (stance if stance else int(rng.choice([-1, 1])))
    else:
        # A clear sum decides; a sum of +-1 goes with the author's stance (the tone we did not model).
        label = 1 if total >= 2 else -1 if total <= -2 else (stance if abs(total) == 1 and total == stance else 0)
    return text, label


def _repost(rng: np.random.Generator, text: str) -> str:
    """A re-post: same review with small edits in case, punctuation or spacing."""
    edits = [str.lower, lambda t: t.replace(".", "!"), lambda t: t.replace(" ", "  ", 1), lambda t: t + " :)"]
    return edits[int(rng.integers(len(edits)))](text)


def make_demo_frame(rows: int = 3000, n_classes: int = 3, noise: float = 0.05, seed: int = 0) -> pd.DataFrame:
    if n_classes not in (2, 3):
        raise ValueError("n_classes must be 2 or 3")
    rng = np.random.default_rng(seed)
    stances = [-1, 1] if n_classes == 2 else [-1, 0, 1]
    texts, labels = [], []
    while len(texts) < rows:
        if texts and rng.random() < 0.02:
            i = int(rng.integers(len(texts)))
            texts.append(_repost(rng, texts[i]))
            labels.append(labels[i])
            continue
        text, label = _review(rng, int(rng.choice(stances, p=None)), n_classes)
        texts.append(text)
        labels.append(label)
    labels_arr = np.array(labels)
    flip = rng.random(rows) < noise
    labels_arr[flip] = rng.choice(stances, size=int(flip.sum()))
    names = [LABELS3[int(v)] for v in labels_arr]
    return pd.DataFrame({"text": texts, "label": names})


def write_demo_data(path: Path, rows: int = 3000, n_classes: int = 3, noise: float = 0.05,
                    seed: int = 0) -> dict[str, Any]:
    frame = make_demo_frame(rows, n_classes, noise, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return {"rows": len(frame), "class_counts": frame["label"].value_counts().to_dict()}

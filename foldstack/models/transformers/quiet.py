"""Silencing transformers' own output (progress bars, load reports) around a block.

Its own module, below both `hf` (which loads models) and `tiny` (which builds them), so that `hf` can build a
tiny model when it resolves `tiny:<seed>` without the two importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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

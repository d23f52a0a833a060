"""foldstack: leak-free K-fold stacked ensembles of text classifiers.

    import foldstack
    model = foldstack.load("artifacts/bundle")      # verifies every file hash first
    model.predict_proba(["a text", "another"])
"""

from foldstack.common.version import __version__

__all__ = ["FoldStackClassifier", "__version__", "load"]


def load(path, *, device: str = "cpu"):
    """Load a bundle directory (hashes verified before any model file is opened)."""
    from foldstack.bundle import load_bundle  # deferred: the bundle imports numpy, scikit-learn and torch

    return load_bundle(path, device=device)


def __getattr__(name):
    if name == "FoldStackClassifier":
        from foldstack.estimator import FoldStackClassifier  # deferred: scikit-learn and the models

        return FoldStackClassifier
    raise AttributeError(name)

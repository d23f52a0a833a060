"""foldstack: leak-free K-fold stacked ensembles of text classifiers.

    import foldstack
    model = foldstack.load("artifacts/bundle")      # verifies every file hash first
    model.predict_proba(["a text", "another"])
"""

__version__ = "0.1.0"


def load(path, *, device: str = "cpu"):
    """Load a bundle directory (hashes verified before any model file is opened)."""
    from foldstack.bundle import load_bundle

    return load_bundle(path, device=device)


def __getattr__(name):
    if name == "FoldStackClassifier":
        from foldstack.estimator import FoldStackClassifier

        return FoldStackClassifier
    raise AttributeError(name)

"""The package's version: one place (pyproject.toml reads it from here), importable from any layer."""

__version__ = "0.1.0"

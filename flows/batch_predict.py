"""The `batch-predict` flow: score a file of texts with a registry model (default: `production`).

It resolves the reference in the git-native registry (the version's stored bundle, its manifest checked
against the registered digest), loads the bundle (every file verified against the manifest before any model
code runs) and writes one row per text with the predicted label, the probability of every class, the
model version used and a request id; with `monitoring.log_predictions` on (the params' default) it also
appends them to the prediction log (source "predict"), as `foldstack predict` and `serve-model` do.

Deploy it like the other flows, e.g. `python -m flows.batch_predict` (serves the deployment
`batch-predict/batch-predict`), or with the entrypoint `flows/batch_predict.py:batch_predict` in prefect.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from foldstack.bundle import load_bundle
from foldstack.config import DEFAULT_PARAMS_FILE, load_config
from foldstack.ops.predict import predict_file
from foldstack.ops.registry import resolve_model_version


# No caching: the same inputs must resolve again, because `production` moves between runs.
@task(name="resolve-model", cache_policy=NONE)
def resolve_model_task(model: str, params: str, overrides: list[str] | None = None) -> dict[str, str]:
    cfg = load_config(params, overrides or [])
    bundle, version = resolve_model_version(model, cfg)
    return {"bundle": str(bundle), "version": version}


@task(name="predict-file", cache_policy=NONE)
def predict_file_task(bundle: str, input_path: str, output_path: str, text_column: str, batch_size: int,
                      device: str, params: str = DEFAULT_PARAMS_FILE,
                      overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(params, overrides or [])  # its monitoring section: log the predictions (source "predict")
    loaded = load_bundle(bundle, device=device)  # raises BundleError unless every file matches its sha256
    rows = predict_file(loaded, Path(input_path), Path(output_path), text_column=text_column,
                        batch_size=batch_size, device=device, monitoring=cfg.monitoring,
                        monitoring_root=cfg.resolve_path("."))
    return {"rows": rows, "bundle_id": loaded.manifest["bundle_id"], "verified_files": len(loaded.manifest["files"])}


@flow(name="batch-predict", log_prints=False)
def batch_predict(input_path: str, output_path: str, model: str = "production", params: str = DEFAULT_PARAMS_FILE,
                  text_column: str = "text", batch_size: int = 1024, device: str = "cpu",
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """Predict labels and class probabilities for every text of INPUT with the registry's `model`."""
    logger = get_run_logger()
    resolved = resolve_model_task(model, params, overrides)
    logger.info("%s is %s (%s)", model, resolved["version"], resolved["bundle"])
    scored = predict_file_task(resolved["bundle"], input_path, output_path, text_column, batch_size, device,
                               params, overrides)
    logger.info("wrote %d predictions of %s to %s", scored["rows"], resolved["version"], output_path)
    return {"model": model, "version": resolved["version"], "output": output_path, **scored}


if __name__ == "__main__":
    batch_predict.serve(name="batch-predict")

"""The champion/challenger gate: the candidate and the current production model scored on the same holdout.

Both are scored by loading their (verified) bundles and predicting the current snapshot's holdout;
`registry.gate_metric` decides, `registry.gate_tolerance` is the margin a candidate must win by. No production:
the candidate passes. A tie or a loss keeps production; the candidate stays registered with the reason in
`artifacts/registry/decision.{json,md}` (`write_decision`).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldstack.bundle import load_bundle, verify_bundle
from foldstack.common.files import write_json
from foldstack.core.metrics import classification_report
from foldstack.errors import BundleError
from foldstack.ops.registry.git import RegistryError
from foldstack.ops.registry.models import holdout_metric_key
from foldstack.pipeline.stages import Layout, load_snapshot

if TYPE_CHECKING:
    from foldstack.config import Config

LOWER_IS_BETTER = frozenset({"log_loss"})
# Scores closer than this are equal: the same model scored twice can differ in the last bits.
_SCORE_EPSILON = 1e-12


@dataclass(frozen=True)
class GateDecision:
    """The champion/challenger comparison on one holdout and what it means for promotion."""

    metric: str
    tolerance: float
    outcome: str  # no_production | better | worse | tie | incomparable | is_production
    reason: str
    candidate_version: str | None = None
    candidate_score: float | None = None
    production_version: str | None = None
    production_score: float | None = None
    holdout_rows: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome in ("no_production", "better")

    @property
    def improvement(self) -> float | None:
        """How much better the candidate is (positive = better), in the metric's own units."""
        if self.candidate_score is None or self.production_score is None:
            return None
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        return sign * (self.candidate_score - self.production_score)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "notes": list(self.notes), "passed": self.passed, "improvement": self.improvement,
                "lower_is_better": self.metric in LOWER_IS_BETTER}

    def markdown(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.6f}"

        lines = [f"# Promotion gate: {'PASS' if self.passed else 'no promotion'} ({self.outcome})", "",
                 self.reason, "",
                 f"metric `{self.metric}` ({'lower' if self.metric in LOWER_IS_BETTER else 'higher'} is better), "
                 f"tolerance {self.tolerance:g}, holdout rows {self.holdout_rows if self.holdout_rows else '-'}", "",
                 "| model | version | score |", "|---|---|---|",
                 f"| candidate | {self.candidate_version or '-'} | {fmt(self.candidate_score)} |",
                 f"| production | {self.production_version or '-'} | {fmt(self.production_score)} |"]
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"


def gate_decision(metric: str, candidate_score: float, production_score: float | None, tolerance: float, *,
                  candidate_version: str | None = None, production_version: str | None = None,
                  holdout_rows: int | None = None, notes: Iterable[str] = ()) -> GateDecision:
    """Compare scores: the candidate passes when there is no production model or it wins by more than
    `tolerance`; a difference within the tolerance is a tie, and a tie keeps production."""
    common = {"metric": metric, "tolerance": tolerance, "candidate_version": candidate_version,
              "candidate_score": candidate_score, "production_version": production_version,
              "production_score": production_score, "holdout_rows": holdout_rows, "notes": tuple(notes)}
    if production_score is None:
        return GateDecision(outcome="no_production", reason="there is no production model yet: the candidate "
                            "becomes the first", **common)
    if not (math.isfinite(candidate_score) and math.isfinite(production_score)):
        return GateDecision(outcome="incomparable", reason=f"{metric} could not be computed for both models on "
                            f"this holdout (candidate {candidate_score}, production {production_score}); "
                            f"production is kept", **common)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    improvement = sign * (candidate_score - production_score)
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    versus = f"{metric} {candidate_score:.6f} vs production {production_version or ''} {production_score:.6f}"
    if improvement > tolerance + _SCORE_EPSILON:
        return GateDecision(outcome="better", reason=f"the candidate wins: {versus} ({direction} is better, "
                            f"margin {improvement:.6f} > tolerance {tolerance:g})", **common)
    if improvement < -(tolerance + _SCORE_EPSILON):
        return GateDecision(outcome="worse", reason=f"the candidate loses: {versus} ({direction} is better, "
                            f"short by {-improvement:.6f}); production is kept", **common)
    return GateDecision(outcome="tie", reason=f"a tie within the tolerance {tolerance:g}: {versus}; production is "
                        f"kept (a candidate must win by more than the tolerance)", **common)


def score_bundle_on_holdout(bundle_path: Path, cfg: Config, metric: str) -> tuple[float, int, dict[str, Any]]:
    """(score, rows, manifest) of a bundle on the snapshot's holdout; the bundle is verified when loaded.

    A bundle trained on this very snapshot was scored on this holdout by its evaluate stage: its verified
    manifest already holds the score, so the models are not loaded and run again (the gate of a meta-only
    retrain would otherwise cost more than the retrain).
    """
    snapshot = load_snapshot(cfg)
    manifest = verify_bundle(bundle_path)
    recorded = manifest.get("metrics", {}).get(holdout_metric_key(manifest, metric))
    if (recorded is not None and manifest.get("data_hash") == snapshot.data_hash
            and [str(x) for x in manifest["labels"]] == snapshot.label_map.names):
        return float(recorded), len(snapshot.holdout), manifest
    bundle = load_bundle(bundle_path)
    if [str(x) for x in bundle.labels] != snapshot.label_map.names:
        raise _Incomparable(f"its labels {bundle.labels} differ from the holdout's {snapshot.label_map.names}")
    texts = snapshot.holdout["text"].tolist()
    proba = bundle.predict_proba(texts)  # normalised by the bundle, as its training data was
    report = classification_report(snapshot.holdout["label"].to_numpy(), proba, snapshot.label_map.names,
                                   cfg.evaluate.ece_bins)
    return float(report[metric]), len(texts), bundle.manifest


class _Incomparable(Exception):
    pass


def evaluate_gate(cfg: Config, candidate_path: Path, production_path: Path | None, *,
                  candidate_version: str | None = None, production_version: str | None = None) -> GateDecision:
    """Score the candidate and production bundles on the current snapshot's holdout and decide."""
    metric, tolerance = cfg.registry.gate_metric, cfg.registry.gate_tolerance
    snapshot = load_snapshot(cfg)
    try:
        candidate_score, rows, candidate_manifest = score_bundle_on_holdout(candidate_path, cfg, metric)
    except _Incomparable as exc:
        raise RegistryError(f"the candidate cannot be scored on this holdout: {exc}") from None
    if candidate_manifest.get("data_hash") != snapshot.data_hash:
        raise RegistryError(
            f"the candidate was trained on data {candidate_manifest.get('data_hash')} but the snapshot in "
            f"{cfg.resolve_path(cfg.runtime.artifacts_dir)} is data {snapshot.data_hash}: the gate must score it on "
            f"its own holdout; push it with the params it was trained with")
    common = {"candidate_version": candidate_version, "production_version": production_version,
              "holdout_rows": rows}
    if production_path is None:
        return gate_decision(metric, candidate_score, None, tolerance, **common)
    notes = []
    try:
        production_score, _, production_manifest = score_bundle_on_holdout(production_path, cfg, metric)
    except (_Incomparable, BundleError) as exc:
        return GateDecision(metric=metric, tolerance=tolerance, outcome="incomparable", candidate_score=candidate_score,
                            reason=f"production {production_version} cannot be scored on this holdout ({exc}); "
                                   f"production is kept; promote by hand if the candidate should replace it",
                            **common)
    if production_manifest.get("data_hash") != snapshot.data_hash:
        notes.append(f"production was trained on data {production_manifest.get('data_hash')}, the candidate on "
                     f"{snapshot.data_hash}: if those datasets overlap, production may have seen some of this "
                     f"holdout and its score is optimistic")
    return gate_decision(metric, candidate_score, production_score, tolerance, notes=notes, **common)


def _decision_dir(cfg: Config) -> Path:
    return Layout.of(cfg).root / "registry"


def write_decision(cfg: Config, outcome: Mapping[str, Any], decision: GateDecision | None, *,
                   name: str = "decision") -> Path:
    """artifacts/registry/<name>.json (+ <name>.md): the latest registration's version and gate (`cfg`: the
    registered model's params, whose `registry.model_name` the header names; `name`: `decision`, the
    ensemble's, or `student-decision`)."""
    directory = _decision_dir(cfg)
    write_json(directory / f"{name}.json", dict(outcome))
    text = decision.markdown() if decision else "# Promotion gate: not run\n\nthe git-native registry is off\n"
    header = (f"version {outcome.get('version') or '-'} of {cfg.registry.model_name}; production now "
              f"{outcome.get('production_version') or '-'}; promoted: {outcome.get('promoted')}\n\n")
    tmp = directory / f".{name}.md.{uuid.uuid4().hex[:6]}"
    tmp.write_text(header + text, encoding="utf-8")
    os.replace(tmp, directory / f"{name}.md")
    return directory / f"{name}.json"


__all__ = ["LOWER_IS_BETTER", "GateDecision", "evaluate_gate", "gate_decision", "score_bundle_on_holdout",
           "write_decision"]

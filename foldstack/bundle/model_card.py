"""MODEL_CARD.md: what a bundle is for, what it was trained on, how well it does on the holdout, where it is weak.

The card is one of the bundle's files: the bundle stage writes it before `write_manifest`, so the manifest hashes it
and `foldstack.load` verifies it like any model file. It holds no date or path of the machine beyond the data file
named in params, so the same run writes the same card (and the same bundle id).

Inputs are plain values (the snapshot summary, `eval/reports.json`, the manifest's base-model and meta entries):
this layer does not know where the pipeline keeps them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MODEL_CARD = "MODEL_CARD.md"
Z_95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (nan, nan) without trials."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def write_model_card(directory: Path, **inputs: Any) -> Path:
    """Write `directory/MODEL_CARD.md` (see `render_model_card` for the inputs); return its path."""
    path = Path(directory) / MODEL_CARD
    path.write_text(render_model_card(**inputs), encoding="utf-8")
    return path


def render_model_card(*, data: dict[str, Any], reports: dict[str, dict[str, Any]], base_models: list[dict[str, Any]],
                      meta: dict[str, Any], model: str = "ensemble", title: str = "foldstack text classifier") -> str:
    """The card's markdown.

    `data`: the snapshot summary plus `path` (the data file); `reports`: eval/reports.json (model name -> report),
    empty when evaluate has not run; `model`: the report that describes this bundle ("ensemble", or "student" for
    the distilled student's bundle); `base_models` and `meta`: the manifest's entries (`meta` may carry `reason`).
    """
    report = reports.get(model)
    sections = [
        f"# Model card: {title}", "",
        f"This bundle's predictions are those of the **{model}** in the run's holdout leaderboard.", "",
        *_data_section(data),
        *_use_section(data, report),
        *_metrics_section(report, reports, model),
        *_per_class_section(report),
        *_models_section(base_models, meta),
        *_load_section(),
    ]
    return "\n".join(sections).rstrip() + "\n"


def _labels(data: dict[str, Any]) -> list[str]:
    return [str(label) for label in data.get("labels") or data.get("train_class_counts", {})]


def _data_section(data: dict[str, Any]) -> list[str]:
    train, holdout = data.get("train_class_counts", {}), data.get("holdout_class_counts", {})
    lines = ["## Data", "",
             f"- **File:** `{data.get('path', 'n/a')}` (sha256 `{data.get('source_sha256', 'n/a')}`)",
             f"- **Data hash** (the validated training and holdout rows): `{data.get('data_hash', 'n/a')}`",
             f"- **Rows:** {data.get('n_train', 'n/a')} for training (folds, base models, meta-learner), "
             f"{data.get('n_holdout', 'n/a')} held out for evaluation only",
             f"- **Mean text length:** {_number(data.get('mean_text_chars'), '.0f')} characters", "",
             "| class | training rows | holdout rows |", "|---|---:|---:|"]
    lines += [f"| {_cell(label)} | {train.get(label, 'n/a')} | {holdout.get(label, 'n/a')} |" for label in _labels(data)]
    return lines + [""]


def _use_section(data: dict[str, Any], report: dict[str, Any] | None) -> list[str]:
    labels = ", ".join(f"`{label}`" for label in _labels(data))
    n = report.get("n_rows") if report else data.get("n_holdout")
    return [
        "## Intended use and limitations", "",
        f"- **Use:** assign one of the labels {labels} to texts like those of the training file "
        f"(`{data.get('path', 'n/a')}`): the same language, domain, style and length (about "
        f"{_number(data.get('mean_text_chars'), '.0f')} characters). foldstack does not detect the language or "
        "the domain: read the training data to know them.",
        "- **Labels:** only these labels can be predicted; a text of another kind still gets one of them, with no "
        "warning. The probabilities are the model's, calibrated only as well as the holdout's ECE below says.",
        f"- **What the holdout estimates:** performance on new texts drawn like the training rows, from the same "
        f"source and time. It is {n} rows no model or meta-learner saw in training (split off with overlapping texts "
        "kept on one side, or the separate data.test_path file), so the numbers below are honest for that "
        "population, within their intervals.",
        "- **What it does not estimate:** performance on other domains, languages, periods or sources (distribution "
        "shift), on label definitions that drift, or on rare classes beyond what their few holdout rows show; nor "
        "fairness across groups of writers or subjects, which this data does not record.", "",
    ]


def _metrics_section(report: dict[str, Any] | None, reports: dict[str, dict[str, Any]], model: str) -> list[str]:
    lines = ["## Holdout metrics", ""]
    if report is None:
        return lines + [f"No holdout report for `{model}` (the evaluate stage had not run when this bundle was "
                        "written).", ""]
    n = int(report.get("n_rows", 0))
    low, high = wilson_interval(report["accuracy"] * n, n)
    lines += [f"On {n} holdout rows:", "",
              "| metric | value | 95% interval |", "|---|---:|---|",
              f"| accuracy | {_number(report['accuracy'])} | {_number(low)} to {_number(high)} (Wilson) |",
              f"| macro F1 | {_number(report.get('macro_f1'))} | point estimate |",
              f"| log loss | {_number(report.get('log_loss'))} | point estimate |",
              f"| ROC AUC | {_number(report.get('roc_auc'))} | point estimate |",
              f"| ECE (calibration error) | {_number(report.get('ece'))} | point estimate |", ""]
    others = [name for name in reports if name != model]
    if others:
        lines += ["The other models of the run, on the same rows:", "",
                  "| model | accuracy | macro F1 | log loss |", "|---|---:|---:|---:|"]
        lines += [f"| {_cell(name)} | {_number(reports[name].get('accuracy'))} | "
                  f"{_number(reports[name].get('macro_f1'))} | {_number(reports[name].get('log_loss'))} |"
                  for name in others]
        lines.append("")
    return lines


def weakest_class(per_class: dict[str, dict[str, Any]]) -> str | None:
    """The class with the lowest F1 among those present in the holdout (recall breaks ties, then the name)."""
    present = {label: m for label, m in per_class.items() if m.get("support", 0) > 0} or per_class
    if not present:
        return None
    return min(present, key=lambda label: (present[label]["f1"], present[label]["recall"], label))


def _per_class_section(report: dict[str, Any] | None) -> list[str]:
    if report is None or not report.get("per_class"):
        return []
    per_class = report["per_class"]
    lines = ["## Per class", "",
             "| class | precision | recall | recall 95% interval (Wilson) | F1 | holdout rows |",
             "|---|---:|---:|---|---:|---:|"]
    for label, m in per_class.items():
        low, high = wilson_interval(m["recall"] * m["support"], int(m["support"]))
        lines.append(f"| {_cell(label)} | {_number(m['precision'])} | {_number(m['recall'])} | "
                     f"{_number(low)} to {_number(high)} | {_number(m['f1'])} | {m['support']} |")
    weakest = weakest_class(per_class)
    if weakest is not None:
        m = per_class[weakest]
        lines += ["", f"**Weakest class: `{weakest}`** (F1 {_number(m['f1'])}, recall {_number(m['recall'])}, "
                      f"precision {_number(m['precision'])}, {m['support']} holdout rows). Texts of this class are "
                      "the most often missed or confused; check its predictions before relying on them."]
    return lines + [""]


def _models_section(base_models: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines = ["## Models", "", "| base model | kind | members | combined as |", "|---|---|---:|---|"]
    lines += [f"| {_cell(b.get('name'))} | {_cell(b.get('kind'))} | {len(b.get('members', []))} | "
              f"{_cell(b.get('combine', ''))} |" for b in base_models]
    line = f"**Meta-learner:** `{meta.get('kind')}`"
    if meta.get("requested") and meta.get("requested") != meta.get("kind"):
        line += f" (requested `{meta['requested']}`)"
    if meta.get("reason"):
        line += f": {meta['reason']}"
    return lines + ["", line + ".", ""]


def _load_section() -> list[str]:
    return ["## How to load it", "",
            "```python",
            "import foldstack",
            "",
            "model = foldstack.load(\"path/to/this/bundle\")  # verifies every file's sha256 (this card's too) first",
            "model.labels                                   # the classes, in the order of predict_proba's columns",
            "model.predict([\"a text to classify\"])          # one label per text",
            "model.predict_proba([\"a text to classify\"])    # class probabilities",
            "```", "",
            "From the shell: `foldstack predict path/to/this/bundle input.csv -o predictions.csv`; "
            "`foldstack serve-model --model path/to/this/bundle` serves it over HTTP.", ""]


def _number(value: Any, spec: str = ".4f") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def _cell(value: Any) -> str:
    """A markdown table cell: a pipe would end it early, a newline would end the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")

"""report.html: one self-contained page (figures embedded, no external fonts or scripts).

>>> html = render_report(metrics, meta, {"roc.png": path}, {"roc.png": "ROC"})   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path
from typing import Any

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1b1b1b; background: #fafafa; line-height: 1.4; }
main { max-width: 1180px; margin: 0 auto; padding: 0 24px 48px; }
.banner { background: #8a1c1c; color: white; padding: 10px 24px; font-weight: 600; }
h1 { font-size: 1.6em; margin: 20px 0 4px; }
h2 { font-size: 1.2em; margin-top: 28px; border-bottom: 1px solid #ccc; padding-bottom: 3px; }
.sub { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 8px 0; background: white; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; font-size: 0.92em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { font-size: 1.15em; }
.warn { background: #fff4d6; border-left: 4px solid #d99a00; padding: 8px 14px; margin: 10px 0; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }
figure { margin: 0; background: white; border: 1px solid #ddd; padding: 8px; }
figure img { width: 100%; height: auto; }
figure.wide { grid-column: 1 / -1; }
figcaption { font-size: 0.9em; color: #444; }
.note { font-size: 0.88em; color: #444; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(interval: list[float] | None, digits: int = 3) -> str:
    return "" if not interval else f" ({interval[0]:.{digits}f} to {interval[1]:.{digits}f})"


def _with_ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    return _num(entry["value"]) + _ci(entry.get("ci95"))


def _table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{c}</td>" if i >= numeric_from else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render_report(
    metrics: dict[str, Any],
    meta: dict[str, Any],
    figures: dict[str, Path],
    captions: dict[str, str],
) -> str:
    """The evaluation as one HTML page: what was scored, the numbers, the figures, the methods."""
    training = meta.get("training", {})
    auroc = metrics["auroc"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>cardiomegaly evaluation: {_e(metrics.get('split', ''))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<div class='banner' role='note'>Research use only. Not a medical device; not for "
        "diagnosis or patient care.</div><main>",
        "<h1>Cardiomegaly classifier: evaluation</h1>",
        f"<p class='sub'>{_e(metrics.get('split_description', ''))}</p>",
    ]
    for warning in metrics.get("warnings", []):
        parts.append(f"<div class='warn'>{_e(warning)}</div>")

    # What was evaluated.
    split = training.get("split", {})
    rows = [
        ["model", _e(metrics.get("model", ""))],
        [
            "architecture",
            _e(
                f"{meta['architecture']['name']}, "
                f"{meta['preprocessing']['image_size']} px, "
                f"{meta['preprocessing']['resize']}"
            ),
        ],
        [
            "trained on",
            _e(
                f"{training.get('data', 'unknown')} "
                + ", ".join(
                    f"{k} {v['images']} images / {v['patients']} patients / "
                    f"{v['positives']} positive"
                    for k, v in split.items()
                )
            ),
        ],
        ["weights at start", _e(training.get("weights", {}).get("source", "unknown"))],
        ["validation AUROC (model selection)", _num(training.get("val_auroc"))],
        [
            "threshold",
            _e(
                f"{meta['threshold']['value']:.4f}, rule {meta['threshold']['rule']}, "
                f"chosen on the {meta['threshold'].get('chosen_on', '?')}"
            ),
        ],
        [
            "evaluated on",
            _e(
                f"{metrics.get('data', '')} ({metrics.get('format', '')}), "
                f"split: {metrics.get('split', '')}"
            ),
        ],
        [
            "records",
            _e(
                f"{metrics['images']} images, {metrics['patients']} patients, "
                f"{metrics['positives']} positive, {metrics['negatives']} negative "
                f"(prevalence {_num(metrics['prevalence'])})"
            ),
        ],
        ["skipped (unreadable)", _e(len(metrics.get("skipped", [])))],
    ]
    if "temperature" in meta.get("calibration", {}):
        rows.append(["temperature scaling", _num(meta["calibration"]["temperature"])])
    parts += ["<h2>What was evaluated</h2>", _table(None, rows, numeric_from=2)]

    # Discrimination.
    parts.append("<h2>Discrimination</h2>")
    if auroc.get("value") is None:
        parts.append(f"<p class='headline'>{_e(auroc['undefined'])}</p>")
    else:
        delong = auroc.get("delong") or {}
        parts.append(
            f"<p class='headline'>AUROC <b>{_num(auroc['value'])}</b>"
            f"{_ci(auroc.get('ci95'))} by patient bootstrap; DeLong{_ci(delong.get('ci95'))}."
            f"<br>AUPRC <b>{_num(metrics['auprc']['value'])}</b>{_ci(metrics['auprc']['ci95'])}"
            f" against a prevalence of {_num(metrics['auprc']['prevalence'])}.</p>"
        )

    # Operating points.
    header = [
        "operating point",
        "threshold",
        "sensitivity",
        "specificity",
        "PPV",
        "NPV",
        "F1",
        "accuracy",
        "TP / FP / TN / FN",
    ]
    rows = []
    for name, op in metrics["operating_points"].items():
        c = op["confusion"]
        rows.append(
            [_e(name), _num(op["threshold"], 4)]
            + [
                _with_ci(op[k])
                for k in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")
            ]
            + [f"{c['tp']} / {c['fp']} / {c['tn']} / {c['fn']}"]
        )
    parts += ["<h2>Operating points (thresholds chosen on validation)</h2>", _table(header, rows)]

    # Calibration.
    cal = metrics["calibration"]
    parts += [
        "<h2>Calibration</h2>",
        _table(
            [
                "expected calibration error",
                "Brier score",
                "calibration slope",
                "calibration intercept",
            ],
            [
                [
                    _num(cal["ece"]),
                    _num(cal["brier"]),
                    _num(cal["slope"], 2),
                    _num(cal["intercept"], 2),
                ]
            ],
            numeric_from=0,
        ),
        "<p class='note'>A calibrated model has slope 1 and intercept 0. Training weights the "
        "positive class by the training prevalence, which shifts probabilities upwards; the "
        "threshold, chosen on validation, accounts for that.</p>",
    ]

    # Subgroups.
    rows = []
    for column, groups in metrics.get("subgroups", {}).items():
        for name, g in groups.items():
            rows.append(
                [
                    _e(f"{column} {name}"),
                    str(g["images"]),
                    str(g["patients"]),
                    str(g["positives"]),
                    _num(g["auroc"]) + _ci(g["ci95"]),
                    _e(g.get("warning", "")),
                ]
            )
    if rows:
        parts += [
            "<h2>Subgroups</h2>",
            _table(
                ["subgroup", "images", "patients", "positives", "AUROC (95 % CI)", "note"], rows
            ),
        ]

    # Figures.
    parts.append("<h2>Figures</h2><div class='figs'>")
    for name, path in figures.items():
        caption = captions.get(name, name)
        wide = " class='wide'" if name == "training_curves.png" else ""
        parts.append(
            f"<figure{wide}><img src='{_image(path)}' alt='{_e(caption)}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    parts.append("</div>")

    boot = auroc.get("bootstrap", {})
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    parts += [
        "<h2>Methods</h2><p class='note'>",
        f"AUROC, AUPRC and F1 intervals: {boot.get('resamples', 'n/a')} bootstrap resamples of "
        "<i>patients</i> (all of a patient's images move together), stratified by whether the "
        f"patient has a positive image, seed {boot.get('seed', 'n/a')}, percentile method. "
        "DeLong's interval treats images as independent. Proportions: Wilson score intervals. "
        "Thresholds were chosen on the validation split at training time; evaluation never "
        "chooses one on the data it scores.",
        f"<br>Model written by {_e(versions)}. Report made "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def render_comparison(result: dict[str, Any], roc: Path) -> str:
    """Two models on the same records: one page with the difference and its uncertainty."""
    diff = result["difference"]
    rows = [
        ["A", _e(result["model_a"]), _with_ci(result["auroc_a"])],
        ["B", _e(result["model_b"]), _with_ci(result["auroc_b"])],
        [
            "A - B",
            _e(diff["ci95_method"]),
            f"{diff['value']:+.3f}{_ci(diff['ci95'])}; DeLong p = {diff['delong_p']:.3g}",
        ],
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>cardiomegaly: comparison</title><style>{_CSS}</style></head><body>",
        "<div class='banner' role='note'>Research use only. Not a medical device.</div><main>",
        "<h1>Two models on the same records</h1>",
        f"<p class='sub'>{_e(result['data'])}, {_e(result['split_description'])}: "
        f"{result['images']} images, {result['patients']} patients, "
        f"{result['positives']} positive.</p>",
    ]
    parts += [f"<div class='warn'>{_e(n)}</div>" for n in result.get("notes", [])]
    parts += [
        _table(["model", "file / method", "AUROC (95 % CI)"], rows, numeric_from=2),
        f"<figure style='max-width:560px'><img src='{_image(roc)}' alt='ROC curves'>"
        "<figcaption>ROC curves of both models</figcaption></figure>",
        "</main></body></html>",
    ]
    return "\n".join(parts)

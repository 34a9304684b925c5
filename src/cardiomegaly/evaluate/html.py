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


def esc(value: Any) -> str:
    """Text made safe for HTML."""
    return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(interval: list[float] | None, digits: int = 3) -> str:
    return "" if not interval else f" ({interval[0]:.{digits}f} to {interval[1]:.{digits}f})"


def _with_ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    return _num(entry["value"]) + _ci(entry.get("ci95"))


def table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned numbers."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
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
    sections = [
        "<h1>Cardiomegaly classifier: evaluation</h1>",
        f"<p class='sub'>{esc(metrics.get('split_description', ''))}</p>",
        *(f"<div class='warn'>{esc(w)}</div>" for w in metrics.get("warnings", [])),
        _what_was_evaluated(metrics, meta),
        _discrimination(metrics),
        _operating_points(metrics),
        _calibration(metrics),
        _subgroups(metrics),
        _combined(metrics.get("combined")),
        figures_section(figures, captions),
        _methods(metrics, meta),
    ]
    return page(f"cardiomegaly evaluation: {metrics.get('split', '')}", sections)


def page(title: str, sections: list[str]) -> str:
    """The page around the sections: the research-use banner first, styles inline."""
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{esc(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            "<div class='banner' role='note'>Research use only. Not a medical device; not for "
            "diagnosis or patient care.</div><main>",
            *(s for s in sections if s),
            "</main></body></html>",
        ]
    )


def sources_text(data: str | list[str]) -> str:
    """The data a report names: one source as it is, several joined ("a + b")."""
    return data if isinstance(data, str) else " + ".join(data)


def _model_selection(meta: dict[str, Any]) -> list[str]:
    """How the model was chosen: one run's best validation AUROC, or an ensemble's folds."""
    training = meta.get("training", {})
    if "folds" not in training:
        return ["validation AUROC (model selection)", _num(training.get("val_auroc"))]
    aurocs = [a for a in training.get("fold_val_auroc", []) if a is not None]
    text = f"ensemble of {training['folds']} fold models"
    if aurocs:
        text += f"; their validation AUROC {min(aurocs):.3f} to {max(aurocs):.3f}"
    oof = meta.get("evaluation", {})
    if oof.get("split") == "out-of-fold" and oof.get("auroc") is not None:
        text += f"; pooled out-of-fold AUROC {oof['auroc']:.3f}{_ci(oof.get('auroc_ci95'))}"
    return ["model selection", esc(text)]


def _weight_average(training: dict[str, Any]) -> list[list[str]]:
    """A row for a model whose weights are an average over the training steps (--ema)."""
    decay = (training.get("config") or {}).get("ema") or 0
    if not decay:
        return []
    return [["weights", esc(f"averaged over the training steps, decay {decay:g} per step "
                            f"(about the last {round(1 / (1 - decay))} steps)")]]  # fmt: skip


def _what_was_evaluated(metrics: dict[str, Any], meta: dict[str, Any]) -> str:
    training = meta.get("training", {})
    pre, threshold = meta["preprocessing"], meta["threshold"]
    trained_on = ", ".join(
        f"{k} {v['images']} images / {v['patients']} patients / {v['positives']} positive"
        for k, v in training.get("split", {}).items()
    )
    rows = [
        ["model", esc(metrics.get("model", ""))],
        ["architecture", esc(f"{meta['architecture']['name']}, {pre['image_size']} px, "
                            f"{pre['resize']}")],
        ["trained on", esc(f"{sources_text(training.get('data', 'unknown'))} {trained_on}")],
        ["weights at start", esc(training.get("weights", {}).get("source", "unknown"))],
        *_weight_average(training),
        _model_selection(meta),
        ["threshold", esc(f"{threshold['value']:.4f}, rule {threshold['rule']}, chosen on the "
                         f"{threshold.get('chosen_on', '?')}")],
        ["evaluated on", esc(f"{sources_text(metrics.get('data', ''))} "
                            f"({metrics.get('format', '')}), split: {metrics.get('split', '')}")],
        ["records", esc(f"{metrics['images']} images, {metrics['patients']} patients, "
                       f"{metrics['positives']} positive, {metrics['negatives']} negative "
                       f"(prevalence {_num(metrics['prevalence'])})")],
        ["skipped (unreadable)", esc(len(metrics.get("skipped", [])))],
    ]  # fmt: skip
    if "temperature" in meta.get("calibration", {}):
        rows.append(["temperature scaling", _num(meta["calibration"]["temperature"])])
    if pre.get("thorax_crop"):
        crop = pre["thorax_crop"]
        rows.insert(2, ["films cut to the thorax", esc(
            f"by the segment model {crop['sha256'][:12]} (SHA-256), the square around its heart "
            f"and lungs widened by {crop['margin']:g} of its side on each side")])  # fmt: skip
    if pre.get("tta"):
        tta = pre["tta"]
        rows.insert(3, ["test-time views", esc(
            f"the mean probability over the film and its views: scales "
            f"{' and '.join(f'{s:g}' for s in tta['scales'])}, shifts of {tta['shift_px']} px "
            f"each way, rotations of \u00b1{tta['degrees']:g}\u00b0")])  # fmt: skip
    return "<h2>What was evaluated</h2>" + table(None, rows, numeric_from=2)


def _discrimination(metrics: dict[str, Any]) -> str:
    auroc = metrics["auroc"]
    if auroc.get("value") is None:
        return f"<h2>Discrimination</h2><p class='headline'>{esc(auroc['undefined'])}</p>"
    delong = auroc.get("delong") or {}
    auprc = metrics["auprc"]
    return (
        "<h2>Discrimination</h2>"
        f"<p class='headline'>AUROC <b>{_num(auroc['value'])}</b>"
        f"{_ci(auroc.get('ci95'))} by patient bootstrap; DeLong{_ci(delong.get('ci95'))}."
        f"<br>AUPRC <b>{_num(auprc['value'])}</b>{_ci(auprc['ci95'])}"
        f" against a prevalence of {_num(auprc['prevalence'])}.</p>"
    )


def _operating_points(metrics: dict[str, Any], heading: str = "h2", prefix: str = "") -> str:
    header = ["operating point", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1",
              "accuracy", "TP / FP / TN / FN"]  # fmt: skip
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")
    rows = []
    for name, op in metrics["operating_points"].items():
        c = op["confusion"]
        rows.append(
            [esc(name), _num(op["threshold"], 4)]
            + [_with_ci(op[k]) for k in keys]
            + [f"{c['tp']} / {c['fp']} / {c['tn']} / {c['fn']}"]
        )
    chosen = metrics.get("threshold_chosen_on") or "validation split"
    title = f"{prefix}Operating points (thresholds chosen on the {esc(chosen)})"
    return f"<{heading}>{title}</{heading}>" + table(header, rows)


def _calibration(metrics: dict[str, Any]) -> str:
    cal = metrics["calibration"]
    header = ["expected calibration error", "Brier score", "calibration slope",
              "calibration intercept"]  # fmt: skip
    row = [_num(cal["ece"]), _num(cal["brier"]), _num(cal["slope"], 2),
           _num(cal["intercept"], 2)]  # fmt: skip
    return (
        "<h2>Calibration</h2>"
        + table(header, [row], numeric_from=0)
        + "<p class='note'>A calibrated model has slope 1 and intercept 0. Training weights the "
        "positive class by the training prevalence, which shifts probabilities upwards; the "
        "threshold, chosen on validation, accounts for that.</p>"
    )


def _combined(combined: dict[str, Any] | None) -> str:
    """The probability and the ratio as one score (``train --folds K --ctr-model``, whose
    out-of-fold films fitted it, or ``evaluate --ctr-model`` on other films)."""
    if not combined:
        return ""
    head = "<h2>Classifier and ratio combined</h2>"
    if "not_fitted" in combined:
        return head + f"<p>{esc(combined['not_fitted'])}</p>"
    parts, auc = combined["parts_on_the_same_films"], combined["auroc"]
    text = (
        f"<p>The score: the {esc(combined['score'])} (segment model "
        f"{esc(combined['segment_model'])}; references: {esc(', '.join(combined['views']))}). "
        f"On the {combined['images']} measured films ({combined['not_measured']} not "
        f"measured): AUROC <b>{_num(auc['value'])}</b>{_ci(auc['ci95'])}, against "
        f"{_num(parts['probability']['value'])}{_ci(parts['probability']['ci95'])} for the "
        f"probability and {_num(parts['ratio']['value'])}{_ci(parts['ratio']['ci95'])} for the "
        "ratio alone. "
    )
    every = combined.get("all_films")
    if every and combined["not_measured"]:
        text += (
            f"On all {every['images']} films, the {combined['not_measured']} not measured "
            f"ranked by the probability's percentile alone: AUROC "
            f"<b>{_num(every['auroc']['value'])}</b>{_ci(every['auroc']['ci95'])}; which films "
            "are measured depends on the segment model. "
        )
    if "operating_point_nested" in combined:  # the cross-validation that fitted the score
        text += (
            "The references and the threshold were taken from these same films, so the first "
            "operating point below is optimistic; the last decides each fold's films by "
            "references and a threshold fitted on the other folds' films only.</p>"
        )
    else:
        chosen = esc(combined.get("threshold_chosen_on", ""))
        text += f"References and threshold come from the model file ({chosen}).</p>"
    points = dict(combined["operating_points"])
    if "confusion" in combined.get("operating_point_nested", {}):
        points["each fold at the threshold fitted on the other folds (honest)"] = combined[
            "operating_point_nested"
        ]
    ops = _operating_points(
        {"operating_points": points, "threshold_chosen_on": combined.get("threshold_chosen_on")},
        "h3", "Combined score: ",
    )  # fmt: skip
    return head + text + ops + _subgroups(combined, "h3", "Combined score: ")


def _subgroups(metrics: dict[str, Any], heading: str = "h2", prefix: str = "") -> str:
    rows = [
        [esc(f"{column} {name}"), str(g["images"]), str(g["patients"]), str(g["positives"]),
         _num(g["auroc"]) + _ci(g["ci95"]), esc(g.get("warning", ""))]
        for column, groups in metrics.get("subgroups", {}).items()
        for name, g in groups.items()
    ]  # fmt: skip
    if not rows:
        return ""
    header = ["subgroup", "images", "patients", "positives", "AUROC (95 % CI)", "note"]
    note = ""
    if "positives vs" in metrics.get("subgroups", {}):
        note = ("<p class='note'>\"positives vs\": every positive film against the negatives of "
                "one kind: healthy films (no finding), or films sick for another reason. A model "
                "that tells the healthy films apart by their era, scanner or markers rather than "
                "by the heart scores well on the first and not on the second.</p>")  # fmt: skip
    return f"<{heading}>{prefix}Subgroups</{heading}>" + table(header, rows) + note


def figures_section(figures: dict[str, Path], captions: dict[str, str]) -> str:
    """The figures, embedded, in a grid, each with its caption."""
    items = []
    for name, path in figures.items():
        caption = captions.get(name, name)
        wide = " class='wide'" if name == "training_curves.png" else ""
        items.append(f"<figure{wide}><img src='{_image(path)}' alt='{esc(caption)}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")  # fmt: skip
    return "<h2>Figures</h2><div class='figs'>" + "\n".join(items) + "</div>"


def _methods(metrics: dict[str, Any], meta: dict[str, Any]) -> str:
    boot = metrics["auroc"].get("bootstrap", {})
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    return (
        "<h2>Methods</h2><p class='note'>"
        f"AUROC, AUPRC and F1 intervals: {boot.get('resamples', 'n/a')} bootstrap resamples of "
        "<i>patients</i> (all of a patient's images move together), stratified by whether the "
        f"patient has a positive image, seed {boot.get('seed', 'n/a')}, percentile method. "
        "DeLong's interval treats images as independent. Proportions: Wilson score intervals. "
        "Thresholds were chosen on the validation split at training time; evaluation never "
        "chooses one on the data it scores."
        f"<br>Model written by {esc(versions)}. Report made "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"
    )


def render_comparison(result: dict[str, Any], roc: Path) -> str:
    """Two models on the same records: one page with the difference and its uncertainty."""
    diff = result["difference"]
    rows = [
        ["A", esc(result["model_a"]), _with_ci(result["auroc_a"])],
        ["B", esc(result["model_b"]), _with_ci(result["auroc_b"])],
        [
            "A - B",
            esc(diff["ci95_method"]),
            f"{diff['value']:+.3f}{_ci(diff['ci95'])}; DeLong p = {diff['delong_p']:.3g}",
        ],
    ]
    sections = [
        "<h1>Two models on the same records</h1>",
        f"<p class='sub'>{esc(result['data'])}, {esc(result['split_description'])}: "
        f"{result['images']} images, {result['patients']} patients, "
        f"{result['positives']} positive.</p>",
        *(f"<div class='warn'>{esc(n)}</div>" for n in result.get("notes", [])),
        table(["model", "file / method", "AUROC (95 % CI)"], rows, numeric_from=2),
        f"<figure style='max-width:560px'><img src='{_image(roc)}' alt='ROC curves'>"
        "<figcaption>ROC curves of both models</figcaption></figure>",
    ]
    return page("cardiomegaly: comparison", sections)

"""Two cross-validation runs compared on the same films: the paired AUROC differences of
``docs/experiments.md``.

Not a test: a measurement (seconds). Each run is a ``train --folds K`` folder; its
``oof/combined.csv`` (with ``--ctr-model``) or ``oof/predictions.csv`` holds every film's
out-of-fold score. The two runs must have scored the same films. For each score column both
runs have (the probability; with a segment model the ratio and the combined score too),
overall, against each kind of negative and per view: B's AUROC minus A's, with a 95 % interval
from 2,000 bootstrap resamples of patients, the same resamples for both runs (so the interval
is paired). A film either run left without a score (a flagged ratio) is left out of that
column's comparison.

    python benchmarks/compare_oof.py runs/train/cv5 runs/train/cv5-320
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cardiomegaly.evaluate.metrics import auroc, patient_bootstrap, percentile_interval

SCORES = ("probability", "ctr", "combined", "combined_or_probability")


def read_oof(run: str | Path) -> pd.DataFrame:
    """A cross-validation run's out-of-fold table, one row per film, indexed by path."""
    oof = Path(run) / "oof"
    path = oof / "combined.csv" if (oof / "combined.csv").exists() else oof / "predictions.csv"
    if not path.exists():
        raise SystemExit(f"{run}: no oof/predictions.csv; give a `train --folds K` run folder")
    return pd.read_csv(path, dtype={"patient": str}).set_index("path")


def compare(a: pd.DataFrame, b: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per score column and subgroup: films, AUROC of A and B, B - A and its interval."""
    if set(a.index) != set(b.index):
        raise SystemExit(
            f"the runs scored different films ({len(a.index.symmetric_difference(b.index))} "
            "in one only): compare runs of the same data"
        )
    b = b.loc[a.index]
    if not (a["label"] == b["label"]).all():
        raise SystemExit("the runs label some films differently: compare runs of the same data")
    positive = a["label"] == 1
    kind = a.get("negative_kind", pd.Series("", index=a.index)).fillna("")
    groups = {"all films": pd.Series(True, index=a.index)}
    for name in sorted(set(kind) - {""}):
        groups[f"against {name}"] = positive | (kind == name)
    for view in sorted(set(a.get("view", pd.Series(dtype=str)).dropna()) - {""}):
        for name, mask in list(groups.items()):
            groups[f"{name}, {view}"] = mask & (a["view"] == view)
    rows = []
    for column in [c for c in SCORES if c in a and c in b]:
        for name, mask in groups.items():
            keep = mask & a[column].notna() & b[column].notna()
            y = a.loc[keep, "label"].to_numpy(int)
            if len(set(y)) < 2:  # AUROC needs both classes
                continue
            patients = a.loc[keep, "patient"].astype(str).to_numpy()
            sa, sb = a.loc[keep, column].to_numpy(), b.loc[keep, column].to_numpy()
            diff = (
                patient_bootstrap(y, sb, patients, n=n_boot, seed=seed).auroc
                - patient_bootstrap(y, sa, patients, n=n_boot, seed=seed).auroc
            )
            auc_a, auc_b = auroc(y, sa), auroc(y, sb)
            low, high = percentile_interval(diff)
            rows.append(
                {
                    "score": column,
                    "films": name,
                    "n": int(keep.sum()),
                    "positive": int(y.sum()),
                    "auroc_a": auc_a,
                    "auroc_b": auc_b,
                    "difference": auc_b - auc_a,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", help="the run compared against (e.g. the shipped preset)")
    parser.add_argument("run_b", help="the candidate")
    parser.add_argument("--out", help="also write the table as CSV")
    args = parser.parse_args()
    table = compare(read_oof(args.run_a), read_oof(args.run_b))
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.4f")
    for row in table.itertuples():
        print(
            f"{row.score:24s} {row.films:32s} {row.n:5d} ({row.positive:3d} +)  "
            f"A {row.auroc_a:.3f}  B {row.auroc_b:.3f}  "
            f"B - A {row.difference:+.3f} ({row.low:+.3f} to {row.high:+.3f})"
        )


if __name__ == "__main__":
    main()

"""What a data source holds and what is wrong with it: the ``cardiomegaly data`` report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from .data.cache import ImageCache
from .data.records import Records
from .data.split import SPLITS


@dataclass
class DataSummary:
    """Counts of one records table, problems found, and whether it can be trained on."""

    records: Records
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    checked: bool = False

    @property
    def blocking(self) -> str | None:
        """Why this data cannot be trained on, or None."""
        readable = len(self.records) - len(self.unreadable)
        if len(self.records) == 0 or (self.checked and readable == 0):
            return "no readable image files"
        if self.records.positives == 0:
            return "no positive (Cardiomegaly) images"
        if self.records.negatives == 0:
            return "no negative images"
        return None

    def lines(self, split: pd.Series | None = None, limit: int = 20) -> list[str]:
        """The report, line by line."""
        r, t = self.records, self.records.table
        out = [
            f"format      {r.format}  ({r.root})",
            f"images      {len(r)}",
            f"patients    {r.patients}",
            f"positives   {r.positives}  (Cardiomegaly)",
            f"negatives   {r.negatives}",
            f"views       {_counts(t['view'])}",
            f"sexes       {_counts(t['sex'])}",
            f"boxes       {r.boxes}",
        ]
        kinds = t["negative_kind"][t["label"] == 0]
        if kinds.ne("").any():
            out.append(f"negatives   by kind: {_counts(kinds)}")
        if len(r.sources) > 1:
            out += self._source_lines()
        if "ctr" in t.columns:
            out.append(f"ctr         {t['ctr'].min():.3f} to {t['ctr'].max():.3f}")
        masks = [c.removeprefix("mask_") for c in t.columns if c.startswith("mask_")]
        if masks:
            out.append(f"masks       {', '.join(masks)} for every film (the segment task)")
        if r.excluded:
            out.append(f"excluded    {sum(r.excluded.values())} rows")
            out += [f"  {count:>7}  {reason}" for reason, count in r.excluded.most_common()]
        else:
            out.append("excluded    none")
        if r.missing:
            out.append(f"missing     {len(r.missing)} files named by the source do not exist")
            out += [f"  {p}" for p in r.missing[:limit]]
            if len(r.missing) > limit:
                out.append(f"  ... and {len(r.missing) - limit} more")
        if self.checked:
            out.append(f"unreadable  {len(self.unreadable)}")
            out += [f"  {reason}" for _path, reason in self.unreadable[:limit]]
            if len(self.unreadable) > limit:
                out.append(f"  ... and {len(self.unreadable) - limit} more")
        for note in r.notes:
            out.append(f"note        {note}")
        if split is not None:
            out.append("split       images  patients  positives")
            for name in SPLITS:
                part = t[split == name]
                by_source = ""
                if len(r.sources) > 1:
                    by_source = (
                        "  ("
                        + ", ".join(
                            f"{s} {n}" for s, n in part["source"].value_counts(sort=False).items()
                        )
                        + ")"
                    )
                out.append(
                    f"  {name:<9} {len(part):>6}  {part['patient'].nunique():>8}  "
                    f"{int(part['label'].sum()):>9}{by_source}"
                )
        return out

    def _source_lines(self) -> list[str]:
        r, t = self.records, self.records.table
        out = ["sources     images  patients  positives  negatives"]
        for name in r.sources:
            part = t[t["source"] == name]
            positives = int(part["label"].sum())
            out.append(f"  {name:<24} {len(part):>6}  {part['patient'].nunique():>8}  "
                       f"{positives:>9}  {len(part) - positives:>9}")  # fmt: skip
        overlap = r.overlap()
        out.append(f"overlap     {len(overlap)} patients have images in more than one source"
                   + " (each stays in one split)" * bool(overlap))  # fmt: skip
        pairs = Counter(" + ".join(s) for s in overlap.values())
        out += [f"  {n:>7}  {pair}" for pair, n in pairs.most_common()]
        return out


def _counts(values: pd.Series) -> str:
    counts = Counter(v if v else "unknown" for v in values)
    return ", ".join(f"{k} {n}" for k, n in counts.most_common()) or "none"


def summarize(
    records: Records, cache: ImageCache | None = None, progress: bool = True
) -> DataSummary:
    """Count the records and, given a cache, decode every image once (filling the cache).

    >>> summarize(load_records("synthetic")).blocking is None        # doctest: +SKIP
    True
    """
    if cache is None:
        return DataSummary(records)
    failures = cache.warm(list(records.table["path"]), progress=progress)
    return DataSummary(records, unreadable=failures, checked=True)

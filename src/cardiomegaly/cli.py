"""The ``cardiomegaly`` command line: parses, calls the library, prints where results went.

Exit status: 0 success, 2 bad usage or bad input (one line, no traceback), 1 internal error.

Each command imports its stage where it runs: ``--help`` answers at once, and ``predict`` on a
CPU (ONNX Runtime) never loads torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .config import PRESETS, DataConfig, SplitConfig, TrainConfig, load_yaml
from .errors import ConfigError, UserError
from .fileio import fresh_folder, next_run_folder


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _image_size(text: str) -> int:
    value = _positive_int(text)
    if value < 75:
        raise argparse.ArgumentTypeError(f"{value} is under 75, InceptionV3's smallest input")
    return value


# ------------------------------------------------------------------------------------- commands


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.phantom import synthesize

    out = fresh_folder(Path(args.out))
    print(f"writing {args.n} phantoms ({args.size} px, seed {args.seed}) to {out}")
    csv = synthesize(out, n=args.n, size=args.size, seed=args.seed)
    print(f"images      {out / 'images'}")
    print(f"table       {csv}")
    print(f"contact     {out / 'contact_sheet.png'}")
    print("phantoms are synthetic: for demos and tests, never for medical claims")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data.cache import ImageCache
    from .data.records import load_records
    from .data.split import patient_split, save_splits
    from .summary import summarize

    config = DataConfig(views=args.views) if args.views else None
    records = load_records(args.data, config)
    cache = None if args.no_check else ImageCache(args.image_size, root=args.cache_dir)
    summary = summarize(records)
    if cache is not None and summary.blocking is None:  # decode only data worth training on
        summary = summarize(records, cache)
    split = None
    if summary.blocking is None and len(records):
        split = patient_split(records, SplitConfig(seed=args.seed, split_file=args.split_file))
    for line in summary.lines(split):
        print(line)
    if cache is not None and summary.checked:
        print(f"cache       {cache.folder}")
    if args.splits and split is not None:
        save_splits(records, split, args.splits)
        print(f"splits      {args.splits}")
    if summary.blocking:
        raise UserError(f"{', '.join(args.data)}: cannot be trained on: {summary.blocking}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole flow on phantoms: synth, train (demo preset; the test evaluation and report come
    with it), predict three test films with Grad-CAM, explain the test split."""
    start = time.perf_counter()
    out = Path(args.out) if args.out else next_run_folder(Path("runs") / "demo", "demo")
    phantoms, run = out / "phantoms", out / "run"
    model = run / "model.safetensors"
    parser = build_parser()

    def step(*argv: object) -> None:
        print(f"\n$ cardiomegaly {' '.join(str(a) for a in argv)}")
        step_args = parser.parse_args([str(a) for a in argv])
        step_args.func(step_args)

    step("synth", phantoms, "--n", args.n, "--size", args.size, "--seed", args.seed)
    step(
        "train",
        "--preset",
        "demo",
        "--data",
        phantoms,
        "--out",
        run,
        "--seed",
        args.seed,
        "--cache-dir",
        out / ".cache",
        *(["--epochs", args.epochs] if args.epochs else []),
        *(["--image-size", args.image_size] if args.image_size else []),
    )
    # Three films the model never saw, of three patients: two with cardiomegaly, one without.
    test = pd.read_csv(run / "splits.csv").query("split == 'test'").drop_duplicates("patient")
    picks = list(test[test["label"] == 1]["path"][:2]) + list(test[test["label"] == 0]["path"][:1])
    step(
        "predict",
        model,
        *[phantoms / p for p in picks],
        "--out",
        out / "predictions.csv",
        "--cam",
        out / "overlays",
    )
    step("explain", model, "--data", phantoms, "--out", out / "explain")
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"\ndemo finished in {minutes} min {seconds} s. Look at:")
    for what, path in (
        ("report", run / "test" / "report.html"),
        ("curves", run / "curves.png"),
        ("overlays", out / "overlays"),
        ("contact sheet", out / "explain" / "contact_sheet.png"),
        ("predictions", out / "predictions.csv"),
    ):
        print(f"  {what:<14}{path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    if args.resume:  # with --ctr-model, a finished cross-validation gains the combined score
        result = train(resume=args.resume, ctr_model=args.ctr_model)
    else:
        overrides = load_yaml(args.config) if args.config else {}
        for f in _train_fields():
            if getattr(args, f.name) is not None:  # said on the command line
                overrides[f.name] = _one_or_list(getattr(args, f.name), f)
        if args.hflip:
            overrides.setdefault("augment", {})["hflip"] = True
        if args.views:
            overrides.setdefault("data_config", {})["views"] = args.views
        if args.split_file:
            overrides.setdefault("split", {})["split_file"] = args.split_file
        try:
            config = TrainConfig.from_preset(overrides.pop("preset", None), **overrides)
        except ConfigError as exc:  # name the file when the YAML holds the mistake
            raise ConfigError(f"{args.config}: {exc}" if args.config else str(exc)) from None
        if not config.data:
            raise UserError("no data: give --data DATA (a folder, CSV, data YAML or synthetic)")
        result = train(config, out=args.out)
    if int(os.environ.get("RANK", "0")) == 0 and hasattr(result, "oof"):  # --folds K
        print(f"model       {result.model}  (ensemble of {len(result.folds)} fold models)")
        print(f"folds       {result.run_dir / 'fold0'} ... fold{len(result.folds) - 1}")
        _print_by_kind(result.oof)
        if "combined" in result.oof:
            _print_combined(result.oof["combined"], result.run_dir / "oof")
        print(f"report      {result.run_dir / 'oof' / 'report.html'}")
        return 0
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for all
        best = (f"validation Dice {result.val_dice:.4f}" if hasattr(result, "val_dice")
                else f"validation AUROC {result.val_auroc:.4f}")  # fmt: skip
        print(f"model       {result.run_dir / 'model.safetensors'}  (epoch {result.best_epoch}, "
              f"{best})")  # fmt: skip
        print(f"history     {result.run_dir / 'history.csv'}, {result.run_dir / 'curves.png'}")
        print(f"test        {result.run_dir / 'test' / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import compare, evaluate

    if len(args.models) > 2:
        raise UserError("give one model file to evaluate, or two to compare")
    options = {
        "split": args.split,
        "out": args.out,
        "batch_size": args.batch_size,
        "device": args.device,
        "n_boot": args.bootstrap,
        "cache_dir": args.cache_dir,
    }
    if args.ctr_model and (len(args.models) != 1 or _task_of(args.models[0]) != "classify"):
        raise UserError("--ctr-model: give one classifier with a combined score to evaluate it")
    if len(args.models) == 1 and _task_of(args.models[0]) == "segment":
        return _evaluate_segmenter(args.models[0], _data(args), options)
    if len(args.models) == 2:
        result = compare(*args.models, _data(args), **options)
        m = result.metrics
        for name in ("a", "b"):
            auc = m[f"auroc_{name}"]
            print(
                f"AUROC {name.upper()}     {auc['value']:.4f} (95 % CI {_ci(auc['ci95'])})  "
                f"{m[f'model_{name}']}"
            )
        d = m["difference"]
        print(
            f"A - B       {d['value']:+.4f} (95 % CI {_ci(d['ci95'])}, paired patient bootstrap)"
            f"  DeLong p = {d['delong_p']:.3g}"
        )
        for note in m["notes"]:
            print(f"note        {note}")
    else:
        result = evaluate(args.models[0], _data(args), ctr_model=args.ctr_model, **options)
        m = result.metrics
        print(
            f"records     {m['images']} images, {m['patients']} patients, "
            f"{m['positives']} positive ({m['split_description']})"
        )
        auc = m["auroc"]
        if auc["value"] is None:
            print(f"AUROC       undefined: {auc['undefined']}")
        else:
            delong = auc.get("delong") or {}
            print(
                f"AUROC       {auc['value']:.4f} (95 % CI {_ci(auc['ci95'])} patient bootstrap; "
                f"{_ci(delong.get('ci95'))} DeLong)"
            )
        for column in ("positives vs", "source"):  # a shortcut shows as a gap here
            for name, g in m["subgroups"].get(column, {}).items():
                print(f"  {column} {name}: AUROC {_num(g['auroc'])} (95 % CI {_ci(g['ci95'])}; "
                      f"{g['images']} images, {g['positives']} positive)")  # fmt: skip
        for name, op in m["operating_points"].items():
            sens, spec = op["sensitivity"]["value"], op["specificity"]["value"]
            print(
                f"{name:<27} threshold {op['threshold']:.3f}  sensitivity {_num(sens)}  "
                f"specificity {_num(spec)}"
            )
        if "combined" in m:
            _print_combined(m["combined"], result.folder)
        for warning in m["warnings"]:
            print(f"warning     {warning}")
    print(f"report      {result.folder / 'report.html'}")
    return 0


def _task_of(model: str) -> str:
    from .model import read_metadata

    return read_metadata(model).get("task", "classify")


def _evaluate_segmenter(model: str, data: str, options: dict) -> int:
    from .segment.evaluate import evaluate_segmenter

    result = evaluate_segmenter(model, data, **options)
    m = result.metrics
    print(f"records     {m['films']} films, {m['patients']} patients ({m['split_description']}); "
          f"{m['flagged']} flagged, {m['unreadable']} unreadable")  # fmt: skip
    if "dice" in m:
        for organ, d in m["dice"].items():
            print(f"Dice        {organ:<11} {d['value']:.4f} (95 % CI {_ci(d['ci95'])})")
        mae = m["ctr_error"]["mae"]
        if mae["value"] is None:
            print("ratio       no film measured: every film was flagged (see predictions.csv)")
        else:
            print(f"ratio       mean absolute error {mae['value']:.4f} (95 % CI "
                  f"{_ci(mae['ci95'])}) against the reference ratio")  # fmt: skip
    else:
        a = m["auroc"]
        print(f"AUROC       {_num(a['value'])} (95 % CI {_ci(a.get('ci95'))}) of the ratio as a "
              "cardiomegaly score")  # fmt: skip
        for view, v in m["auroc_by_view"].items():
            print(f"  {view:<9} {_num(v['value'])} (95 % CI {_ci(v.get('ci95'))}, {v.get('n', 0)} "
                  f"films)")  # fmt: skip
        if "view_aware" in m:
            va = m["view_aware"]
            cuts = ", ".join(f"{v} {t:.3f}" for v, t in va["thresholds"].items())
            print(f"view-aware  AUROC {_num(va['auroc']['value'])} (95 % CI "
                  f"{_ci(va['auroc'].get('ci95'))}) with thresholds per view {cuts} "
                  f"(chosen on validation)")  # fmt: skip
    print(f"report      {result.folder / 'report.html'}")
    return 0


BACKENDS = {"onnx": "ONNX Runtime", "torch": "PyTorch"}
CTR_MODEL_HELP = "a segment model: the cardiothoracic ratio beside the probability"
VIEW_HELP = (
    "the view of films whose file records none (PNG, JPEG): the ratio's AP note and the "
    "combined score's ranking within the view; DICOM films keep their ViewPosition"
)


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import Classifier, find_images, predict_files, write_predictions

    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.view and not args.ctr_model:
        raise UserError("--view needs --ctr-model: it is the view the ratio and the combined "
                        "score are read in")  # fmt: skip
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"{out}: give a .csv or .json file to write")
        if out.exists():
            raise UserError(f"{out}: exists; give a new file (nothing was changed)")
    else:
        out = next_run_folder(Path("runs") / "predict", "exp") / "predictions.csv"
    paths = find_images(args.paths)
    if not paths:
        raise UserError(f"no image files found in {' '.join(args.paths)}")
    if args.dicom_out:
        fresh_folder(args.dicom_out)  # new or empty: nothing of the user's is overwritten
    clf = Classifier.load(args.model, device=args.device, backend=args.backend)
    measurer = None
    if args.ctr_model:  # loaded before the long part, so that a wrong file fails at once
        from .segment.measure import Measurer

        measurer = Measurer.load(args.ctr_model, device=args.device)
    predictions = predict_files(clf, paths, args.batch_size, args.workers)
    scored = [p for p in predictions if p.error is None]
    if not main_rank:
        return 0 if scored else 2
    ratios, answers, why_not = None, None, ""
    if measurer is not None:
        from .combine import combined_for

        measured = list(measurer.measure_many(paths, args.batch_size, progress=True,
                                              total=len(paths), view=args.view or ""))  # fmt: skip
        ratios = [m.summary() if m.error is None else None for m in measured]
        combined, why_not = combined_for(clf.meta, args.ctr_model)
        if combined is not None:
            answers = [None if p.error or m.error else combined.answer(p.probability, m.ctr, m.view)
                       for p, m in zip(predictions, measured, strict=True)]  # fmt: skip
    elif "combined" in clf.meta:
        why_not = ("no combined score: this model carries one; give --ctr-model with the "
                   "segment model it was calibrated with")  # fmt: skip
    write_predictions(predictions, out, ratios, answers)
    if args.cam and scored:
        from .explain import write_overlays

        cam_clf = clf  # Grad-CAM needs PyTorch's gradients
        if clf.backend != "torch":
            cam_clf = Classifier.load(args.model, args.device, backend="torch")
        fresh_folder(args.cam)
        overlays = write_overlays(cam_clf, predictions, args.cam, args.batch_size)
        print(f"grad-cam    {len(overlays)} overlays in {args.cam}")
    if args.dicom_out and scored:
        _write_dicom_results(args, clf, measurer, scored)
    positives = sum(p.label == 1 for p in scored)
    print(
        f"scored      {len(scored)} of {len(paths)} images; {positives} at or above the "
        f"threshold {clf.threshold:.3f} ({clf.meta['threshold']['rule']}, chosen on "
        f"{clf.meta['threshold'].get('chosen_on', 'validation')}) on {BACKENDS[clf.backend]}"
    )
    errors = [p for p in predictions if p.error is not None]
    for p in errors[:20]:
        print(f"error       {p.error}")
    if len(errors) > 20:
        print(f"error       ... and {len(errors) - 20} more (see the error column)")
    if ratios is not None:
        done = [r for r in ratios if r and r["value"] is not None]
        over = sum(r["over_0_5"] for r in done)
        print(f"ratio       {len(done)} films measured, {over} over 0.5 (segment model "
              f"{args.ctr_model}); an AP film magnifies the heart")  # fmt: skip
    if answers is not None:
        given = [a for a in answers if a and a["score"] is not None]
        threshold = combined.threshold
        print(f"combined    {len(given)} films scored, {sum(a['label'] for a in given)} at or "
              f"above {threshold:.3f} (ranks within the film's view, or among all films when it is "
              f"unknown; threshold chosen on {combined.chosen_on})")  # fmt: skip
    if why_not:
        print(f"combined    {why_not}")
    print(f"predictions {out}")
    if not scored:
        raise UserError("no image could be read; see the reasons above")
    return 0


def _write_dicom_results(args: argparse.Namespace, clf, measurer, scored: list) -> None:
    """predict --dicom-out: an SR and an overlay Secondary Capture for every scored DICOM film;
    other files are said and skipped."""
    from .errors import ImageError
    from .pacs.results import ResultWriter

    writer = ResultWriter(args.model, clf, measurer, args.device)
    films, skipped = 0, []
    for p in scored:
        try:
            writer.write(p.path, p, args.dicom_out)
            films += 1
        except ImageError as exc:
            skipped.append(str(exc))
    print(f"dicom       an SR and an overlay for each of {films} DICOM films in {args.dicom_out} "
          "(their own studies, new series; UNVERIFIED)")  # fmt: skip
    for reason in skipped[:20]:
        print(f"no dicom    {reason}")
    if len(skipped) > 20:
        print(f"no dicom    ... and {len(skipped) - 20} more")


def cmd_measure(args: argparse.Namespace) -> int:
    from .predict import find_images
    from .segment.measure import Measurer, write_measurements
    from .segment.overlay import draw_measurement

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"{out}: give a .csv or .json file to write")
    if out.exists():
        raise UserError(f"{out}: exists; give a new file (nothing was changed)")
    paths = find_images(args.paths)
    if not paths:
        raise UserError(f"no image files found in {' '.join(args.paths)}")
    measurer = Measurer.load(args.model, device=args.device)
    overlays = fresh_folder(args.overlays) if args.overlays else None
    results, names = [], set()
    films = measurer.measure_many(paths, args.batch_size, progress=True, total=len(paths),
                                  view=args.view or "")  # fmt: skip
    for m in films:
        if overlays is not None and m.error is None:
            stem = Path(m.path).stem
            name = stem if stem not in names else f"{stem}-{len(names)}"
            names.add(name)
            draw_measurement(m.image, m.masks, m.measurement, m.view).save(overlays / f"{name}.png")
        results.append(m)
    write_measurements(results, out)
    measured = [m for m in results if m.ctr is not None]
    flagged = [m for m in results if m.error is None and m.ctr is None]
    errors = [m for m in results if m.error is not None]
    print(
        f"measured    {len(measured)} of {len(paths)} films; {sum(m.ctr > 0.5 for m in measured)} "
        f"with a ratio over 0.5; {len(flagged)} flagged (implausible geometry, see quality)"
    )
    if any(m.view == "AP" for m in measured):
        print(
            "note        AP films magnify the heart: a ratio over 0.5 on an AP film is not "
            "cardiomegaly by itself (see the note column)"
        )
    for m in errors[:20]:
        print(f"error       {m.error}")
    if overlays is not None:
        print(f"overlays    {overlays}")
    print(f"ratios      {out}")
    if not measured and not flagged:
        raise UserError("no film could be read; see the reasons above")
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    import signal

    from .pacs.node import Destination, Node, NodeConfig

    config = NodeConfig(
        aet=args.aet,
        port=args.port,
        dest=Destination.parse(args.dest),
        spool=args.spool,
        host=args.host,
        allow=[a.strip() for a in args.allow.split(",") if a.strip()] if args.allow else [],
    )
    node = Node(args.model, config, ctr_model=args.ctr_model, device=args.device)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    node.start()
    print("Ctrl-C stops the node; the spool keeps what is not done for the next start")
    stopped.wait()
    node.stop()
    counted = ", ".join(f"{n} {what}" for what, n in node.counts.items())
    print(f"stopped     {counted}; {node.spool.waiting()} results waiting to be sent")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain

    result = explain(
        args.model,
        _data(args),
        args.split,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        layer=args.layer,
        n_boot=args.bootstrap,
    )
    s = result.summary
    print(
        f"records     {s['images']} images ({s['split_description']}); {s['with_box']} with a "
        f"heart box; Grad-CAM layer {s['layer']}"
    )
    if "pointing_game" in s:
        for name, r in s["pointing_game"].items():
            print(
                f"pointing    {name:<13} hit rate {r['value']:.3f} (95 % CI {_ci(r['ci95'])}, "
                f"{r['hits']} of {r['n']})"
            )
        for name, r in s["mean_iou"].items():
            print(f"IoU         {name:<13} mean {r['value']:.3f} (95 % CI {_ci(r['ci95'])})")
    else:
        print(f"note        {s['note']}")
    for item in s["skipped"][:20]:
        print(f"skipped     {item['reason']}")
    print(f"overlays    {result.folder / 'overlays'}")
    print(f"summary     {result.folder / 'explain.json'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .serve import create_app

    app = create_app(
        args.model,
        max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        device=args.device,
        ctr_model=args.ctr_model,
    )
    print(f"serving     {args.model} on http://{args.host}:{args.port}/  (API docs: /docs)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning     listening on {args.host}: reachable from other machines; no "
            "authentication, research use only"
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import INT8_MAX_AUROC_CHANGE, PARITY_TOLERANCE, export, quantize_int8

    if args.int8 and (args.format != "onnx" or not args.data):
        raise UserError("--int8 needs --format onnx and --data (the model's training data)")
    result = export(args.model, args.format, args.out)
    diff = result.max_probability_difference
    print(
        f"parity      largest probability difference from PyTorch {diff:.2e} on "
        f"{result.samples} phantom films (limit {PARITY_TOLERANCE:g})"
    )
    print(f"exported    {result.path}")
    if args.int8:
        q = quantize_int8(args.model, result.path, args.data)
        change = q.val_auroc_int8 - q.val_auroc_fp32
        print(
            f"int8        validation AUROC {q.val_auroc_int8:.4f} vs fp32 {q.val_auroc_fp32:.4f} "
            f"({change:+.4f}; {q.val_images} images); {q.images_per_second_int8:.1f} vs "
            f"{q.images_per_second_fp32:.1f} images/s"
        )
        if q.kept:
            print(f"exported    {q.path}")
        else:
            print(f"int8        not kept: AUROC moved by more than {INT8_MAX_AUROC_CHANGE}")
    return 0


def _print_combined(combined: dict, folder: Path) -> None:
    """The combined score's AUROC, overall and by kind of negative, or why there is none."""
    if "not_fitted" in combined:
        print(f"combined    {combined['not_fitted']}")
        return
    auc = combined["auroc"]
    print(f"combined    with the ratio: AUROC {_num(auc['value'])} (95 % CI {_ci(auc['ci95'])}) "
          f"on {combined['images']} measured films ({combined['not_measured']} not "
          "measured)")  # fmt: skip
    _print_by_kind(combined)
    every = combined.get("all_films")
    if every and combined["not_measured"]:  # the flagged films change the films scored
        auc = every["auroc"]
        print(f"            on all {every['images']} films, the {combined['not_measured']} "
              f"not measured ranked by the probability alone: AUROC {_num(auc['value'])} "
              f"(95 % CI {_ci(auc['ci95'])})")  # fmt: skip
        _print_by_kind(every)
    print(f"            {folder / 'combined.csv'}")


def _print_by_kind(metrics: dict) -> None:
    """AUROC of the positives against each kind of negative (NIH's no finding, other findings)."""
    for name, g in metrics["subgroups"].get("positives vs", {}).items():
        print(f"  positives vs {name}: AUROC {_num(g['auroc'])} (95 % CI {_ci(g['ci95'])})")


def _ci(interval: list[float] | None) -> str:
    return "n/a" if not interval else f"{interval[0]:.3f} to {interval[1]:.3f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------------------- parser


class _Archs:
    """The registry's architectures as argparse choices, read when first needed: the registry
    lives beside the networks, and building the parser must not load torch."""

    def _names(self) -> list[str]:
        from .model import ARCHS
        from .segment.model import SEG_ARCHS

        return [*ARCHS, *SEG_ARCHS]

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


DATA_HELP = "data folder, CSV, data YAML, or 'synthetic'; several sources make one dataset"


def _data(args: argparse.Namespace) -> str | list[str]:
    """``--data`` given once is one source; given more often, a list of them."""
    return args.data[0] if len(args.data) == 1 else list(args.data)


def _one_or_list(value: Any, f: dataclasses.Field) -> Any:
    """A flag given once is one value (one data source); given more often, a list."""
    if f.metadata.get("kind") == "append" and len(value) == 1:
        return value[0]
    return value


def _train_fields() -> list[dataclasses.Field]:
    """TrainConfig's plain fields: each is a ``train`` flag (nested configs have their own)."""
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and documented by the field itself. Unset flags are
    None, so the preset, then the YAML, then the flags decide, in that order."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {"positive": _positive_int, "image_size": _image_size}
    choices = {"archs": _Archs(), "presets": list(PRESETS)}
    for f in _train_fields():
        flag, meta, kind = "--" + f.name.replace("_", "-"), f.metadata, hints[f.name]
        if kind is bool:
            if f.default:
                p.add_argument(
                    f"--no-{flag[2:]}",
                    dest=f.name,
                    action="store_false",
                    default=None,
                    help=f"do not {meta['help']}",
                )
            else:  # a preset may turn it on: --no-X turns it off again
                p.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=None, help=meta["help"]
                )
            continue
        if meta.get("kind") == "append":
            p.add_argument(flag, action="append", metavar=f.name.upper(), help=meta["help"])
            continue
        if typing.get_origin(kind) is list:
            p.add_argument(flag, type=lambda text: text.split(","), help=meta["help"])
            continue
        base = next(t for t in (int, float, str) if t == kind or t in typing.get_args(kind))
        options = choices.get(meta.get("choices"), meta.get("choices"))
        lazy = isinstance(options, _Archs)  # a metavar, so that argparse lists them only in help
        p.add_argument(
            flag,
            type=kinds.get(meta.get("kind"), base),
            choices=options,
            metavar=f.name.upper() if lazy else None,
            help=meta["help"],
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cardiomegaly",
        description="Detect cardiomegaly on chest X-rays. Research tool, not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"cardiomegaly {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log details")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("synth", help="write synthetic chest-film phantoms with known CTR")
    p.add_argument("out", help="new folder to write into")
    p.add_argument("--n", type=_positive_int, default=600, help="number of films (600)")
    p.add_argument("--size", type=_image_size, default=512, help="pixels per side (512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("data", help="summarise a data source and list its problems")
    p.add_argument(
        "data",
        nargs="+",
        help="data folder, CSV, data YAML, or 'synthetic'; several are one dataset",
    )
    p.add_argument("--views", nargs="+", choices=["PA", "AP"], help="keep only these views")
    p.add_argument(
        "--image-size",
        type=_image_size,
        default=299,
        help="decode every image once at this size, filling the cache (299)",
    )
    p.add_argument("--no-check", action="store_true", help="count rows only; decode nothing")
    p.add_argument("--cache-dir", help="preprocessing cache (default: user cache folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-wise split shown (0)")
    p.add_argument("--split-file", metavar="FILE", help="show this saved splits.csv instead")
    p.add_argument("--splits", metavar="FILE", help="also write the split to this splits.csv")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model; writes a run folder")
    p.add_argument("--config", metavar="YAML", help="a TrainConfig YAML (flags override it)")
    _add_train_flags(p)
    p.add_argument("--hflip", action="store_true", help="allow horizontal flips (off: anatomy)")
    p.add_argument("--views", nargs="+", choices=["PA", "AP"], help="keep only these views")
    p.add_argument("--split-file", metavar="FILE", help="reuse a saved splits.csv")
    p.add_argument("--out", help="run folder (default runs/train/expN)")
    p.add_argument("--resume", metavar="DIR", help="continue a killed run from DIR/last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics with intervals, plots and report.html")
    p.add_argument("models", nargs="+", metavar="MODEL", help="a model file; two to compare")
    p.add_argument("--data", required=True, action="append", help=DATA_HELP)
    p.add_argument(
        "--split",
        choices=["test", "val", "all"],
        default="test",
        help="test or val of the model's own split, or all records (test)",
    )
    p.add_argument("--out", help="folder to write (default runs/evaluate/expN)")
    p.add_argument(
        "--bootstrap", type=_positive_int, default=2000, help="patient bootstrap resamples (2000)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cache-dir", help="preprocessing cache (default: user cache folder)")
    p.add_argument(
        "--ctr-model",
        metavar="SEGMODEL",
        help="also the combined score (its segment model)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="probabilities for image files, folders or globs")
    p.add_argument("model", metavar="MODEL", help="a model file (model.safetensors)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders (recursive), globs")
    p.add_argument("--out", help="a .csv or .json file (default runs/predict/expN/predictions.csv)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--workers", type=_positive_int, help="decoding threads (up to 4)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto: ONNX Runtime on the CPU when the model.onnx beside MODEL is its "
        "export (training writes one), else PyTorch (auto)",
    )
    p.add_argument("--cam", metavar="DIR", help="also write Grad-CAM overlays into this new folder")
    p.add_argument("--ctr-model", metavar="SEGMODEL", help=CTR_MODEL_HELP)
    p.add_argument("--view", choices=["PA", "AP"], help=VIEW_HELP)
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="for each DICOM film, a DICOM SR (TID 1500) and an overlay Secondary Capture in "
        "its own study, written into this new folder",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("measure", help="the cardiothoracic ratio of films, from a segment model")
    p.add_argument("model", metavar="SEGMODEL", help="a segment model file (train --task segment)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders (recursive), globs")
    p.add_argument("--out", required=True, help="a .csv or .json file to write")
    p.add_argument(
        "--overlays", metavar="DIR", help="also draw each measurement into this new folder"
    )
    p.add_argument("--view", choices=["PA", "AP"], help=VIEW_HELP)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("listen", help="a DICOM node: receives films, sends back an SR and overlay")
    p.add_argument("model", metavar="MODEL", help="a model file (model.safetensors)")
    p.add_argument("--ctr-model", metavar="SEGMODEL", help=CTR_MODEL_HELP)
    p.add_argument("--aet", default="CARDIO", help="this node's AE title (CARDIO)")
    p.add_argument("--port", type=_positive_int, default=11112, help="DICOM port (11112)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine)")
    p.add_argument("--dest", required=True, metavar="AET@HOST:PORT",
                   help="where results are sent by C-STORE (the PACS)")  # fmt: skip
    p.add_argument("--spool", required=True, metavar="DIR",
                   help="where films and unsent results are kept (created if missing)")  # fmt: skip
    p.add_argument("--allow", metavar="AET,...", help="refuse callers with other AE titles")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("explain", help="Grad-CAM overlays and localisation against heart boxes")
    p.add_argument("model", metavar="MODEL", help="a model file (model.safetensors)")
    p.add_argument("--data", required=True, action="append", help=DATA_HELP)
    p.add_argument(
        "--split",
        choices=["test", "val", "all"],
        default="test",
        help="test or val of the model's own split, or all records (test)",
    )
    p.add_argument("--out", help="folder to write (default runs/explain/expN)")
    p.add_argument("--layer", help="Grad-CAM layer (default: the last block with >= 8 x 8 cells)")
    p.add_argument(
        "--bootstrap",
        type=_positive_int,
        default=2000,
        help="patient bootstrap resamples for the IoU interval (2000)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("export", help="ONNX or TorchScript, verified against PyTorch")
    p.add_argument("model", metavar="MODEL", help="a model file (model.safetensors)")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--out", help="file to write (default: beside MODEL)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also a static int8 ONNX model, calibrated on training images; kept only "
        "if validation AUROC moves by at most 0.005",
    )
    p.add_argument("--data", help="the model's training data (for --int8)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP API and web page for one model file")
    p.add_argument("model", metavar="MODEL", help="a model file (model.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine)")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=30, help="larger uploads get 413 (30)")
    p.add_argument("--concurrency", type=_positive_int, default=2, help="inferences at once (2)")
    p.add_argument("--ctr-model", metavar="SEGMODEL", help=CTR_MODEL_HELP)
    p.add_argument("--timeout", type=float, default=60, help="seconds per inference (60)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "demo", help="the whole flow on phantoms, end to end (about 7 min on 2 CPU cores)"
    )
    p.add_argument("--out", help="demo folder (default runs/demo/demoN)")
    p.add_argument("--n", type=_positive_int, default=600, help="number of phantoms (600)")
    p.add_argument("--size", type=_image_size, default=192, help="phantom size (192)")
    p.add_argument("--epochs", type=_positive_int, help="training epochs (the preset's 12)")
    p.add_argument("--image-size", type=_image_size, help="model input (the preset's 128)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cardiomegaly`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(verbose=args.verbose, quiet=args.quiet)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"cardiomegaly {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"cardiomegaly {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("CARDIOMEGALY_DEBUG"):
            traceback.print_exc()
        print(
            f"cardiomegaly {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set CARDIOMEGALY_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


class _Stdout(logging.Handler):
    """The package's log records as the command's output lines, on whatever ``sys.stdout`` is now
    (errors go to stderr from :func:`main`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


class _OneLine(logging.Formatter):
    """Third-party records in one line, without tracebacks: the tool reports those failures
    itself (as error rows, skipped films, or one error line)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.name}: {record.getMessage()}"


def _configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """The package logs; the CLI shows it. Default: the package's INFO lines (what a run prints);
    -q: warnings only; -v: the package's DEBUG and other libraries' INFO, one line each."""
    ours = logging.getLogger("cardiomegaly")
    for handler in [h for h in ours.handlers if isinstance(h, _Stdout)]:
        ours.removeHandler(handler)  # main() may run many times in one process (tests, demo)
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, _OneLine)]:
        root.removeHandler(old)
    if verbose:
        others = logging.StreamHandler(sys.stderr)
        others.setFormatter(_OneLine())
        others.addFilter(lambda record: not record.name.startswith("cardiomegaly"))
        root.addHandler(others)
        root.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())

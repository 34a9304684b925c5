"""The HTTP API and the web page (FastAPI). Uploads stay in memory; nothing identifying is echoed.

>>> app = create_app("runs/train/exp/model.safetensors")        # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)               # doctest: +SKIP
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from .. import __version__
from ..combine import combined_for
from ..data.images import sniff_format
from ..errors import ImageError
from ..predict import Classifier, Prediction
from ..segment.overlay import draw_measurement
from .page import PAGE

log = logging.getLogger(__name__)

ACCEPTED = ("png", "jpeg", "dicom")
UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "one PNG, JPEG or DICOM file",
                        }
                    },
                }
            }
        },
    }
}


def create_app(
    model: str | Path,
    *,
    max_upload_mb: float = 30,
    concurrency: int = 2,
    timeout_s: float = 60,
    device: str = "auto",
    ctr_model: str | Path | None = None,
) -> FastAPI:
    """The app serving ``model``: ``POST /v1/predict``, ``GET /v1/model``, ``GET /health``,
    ``GET /`` (the page) and the OpenAPI docs at ``/docs``.

    At most ``concurrency`` inferences run at once, in worker threads, off the event loop; one
    that takes longer than ``timeout_s`` answers 503.
    """
    clf = Classifier.load(model, device=device)
    card = model_card(clf.meta, Path(model).name)
    measurer, combined = None, None
    if ctr_model is not None:  # the cardiothoracic ratio beside the probability
        from ..segment.measure import Measurer

        measurer = Measurer.load(ctr_model, device=device)
        card["ctr_model"] = {"name": Path(ctr_model).name,
                             "training": measurer.meta.get("training", {}).get("data")}  # fmt: skip
        combined, why_not = combined_for(clf.meta, ctr_model)
        if why_not:
            log.warning("%s", why_not)
        if combined is not None:
            card["combined"] = {
                "score": combined.to_metadata()["score"],
                "threshold": combined.threshold,
                "chosen_on": combined.chosen_on,
            }
    max_bytes = int(max_upload_mb * 2**20)
    state: dict[str, Any] = {}
    torch_lock = threading.Lock()

    def torch_classifier() -> Classifier:
        """Grad-CAM needs PyTorch's gradients: loaded on the first ?cam=true when the answers
        come from ONNX Runtime."""
        with torch_lock:
            if "torch" not in state:
                state["torch"] = (
                    clf
                    if clf.backend == "torch"
                    else Classifier.load(model, device=device, backend="torch")
                )
        return state["torch"]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state["limiter"] = anyio.CapacityLimiter(concurrency)
        yield

    app = FastAPI(
        title="cardiomegaly",
        version=__version__,
        lifespan=lifespan,
        description="Cardiomegaly on chest X-rays. Research use only; not a medical device.",
    )

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": card["name"]}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        return card

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE

    @app.post("/v1/predict", openapi_extra=UPLOAD_SCHEMA)
    async def predict(
        request: Request,
        cam: bool = Query(False, description="add Grad-CAM"),
        view: str = Query(
            "",
            description="PA or AP: the view of a film whose file records "
            "none (PNG, JPEG), for the ratio and the combined score",
        ),
    ):
        """One image in (multipart field ``file``), the probability and the label out."""
        if view not in ("", "PA", "AP"):
            raise HTTPException(422, f"view must be PA or AP, not {view[:20]!r}")
        data = await _read_upload(request, max_bytes)
        kind = sniff_format(data[:132], Path("upload"))
        if kind not in ACCEPTED:
            raise HTTPException(415, "not a PNG, JPEG or DICOM image (judged by its content)")
        start = time.perf_counter()
        try:
            with anyio.fail_after(timeout_s):
                result = await anyio.to_thread.run_sync(
                    _infer,
                    clf,
                    data,
                    torch_classifier if cam else None,
                    measurer,
                    view,
                    limiter=state["limiter"],
                    abandon_on_cancel=True,
                )
        except ImageError as exc:
            raise HTTPException(422, str(exc)) from None
        except TimeoutError:
            raise HTTPException(503, f"inference took longer than {timeout_s:g} s") from None
        prediction, overlay, measured = result
        body = {
            "probability": prediction.probability,
            "label": prediction.label,
            "class": prediction.class_name,
            "threshold": prediction.threshold,
            "model": {
                "name": card["name"],
                "version": card["version"],
                "threshold_chosen_on": card["threshold"]["chosen_on"] or "validation split",
            },
            "inference_ms": round((time.perf_counter() - start) * 1000, 1),
        }
        if overlay is not None:
            body["cam_png_base64"] = overlay
        if measured is not None:
            body["ctr"] = measured.summary()
            if combined is not None:
                body["combined"] = combined.answer(prediction.probability, measured.ctr,
                                                   measured.view)  # fmt: skip
            if cam:  # the drawing of the measurement, as the Grad-CAM one
                body["ctr_png_base64"] = _png(
                    draw_measurement(
                        measured.image, measured.masks, measured.measurement, measured.view
                    )
                    if measured.measurement is not None
                    else None
                )
        return JSONResponse(body)

    return app


def _infer(
    clf: Classifier,
    data: bytes,
    cam: Callable[[], Classifier] | None,
    measurer=None,
    view: str = "",
) -> tuple[Prediction, str | None, Any]:
    image = clf.preprocess(data)
    p = float(clf.probabilities(image[None])[0])
    prediction = Prediction(None, p, int(p >= clf.threshold), clf.threshold)
    measured = None if measurer is None else measurer.measure(data, view)
    if cam is None:
        return prediction, None, measured
    from ..explain import heatmaps, overlay  # torch loads only when an overlay is asked for

    picture = overlay(image, heatmaps(cam(), image[None])[0], prediction)
    return prediction, _png(picture), measured


def _png(picture) -> str | None:
    """A PIL image as base64 PNG text (None stays None)."""
    if picture is None:
        return None
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    """The bytes of the one file in a multipart body, read into memory with a size limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"upload over the limit of {max_bytes // 2**20} MB")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise HTTPException(413, f"upload over the limit of {max_bytes // 2**20} MB")
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data") or not body:
        raise HTTPException(400, "send one image as multipart/form-data in the field 'file'")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    files = [
        part
        for part in message.iter_parts()
        if part.get_param("name", header="content-disposition") == "file"
    ]
    if len(files) != 1:
        raise HTTPException(400, f"expected one file in the field 'file', got {len(files)}")
    data = files[0].get_payload(decode=True) or b""
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    return data


def model_card(meta: dict[str, Any], name: str) -> dict[str, Any]:
    """What a user should know about the served model, from its file's metadata."""
    training = meta.get("training", {})
    evaluation = meta.get("evaluation", {})
    return {
        "name": name,
        "version": f"format {meta.get('format_version')}, cardiomegaly "
        f"{meta.get('versions', {}).get('cardiomegaly', '?')}",
        "created": meta.get("created"),
        "architecture": meta["architecture"],
        "preprocessing": meta["preprocessing"],
        "threshold": {k: meta["threshold"].get(k) for k in ("value", "rule", "chosen_on")},
        "training_data": training.get("data"),
        "split": training.get("split"),
        "weights": training.get("weights"),
        "validation_auroc": training.get("val_auroc"),
        "test": evaluation or None,
        "intended_use": meta.get("intended_use", "research only; not a medical device"),
    }

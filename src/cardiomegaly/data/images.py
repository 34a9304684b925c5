"""Decode one image file (PNG, JPEG, DICOM, or anything else Pillow reads) to a 2-D float array.

The file type is sniffed from its bytes, never from its name. Only non-identifying metadata is
kept: no DICOM tag that names, numbers or dates a patient leaves this module.

    >>> arr, meta = load_image("film.png")            # doctest: +SKIP
    >>> arr.dtype, float(arr.min()) >= 0.0, float(arr.max()) <= 1.0   # doctest: +SKIP
    (dtype('float32'), True, True)
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ..errors import ImageError, first_line

log = logging.getLogger(__name__)

#: File suffixes read as images when a folder is searched.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")

#: Refuse images with more pixels than this (8,000 x 8,000): a decompression-bomb guard that
#: still admits the largest detector panels (about 4,300 x 4,300).
MAX_PIXELS = 64_000_000

# Pillow warns from 89 MP and raises from twice that; our own limit above is checked first.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS

#: Shapes no radiograph has: refused before decoding, since padding a 20,000 x 50 strip to a
#: square would take gigabytes and give the model nothing to see.
MIN_SIDE = 16
MAX_ASPECT = 5.0

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ImageMeta:
    """What we keep about an image file: nothing that identifies a patient."""

    format: str  # png | jpeg | dicom | other Pillow format name, lower case
    width: int
    height: int
    bits: int  # bits per sample of the stored data (8 or 16 for most radiographs)
    photometric: str = ""  # DICOM PhotometricInterpretation or Pillow mode
    view: str = ""  # DICOM ViewPosition (PA / AP / LL ...)
    sex: str = ""  # M / F / "" (DICOM PatientSex, not identifying on its own)
    age: int | None = None  # years, capped at 90 (HIPAA safe harbour)
    modality: str = ""
    transfer_syntax: str = ""
    # The part of the film the model saw, (left, top, right, bottom) in its pixels, when a
    # FilmCrop cut it (width and height stay the whole film's).
    crop: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sniff_format(head: bytes, path: Path) -> str:
    """Tell PNG, JPEG and DICOM apart by their magic bytes (the name is only a last hint)."""
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom", ".dic"):
        return "dicom-raw"  # no preamble: pydicom may still read it with force=True
    return "other"


def load_image(
    path: str | Path | bytes,
    *,
    target_size: int | None = None,
    resize: str = "pad",
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read an image file (or its bytes) into a float32 array in [0, 1] (0 = black, as displayed).

    ``target_size`` (with the ``resize`` policy that will follow) lets JPEG decoding scale down
    by 1/2, 1/4 or 1/8 inside the decoder while staying at least as large as the square it will
    be resized to (Pillow's draft mode): several times faster when the model input is small.
    Bytes (an upload) are decoded in memory and called ``name`` in messages. Raises
    :class:`ImageError` with the file name and the reason for anything it cannot decode.

    >>> arr, meta = load_image("00000013_005.jpg", target_size=299)  # doctest: +SKIP
    """
    if isinstance(path, bytes | bytearray):
        label = name or "upload"
        head = bytes(path[:132])
        src: Any = io.BytesIO(path)
        hint = Path(label)
    else:
        label = str(path)
        hint = src = Path(path)
        try:
            with open(src, "rb") as f:
                head = f.read(132)
        except FileNotFoundError:
            raise ImageError(f"{label}: file not found") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a folder, not an image file") from None
        except OSError as exc:
            raise ImageError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise ImageError(f"{label}: file is empty (0 bytes)")
    kind = sniff_format(head, hint)
    try:
        if kind.startswith("dicom"):
            return _load_dicom(src, label, force=kind == "dicom-raw", max_pixels=max_pixels)
        return _load_pil(src, label, kind, target_size, resize, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(
            f"{label}: image header claims more than {max_pixels:,} pixels; refused as a "
            "possible decompression bomb"
        ) from None
    except MemoryError:
        raise ImageError(f"{label}: image too large to decode in memory") from None
    except Exception as exc:  # every decoder failure is a property of this one file
        reason = first_line(exc)
        what = {"other": "image", "dicom-raw": "DICOM"}.get(kind, kind.upper())
        raise ImageError(f"{label}: cannot decode {what} ({reason})") from None


def _load_pil(
    src: Any, label: str, kind: str, target_size: int | None, resize: str, max_pixels: int
) -> tuple[np.ndarray, ImageMeta]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(src)
            if im.format == "PNG":  # chunk checksums: damaged bytes are refused, not decoded
                im.verify()
                if hasattr(src, "seek"):
                    src.seek(0)
                im = Image.open(src)
        except Image.UnidentifiedImageError:
            raise ImageError(f"{label}: not a PNG, JPEG or DICOM image") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                f"{label}: image header claims {width:,} x {height:,} pixels, over the limit of "
                f"{max_pixels:,}; refused as a possible decompression bomb"
            )
        _check_shape(label, width, height)
        if getattr(im, "n_frames", 1) > 1 and im.format != "PNG":
            raise ImageError(f"{label}: has {im.n_frames} frames; give a single-frame image")
        if target_size is not None and im.format == "JPEG":
            im.draft("L", _draft_request(width, height, target_size, resize))
        im.load()
        bits = 16 if im.mode.startswith("I") else 8
        mode = im.mode
        im = ImageOps.exif_transpose(im)
        arr = pil_to_float(im)
    meta = ImageMeta(
        format=(im.format or kind).lower() if kind == "other" else kind,
        width=width,
        height=height,
        bits=bits,
        photometric=mode,
    )
    return arr, meta


def _check_shape(label: str, width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{label}: image is {width} x {height} pixels; a radiograph has at "
            f"least {MIN_SIDE} on each side"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"{label}: image is {width} x {height} pixels, longer than "
            f"{MAX_ASPECT:g}:1; that is no chest film"
        )


def _draft_request(width: int, height: int, size: int, resize: str) -> tuple[int, int]:
    """The smallest decode size from which ``resize`` to ``size`` still only shrinks."""
    if resize == "squash":
        return size, size
    scale = size / max(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def pil_to_float(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to grey float32 in [0, 1], scaled by the container's range."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float32)
        if arr.min() < 0 or arr.max() > 65535:  # 32-bit integer data: use its own range
            return _minmax(arr)
        return arr / 65535.0
    if mode == "F":
        return _minmax(np.asarray(im, dtype=np.float32))
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel("L"), dtype=np.float32) / 255.0
    # P, PA, RGB, RGBA, CMYK, YCbCr...: luminance (ITU-R 601), alpha ignored.
    return np.asarray(im.convert("RGB").convert("L"), dtype=np.float32) / 255.0


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _load_dicom(
    src: Any, label: str, *, force: bool, max_pixels: int
) -> tuple[np.ndarray, ImageMeta]:
    try:
        with warnings.catch_warnings():  # pydicom's notes on odd files are not for the user
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(src, force=force)
    except Exception as exc:
        raise ImageError(f"{label}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        if force and len(ds) == 0:
            raise ImageError(f"{label}: not a PNG, JPEG or DICOM image")
        raise ImageError(f"{label}: DICOM file has no pixel data (not an image object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(
            f"{label}: multi-frame DICOM ({frames} frames) is not supported; "
            "export the frame you want as a single-frame file"
        )
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise ImageError(
            f"{label}: DICOM header claims {cols:,} x {rows:,} pixels, over the limit of "
            f"{max_pixels:,}; refused"
        )
    _check_shape(label, cols, rows)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    syntax = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
    try:
        with warnings.catch_warnings():  # pydicom's doubts about this file: the error says it
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:
        reason = first_line(exc)
        name = getattr(syntax, "name", str(syntax)) or "unknown transfer syntax"
        raise ImageError(f"{label}: cannot decode DICOM pixel data ({name}): {reason}") from None
    if arr.ndim == 3:  # colour (RGB after pydicom's YBR conversion): luminance
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        out = _minmax(arr)
    elif arr.ndim != 2:
        raise ImageError(f"{label}: DICOM pixel data has shape {arr.shape}, not one 2-D image")
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        out = _apply_voi(values, ds)
        if photometric == "MONOCHROME1":  # high values are dark: invert to display polarity
            out = 1.0 - out
    meta = ImageMeta(
        format="dicom",
        width=cols,
        height=rows,
        bits=int(ds.get("BitsStored", 8) or 8),
        photometric=photometric,
        view=str(ds.get("ViewPosition", "") or "").upper(),
        sex=str(ds.get("PatientSex", "") or "").upper()[:1] if ds.get("PatientSex") else "",
        age=_dicom_age(ds.get("PatientAge")),
        modality=str(ds.get("Modality", "") or ""),
        transfer_syntax=str(syntax),
    )
    return np.ascontiguousarray(out, dtype=np.float32), meta


def _apply_voi(values: np.ndarray, ds: Any) -> np.ndarray:
    """VOI transform (PS3.3 C.11.2) to [0, 1]: VOI LUT, else the first window, else min-max."""
    if "VOILUTSequence" in ds:
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        lo, hi = float(lut.min()), float(lut.max())
        return np.clip((out - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(out)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if _is_multi(center) else center)
        w = float(width[0] if _is_multi(width) else width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if w > 0 and function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        if w > 0 and function == "LINEAR_EXACT":
            return np.clip((values - c) / w + 0.5, 0, 1)
        if w > 1:
            return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
        if w == 1:
            return (values > c - 0.5).astype(np.float64)
    return _minmax(values).astype(np.float64)


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _dicom_age(value: Any) -> int | None:
    """'065Y' -> 65; ages over 89 become 90 so that they do not identify anyone."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    number, unit = int(text[:-1]), text[-1]
    years = {"Y": number, "M": number // 12, "W": number // 52, "D": number // 365}.get(unit)
    return None if years is None else min(years, 90)

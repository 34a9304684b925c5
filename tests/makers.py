"""The one place that makes synthetic test inputs: images, DICOM files, dataset CSVs; and the
one check every bad-input test shares (``one_line_error``).

Everything is small (tens of pixels, a handful of rows) and written under a pytest tmp_path.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# Known strings planted in DICOM headers; none may ever appear in any output.
IDENTIFIERS = {
    "PatientName": "Doe^Jane^Secret",
    "PatientID": "MRN-7731-SECRET",
    "PatientBirthDate": "19450317",
    "AccessionNumber": "ACC-99812-SECRET",
    "InstitutionName": "St Example Secret Hospital",
}


def one_line_error(err: str, *words: str) -> None:
    """Exactly one line on stderr besides progress bars, naming what is wrong; no traceback."""
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.strip() and not re.search(r"\d+%\|", ln)]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


def gradient(h: int = 40, w: int = 48) -> np.ndarray:
    """A float image in [0, 1] that rises left to right (0 at the left edge, 1 at the right)."""
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


def write_png(path: Path, mode: str = "L", h: int = 40, w: int = 48) -> Path:
    """A horizontal ramp PNG in the given Pillow mode ('I;16' for 16-bit grey)."""
    ramp = gradient(h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(path, format="PNG")
        return path
    grey = Image.fromarray((ramp * 255).round().astype(np.uint8), mode="L")
    if mode == "L":
        grey.save(path, format="PNG")
    elif mode == "LA":
        Image.merge("LA", (grey, Image.new("L", grey.size, 200))).save(path)
    elif mode == "RGB":
        Image.merge("RGB", (grey, grey, grey)).save(path)
    elif mode == "RGBA":
        Image.merge("RGBA", (grey, grey, grey, Image.new("L", grey.size, 255))).save(path)
    elif mode == "P":
        grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    else:
        raise ValueError(mode)
    return path


def write_jpeg(path: Path, mode: str = "L", h: int = 40, w: int = 48) -> Path:
    ramp = gradient(h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = Image.fromarray((ramp * 255).round().astype(np.uint8), mode="L")
    {"L": grey, "RGB": grey.convert("RGB"), "CMYK": grey.convert("RGB").convert("CMYK")}[mode].save(
        path, format="JPEG", quality=95
    )
    return path


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height pixels, with almost no data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = (_png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))  # fmt: skip
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    syntax: str = "explicit",
    view: str = "PA",
    with_pixels: bool = True,
    preamble: bool = True,
) -> Path:
    """A small DX DICOM with identifying tags set to the known strings of IDENTIFIERS.

    ``syntax``: explicit (little endian, uncompressed), rle (RLE Lossless), jpeg2000 (lossless),
    jpeg (baseline, 8-bit, encoded by Pillow and encapsulated).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        RLELossless,
        generate_uid,
    )

    if pixels is None:
        pixels = (gradient(32, 40) * (2**bits - 1)).round()
    dtype = np.uint8 if bits == 8 else np.uint16
    pixels = np.asarray(pixels).astype(dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for key, value in IDENTIFIERS.items():
        setattr(ds, key, value)
    ds.PatientSex = "F"
    ds.PatientAge = "067Y"
    ds.Modality = "DX"
    ds.ViewPosition = view
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    if syntax == "rle":
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    elif syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless, pixels, generate_instance_uid=False)
    elif syntax == "jpeg":
        import io

        from pydicom.encaps import encapsulate

        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=preamble)
    return path


# ------------------------------------------------------------------------------ dataset layouts


def write_nih(
    root: Path,
    rows: list[tuple[str, str, str, str]],
    stored_as: str = ".jpg",
    boxes: dict[str, tuple] | None = None,
    nested: bool = False,
) -> Path:
    """An NIH ChestX-ray14 folder: rows of (Image Index, Finding Labels, Patient ID, view)."""
    image_dir = root / ("images_001/images" if nested else "images")
    table = []
    for i, (index, labels, patient, view) in enumerate(rows):
        stem = Path(index).stem
        if stored_as:
            write_png(image_dir / f"{stem}.png") if stored_as == ".png" else write_jpeg(
                image_dir / f"{stem}{stored_as}"
            )
        table.append({
            "Image Index": index, "Finding Labels": labels, "Follow-up #": i,
            "Patient ID": patient, "Patient Age": 40 + i, "Patient Gender": "MF"[i % 2],
            "View Position": view, "OriginalImage[Width": 2500, "Height]": 2048,
            "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143,
        })  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    if boxes:
        lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
        lines += [f"{k},Cardiomegaly,{x},{y},{w},{h}" for k, (x, y, w, h) in boxes.items()]
        (root / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    return root


def write_two_nih(root: Path, patients: int = 12) -> tuple[Path, Path]:
    """Two folders of one NIH dataset, as in ../shared: ``cardio`` (Cardiomegaly and No Finding
    films) and ``others`` (other findings, a few Cardiomegaly; its data.yaml makes every film
    without Cardiomegaly a negative). Patients 1 and 2 have films in both folders."""
    cardio, others = [], []
    for p in range(1, patients + 1):
        label = "Cardiomegaly" if p % 3 == 0 else "No Finding"
        cardio += [(f"{p:08d}_{k:03d}.png", label, str(p), "PA" if k else "AP") for k in range(2)]
    for p in [1, 2, *range(101, 101 + patients)]:
        label = "Cardiomegaly|Effusion" if p % 4 == 0 else "Effusion|Mass"
        others.append((f"{p:08d}_009.png", label, str(p), "AP" if p % 2 else "PA"))
    write_nih(root / "cardio", cardio)
    write_nih(root / "others", others)
    (root / "others" / "data.yaml").write_text("format: nih\nnegatives: all-others\n")
    return root / "cardio", root / "others"


def films_by_patient(records) -> list[list[str]]:
    """Who is one patient, as the records group films: each patient's films as folder/name,
    sorted (the table holds pseudonyms, not the ids a test wrote)."""
    names = records.table["path"].map(lambda p: f"{Path(p).parent.name}/{Path(p).name}")
    return sorted(sorted(group) for _, group in names.groupby(records.table["patient"]))


def write_chexpert(root: Path, rows: list[dict]) -> Path:
    """A CheXpert-v1.0-small folder; each row gives patient, study, view, flags ('' = blank)."""
    table = []
    for row in rows:
        rel = (
            f"CheXpert-v1.0-small/train/{row['patient']}/study{row.get('study', 1)}/"
            f"view1_{row.get('fl', 'frontal').lower()}.jpg"
        )
        write_jpeg(root.parent / rel)
        table.append({
            "Path": rel, "Sex": row.get("sex", "Female"), "Age": row.get("age", 60),
            "Frontal/Lateral": row.get("fl", "Frontal"), "AP/PA": row.get("view", "PA"),
            "No Finding": row.get("nf", ""), "Enlarged Cardiomediastinum": "",
            "Cardiomegaly": row["cardio"], "Lung Opacity": "",
        })  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(root / "train.csv", index=False)
    return root


def write_mimic(root: Path, images: list[dict], studies: list[dict], split: bool = True) -> Path:
    """MIMIC-CXR-JPG: images (dicom, subject, study, view) and study labels (flags)."""
    for im in images:
        s = im["subject"]
        write_jpeg(
            root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{im['study']}" / f"{im['dicom']}.jpg"
        )
    pd.DataFrame(
        [
            {
                "dicom_id": im["dicom"],
                "subject_id": im["subject"],
                "study_id": im["study"],
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                "ViewPosition": im["view"],
                "Rows": 40,
                "Columns": 48,
            }
            for im in images
        ]
    ).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(
        [
            {
                "subject_id": st["subject"],
                "study_id": st["study"],
                "Atelectasis": "",
                "Cardiomegaly": st["cardio"],
                "No Finding": st.get("nf", ""),
            }
            for st in studies
        ]
    ).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    if split:
        pd.DataFrame(
            [
                {
                    "dicom_id": im["dicom"],
                    "study_id": im["study"],
                    "subject_id": im["subject"],
                    "split": "train",
                }
                for im in images
            ]
        ).to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    return root


def tiny_train_config(data: Path, **overrides):
    """Two epochs at 75 px on a handful of images: a real run in seconds, not a good model.
    No ONNX export (20 s) unless asked: the session's ``tiny_run`` has one."""
    from cardiomegaly import TrainConfig

    values = dict(
        data=str(data),
        weights="none",
        image_size=75,
        epochs=2,
        batch_size=8,
        augment={"rotation": 5},
        split={"train": 0.5, "val": 0.25, "test": 0.25},
        export_onnx=False,
    )
    values.update(overrides)
    return TrainConfig.from_preset(None, **values)


def copy_run_to_resume(run: Path, dest: Path) -> Path:
    """A copy of a finished run folder to resume, without its ONNX files and told not to export
    again: a resume that pools the folds would otherwise spend 20 s exporting the ensemble."""
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("*.onnx"))
    config = dest / "config.yaml"
    text = config.read_text()
    assert "export_onnx: true" in text, "the run to copy exports nothing"
    config.write_text(text.replace("export_onnx: true", "export_onnx: false"))
    return dest


def scored_table(labels, probs, patients=None, **columns) -> pd.DataFrame:
    """A scored-records table as evaluation reads it (one patient per image unless given)."""
    n = len(labels)
    return pd.DataFrame({
        "path": [f"/data/{i}.png" for i in range(n)],
        "patient": patients if patients is not None else [f"p{i}" for i in range(n)],
        "label": labels,
        "probability": probs,
        **columns,
    })  # fmt: skip


def write_corrupt_images(folder: Path) -> list[Path]:
    """Three files that look like images by name and are not: what a batch job must survive."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not an image" * 10)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    truncated = folder / "truncated.jpg"
    full = write_jpeg(folder / "full.tmp.jpg", h=200, w=200).read_bytes()
    truncated.write_bytes(full[: len(full) // 3])
    (folder / "full.tmp.jpg").unlink()
    return [garbage, empty, truncated]


# ------------------------------------------------------------------------- the bad-input corpus


def write_png_rgba16(path: Path, h: int = 40, w: int = 48) -> Path:
    """A 16-bit RGBA PNG (colour type 6, depth 16), encoded by hand: Pillow cannot write one."""
    ramp = (gradient(h, w) * 65535).round().astype(">u2")
    pixels = np.stack([ramp, ramp, ramp, np.full_like(ramp, 65535)], axis=-1)
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")]
    data = b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(*chunk) for chunk in chunks)
    path.write_bytes(data)
    return path


def write_png_bad_crc(path: Path) -> Path:
    """A PNG whose image-data chunk fails its CRC."""
    data = bytearray(write_png(path).read_bytes())
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # the first byte of IDAT's CRC
    path.write_bytes(bytes(data))
    return path


def write_jpeg_broken_huffman(path: Path) -> Path:
    """A JPEG whose Huffman tables (DHT segments) are overwritten with nonsense."""
    data = bytearray(write_jpeg(path, h=64, w=64).read_bytes())
    at = 0
    while (at := data.find(b"\xff\xc4", at + 1)) != -1:
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        data[at + 5 : at + 2 + length] = b"\xff" * (length - 3)
    path.write_bytes(bytes(data))
    return path


def write_study_film(
    path: Path, modality: str = "CR", view: str = "PA", study_uid: str | None = None, **kw
) -> Path:
    """A film as a modality sends it to a PACS: :func:`write_dicom` plus the study, series and
    equipment attributes (CR, or DX for presentation) and more planted identifiers (operator,
    other patient ids) that results must not copy."""
    import pydicom
    from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

    write_dicom(path, view=view, **kw)
    ds = pydicom.dcmread(path)
    if modality == "CR":
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260314", "101500", "S-1"
    ds.ReferringPhysicianName = "Referrer^Secret"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "Example Modality Co"
    ds.OperatorsName = "Operator^Secret"
    ds.OtherPatientIDs = "OTHER-ID-SECRET"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_dicom_wrong_syntax(path: Path) -> Path:
    """Raw pixel data in a file whose header declares RLE Lossless (compressed) encoding: the
    UIDs have the same length, so only the declaration changes."""
    data = write_dicom(path).read_bytes()
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0", 1))
    return path


def write_dicom_truncated(path: Path) -> Path:
    """A DICOM whose pixel data stops halfway (the file was cut off in transfer)."""
    data = write_dicom(path).read_bytes()
    path.write_bytes(data[: len(data) - 32 * 40])
    return path


#: name -> writer(path) for files a batch job must report and skip (the first entries) or read.
BAD_IMAGES = {
    "empty.png": lambda p: p.write_bytes(b""),
    "garbage.png": lambda p: p.write_bytes(np.random.default_rng(0).bytes(2000)),
    "text.jpg": lambda p: p.write_text("a radiology report, not a film\n" * 20),
    "truncated.jpg": lambda p: p.write_bytes(write_jpeg(p, h=200, w=200).read_bytes()[:900]),
    "huffman.jpg": write_jpeg_broken_huffman,
    "crc.png": write_png_bad_crc,
    "one-pixel.png": lambda p: write_png(p, h=1, w=1),
    "strip.png": lambda p: write_png(p, h=50, w=20_000),
    "bomb.png": lambda p: write_png_header_only(p, 100_000, 100_000),
    "loop.png": lambda p: p.symlink_to(p),
    "dangling.png": lambda p: p.symlink_to(p.with_name("gone.png")),
    "no-pixels.dcm": lambda p: write_dicom(p, with_pixels=False),
    "wrong-syntax.dcm": write_dicom_wrong_syntax,
    "truncated.dcm": write_dicom_truncated,
    "multiframe.dcm": lambda p: write_dicom(p, frames=3),
    # Not bad, only unusual: these are read.
    "rgba16.png": write_png_rgba16,
    "no-preamble.dcm": lambda p: write_dicom(p, preamble=False),
}


def chest_masks(
    shape=(64, 80), heart=(30, 50), lungs=((8, 36), (44, 72)), rows=(10, 56), heart_rows=(30, 50)
) -> dict[str, np.ndarray]:
    """Rectangular heart and lung masks with known horizontal extents (first and last column,
    inclusive). ``lungs`` are the image-left (patient's right) and image-right lungs."""
    masks = {name: np.zeros(shape, bool) for name in ("heart", "left_lung", "right_lung")}
    masks["right_lung"][rows[0] : rows[1], lungs[0][0] : lungs[0][1] + 1] = True
    masks["left_lung"][rows[0] : rows[1], lungs[1][0] : lungs[1][1] + 1] = True
    masks["heart"][heart_rows[0] : heart_rows[1], heart[0] : heart[1] + 1] = True
    return masks

"""A film's findings as DICOM objects (highdicom) that land in the film's own study, new series:

- a Comprehensive 3D SR following TID 1500 (measurement report): the finding Cardiomegaly
  present or absent at the model's threshold, the probability and, when measured, the
  cardiothoracic ratio and the combined score (when the model file carries one) as measurements,
  the algorithm (IHE AI Results: model name, version,
  model-file SHA-256), the source image referenced, ``VerificationFlag`` UNVERIFIED;
- a Secondary Capture of the overlay (Grad-CAM, or the ratio's drawing) with a burned-in
  research-use line; uncompressed.

They carry the study's patient and study attributes (what places them in the study) and nothing
else of the source. Their UIDs are derived from the source instance and the model file, so the
same film scored by the same model twice gives the same objects: a PACS keeps one copy.

>>> sr, sc = dicom_results(source, prediction, overlay, meta, sha256)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from .. import __version__
from ..combine import combined_for
from ..data.images import sniff_format
from ..errors import ImageError, UserError
from ..fileio import atomic_open, sha256_of
from ..predict import Classifier, Prediction
from ..segment.overlay import BANNER, draw_measurement

log = logging.getLogger(__name__)

#: Every result says this, in its series description and burned into its pixels.
RESEARCH_LINE = BANNER
MANUFACTURER = "cardiomegaly (open source)"
#: Series numbers of the results, high so that they sort after the modality's series.
SERIES_NUMBER = {"sr": 9101, "sc": 9102}

_SCHEME = "99CARDIOMEGALY"  # private coding scheme for what no standard code names
CTR_CODE = hd.sr.CodedConcept("CTR", _SCHEME, "Cardiothoracic ratio (transverse diameters)")
COMBINED_CODE = hd.sr.CodedConcept(
    "COMBINED", _SCHEME, "Combined score (classifier probability and cardiothoracic ratio)"
)
PROBABILITY_CODE = codes.DCM.Probability
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent
_CODING_SCHEMES = [
    hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=_SCHEME, name="cardiomegaly tool codes", responsible_organization="cardiomegaly"
    )
]


@dataclass
class Finding:
    """What one film's results say: the probability against the model's threshold, and the
    ratio when a segment model measured it."""

    probability: float
    threshold: float
    ctr: float | None = None
    #: :meth:`cardiomegaly.combine.CombinedScore.answer`, when the model file carries one
    combined: dict[str, Any] | None = None

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


def result_uid(source_uid: str, model_sha256: str, kind: str) -> str:
    """A UID for ``kind`` ("sr-series", "sr", ...) from the source UID and the model file, the
    same every time: a name-based UUID under root 2.25 (a hash: nothing of the source can be
    read back).

    >>> result_uid("1.2.3", "ab" * 32, "sr") == result_uid("1.2.3", "ab" * 32, "sr")
    True
    """
    name = "|".join(["cardiomegaly", source_uid, model_sha256, kind])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"  # a name-based UUID (ISO 9834-8)


def dicom_results(
    source: Dataset,
    finding: Finding,
    overlay: Image.Image,
    meta: dict[str, Any],
    model_sha256: str,
) -> tuple[hd.sr.Comprehensive3DSR, hd.sc.SCImage]:
    """The SR and the Secondary Capture of one source film (its header is enough)."""
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not getattr(source, keyword, None):
            raise UserError(f"the DICOM film has no {keyword}: results cannot join its study")
    sr, sc = _sr(source, finding, meta, model_sha256), _sc(source, overlay, model_sha256)
    for ds in (sr, sc):  # highdicom lists the modality (maker, institution) as contributing
        if "ContributingEquipmentSequence" in ds:
            del ds.ContributingEquipmentSequence
    return sr, sc


def _algorithm_name(meta: dict[str, Any]) -> str:
    arch = meta.get("architecture", {})
    members = f", ensemble of {arch['members']}" if "members" in arch else ""
    return f"cardiomegaly {arch.get('name', 'classifier')}{members}"


def _algorithm(
    meta: dict[str, Any],
    model_sha256: str,
    threshold: dict[str, Any] | None = None,
    what: str = "threshold",
) -> hd.sr.AlgorithmIdentification:
    """The classifier, and ``threshold`` (the probability's unless given) named ``what``."""
    threshold = threshold or meta["threshold"]
    return hd.sr.AlgorithmIdentification(
        name=_algorithm_name(meta),
        version=__version__,
        parameters=[
            f"model file SHA-256 {model_sha256}",
            f"{what} {threshold['value']:.4f} ({threshold['rule']}, chosen on "
            f"{threshold.get('chosen_on', 'validation split')})",
        ],
        manufacturer=MANUFACTURER,
    )


def _sr(source: Dataset, finding: Finding, meta: dict, sha: str) -> hd.sr.Comprehensive3DSR:
    algorithm = _algorithm(meta, sha)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid("device", sha, "observer"),
        name="cardiomegaly",
        manufacturer_name=MANUFACTURER,
        model_name=_algorithm_name(meta),
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device)
    )
    measurements = [hd.sr.Measurement(PROBABILITY_CODE, float(finding.probability),
                                      codes.UCUM.NoUnits, algorithm_id=algorithm)]  # fmt: skip
    if finding.ctr is not None:
        measurements.append(hd.sr.Measurement(CTR_CODE, float(finding.ctr), codes.UCUM.Ratio,
                                              algorithm_id=algorithm))  # fmt: skip
    if finding.combined and finding.combined["score"] is not None:
        measurements.append(hd.sr.Measurement(
            COMBINED_CODE, float(finding.combined["score"]), codes.UCUM.NoUnits,
            algorithm_id=_algorithm(meta, sha, meta["combined"]["threshold"],
                                    "combined score threshold"),
        ))  # fmt: skip
    evaluation = hd.sr.QualitativeEvaluation(
        codes.SCT.Cardiomegaly, PRESENT if finding.present else ABSENT
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(source.SOPInstanceUID, sha, "tracking"), identifier="cardiomegaly"
        ),
        finding_type=codes.SCT.Cardiomegaly,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=measurements,
        qualitative_evaluations=[evaluation],
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=result_uid(source.StudyInstanceUID, sha, "sr-series"),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, sha, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,  # VerificationFlag UNVERIFIED: no person has checked it
        series_description=f"cardiomegaly AI result, {RESEARCH_LINE}",
        coding_schemes=_CODING_SCHEMES,
        software_versions=__version__,
    )


def _sc(source: Dataset, overlay: Image.Image, sha: str) -> hd.sc.SCImage:
    pixels = np.asarray(burn_in(overlay).convert("RGB"), dtype=np.uint8)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=result_uid(source.StudyInstanceUID, sha, "sc-series"),
        series_number=SERIES_NUMBER["sc"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, sha, "sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"cardiomegaly overlay, {RESEARCH_LINE}",
        software_versions=__version__,
    )
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "CHEST"  # what the picture shows; unpaired, so no Laterality
    return sc


def burn_in(image: Image.Image) -> Image.Image:
    """The image with the research-use line burned in along its bottom edge."""
    image = image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, image.height // 30))
    _, top, _, bottom = draw.textbbox((0, 0), RESEARCH_LINE, font=font)
    y = image.height - (bottom - top) - 12
    draw.rectangle([0, y - 6, image.width, image.height], fill=(139, 28, 28))
    draw.text((8, y - top), RESEARCH_LINE, fill=(255, 255, 255), font=font)
    return image


def write_results(objects: list[Dataset], folder: str | Path) -> list[Path]:
    """Each object as ``<SOP Instance UID>.dcm`` in ``folder`` (a name that says nothing of the
    patient), written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in objects:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        with atomic_open(path, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
        written.append(path)
    return written


def dicom_header(path: str | Path) -> Dataset | None:
    """The header of a DICOM film (no pixels), or None when the file is not DICOM."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if sniff_format(head, path) not in ("dicom", "dicom-raw"):
            return None
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return None


class ResultWriter:
    """Results for scored DICOM films: the overlay (the ratio's drawing with a segment model,
    else Grad-CAM), the SR and the Secondary Capture, written into ``folder``."""

    def __init__(self, model: str | Path, clf: Classifier, measurer=None, device: str = "auto"):
        self.clf, self.measurer = clf, measurer
        self.sha256 = sha256_of(model)
        self.combined = None
        if measurer is not None and measurer.path is not None:
            self.combined, why_not = combined_for(clf.meta, measurer.path)
            if why_not:
                log.warning("%s", why_not)
        # Grad-CAM needs PyTorch's gradients; loaded only when no ratio drawing replaces it.
        self._cam = clf if clf.backend == "torch" else None
        self._model, self._device = model, device

    def objects(self, path: str | Path, prediction: Prediction) -> list[Dataset]:
        """The SR and the Secondary Capture of one scored film; ImageError when the file is not
        a DICOM film with a study to join."""
        header = dicom_header(path)
        if header is None:
            raise ImageError(f"{path}: not DICOM, so there is no study to add results to")
        finding = Finding(float(prediction.probability), float(prediction.threshold))
        if self.measurer is not None:
            measured = self.measurer.measure(path)
            finding.ctr = measured.ctr
            if self.combined is not None:
                finding.combined = self.combined.answer(
                    finding.probability, measured.ctr, measured.view
                )
            picture = draw_measurement(measured.image, measured.masks, measured.measurement,
                                       measured.view)  # fmt: skip
        else:
            picture = self._grad_cam(path, prediction)
        try:
            return list(dicom_results(header, finding, picture, self.clf.meta, self.sha256))
        except UserError as exc:
            raise ImageError(f"{path}: {exc}") from None

    def _grad_cam(self, path: str | Path, prediction: Prediction) -> Image.Image:
        from ..explain import heatmaps, overlay  # torch, only where Grad-CAM is drawn

        if self._cam is None:
            self._cam = Classifier.load(self._model, self._device, backend="torch")
        image = self._cam.preprocess(path)
        return overlay(image, heatmaps(self._cam, image[None])[0], prediction)

    def write(self, path: str | Path, prediction: Prediction, folder: str | Path) -> list[Path]:
        """:meth:`objects`, written into ``folder``."""
        return write_results(self.objects(path, prediction), folder)

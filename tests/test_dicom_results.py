"""Results as DICOM objects: a TID 1500 SR and an overlay Secondary Capture that land in the
film's own study, carry the study's patient and study attributes and nothing else of the
source, pass dciodvfy, and come out of ``predict --dicom-out``."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from cardiomegaly import __version__
from cardiomegaly.cli import main
from cardiomegaly.pacs.results import CTR_CODE, Finding, dicom_results, write_results
from makers import IDENTIFIERS, one_line_error, write_png, write_study_film

META = {"architecture": {"name": "inception_v3"},
        "threshold": {"value": 0.4, "rule": "youden", "chosen_on": "validation split"}}  # fmt: skip
SHA = "ab" * 32
#: Planted in the source, outside the patient and study modules: no result may carry them.
NOT_COPIED = [IDENTIFIERS["InstitutionName"], "Operator^Secret", "OTHER-ID-SECRET",
              "Example Modality Co"]  # fmt: skip


@pytest.fixture
def source(tmp_path):
    path = write_study_film(tmp_path / "film.dcm")
    return pydicom.dcmread(path, stop_before_pixels=True)


def _results(source, tmp_path, finding=None, sha=SHA):
    finding = finding or Finding(0.73, 0.4, 0.56)
    picture = Image.new("RGB", (512, 512), (40, 40, 40))
    sr, sc = dicom_results(source, finding, picture, META, sha)
    return write_results([sr, sc], tmp_path / "out")


def _group(path):
    return hd.sr.srread(path).content.get_image_measurement_groups()[0]


@pytest.mark.parametrize("probability, present", [(0.73, True), (0.12, False)])
def test_the_sr_says_the_finding_the_probability_and_the_ratio(source, tmp_path, probability,
                                                               present):  # fmt: skip
    sr_path, _ = _results(source, tmp_path, Finding(probability, 0.4, 0.56))
    group = _group(sr_path)
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == codes.SCT.Cardiomegaly
    assert evaluation.value == (codes.SCT.Present if present else codes.SCT.Absent)
    assert group.get_measurements(name=codes.DCM.Probability)[0].value == pytest.approx(probability)
    assert group.get_measurements(name=CTR_CODE)[0].value == pytest.approx(0.56)
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [source.SOPInstanceUID]


def test_without_a_segment_model_there_is_no_ratio(source, tmp_path):
    sr_path, _ = _results(source, tmp_path, Finding(0.5, 0.4, None))
    assert _group(sr_path).get_measurements(name=CTR_CODE) == []


def test_the_results_join_the_films_study_in_new_series_unverified(source, tmp_path):
    sr_path, sc_path = _results(source, tmp_path)
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            assert str(ds[key].value) == str(source[key].value), key
    assert sr.VerificationFlag == "UNVERIFIED" and sr.Modality == "SR"
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian  # uncompressed
    text = sr_path.read_bytes()
    assert __version__.encode() in text and SHA.encode() in text  # IHE AI Results: algorithm


def test_nothing_else_of_the_source_is_copied(source, tmp_path):
    for path in _results(source, tmp_path):
        data = path.read_bytes()
        for secret in NOT_COPIED:
            assert secret.encode() not in data, (path.name, secret)
    assert not any(secret in p.name for p in (tmp_path / "out").iterdir() for secret in
                   IDENTIFIERS.values())  # fmt: skip


def test_the_overlay_has_the_research_line_burned_in(source, tmp_path):
    _, sc_path = _results(source, tmp_path)
    pixels = pydicom.dcmread(sc_path).pixel_array
    assert pixels.shape == (512, 512, 3)
    bottom = pixels[-20:].reshape(-1, 3).astype(int)
    assert (np.abs(bottom - (139, 28, 28)).sum(1) < 10).mean() > 0.5  # the red band
    assert (bottom.min(1) > 200).any()  # and white letters on it


def test_the_same_film_and_model_give_the_same_uids_another_model_others(source, tmp_path):
    first = [pydicom.dcmread(p).SOPInstanceUID for p in _results(source, tmp_path / "a")]
    again = [pydicom.dcmread(p).SOPInstanceUID for p in _results(source, tmp_path / "b")]
    other = [pydicom.dcmread(p).SOPInstanceUID
             for p in _results(source, tmp_path / "c", sha="cd" * 32)]  # fmt: skip
    assert first == again and not set(first) & set(other)


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dciodvfy (Debian's dicom3tools) "
                    "not installed; make test installs it when run as root")  # fmt: skip
def test_both_objects_pass_dciodvfy(source, tmp_path):
    for path in _results(source, tmp_path):
        run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
        errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (path.name, errors)


def test_predict_dicom_out_writes_results_for_dicom_films_and_says_why_not_for_others(
    tiny_run, seg_run, seg_phantoms, tmp_path, capsys
):
    films = tmp_path / "films"
    for name, phantom, modality in (("a.dcm", 0, "CR"), ("b.dcm", 1, "DX")):
        png = sorted((seg_phantoms / "images").glob("*.png"))[phantom]
        pixels = np.asarray(Image.open(png).convert("L"))
        write_study_film(films / name, modality=modality, pixels=pixels, bits=8)
    write_png(films / "c.png")
    argv = ["predict", str(tiny_run / "model.safetensors"), str(films), "--out",
            str(tmp_path / "p.csv"), "--dicom-out", str(tmp_path / "dicom"),
            "--ctr-model", str(seg_run / "model.safetensors")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "each of 2 DICOM films" in out and "c.png: not DICOM" in out
    written = sorted((tmp_path / "dicom").glob("*.dcm"))
    kinds = sorted(pydicom.dcmread(p).Modality for p in written)
    assert kinds == ["OT", "OT", "SR", "SR"]
    srs = [p for p in written if pydicom.dcmread(p).Modality == "SR"]
    assert all(_group(p).get_measurements(name=CTR_CODE) for p in srs)  # the ratio, measured
    # The folder is the user's once written: a second run does not overwrite it.
    assert main(argv[:-2]) == 2
    one_line_error(capsys.readouterr().err, "dicom")

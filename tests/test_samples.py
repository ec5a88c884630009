"""The bundled sample_images/ are found and measured as their truth.json says."""

import json
from pathlib import Path

import pytest

import calcdetect
from calcdetect.validation import match_findings

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
TRUTH = json.loads((SAMPLES / "truth.json").read_text())


def test_every_modality_is_present():
    assert {e["modality"] for e in TRUTH["images"]} >= {"CT"}
    for entry in TRUTH["images"]:
        assert (SAMPLES / entry["path"]).exists(), entry["path"]


@pytest.mark.parametrize("entry", TRUTH["images"], ids=[e["path"] for e in TRUTH["images"]])
def test_sample_found_as_truth_says(entry):
    image = calcdetect.load(SAMPLES / entry["path"], **entry.get("load", {}))
    report = calcdetect.detect(image, **entry.get("detect", {}))
    truth = entry["calcifications"]
    m = match_findings(truth, report.findings, image.spacing_mm)
    assert m.found >= entry.get("min_found", len(truth)), (m.missed, [f.to_dict() for f in report.findings])
    assert len(m.false) <= entry.get("allowed_false", 0)
    assert max(abs(e) for e in m.size_errors_mm) <= entry.get("size_tolerance_mm", 1.0)
    for ti, fi in m.matched:
        if truth[ti].get("side") is not None and image.affine is not None:
            assert report.findings[fi].side == truth[ti]["side"]

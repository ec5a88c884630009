"""The benchmark script runs end to end on tiny inputs (timings are never asserted)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

run = pytest.importorskip("run")  # benchmarks/run.py
peers = pytest.importorskip("peers")


@pytest.fixture(scope="module")
def quick_results():
    return run.run(quick=True, repeats=1, only=["ct-loop", "ct-detect", "xray-loop"], memory=False,
                   log=lambda s: None)


def test_quick_run_produces_results_with_ratios(quick_results):
    res = quick_results
    assert res["schema"] == run.SCHEMA
    assert res["machine"]["cores_logical"] >= 1 and res["machine"]["versions"]["numpy"]
    assert res["settings"]["quick"] is True
    ids = list(res["benchmarks"])
    assert [i for i in ids if i.startswith("ct-loop")] == ["ct-loop-8x128x128", "ct-loop-16x128x128",
                                                           "ct-loop-32x128x128"]
    for bid, b in res["benchmarks"].items():
        cd = b["tools"]["calcdetect"]
        assert cd["median_s"] > 0 and len(cd["times"]) == 1
        for peer, t in b["tools"].items():
            base = peer.split("-")[0]
            if not peers.available(base):
                assert "skipped" in t  # a missing peer is reported, not faked
            elif peer != "calcdetect":
                assert b["ratios"][peer] == pytest.approx(cd["median_s"] / t["median_s"])
    # every labeller finds the same components in the bare loop (a cross-check of the inputs);
    # the full detector's row counts findings, not components (as run.py's own cross-check)
    for bid, b in res["benchmarks"].items():
        if b["group"].endswith("loop"):
            counts = {t["result"] for name, t in b["tools"].items() if "result" in t and not name.endswith("detect")}
            assert len(counts) == 1, (bid, counts)
            if b["group"] in ("xray-loop", "us-loop"):  # the full detector is timed beside the loop
                assert "calcdetect-detect" in b["tools"], bid
    detect = next(b for b in res["benchmarks"].values() if b["group"] == "ct-detect")
    assert "skimage" in detect["ratios"]
    assert set(res["targets"]) >= {"detect_vs_skimage_script"}
    assert set(res["growth"]["calcdetect"]) == {"slices", "ms_per_slice", "loglog_slope"}
    json.dumps(res, default=run._jsonable)  # saveable


def test_compare_flags_regressions_beyond_noise(quick_results):
    old = json.loads(json.dumps(quick_results, default=run._jsonable))
    new = json.loads(json.dumps(quick_results, default=run._jsonable))
    bid = next(iter(new["benchmarks"]))
    tools = new["benchmarks"][bid]["tools"]
    old["benchmarks"][bid]["tools"]["calcdetect"]["spread"] = 0.02
    tools["calcdetect"]["spread"] = 0.02
    tools["calcdetect"]["median_s"] = old["benchmarks"][bid]["tools"]["calcdetect"]["median_s"] * 1.5
    text, bad = run.compare(old, new)
    assert bad == 1 and "REGRESSION" in text
    # 8% slower is inside the 10% noise floor; 3 x a 10% spread also hides a 25% change
    tools["calcdetect"]["median_s"] = old["benchmarks"][bid]["tools"]["calcdetect"]["median_s"] * 1.08
    assert run.compare(old, new)[1] == 0
    tools["calcdetect"]["spread"] = 0.10
    tools["calcdetect"]["median_s"] = old["benchmarks"][bid]["tools"]["calcdetect"]["median_s"] * 1.25
    assert run.compare(old, new)[1] == 0


def test_compare_does_not_compare_different_inputs(quick_results):
    """A result file of another synthetic CT (the clean phantom of files written before
    --ct-clutter, which have no clutter key) is reported as such, not as a speed change."""
    old = json.loads(json.dumps(quick_results, default=run._jsonable))
    new = json.loads(json.dumps(quick_results, default=run._jsonable))
    bid = next(b for b, v in new["benchmarks"].items() if v["group"] == "ct-detect")
    assert new["benchmarks"][bid]["input"]["clutter_specks_per_slice"] == run.CT_CLUTTER > 0
    del old["benchmarks"][bid]["input"]["clutter_specks_per_slice"]  # an older file: clean
    new["benchmarks"][bid]["tools"]["calcdetect"]["median_s"] *= 5
    text, bad = run.compare(old, new)
    assert bad == 0 and f"| {bid} | | | | | | | input differs" in text
    old["benchmarks"][bid]["input"]["clutter_specks_per_slice"] = run.CT_CLUTTER
    assert run.compare(old, new)[1] == 1  # the same input: a regression


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_cli_saves_json_and_memory(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--repeats", "1", "--only", "load",
                           "--save", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    load = next(iter(res["benchmarks"].values()))
    assert load["tools"]["calcdetect"]["result"] == [12, 128, 128]
    assert load["memory"]["calcdetect"]["extra_bytes"] >= 0
    if peers.available("sitk"):
        assert load["tools"]["sitk"]["result"] == [12, 128, 128]
        assert "load_vs_sitk" in res["targets"]

"""Follow-ups: LMA sector display points only where there is myocardium, lma.json's exact late threshold,
`evaluate gap` refusing every unreadable volume file before any work. Real data: Sunnybrook, ACDC (/work/shared)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import error_line

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUNNYBROOK = SHARED / "sunnybrook-SC-HF-I-1"
ACDC = SHARED / "acdc"


@pytest.fixture(scope="module")
def sunnybrook(tmp_path_factory):
    """`lma` on the real Sunnybrook DICOM with its expert contours (basal slice 9: a gap at the anterior
    insertion), a random TOS table and an anatomical anterior RV insertion (as test_lma_review builds it).
    Returns (out folder, stack with labels, frame of the TOS slices, the table's TOS by slice)."""
    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.activation.tos import write_tos_csv
    from CardiacDiffusionLib.cli.main import main
    from test_lma_review import sunnybrook_case

    folder = tmp_path_factory.mktemp("followups_lma")
    stack, at, _, _ = sunnybrook_case(folder)
    point = at(60.0)
    frame = lv_frame(stack, point)
    rng = np.random.default_rng(0)
    tos = {int(s): np.round(rng.uniform(30, 200, 18), 1) for s in frame.slices}
    write_tos_csv(folder / "tos.csv", tos)
    assert main(["lma", "--slices", str(SUNNYBROOK / "dicom"), "--phase", "1", "--slice-labels",
                 str(folder / "labels.nii.gz"), "--tos-csv", str(folder / "tos.csv"), "--rv-insertion",
                 ",".join(repr(float(v)) for v in point), "--out", str(folder / "lma")]) == 0  # fmt: skip
    return folder / "lma", stack, frame, tos


def _read_vtp(path):
    from CardiacDiffusionLib.activation.mapping import read_vtp

    return read_vtp(path)


def test_sector_display_points_lie_on_the_myocardium_of_their_slice(sunnybrook):
    """Every drawn sector point (a vertex of sector_points.vtp) lies on its slice's myocardium: measured max
    0.9 mm outside it (sector 1 of slice 9; was 7.6 mm for sector 18 of slice 9, which has no myocardium pixel,
    and 1.3 mm for its sector 2). Sector 18 of slice 9 keeps its point and TOS (has_myocardium 0) but is not
    drawn; lma.json names it; sector_tos.csv still holds its value."""
    from scipy import ndimage
    from vtkmodules.util.numpy_support import vtk_to_numpy

    out, stack, frame, tos = sunnybrook
    lma = json.loads((out / "lma.json").read_text())
    assert lma["sector_points"]["sectors_without_myocardium"] == {"9": [18]}
    poly = _read_vtp(out / "sector_points.vtp")
    n = len(lma["tos_slices"])
    assert poly.GetNumberOfPoints() == 18 * n  # one per sector, TOS as given, as before
    points = vtk_to_numpy(poly.GetPoints().GetData()).reshape(n, 18, 3)
    values = vtk_to_numpy(poly.GetPointData().GetArray("TOS_ms")).reshape(n, 18)
    np.testing.assert_allclose(values, [tos[k] for k in lma["tos_slices"]], atol=1e-3)
    has = vtk_to_numpy(poly.GetPointData().GetArray("has_myocardium")).reshape(n, 18)
    drawn = np.zeros(18 * n, bool)
    drawn[vtk_to_numpy(poly.GetVerts().GetConnectivityArray())] = True
    drawn = drawn.reshape(n, 18)
    np.testing.assert_array_equal(drawn, has.astype(bool))
    row = lma["tos_slices"].index(9)
    assert not drawn[row, 17] and drawn.sum() == 18 * n - 1
    sx, sy = stack.pixel_spacing
    worst = 0.0
    for i, k in enumerate(lma["tos_slices"]):
        outside = ndimage.distance_transform_edt(stack.labels[k] != 2, sampling=(sy, sx))  # mm to a myo pixel
        d = points[i] - stack.origins[k]
        col, r = d @ stack.row_dir / sx, d @ stack.col_dir / sy
        off = ndimage.map_coordinates(outside, [r, col], order=1)
        worst = max(worst, float(off[drawn[i]].max()))
        if not drawn[i].all():
            assert off[~drawn[i]].min() > 5.0  # what is no longer drawn: the median-radius fallback in the gap
    assert worst < 1.5, worst
    table = {(int(r["slice"]), int(r["sector"])): float(r["tos_ms"]) for r in csv.DictReader(open(out / "sector_tos.csv"))}
    assert table[(9, 18)] == pytest.approx(tos[9][17])


def test_every_late_flag_is_tos_at_or_above_the_recorded_threshold(sunnybrook):
    """lma.json's threshold_ms is the exact value the flags use (strict JSON float): on the written map, and on
    the same mesh painted with a map within 0.01 ms (so that a threshold rounded to 2 decimals would fall between
    points: thousands of them in the band), with a given threshold and with a uniform map (none late)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from CardiacDiffusionLib.activation.mapping import paint

    from helpers import strict_json

    out, stack, frame, tos = sunnybrook
    lma = strict_json((out / "lma.json").read_text())
    mesh = _read_vtp(out / "myocardium_tos.vtp")

    def consistent(late_info) -> tuple[np.ndarray, np.ndarray]:
        threshold = strict_json(json.dumps(late_info))["threshold_ms"]
        values = vtk_to_numpy(mesh.GetPointData().GetArray("TOS_ms")).astype(float)
        late = vtk_to_numpy(mesh.GetPointData().GetArray("late_activation")).astype(bool)
        wrong = int(((values >= threshold) != late).sum())
        assert wrong == 0, (wrong, threshold)
        return values, late

    values, late = consistent(lma["late_activation"])
    assert 0.2 < late.mean() < 0.3  # the 75th percentile
    sub = frame.subset(lma["tos_slices"])
    narrow = 100.0 + np.random.default_rng(1).uniform(0, 0.01, (len(sub.slices), 18))
    values, late = consistent(paint(mesh, sub, narrow))
    assert np.ptp(values) < 0.011 and 0.2 < late.mean() < 0.3
    consistent(paint(mesh, sub, narrow, threshold_ms=100.0051))
    info = paint(mesh, sub, np.full((len(sub.slices), 18), 80.0))
    _, late = consistent(info)
    assert not late.any() and "none" in info["rule"]


def test_gap_refuses_every_unreadable_volume_before_any_work(tmp_path, capsys):
    """A copy of two ACDC files, one truncated to half its bytes: refused at once in one line naming it (no
    "volume 1/..." progress, nothing on stdout), exit 2; with a non-HDF5 file added, both bad files are named in
    that one line. The files are left as they were."""
    if not ACDC.is_dir():
        pytest.skip("shared ACDC data missing")
    data = tmp_path / "acdc"
    data.mkdir()
    for name in ("patient001_frame01.h5", "patient002_frame01.h5"):
        shutil.copyfile(ACDC / name, data / name)
    whole = (data / "patient002_frame01.h5").read_bytes()
    (data / "patient002_frame01.h5").write_bytes(whole[: len(whole) // 2])
    argv = ["evaluate", "gap", "--data", str(data), "--methods", "nearest", "linear"]
    line = error_line(argv, capsys)  # one line on stderr, exit 2: no "gap protocol: volume 1/2 done"
    assert line.startswith("error: --data: 1 of 2 volume file(s) cannot be read: patient002_frame01.h5 ("), line
    assert "truncated file" in line and "patient001" not in line and "--patients" in line
    (data / "patient003_frame01.h5").write_bytes(b"not an HDF5 file")
    line = error_line(argv, capsys)
    assert "2 of 3 volume file(s)" in line and "patient002_frame01.h5 (" in line, line
    assert "patient003_frame01.h5 (not readable as HDF5: file signature not found)" in line, line
    assert (data / "patient002_frame01.h5").read_bytes() == whole[: len(whole) // 2]
    assert (data / "patient001_frame01.h5").read_bytes() == (ACDC / "patient001_frame01.h5").read_bytes()
    # the good file alone still runs
    from CardiacDiffusionLib.cli.main import main

    assert main(argv + ["--patients", "1"]) == 0
    assert "volume 1/1 done" in capsys.readouterr().err

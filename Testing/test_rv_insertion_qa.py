"""QA of a user-given anterior RV insertion (--rv-insertion) on phantoms whose insertion is known.

Activation phantom 0 (MR phantom 0, 9 slices with myocardium, 96 x 96 pixels of 2 mm): the analytic anterior
insertion of each slice (phantom_case.true_insertion_theta) is the truth; the RV label gives it within 4.2 deg.
"""

from __future__ import annotations

import re
import numpy as np
import pytest
from helpers import lma_phantom_files, strict_json

from CardiacDiffusionLib.activation import qa
from CardiacDiffusionLib.activation.phantom_case import PhantomCase, heart_dir
from CardiacDiffusionLib.activation.pipeline import run_lma, write_outputs
from CardiacDiffusionLib.activation.sectors import contact_arc, lv_frame
from CardiacDiffusionLib.errors import InputError

MID = 4  # frame row of stack slice 5: RV contact arc of 160 deg


@pytest.fixture(scope="module")
def case():
    return PhantomCase(0, 1)


def truth_point(case, i: int = MID, turn_deg: float = 0.0, out_mm: float = 0.0) -> np.ndarray:
    """The analytic anterior insertion of frame row ``i`` (on the labelled epicardium), turned about the LV centre
    (in the activation sense) and moved ``out_mm`` outwards."""
    f = case.frame
    radius = np.linalg.norm(f.insertion_points[i] - f.centres[i])
    return f.centres[i] + (radius + out_mm) * heart_dir(case.phantom, case.thetas[i] + np.deg2rad(turn_deg))


def flags_for(case, points, stack=None) -> list[dict]:
    stack = case.stack if stack is None else stack
    return qa.insertion_flags(stack, lv_frame(stack, points), points)


def numbers(message: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?= deg| mm)", message)]


def test_the_true_insertion_raises_no_flag(case):
    assert case.has_rv[MID] and np.allclose(case.frame.axis, case.phantom.long_axis, atol=1e-6)
    for i in np.flatnonzero(case.has_rv):  # each slice's analytic insertion, alone, and all of them together
        assert flags_for(case, truth_point(case, i)) == [], i
    assert flags_for(case, np.array([truth_point(case, i) for i in np.flatnonzero(case.has_rv)])) == []
    assert flags_for(case, case.frame.insertion_points[MID]) == []  # the label's own point
    # 30 deg off (inside what the other cardiac phase's label insertion gives on ACDC, up to 36 deg): no flag
    assert flags_for(case, truth_point(case, turn_deg=30)) == []
    assert flags_for(case, truth_point(case, out_mm=10)) == []  # across the RV wall, in the RV cavity


@pytest.mark.parametrize("turn", [60.0, -60.0])
def test_a_point_turned_60_degrees_raises_the_angle_flag(case, turn):
    flags = flags_for(case, truth_point(case, turn_deg=turn))
    assert [f["code"] for f in flags] == ["rv_insertion_angle"]  # on the epicardium: not far
    message = flags[0]["message"]
    assert "on slice 5" in message and "inferior" not in message and "lead segment" in message
    given, off, label = numbers(message)[:3]
    assert 55 <= off <= 65  # the label insertion is within 4.2 deg of the truth
    assert abs((given - label + 180) % 360 - 180) == off
    assert given == 0  # angle 0 of the run's frame is the given point: lma.json's rv_insertion_angle_deg
    # every slice given 60 deg off: one flag, counting them
    turned = np.array([truth_point(case, i, turn_deg=turn) for i in range(len(case.frame.slices))])
    flags = flags_for(case, turned)
    assert [f["code"] for f in flags] == ["rv_insertion_angle"]
    assert f"more of the {len(turned)} given points" in flags[0]["message"]


def test_the_inferior_insertion_is_named(case):
    f = case.frame
    anterior, inferior, span = contact_arc(case.stack, f.slices[MID], f.centres[MID], f.e0, f.e1)
    assert np.allclose(anterior, f.insertion_points[MID]) and 130 < np.degrees(span) < 180  # measured 160
    flags = flags_for(case, inferior)
    assert [f["code"] for f in flags] == ["rv_insertion_angle"]
    assert "looks like the inferior insertion (0 deg)" in flags[0]["message"]
    assert 130 < numbers(flags[0]["message"])[1] < 180
    # 90 deg off lies between the two ends (70 deg from the inferior one): turned, not named inferior
    message = flags_for(case, truth_point(case, turn_deg=90))[0]["message"]
    assert "inferior" not in message and 85 <= numbers(message)[1] <= 95


def test_points_off_the_myocardium_raise_the_distance_flag(case):
    flags = flags_for(case, truth_point(case, out_mm=40))
    assert [f["code"] for f in flags] == ["rv_insertion_far"]  # same direction: the angle is right
    message = flags[0]["message"]
    assert "on slice 5" in message and "outside the heart" in message and "(bound 20 mm)" in message
    from_labels, from_myocardium = numbers(message)[:2]
    assert 38 <= from_myocardium <= 41 and from_labels > 20
    centre = case.frame.centres[MID]
    inside = centre + 0.4 * (truth_point(case) - centre)  # in the LV cavity, on the insertion's direction
    flags = flags_for(case, inside)
    assert [f["code"] for f in flags] == ["rv_insertion_far"] and "inside the LV cavity on slice 5" in flags[0]["message"]
    # the doc's example point on this phantom: in the RV cavity, 15 mm from the myocardium, 29 deg from the label's
    # insertion: a plausible point within both bounds
    assert flags_for(case, np.array([12.5, -40.1, 33.0])) == []


def test_a_point_at_the_lv_centre_is_unusable(case):
    with pytest.raises(InputError, match="--rv-insertion .*LV centre of slice 5.*undefined"):
        lv_frame(case.stack, case.frame.centres[MID])


def test_without_rv_labels_the_distance_and_anatomy_still_speak(case):
    """No RV label, nothing to compare the angle with: the distance is checked, and the patient's anterior (the
    phantom's geometry is true) names a given inferior insertion as what it likely is."""
    f = case.frame
    no_rv = case.stack.with_labels(np.where(case.stack.labels == 3, 0, case.stack.labels))
    inferior = contact_arc(case.stack, f.slices[MID], f.centres[MID], f.e0, f.e1)[1]
    assert flags_for(case, inferior, no_rv) == [] and flags_for(case, truth_point(case), no_rv) == []
    assert [x["code"] for x in flags_for(case, truth_point(case, out_mm=40), no_rv)] == ["rv_insertion_far"]
    anatomy = qa.anatomy_flags(no_rv, lv_frame(no_rv, inferior))
    assert [x["code"] for x in anatomy] == ["anatomy_mismatch"]
    assert "given (--rv-insertion)" in anatomy[0]["message"] and "inferior insertion" in anatomy[0]["message"]
    assert qa.anatomy_flags(no_rv, lv_frame(no_rv, truth_point(case))) == []


def test_flags_reach_lma_json_and_change_no_result(case, tmp_path):
    turned = truth_point(case, turn_deg=60)
    result = run_lma(case.stack, strain=case.strain, rv_insertion=turned)
    codes = [f["code"] for f in result.lma["qa"]]
    assert codes == ["rv_insertion_angle"]
    lma = strict_json(write_outputs(result, tmp_path)["json"].read_text())
    assert [f["code"] for f in lma["qa"]] == codes and lma["frame"]["rv_insertion_source"][0] == "user"
    # the sectors still start at the given point (a flag, not a correction): 60 deg from the label's
    labelled = run_lma(case.stack, strain=case.strain)
    assert 50 < np.degrees(np.arccos(result.frame.e0 @ labelled.frame.e0)) < 70
    assert run_lma(case.stack, strain=case.strain, rv_insertion=truth_point(case)).lma["qa"] == []


def test_cli_prints_the_flag_as_a_warning(tmp_path, capsys):
    from CardiacDiffusionLib.cli.main import main

    folder, case = lma_phantom_files(tmp_path)
    point = ",".join(f"{v:.3f}" for v in truth_point(case, turn_deg=-60))
    capsys.readouterr()
    assert main(["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"),
                 "--rv-insertion", point, "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    warning = [line for line in lines if line.startswith("warning: --rv-insertion")]
    assert len(warning) == 1 and "deg from the anterior RV insertion the RV label gives" in warning[0]
    lma = strict_json((tmp_path / "out" / "lma.json").read_text())
    assert [f["message"] for f in lma["qa"] if f["code"] == "rv_insertion_angle"] == [warning[0][len("warning: "):]]

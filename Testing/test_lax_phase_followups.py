"""Follow-ups of ``reconstruct --lax-phase``: a 4D LAX label file (a frame per cine phase) in a single-phase run,
``lax-dice`` and ``inspect`` is read at its frame of the phase (beside a SAX volume without phases: the frame
``--lax-phase`` names, else refused); a multi-phase run refuses a LAX plane that misses the SAX volume before any
phase's work (a manifest's frames each by their geometry)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from test_frames_lax_outdir import frames_once, labelled  # noqa: F401  (4D SAX and ED/ES 3D and 4D LAX labels)
from test_reconstruct_frames import cine, phantom_frames  # noqa: F401  (the 4-phase DICOM and 4D phantom cine)


def call(capsys, *arguments) -> tuple[int, list[str], list[str]]:
    code = main(list(map(str, arguments)))
    said = capsys.readouterr()
    return code, said.out.splitlines(), said.err.splitlines()


def refused(result, pattern: str) -> None:
    code, _, errors = result
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), errors
    assert re.search(pattern, errors[0]), errors


@pytest.fixture(scope="module")
def volume3d(tmp_path_factory) -> Path:
    """The ED phase of the cine as a 3D SAX volume (no phases)."""
    path = tmp_path_factory.mktemp("sax3d") / "ed_sax.nii.gz"
    sitk.WriteImage(frames_once()[0].sax.to_image(), str(path))
    return path


def shifted(source: Path, target: Path, mm: float = 1000.0) -> Path:
    """``source`` moved ``mm`` along every axis (its plane then misses the SAX volume)."""
    image = sitk.ReadImage(str(source))
    image.SetOrigin(tuple(float(v) + mm for v in image.GetOrigin()))
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(target))
    return target


# ---- 1. a 4D LAX label file outside multi-phase runs -------------------------------------------------------------
def test_a_single_phase_run_reads_the_4d_lax_file_at_its_phase(cine, labelled, tmp_path, capsys):  # noqa: F811
    """Was: "lax4ch.nii.gz is 4D with 4 cardiac phases; choose one (...: the commands' --phase)", which --phase 2
    already was. Now frame 2 (ES) is checked: lax_dice.json is the ES 3D file's, byte for byte, and not the ED's."""
    common = ["reconstruct", "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"], "--phase",
              2, "--no-baselines", "--spacing", 2]  # fmt: skip
    outs = {name: tmp_path / name for name in ("4d", "es", "ed")}
    for name, out in outs.items():
        assert call(capsys, *common, "--lax-labels", labelled[name], "--out", out)[0] == 0
    table = (outs["4d"] / "lax_dice.json").read_bytes()
    assert table == (outs["es"] / "lax_dice.json").read_bytes() != (outs["ed"] / "lax_dice.json").read_bytes()
    # and a single run of phase 2 is the multi-phase run's phase_02 (4D LAX labels in both)
    many = tmp_path / "many"
    assert call(capsys, *common[:-4], "0,2", "--no-baselines", "--spacing", 2, "--lax-labels", labelled["4d"],
                "--out", many)[0] == 0  # fmt: skip
    for name in ("lax_dice.json", "reconstruction_labels.nii.gz"):
        assert (many / "phase_02" / name).read_bytes() == (outs["4d"] / name).read_bytes()


@pytest.mark.parametrize("given, why", [
    (["--phase", "1", "--lax-labels", "3frames"], r"--lax-labels .*lax4ch.nii.gz: 3 phases, but --sax .* has 4"),
    (["--phase", "1", "--lax-labels", "4d", "--lax-phase", "1"], r"--lax-phase 1: for 3D LAX labels; the 4D"),
    (["--phase", "1", "--lax-labels", "ed", "--lax-phase", "0"], r"--lax-phase 0: this run reconstructs phase 1 only"),
])  # fmt: skip
def test_a_single_phase_run_refuses_what_a_multi_phase_run_refuses(cine, labelled, tmp_path, capsys, given, why):  # noqa: F811
    given = [str(labelled[g]) if g in labelled else g for g in given]
    out = tmp_path / "out"
    refused(call(capsys, "reconstruct", "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"],
                 *given, "--out", out), why)  # fmt: skip
    assert not out.exists()


def test_a_sax_volume_without_phases_needs_the_frame_named(cine, labelled, volume3d, tmp_path, capsys):  # noqa: F811
    """A 3D --sax has no phase to pick the 4D file's frame by: refused in one line unless --lax-phase names it; the
    frame named is then checked (frame 1 is ED: the ED 3D file's numbers, byte for byte; frame 2, ES, differs)."""
    common = ["reconstruct", "--method", "nearest", "--sax", volume3d, "--sax-labels", cine["ed"], "--no-baselines",
              "--spacing", 2]  # fmt: skip
    out = tmp_path / "refused"
    refused(call(capsys, *common, "--lax-labels", labelled["4d"], "--out", out),
            r"--lax-labels .*lax4ch.nii.gz: 4D, 4 frames .* but --sax .*ed_sax.nii.gz holds one phase: which frame is "
            r"its phase\? name it with --lax-phase \(0..3\)")  # fmt: skip
    refused(call(capsys, *common, "--lax-labels", labelled["4d"], "--lax-phase", 7, "--out", out),
            r"--lax-phase 7: --lax-labels .*lax4ch.nii.gz has frames 0..3")
    assert not out.exists()
    tables = {}
    for name, extra in (("frame1", ["--lax-labels", labelled["4d"], "--lax-phase", 1]),
                        ("frame2", ["--lax-labels", labelled["4d"], "--lax-phase", 2]),
                        ("ed", ["--lax-labels", labelled["ed"]])):  # fmt: skip
        assert call(capsys, *common, *extra, "--out", tmp_path / name)[0] == 0
        tables[name] = (tmp_path / name / "lax_dice.json").read_bytes()
    assert tables["frame1"] == tables["ed"] != tables["frame2"]
    row = json.loads(tables["ed"])["lax4ch.nii.gz"]
    assert 0.5 < (row["LV"] + row["MYO"] + row["RV"]) / 3 <= 1.0


def test_lax_dice_reads_the_frame_named(cine, labelled, tmp_path, capsys):  # noqa: F811
    """lax-dice's --labels is one volume: a 4D LAX file needs --lax-phase (was: "choose one (...: --phase)", an option
    lax-dice has not); with it, the table is that frame's 3D file's."""
    volume = cine["es"]  # the ES SAX labels, a 3D label volume
    refused(call(capsys, "lax-dice", "--labels", volume, "--lax-labels", labelled["4d"]),
            r"--lax-labels .*lax4ch.nii.gz: 4D, 4 frames .* but --labels .*es.nii.gz holds one phase")
    refused(call(capsys, "lax-dice", "--labels", volume, "--lax-labels", labelled["es"], "--lax-phase", 2),
            r"--lax-phase 2: picks the frame of a 4D LAX label file; the --lax-labels are 3D")
    tables = {}
    for name, extra in (("frame2", [labelled["4d"], "--lax-phase", 2]), ("frame0", [labelled["4d"], "--lax-phase", 0]),
                        ("es", [labelled["es"]])):  # fmt: skip
        assert call(capsys, "lax-dice", "--labels", volume, "--lax-labels", *extra, "--out", tmp_path / f"{name}.json")[0] == 0
        tables[name] = json.loads((tmp_path / f"{name}.json").read_text())["lax4ch.nii.gz"]
    assert tables["frame2"] == tables["es"] != tables["frame0"]
    assert tables["es"]["LV"] > tables["frame0"]["LV"]  # ES SAX labels fit the ES frame better than the ED one


def test_inspect_says_the_frame_count_and_uses_the_frame_of_the_phase(cine, labelled, volume3d, tmp_path, capsys):  # noqa: F811
    common = ["inspect", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"], "--phase", 2]
    code, lines, _ = call(capsys, *common, "--lax-labels", labelled["4d"], "--out", tmp_path / "4d.json")
    assert code == 0
    assert any(line.startswith("lax4ch.nii.gz (frame 2 of its 4): ") for line in lines), lines
    assert call(capsys, *common, "--lax-labels", labelled["es"], "--out", tmp_path / "es.json")[0] == 0
    four, es = (json.loads((tmp_path / f"{n}.json").read_text())["lax"]["lax4ch.nii.gz"] for n in ("4d", "es"))
    assert (four.pop("frames"), four.pop("frame")) == (4, 2)
    assert four == es and four["label_pixels_in_sax_extent"]["LV"] > 0
    refused(call(capsys, *common, "--lax-labels", labelled["3frames"]), r"3 phases, but --sax .* has 4")
    refused(call(capsys, *common, "--lax-labels", labelled["4d"], "--lax-phase", 2),
            r"--lax-phase 2: .*with a cine the 4D file's frame is that of --phase")
    refused(call(capsys, "inspect", "--sax", volume3d, "--lax-labels", labelled["4d"]), r"which frame is its phase\?")
    code, lines, _ = call(capsys, "inspect", "--sax", volume3d, "--lax-labels", labelled["4d"], "--lax-phase", 3)
    assert code == 0 and any(line.startswith("lax4ch.nii.gz (frame 3 of its 4): ") for line in lines), lines


# ---- 2. a LAX plane that misses the SAX volume: refused before any phase's work ----------------------------------
@pytest.mark.parametrize("kind", ["3d", "4d"])
def test_a_lax_plane_off_the_volume_is_refused_before_phase_00(cine, labelled, tmp_path, capsys, kind):  # noqa: F811
    """Was: phases 0-2 reconstructed and written (phase_00 ... phase_02), then "phase 3 (4 of 4 in this run):
    --lax-labels ...: the LAX plane does not intersect the SAX volume". Now refused before any of them."""
    lax = shifted(labelled["ed" if kind == "3d" else "4d"], tmp_path / "away" / "lax4ch.nii.gz")
    out = tmp_path / "out"
    extra = ["--lax-phase", 3] if kind == "3d" else []
    result = call(capsys, "reconstruct", "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"],
                  "--phase", "all", "--lax-labels", lax, *extra, "--spacing", 2, "--out", out)  # fmt: skip
    refused(result, r"--lax-labels lax4ch.nii.gz: the LAX plane does not intersect the SAX volume of --sax .*cine4d"
                    r".nii.gz \(its phases share one geometry\).* no phase was reconstructed")  # fmt: skip
    assert not out.exists()
    assert not any("reconstructing" in line for line in result[1])


def test_a_manifest_frame_of_another_geometry_is_checked_too(cine, labelled, tmp_path, capsys):  # noqa: F811
    """A manifest's frames may lie elsewhere: the last frame, moved 1 km, is refused before phase 0 is made, by its
    phase and file; frames of one geometry are read once (the run with the frame in place passes)."""
    image = sitk.ReadImage(str(cine["4d"]))
    folder = tmp_path / "frames"
    folder.mkdir()
    size = list(image.GetSize())
    for k in range(4):
        sitk.WriteImage(sitk.Extract(image, size[:3] + [0], [0, 0, 0, k]), str(folder / f"f{k}.nii.gz"))
    shifted(folder / "f3.nii.gz", folder / "f3_away.nii.gz")
    for name, last in (("in_place", "f3.nii.gz"), ("away", "f3_away.nii.gz")):
        manifest = folder / f"{name}.json"
        manifest.write_text(json.dumps({"frames": [{"sax": f"f{k}.nii.gz"} for k in range(3)] + [{"sax": last}]}))
        out = tmp_path / name
        result = call(capsys, "reconstruct", "--method", "nearest", "--sax", manifest, "--phase", "all", "--lax-labels",
                      labelled["4d"], "--spacing", 4, "--out", out)  # fmt: skip
        if name == "in_place":
            assert result[0] == 0 and sorted(p.name for p in out.glob("phase_*")) == [f"phase_0{k}" for k in range(4)]
            continue
        refused(result, r"--lax-labels lax4ch.nii.gz: the LAX plane does not intersect the SAX volume of phase 3 "
                        r"\(.*f3_away.nii.gz\)")  # fmt: skip
        assert not out.exists()


def test_the_geometry_key_tells_frames_apart(cine, tmp_path):  # noqa: F811
    from CardiacDiffusionLib.cli.reconstruct_frames import _geometry_key

    moved = shifted(cine["ed"], tmp_path / "moved.nii.gz", mm=0.5)
    assert _geometry_key(str(cine["ed"])) == _geometry_key(str(cine["es"])) != _geometry_key(str(moved))
    assert np.allclose(np.subtract(_geometry_key(str(moved))[2], _geometry_key(str(cine["ed"]))[2]), 0.5)
    assert _geometry_key(str(cine["dicom"])) == str(cine["dicom"])

"""``reconstruct --phase all`` with LAX labels and a shared ``--out``: 3D LAX labels are checked only at the phase they
were drawn at (``--lax-phase``), a 4D LAX label file checks each phase against its own frame; single- and multi-phase
runs into one folder remove each other's earlier outputs (never the user's files); the frames job's log has no line
naming an exported sequence item, and an off-grid refusal names the image."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from test_panel_cine_frames import frames, make_cine  # noqa: F401  (a 3-frame cine in a real sequence browser)
from test_reconstruct_frames import cine, phantom_frames  # noqa: F401  (the 4-phase DICOM and 4D phantom cine)

SINGLE = {"reconstruction_image.nii.gz", "reconstruction_labels.nii.gz", "geometry.json", "lax_dice.json",
          "lax_dice_baselines.json"}  # fmt: skip
#: the phantom's ED, ES subjects and cine stacks, made once a session (here and in test_lax_phase_followups; read only)
frames_once = functools.cache(phantom_frames)


def run(capsys, *arguments) -> tuple[int, list[str], list[str]]:
    code = main(["reconstruct", *map(str, arguments)])
    said = capsys.readouterr()
    return code, said.out.splitlines(), said.err.splitlines()


@pytest.fixture(scope="module")
def labelled(cine, tmp_path_factory):  # noqa: F811
    """4D SAX labels of the cine (ED, ES, ES, ED), its ED and ES 4ch LAX labels as 3D files of one name in two
    folders, and a 4D LAX label file (ED, ED, ES, ED: phase 2 is ES) of that name too."""
    folder = tmp_path_factory.mktemp("labelled")
    ed, es, _ = frames_once()
    sax = [sitk.ReadImage(str(cine[n])) for n in ("ed", "es", "es", "ed")]
    paths = {"sax4d": folder / "sax_labels4d.nii.gz"}
    sitk.WriteImage(sitk.JoinSeries(sax), str(paths["sax4d"]))
    lax = {"ed": ed.lax_labels["4ch"], "es": es.lax_labels["4ch"]}
    for name, image in (*lax.items(), ("4d", sitk.JoinSeries([lax["ed"], lax["ed"], lax["es"], lax["ed"]])),
                        ("3frames", sitk.JoinSeries([lax["ed"]] * 3))):  # fmt: skip
        paths[name] = folder / name / "lax4ch.nii.gz"
        paths[name].parent.mkdir()
        sitk.WriteImage(image, str(paths[name]))
    return paths


def dice(folder: Path) -> float:
    """The mean LV/MYO/RV Dice of the 4ch plane in ``folder``'s lax_dice.json."""
    row = json.loads((folder / "lax_dice.json").read_text())["lax4ch.nii.gz"]
    return sum(row[k] for k in ("LV", "MYO", "RV")) / 3


# ---- 1. LAX labels with several phases ----------------------------------------------------------------------------
def test_3d_lax_labels_are_checked_only_at_the_phase_named(cine, labelled, tmp_path, capsys):  # noqa: F811
    """Was: every phase checked against the ED LAX labels (the ES phases' lax_dice.json meaningless). Now phase 0
    only, as a single --phase 0 run checks it (the same bytes); the summary and the log say so."""
    out = tmp_path / "all"
    code, lines, _ = run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"],
                         "--phase", "all", "--lax-labels", labelled["ed"], "--lax-phase", 0, "--spacing", 2,
                         "--out", out)  # fmt: skip
    assert code == 0
    assert "LAX check of phase 0 only (--lax-phase: lax4ch.nii.gz drawn at it); the other phases get no " \
           "lax_dice.json" in lines  # fmt: skip
    summary = json.loads((out / "reconstruct_frames.json").read_text())
    assert summary["lax_check"] == {"phase": 0, "labels": ["lax4ch.nii.gz"], "labels_4d": []}
    assert [f["lax_labels"] for f in summary["frames"]] == [["lax4ch.nii.gz"], [], [], []]
    assert [(out / f"phase_0{k}" / "lax_dice.json").exists() for k in range(4)] == [True, False, False, False]
    assert not any((out / f"phase_0{k}" / "lax_dice_baselines.json").exists() for k in (1, 2, 3))
    single = tmp_path / "single"
    assert run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"], "--phase", 0,
               "--lax-labels", labelled["ed"], "--spacing", 2, "--out", single)[0] == 0  # fmt: skip
    for name in ("lax_dice.json", "lax_dice_baselines.json", "geometry.json"):
        assert (out / "phase_00" / name).read_bytes() == (single / name).read_bytes()
    assert 0.5 < dice(single) <= 1.0


def test_a_4d_lax_label_file_checks_each_phase_against_its_own_frame(cine, labelled, tmp_path, capsys):  # noqa: F811
    """Was: "is 4D with 4 cardiac phases; choose one (...: the commands' --phase)", for a run of every phase. Now each
    phase's lax_dice.json is its single run's against that phase's LAX frame (ES at phase 2): the same bytes."""
    out = tmp_path / "all"
    code, lines, _ = run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"],
                         "--phase", "0,2", "--lax-labels", labelled["4d"], "--no-baselines", "--spacing", 2, "--out",
                         out)  # fmt: skip
    assert code == 0
    assert "LAX check of every phase against its own frame of lax4ch.nii.gz" in lines
    summary = json.loads((out / "reconstruct_frames.json").read_text())
    assert summary["lax_check"] == {"phase": None, "labels": [], "labels_4d": ["lax4ch.nii.gz"]}
    assert [f["lax_labels"] for f in summary["frames"]] == [["lax4ch.nii.gz"], ["lax4ch.nii.gz"]]
    for k, drawn in ((0, "ed"), (2, "es")):
        single = tmp_path / f"single_{k}"
        assert run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"], "--phase", k,
                   "--lax-labels", labelled[drawn], "--no-baselines", "--spacing", 2, "--out", single)[0] == 0  # fmt: skip
        assert (out / f"phase_0{k}" / "lax_dice.json").read_bytes() == (single / "lax_dice.json").read_bytes()
    # the ES frame fits the ES phase better than the ED frame would: a run checking against ED could not pass
    wrong = tmp_path / "es_against_ed"
    assert run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"], "--phase", 2,
               "--lax-labels", labelled["ed"], "--no-baselines", "--spacing", 2, "--out", wrong)[0] == 0  # fmt: skip
    assert dice(out / "phase_02") > dice(wrong) + 0.02


@pytest.mark.parametrize("given, why", [
    (["--phase", "all", "--lax-labels", "ed"],
     r"--lax-labels .*lax4ch.nii.gz: 3D LAX labels are drawn at one phase; name it with --lax-phase \(one of 0, 1, 2, 3"),
    (["--phase", "0,2", "--lax-labels", "ed", "--lax-phase", "1"], r"--lax-phase 1: not among --phase 0,2 \(0, 2\)"),
    (["--phase", "all", "--lax-labels", "3frames"], r"--lax-labels .*lax4ch.nii.gz: 3 phases, but --sax .* has 4"),
    (["--phase", "all", "--lax-labels", "4d", "--lax-phase", "0"], r"--lax-phase 0: for 3D LAX labels; the 4D"),
    (["--phase", "2", "--lax-labels", "ed", "--lax-phase", "0"], r"--lax-phase 0: this run reconstructs phase 2 only"),
    (["--phase", "all", "--lax-phase", "0"], r"--lax-phase 0: names the phase --lax-labels were drawn at"),
])  # fmt: skip
def test_a_lax_check_that_cannot_be_done_is_refused_before_any_work(cine, labelled, tmp_path, capsys, given, why):  # noqa: F811
    given = [str(labelled[g]) if g in labelled else g for g in given]
    out = tmp_path / "out"
    code, lines, errors = run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"],
                              *given, "--out", out)  # fmt: skip
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), errors
    import re

    assert re.search(why, errors[0]), errors
    assert not out.exists()


# ---- 2. one --out for single- and multi-phase runs ---------------------------------------------------------------
def test_single_and_multi_phase_runs_remove_each_others_outputs(cine, labelled, tmp_path, capsys):  # noqa: F811
    """Was: a single run's files stayed beside a later multi-phase run's phase folders and summary (and the other way
    round): one folder, two runs. Now each removes the other's, said."""
    out = tmp_path / "out"
    single = ["--method", "nearest", "--sax", cine["4d"], "--sax-labels", labelled["sax4d"], "--lax-labels",
              labelled["ed"], "--spacing", 2, "--out", out]  # fmt: skip
    assert run(capsys, *single, "--phase", 0)[0] == 0
    assert {p.name for p in out.iterdir()} == SINGLE
    code, lines, _ = run(capsys, *single, "--phase", "1,3", "--lax-phase", 1)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"phase_01", "phase_03", "reconstruct_frames.json"}
    assert sorted(line for line in lines if line.startswith("removed")) == sorted(
        f"removed {name} of an earlier single-phase run in {out} (this run writes phase folders)" for name in SINGLE)
    code, lines, _ = run(capsys, *single, "--phase", 2)
    assert code == 0
    assert {p.name for p in out.iterdir()} == SINGLE
    assert [line for line in lines if line.startswith("removed")] == [
        f"removed {name} of an earlier multi-phase run in {out} (this run does not make it)"
        for name in ("phase_01", "phase_03", "reconstruct_frames.json")]  # fmt: skip
    assert json.loads((out / "geometry.json").read_text())["input"]["phase"] == 2


def test_files_of_the_users_are_kept_and_said(cine, labelled, tmp_path, capsys):  # noqa: F811
    """A folder with no earlier run's geometry.json / reconstruct_frames.json: the files named as the other kind's
    outputs are the user's, kept, with a warning."""
    out = tmp_path / "out"
    (out / "phase_07").mkdir(parents=True)
    (out / "phase_07" / "notes.txt").write_text("mine")
    (out / "reconstruct_frames.json").write_text('{"my": "notes"}')
    base = ["--method", "nearest", "--sax", cine["4d"], "--spacing", 2, "--out", out]
    code, lines, _ = run(capsys, *base, "--phase", 0)
    assert code == 0 and (out / "phase_07" / "notes.txt").read_text() == "mine"
    assert (out / "reconstruct_frames.json").read_text() == '{"my": "notes"}'
    assert f"warning: {out / 'phase_07'} is not from this run (kept; this run does not make it)" in lines
    assert f"warning: {out / 'reconstruct_frames.json'} is not from this run (kept; this run does not make it)" in lines

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "lax_dice.json").write_text('{"my": "table"}')
    code, lines, _ = run(capsys, *base[:-1], mine, "--phase", "0,1")
    assert code == 0 and (mine / "lax_dice.json").read_text() == '{"my": "table"}'
    assert f"warning: {mine / 'lax_dice.json'} is not from this run (kept; this run does not make it)" in lines


# ---- 3. messages --------------------------------------------------------------------------------------------------
def test_an_off_grid_refusal_names_the_image(cine, tmp_path, capsys):  # noqa: F811
    """Was: "--sax labels: L is not on the image's grid": which image? Now the image read, by its option."""
    moved = sitk.ReadImage(str(cine["ed"]))
    moved.SetOrigin(tuple(v + 7.0 for v in moved.GetOrigin()))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    code, _, errors = run(capsys, "--method", "nearest", "--sax", cine["4d"], "--sax-labels", tmp_path / "moved.nii.gz",
                          "--phase", 0, "--out", tmp_path / "out")  # fmt: skip
    assert code == 2
    assert errors == [f"error: --sax labels: {tmp_path / 'moved.nii.gz'} is not on the image's grid (--sax {cine['4d']}: "
                      f"the labels' size {moved.GetSize()}, origin, spacing or direction differ); give labels drawn on "
                      "this series or resample them to it first"]  # fmt: skip


@pytest.mark.mrml
def test_the_frames_log_has_no_child_line_naming_a_sequence_item(mrml_scene, frames):  # noqa: F811
    """Was: "frame 1: reconstructing with shape, SAX labels node 'cine labels frame 1'" beside the job's own line for
    the frame: an exported sequence item the user never sees, said twice. Now the job's line alone."""
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob

    sequence, label_sequence, browser = make_cine(mrml_scene, frames)
    job = FramesJob(mrml_scene, browser.GetProxyNode(sequence), "all", browser.GetProxyNode(label_sequence),
                    method="nearest", spacing=2.0)  # fmt: skip
    assert job.start().wait(timeout=300) is not None
    assert [line for line in job.log if line.startswith("frame 1")] == [
        "frame 1 of 3 (time 0 ms) of sequence 'cine': with SAX labels"], job.log
    assert not [line for line in job.log if "reconstructing with" in line or "frame 1'" in line], job.log


@pytest.mark.mrml
def test_the_frames_job_names_the_image_labels_are_off(mrml_scene, frames):  # noqa: F811
    """Was: "frame 2 of 3: SAX labels: node 'cine labels frame 2' is not on the image's grid": which image, and nodes
    the scene does not hold (the exported items). Now both as the sequences' frames."""
    from CardiacDiffusionLib.slicer_adapter.cine import FramesJob
    from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed

    moved = sitk.Image(frames[1][1])
    moved.SetOrigin(tuple(v + 7.0 for v in moved.GetOrigin()))
    sequence, label_sequence, browser = make_cine(mrml_scene, [frames[0], (frames[1][0], moved), frames[2]])
    job = FramesJob(mrml_scene, browser.GetProxyNode(sequence), "all", browser.GetProxyNode(label_sequence),
                    method="nearest", spacing=2.0)  # fmt: skip
    with pytest.raises(ProcessFailed) as failed:
        job.start().wait(timeout=300)
    assert failed.value.returncode == 2
    assert failed.value.detail == (
        "frame 2 of 3: SAX labels: frame 2 of sequence 'cine labels' (time 160 ms) is not on the image's grid (SAX "
        f"volume frame 2 of sequence 'cine' (time 160 ms): the labels' size {moved.GetSize()}, origin, spacing or direction differ); give labels drawn "
        "on this series or resample them to it first")  # fmt: skip
    assert not [line for line in job.log if "node '" in line], job.log

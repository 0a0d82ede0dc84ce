"""``reconstruct`` with LAX labels checks the classical baselines beside the chosen method on the same grid and planes
(lax_dice_baselines.json, the printed side-by-side table, the Slicer table and summary); lax_dice.json is as before."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.cli.reconstruct import BASELINES
from CardiacDiffusionLib.reconstruction.lax_check import (
    LINEAR_IS_NEAREST, compare_with_baselines, format_table, lax_dice_table, side_by_side,
)  # fmt: skip
from helpers import error_line, load_panel, strict_json

VIEWS = ("2ch", "3ch", "4ch")
#: dmcvr: 1 DDIM step at 2.5 mm keeps the run short; the baselines then run at 2.5 mm too
DMCVR = ["--steps", "1", "--device", "cpu", "--spacing", "2.5"]


@pytest.fixture(scope="module")
def mr(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mr")
    assert main(["phantom", "--kind", "mr", "--seed", "3", "--matrix", "64", "--out", str(out)]) == 0
    return out


def lax_files(mr: Path) -> list[str]:
    return [str(mr / f"lax_{v}_labels.nii.gz") for v in VIEWS]


def reconstruct(mr: Path, out: Path, method: str, *extra: str, labels: bool = True) -> str:
    """``reconstruct --method method`` with the LAX labels (and SAX labels); its stdout."""
    argv = ["reconstruct", "--method", method, "--sax", str(mr / "sax_image.nii.gz"), "--lax-labels", *lax_files(mr),
            "--out", str(out), *extra] + (["--sax-labels", str(mr / "sax_labels.nii.gz")] if labels else [])  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0, argv
    return printed.getvalue()


@pytest.fixture(scope="module")
def runs(mr, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """{run: (folder, stdout)}: shape and dmcvr with the baselines, each without them, and each baseline's own
    reconstruction (--no-baselines) at both spacings."""
    root = tmp_path_factory.mktemp("runs")
    plan = {"shape": ("shape",), "shape-alone": ("shape", "--no-baselines"), "dmcvr": ("dmcvr", *DMCVR),
            "dmcvr-alone": ("dmcvr", *DMCVR, "--no-baselines")}  # fmt: skip
    for method in BASELINES:
        plan[f"own-{method}"] = (method, "--no-baselines")
        plan[f"own-{method}-2.5"] = (method, "--spacing", "2.5", "--no-baselines")
    return {name: (root / name, reconstruct(mr, root / name, *argv)) for name, argv in plan.items()}


def lax_dice_cli(mr: Path, labels: Path, out: Path) -> dict:
    """``cardiac-diffusion lax-dice`` of a label volume on the phantom's LAX labels."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["lax-dice", "--labels", str(labels), "--lax-labels", *lax_files(mr), "--out", str(out)]) == 0
    return strict_json(out.read_text())


@pytest.mark.parametrize("chosen, spacing", [("shape", ""), ("dmcvr", "-2.5")])
def test_baselines_equal_lax_dice_of_their_own_reconstruction(mr, runs, chosen, spacing, tmp_path):
    """Each baseline's numbers are what ``lax-dice`` gives on that baseline's own ``reconstruct`` at the same
    spacing; the chosen method is not among them; real reconstructions (LV > 0.9 on 4ch), not noise."""
    written = strict_json((runs[chosen][0] / "lax_dice_baselines.json").read_text())
    assert written["method"] == chosen and list(written["baselines"]) == [m for m in BASELINES if m != chosen]
    for method, table in written["baselines"].items():
        own = runs[f"own-{method}{spacing}"][0]
        assert table == lax_dice_cli(mr, own / "reconstruction_labels.nii.gz", tmp_path / f"{method}.json")
        assert table == strict_json((own / "lax_dice.json").read_text())
        assert table["lax_4ch_labels.nii.gz"]["LV"] > 0.9 and table["lax_2ch_labels.nii.gz"]["RV"] is None
    if chosen == "dmcvr":  # all three; its own grid is 2.5 mm: the baselines ran on it, not at the default 1 mm
        assert sitk.ReadImage(str(runs["dmcvr"][0] / "reconstruction_labels.nii.gz")).GetSpacing()[2] == 2.5
        at_1mm = strict_json((runs["own-shape"][0] / "lax_dice.json").read_text())
        assert written["baselines"]["shape"] != at_1mm  # so the equality above says which grid was used


def test_linear_is_nearest_and_said(runs):
    for chosen in ("shape", "dmcvr"):
        written = strict_json((runs[chosen][0] / "lax_dice_baselines.json").read_text())
        assert written["baselines"]["linear"] == written["baselines"]["nearest"]
        assert written["notes"] == [LINEAR_IS_NEAREST] and f"note: {LINEAR_IS_NEAREST}" in runs[chosen][1]


def test_lax_dice_json_is_byte_for_byte_as_before(mr, runs, tmp_path):
    """The chosen method's lax_dice.json: the same bytes with and without the baselines, and the bytes of the
    layout before them ({LAX file name: {label: dice}}, written by the same writer from the same table)."""
    from CardiacDiffusionLib.io.volumes import read_labels
    from CardiacDiffusionLib.utils.jsonfile import write_json

    for chosen in ("shape", "dmcvr"):
        with_baselines = (runs[chosen][0] / "lax_dice.json").read_bytes()
        assert with_baselines == (runs[f"{chosen}-alone"][0] / "lax_dice.json").read_bytes()
        labels = read_labels(str(runs[chosen][0] / "reconstruction_labels.nii.gz"))
        write_json(tmp_path / "before.json", lax_dice_table(labels, {Path(p).name: read_labels(p) for p in lax_files(mr)}))
        assert with_baselines == (tmp_path / "before.json").read_bytes()
        assert not (runs[f"{chosen}-alone"][0] / "lax_dice_baselines.json").exists()


def test_printed_side_by_side(runs):
    """One row per plane and method, the chosen method first, then a line per plane on who is ahead; without the
    baselines the table printed before."""
    printed = runs["dmcvr"][1].splitlines()
    rows = [line.split()[:2] for line in printed if line.startswith("lax_") and ":" not in line]
    assert rows == [[f"lax_{v}_labels.nii.gz", m] for v in VIEWS for m in ("dmcvr", *BASELINES)]
    table = strict_json((runs["dmcvr"][0] / "lax_dice.json").read_text())
    baselines = strict_json((runs["dmcvr"][0] / "lax_dice_baselines.json").read_text())["baselines"]
    lines = compare_with_baselines("dmcvr", table, baselines)
    assert format_table(side_by_side("dmcvr", table, baselines)) in runs["dmcvr"][1]
    assert [line for line in printed if "best baseline" in line] == lines and len(lines) == 3
    assert lines[0].startswith("lax_2ch_labels.nii.gz: dmcvr mean Dice (LV, MYO) ")  # no RV in a 2ch view
    alone = strict_json((runs["dmcvr-alone"][0] / "lax_dice.json").read_text())
    assert format_table(alone) in runs["dmcvr-alone"][1] and "best baseline" not in runs["dmcvr-alone"][1]


def test_compare_with_baselines_known_answers():
    """Means over the labels every method scores on a plane; ties named together; level within 0.0005."""
    table = {"2ch": {"LV": 0.9, "MYO": 0.8, "RV": None}, "4ch": {"LV": 0.9, "MYO": 0.8, "RV": 0.7},
             "3ch": {"LV": 0.95, "MYO": 0.85, "RV": 0.7}, "x": {"LV": None, "MYO": None, "RV": None}}  # fmt: skip
    nearest = {"2ch": {"LV": 0.95, "MYO": 0.85, "RV": 0.0}, "4ch": {"LV": 0.9, "MYO": 0.8, "RV": 0.7002},
               "3ch": {"LV": 0.9, "MYO": 0.8, "RV": 0.7}, "x": {"LV": 0.5, "MYO": None, "RV": None}}  # fmt: skip
    baselines = {"nearest": nearest, "linear": nearest, "shape": {**nearest, "3ch": {"LV": 1.0, "MYO": 0.85, "RV": 0.6}}}
    assert compare_with_baselines("dmcvr", table, baselines) == [
        "2ch: dmcvr mean Dice (LV, MYO) 0.850, best baseline nearest, linear, shape 0.900: behind by 0.050",
        "4ch: dmcvr mean Dice 0.800, best baseline nearest, linear, shape 0.800: level",
        "3ch: dmcvr mean Dice 0.833, best baseline shape 0.817: ahead by 0.017",
        "x: no label that dmcvr and the baselines all score; see the table",
    ]
    assert list(side_by_side("dmcvr", {"4ch": table["4ch"]}, baselines, " · ")) == [
        "4ch · dmcvr", "4ch · nearest", "4ch · linear", "4ch · shape"]


def test_no_baselines_without_lax_or_sax_labels_and_refusals_unchanged(mr, runs, tmp_path, capsys):
    """No LAX labels: neither file. dmcvr without SAX labels: its lax_dice.json alone, said. A LAX plane the volume
    misses: refused before the work, nothing written. A later run without the baselines removes the earlier file."""
    argv = ["reconstruct", "--method", "shape", "--sax", str(mr / "sax_image.nii.gz"), "--sax-labels",
            str(mr / "sax_labels.nii.gz")]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "no-lax")]) == 0
    assert not {"lax_dice.json", "lax_dice_baselines.json"} & {p.name for p in (tmp_path / "no-lax").iterdir()}
    printed = reconstruct(mr, tmp_path / "dmcvr-no-labels", "dmcvr", *DMCVR, labels=False)
    assert "note: no --sax-labels: the classical baselines make no labels, so the LAX check shows dmcvr alone" in printed
    assert (tmp_path / "dmcvr-no-labels" / "lax_dice.json").is_file()
    assert not (tmp_path / "dmcvr-no-labels" / "lax_dice_baselines.json").exists()

    far = sitk.ReadImage(lax_files(mr)[2])
    far.SetOrigin([v + 500.0 for v in far.GetOrigin()])
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    said = error_line([*argv, "--lax-labels", str(tmp_path / "far.nii.gz"), "--out", str(tmp_path / "far")], capsys)
    assert "does not intersect the SAX volume" in said and not (tmp_path / "far").exists()

    folder = tmp_path / "again"
    reconstruct(mr, folder, "nearest")
    assert (folder / "lax_dice_baselines.json").is_file()
    assert "removed lax_dice_baselines.json of an earlier run" in reconstruct(mr, folder, "nearest", "--no-baselines")
    assert not (folder / "lax_dice_baselines.json").exists() and (folder / "lax_dice.json").is_file()


# ---- Slicer: the Reconstruction module's logic and job on slicer-core ------------------------------------------
@pytest.mark.mrml
def test_slicer_table_holds_the_baselines_and_the_log_says_who_is_ahead(mr, runs, mrml_scene, monkeypatch):
    """The module's Logic (Qt stubbed; the job runs the command as a child): the LAX Dice table gains a row per
    baseline, "<plane> · <method>", the chosen method first, with the command's numbers; the summary names the
    planes by their nodes. The job on its own (as the batch script) keeps the method's rows alone."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    sax = mrml.load_volume(mrml_scene, str(mr / "sax_image.nii.gz"), "SAX")
    labels = mrml.load_volume(mrml_scene, str(mr / "sax_labels.nii.gz"), "SAX labels", labelmap=True)
    lax = [mrml.load_volume(mrml_scene, path, view, labelmap=True) for path, view in zip(lax_files(mr), VIEWS)]
    logic = load_panel("Reconstruction", monkeypatch, mrml_scene).ReconstructionLogic()
    result = logic.run(sax, labels, lax, method="shape", spacing=1.0)

    rows = mrml.dict_from_table(result.table)
    assert list(rows) == [f"{v} · {m}" for v in VIEWS for m in ("shape", "nearest", "linear")]
    assert result.table.GetTable().GetColumnName(0) == "LAX · method"
    files = {f"lax_{v}_labels.nii.gz": v for v in VIEWS}
    cli = strict_json((runs["shape"][0] / "lax_dice_baselines.json").read_text())["baselines"]
    cli_shape = strict_json((runs["shape"][0] / "lax_dice.json").read_text())
    for method, table in [("shape", cli_shape), *cli.items()]:
        for name, row in table.items():
            for label, dice in row.items():  # the exported NRRD copies: the same numbers to 1e-3
                got = rows[f"{files[name]} · {method}"][label]
                assert (got is None) == (dice is None) and (dice is None or abs(got - dice) < 1e-3), (method, name)
    assert result.lax_dice == {v: rows[f"{v} · shape"] for v in VIEWS}
    assert result.baselines == {m: {v: rows[f"{v} · {m}"] for v in VIEWS} for m in ("nearest", "linear")}
    assert result.summary[:3] == compare_with_baselines("shape", result.lax_dice, result.baselines)
    assert [line.split(":")[0] for line in result.summary[:3]] == list(VIEWS)
    assert result.summary[3] == f"note: {LINEAR_IS_NEAREST}"

    alone = ReconstructionJob(mrml_scene, sax, labels, lax, method="shape", spacing=1.0).start(None).wait(timeout=120)
    assert mrml.dict_from_table(alone.table) == alone.lax_dice == result.lax_dice
    assert alone.table.GetTable().GetColumnName(0) == "LAX" and alone.baselines == {} and alone.summary == []


def test_a_run_stopped_during_the_baselines_leaves_no_earlier_runs_baselines(mr, tmp_path, monkeypatch, capsys):
    """reconstruct writes geometry.json and lax_dice.json, then works out the baselines; stopped there (Ctrl-C), the
    folder held this run's geometry.json beside the earlier run's lax_dice_baselines.json (shape at 2 mm, while
    geometry.json said nearest at 3 mm)."""
    from CardiacDiffusionLib.reconstruction import lax_check

    out = tmp_path / "out"
    argv = ["reconstruct", "--sax", str(mr / "sax_image.nii.gz"), "--sax-labels", str(mr / "sax_labels.nii.gz"),
            "--lax-labels", str(mr / "lax_4ch_labels.nii.gz"), "--out", str(out)]  # fmt: skip
    assert main([*argv, "--method", "shape", "--spacing", "2"]) == 0
    assert strict_json((out / "lax_dice_baselines.json").read_text())["method"] == "shape"

    def interrupted(*args, **kwargs):  # the user's Ctrl-C while the baselines are reconstructed
        raise KeyboardInterrupt

    monkeypatch.setattr(lax_check, "methods_lax_dice", interrupted)
    capsys.readouterr()
    assert main([*argv, "--method", "nearest", "--spacing", "3"]) == 130
    assert capsys.readouterr().err.strip() == "cancelled"
    assert strict_json((out / "geometry.json").read_text())["method"] == "nearest"
    assert not (out / "lax_dice_baselines.json").exists()

    monkeypatch.undo()  # run again to the end: this run's baselines, nearest's own Dice beside them
    assert main([*argv, "--method", "nearest", "--spacing", "3"]) == 0
    written = strict_json((out / "lax_dice_baselines.json").read_text())
    assert written["method"] == "nearest" and list(written["baselines"]) == ["linear", "shape"]
    assert written["baselines"]["linear"] == strict_json((out / "lax_dice.json").read_text())

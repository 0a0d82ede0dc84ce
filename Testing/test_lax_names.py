"""Two --lax-labels files of one name (e.g. 2ch/labels.nii.gz and 4ch/labels.nii.gz): the LAX check names each
plane by its file name, so one plane silently replaced the other in lax_dice.json. Refused before any work by
reconstruct, lax-dice and inspect."""

from __future__ import annotations

import json
import shutil

import pytest

from CardiacDiffusionLib.cli.main import main
from helpers import error_line


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr")
    assert main(["phantom", "--kind", "mr", "--seed", "3", "--matrix", "64", "--out", str(out)]) == 0
    for view in ("2ch", "4ch"):  # as a user exports them: one folder per view, the same file name
        (out / view).mkdir()
        shutil.copy(out / f"lax_{view}_labels.nii.gz", out / view / "labels.nii.gz")
    return out


def test_one_name_for_two_planes_is_refused_before_the_work(mr, tmp_path, capsys):
    two, four = str(mr / "2ch" / "labels.nii.gz"), str(mr / "4ch" / "labels.nii.gz")
    sax = ["--sax", str(mr / "sax_image.nii.gz"), "--sax-labels", str(mr / "sax_labels.nii.gz")]
    out = tmp_path / "out"
    commands = {
        "reconstruct": ["reconstruct", "--method", "nearest", *sax, "--lax-labels", two, four, "--out", str(out)],
        "reconstruct --phase all": ["reconstruct", "--method", "nearest", *sax, "--phase", "all", "--lax-labels", two,
                                    four, "--out", str(out)],  # fmt: skip
        "lax-dice": ["lax-dice", "--labels", str(mr / "sax_labels.nii.gz"), "--lax-labels", two, four],
        "inspect": ["inspect", *sax, "--lax-labels", two, four],
    }
    for command, argv in commands.items():
        line = error_line(argv, capsys)
        assert f"--lax-labels {two} and {four}: both named labels.nii.gz" in line, (command, line)
        assert not out.exists(), command
    line = error_line(commands["lax-dice"][:4] + [two, two], capsys)
    assert "given twice" in line


def test_distinct_names_give_one_row_per_plane(mr, tmp_path, capsys):
    """The same two planes under their own names: two rows, different Dice (the rows the refusal protects)."""
    out = tmp_path / "table.json"
    lax = [str(mr / f"lax_{view}_labels.nii.gz") for view in ("2ch", "4ch")]
    assert main(["lax-dice", "--labels", str(mr / "truth_labels.nii.gz"), "--lax-labels", *lax, "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert sorted(table) == ["lax_2ch_labels.nii.gz", "lax_4ch_labels.nii.gz"]
    assert table["lax_2ch_labels.nii.gz"] != table["lax_4ch_labels.nii.gz"]

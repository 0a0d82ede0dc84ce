"""The command line end to end on phantoms and shared real data; bad input gives one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.models.store import find_model, sha256_file

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr")
    assert main(["phantom", "--kind", "mr", "--seed", "3", "--matrix", "96", "--out", str(out)]) == 0
    return out


def run_reconstruct(mr, out, method="shape", sax=None):
    lax = [str(mr / f"lax_{v}_labels.nii.gz") for v in ("2ch", "3ch", "4ch")]
    return main([
        "reconstruct", "--method", method, "--sax", str(sax or mr / "sax_image.nii.gz"),
        "--sax-labels", str(mr / "sax_labels.nii.gz"), "--lax-labels", *lax, "--out", str(out),
    ])  # fmt: skip


def test_phantom_files_and_truth(mr):
    truth = json.loads((mr / "truth.json").read_text())
    assert truth["seed"] == 3 and truth["sax"]["gap_mm"] == 10.0
    sax = sitk.ReadImage(str(mr / "sax_image.nii.gz"))
    assert sax.GetSize()[:2] == (96, 96) and sax.GetSpacing()[2] == pytest.approx(10.0, abs=1e-3)
    assert len(list((mr / "dicom" / "sax").glob("*.dcm"))) == sax.GetSize()[2]


def test_reconstruct_keeps_frame_and_checks_lax(mr, tmp_path, capsys):
    assert run_reconstruct(mr, tmp_path) == 0
    sax = sitk.ReadImage(str(mr / "sax_image.nii.gz"))
    labels = sitk.ReadImage(str(tmp_path / "reconstruction_labels.nii.gz"))
    image = sitk.ReadImage(str(tmp_path / "reconstruction_image.nii.gz"))
    for out in (labels, image):
        assert np.allclose(out.GetOrigin(), sax.GetOrigin(), atol=1e-3)
        assert np.allclose(out.GetDirection(), sax.GetDirection(), atol=1e-5)
        assert np.allclose(out.GetSpacing(), sax.GetSpacing()[:2] + (1.0,), atol=1e-4)
    # the volume spans first to last slice at 1 mm
    assert labels.GetSize()[2] == int(round((sax.GetSize()[2] - 1) * sax.GetSpacing()[2])) + 1
    table = json.loads((tmp_path / "lax_dice.json").read_text())
    assert sorted(table) == ["lax_2ch_labels.nii.gz", "lax_3ch_labels.nii.gz", "lax_4ch_labels.nii.gz"]
    assert table["lax_4ch_labels.nii.gz"]["LV"] > 0.9 and table["lax_4ch_labels.nii.gz"]["RV"] > 0.8
    assert "LV" in capsys.readouterr().out
    # lax-dice on the written volume gives the same table
    again = tmp_path / "again.json"
    lax = [str(mr / f"lax_{v}_labels.nii.gz") for v in ("2ch", "3ch", "4ch")]
    assert main(["lax-dice", "--labels", str(tmp_path / "reconstruction_labels.nii.gz"),
                 "--lax-labels", *lax, "--out", str(again)]) == 0  # fmt: skip
    redo = json.loads(again.read_text())
    assert redo == table


def test_slices_stored_in_reverse_order_are_warned_about(mr, tmp_path, capsys):
    """The phantom's SAX image and labels with their slices in reverse order, the header kept (a through-plane
    mirror): every geometry check passes, the LAX planes disagree with the mirrored volume, and the console and
    geometry.json say why. The file as written gets no such warning."""
    assert run_reconstruct(mr, tmp_path / "as_written") == 0
    report = json.loads((tmp_path / "as_written" / "geometry.json").read_text())
    assert not [w for w in report["warnings"] if "reverse order" in w]
    for name in ("sax_image", "sax_labels"):
        image = sitk.ReadImage(str(mr / f"{name}.nii.gz"))
        flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[::-1].copy())
        flipped.CopyInformation(image)
        sitk.WriteImage(flipped, str(tmp_path / f"{name}.nii.gz"))
    capsys.readouterr()
    assert main(["reconstruct", "--method", "shape", "--sax", str(tmp_path / "sax_image.nii.gz"), "--sax-labels",
                 str(tmp_path / "sax_labels.nii.gz"), "--lax-labels",
                 *[str(mr / f"lax_{v}_labels.nii.gz") for v in ("2ch", "3ch", "4ch")],
                 "--out", str(tmp_path / "reversed")]) == 0  # fmt: skip
    assert "reverse order" in capsys.readouterr().out
    report = json.loads((tmp_path / "reversed" / "geometry.json").read_text())
    assert len([w for w in report["warnings"] if "reverse order" in w]) == 1
    lv = {k: json.loads((tmp_path / k / "lax_dice.json").read_text())["lax_4ch_labels.nii.gz"]["LV"]
          for k in ("as_written", "reversed")}  # fmt: skip
    assert lv["reversed"] < lv["as_written"] - 0.1, lv  # measured 4ch LV 0.944 -> 0.690


def test_lax_check_without_labels_is_skipped_with_a_warning(mr, tmp_path):
    lax = [str(mr / f"lax_{v}_labels.nii.gz") for v in ("2ch", "3ch", "4ch")]
    assert main(["reconstruct", "--method", "linear", "--sax", str(mr / "sax_image.nii.gz"), "--lax-labels", *lax,
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    kept = json.loads((tmp_path / "geometry.json").read_text())["warnings"]
    assert any("LAX check is skipped" in w for w in kept) and not (tmp_path / "lax_dice.json").exists()


def test_inspect_says_what_an_input_holds(mr, tmp_path, capsys):
    """inspect: slices, gaps, phases on offer (a 4D file's 4th axis; a DICOM cine's trigger times, below), the
    slices holding each label, which way the apex lies, and the warnings a reconstruction would print."""
    image = sitk.ReadImage(str(mr / "sax_image.nii.gz"))
    cine = sitk.JoinSeries([image, image, image])  # 3 phases
    sitk.WriteImage(cine, str(tmp_path / "cine.nii.gz"))
    assert main(["inspect", "--sax", str(tmp_path / "cine.nii.gz"), "--phase", "2", "--out", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    assert [p["phase"] for p in info["phases"]] == [0, 1, 2] and info["phase"] == 2
    assert info["slices"] == image.GetSize()[2] and info["slice_gaps_mm"] == [10.0] * (image.GetSize()[2] - 1)
    code, err = error_of(["inspect", "--sax", str(tmp_path / "cine.nii.gz"), "--phase", "5"], capsys)
    assert code == 2 and "phases 0..2" in err[-1]
    labels = sitk.ReadImage(str(mr / "sax_labels.nii.gz"))
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(labels)[::-1].copy())
    flipped.CopyInformation(labels)
    sitk.WriteImage(flipped, str(tmp_path / "reversed_labels.nii.gz"))
    capsys.readouterr()
    for path, reversed_ in ((mr / "sax_labels.nii.gz", False), (tmp_path / "reversed_labels.nii.gz", True)):
        assert main(["inspect", "--sax", str(mr / "sax_image.nii.gz"), "--sax-labels", str(path), "--out",
                     str(tmp_path / "l.json")]) == 0  # fmt: skip
        info = json.loads((tmp_path / "l.json").read_text())
        truth = sitk.GetArrayFromImage(labels)[:: -1 if reversed_ else 1]
        assert info["labels"]["RV"] == [int(k) for k in np.nonzero((truth == 3).any(axis=(1, 2)))[0]]
        assert info["apex_along_normal"] is True and (info["heart_area_trend_along_normal"] > 0.25) == reversed_
        assert any("reverse order" in w for w in info["warnings"]) == reversed_
    assert "warning: " in capsys.readouterr().out


def test_inspect_and_reconstruct_check_the_lax_labels_against_the_sax_labels(mr, tmp_path, capsys):
    """Where a LAX plane crosses an acquired SAX slice both label the same heart: the phantom's own LAX views agree
    (LV > 0.95, MYO > 0.85, no warning); its end-systolic LAX views with the end-diastolic SAX stack (a user's phase
    mix-up) do not, and reconstruct then warns before its LAX table, whose Dice follows the mismatch. A LAX plane
    the volume does not reach is refused before the work."""
    from CardiacDiffusionLib.phantoms.scanner import make_subject

    lax = [str(mr / f"lax_{v}_labels.nii.gz") for v in ("2ch", "3ch", "4ch")]
    sax = ["--sax", str(mr / "sax_image.nii.gz"), "--sax-labels", str(mr / "sax_labels.nii.gz")]
    assert main(["inspect", *sax, "--lax-labels", *lax, "--out", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    for name, row in info["lax"].items():
        assert row["angle_to_sax_deg"] > 80 and row["pixels_in_sax_extent"] > 1000 and row["warnings"] == []
        agreement = row["agreement_with_sax_labels"]
        assert agreement["dice"]["LV"] > 0.95 and agreement["dice"]["MYO"] > 0.85, (name, agreement)
    assert info["lax"]["lax_2ch_labels.nii.gz"]["agreement_with_sax_labels"]["dice"]["RV"] is None  # none in 2ch
    es = make_subject(seed=3, phase="ES", matrix=96)
    es_lax = []
    for view, image in es.lax_labels.items():
        es_lax.append(str(tmp_path / f"es_{view}.nii.gz"))
        sitk.WriteImage(image, es_lax[-1])
    capsys.readouterr()
    assert main(["reconstruct", *sax, "--lax-labels", *es_lax, "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("disagree where the planes cross") >= 2
    kept = json.loads((tmp_path / "r" / "geometry.json").read_text())["warnings"]
    assert sum("disagree where the planes cross" in w for w in kept) >= 2
    table = json.loads((tmp_path / "r" / "lax_dice.json").read_text())
    assert all(row["MYO"] < 0.8 for row in table.values())
    far = sitk.ReadImage(lax[2])
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + 1000.0))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    code, err = error_of(["reconstruct", *sax, "--lax-labels", str(tmp_path / "far.nii.gz"), "--out",
                          str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "does not intersect" in err[-1] and not (tmp_path / "o").exists()


@pytest.mark.skipif(not (ACDC.parent / "sunnybrook-SC-HF-I-1").is_dir(), reason="shared Sunnybrook data missing")
def test_inspect_lists_the_phases_of_a_dicom_cine(tmp_path, capsys):
    from CardiacDiffusionLib.io import dicom_phases

    folder = ACDC.parent / "sunnybrook-SC-HF-I-1" / "dicom"
    assert main(["inspect", "--sax", str(folder), "--out", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["phases"] == dicom_phases(folder) and len(info["phases"]) == 2 and info["slices"] == 12
    assert info["apex_along_normal_by_anatomy"] is False and info["warnings"] == []  # its normal points apex -> base
    assert "trigger times (ms) [284.81" in capsys.readouterr().out


def test_dicom_series_input_matches_nifti(mr, tmp_path):
    assert run_reconstruct(mr, tmp_path / "nii", "nearest") == 0
    assert run_reconstruct(mr, tmp_path / "dcm", "nearest", sax=mr / "dicom" / "sax") == 0
    a = json.loads((tmp_path / "nii" / "lax_dice.json").read_text())
    b = json.loads((tmp_path / "dcm" / "lax_dice.json").read_text())
    for name, row in a.items():
        for label, value in row.items():
            assert (value is None and b[name][label] is None) or b[name][label] == pytest.approx(value, abs=1e-6)


def test_ct_phantom_command(tmp_path):
    assert main(["phantom", "--kind", "ct", "--seed", "1", "--size", "32", "--out", str(tmp_path)]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct_labels.nii.gz")))
    assert set(np.unique(labels)) == set(range(9))
    assert json.loads((tmp_path / "truth.json").read_text())["seed"] == 1


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
def test_gap_protocol_on_real_acdc(tmp_path, capsys):
    out = tmp_path / "gap.json"
    assert main(["evaluate", "gap", "--data", str(ACDC), "--patients", "61-63", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["nearest"]["volumes"] == 6
    assert table["shape"]["dice"]["LV"] >= table["nearest"]["dice"]["LV"]
    assert table["shape"]["dice"]["MYO"] > table["nearest"]["dice"]["MYO"]
    assert table["linear"]["psnr"] > table["nearest"]["psnr"]  # linear intensities beat a copied slice
    assert json.loads(capsys.readouterr().out) == table


def write(array, path, spacing=(1.5, 1.5, 10.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


def error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_bad_inputs_give_one_line_errors(mr, tmp_path, capsys):
    flat = write(np.zeros((1, 32, 32), np.float32), tmp_path / "flat.nii.gz")
    nan = np.ones((4, 32, 32), np.float32)
    nan[1, 3, 3] = np.nan
    nan_path = write(nan, tmp_path / "nan.nii.gz")
    bad_labels = write(np.full((11, 96, 96), 7, np.uint8), tmp_path / "bad_labels.nii.gz")
    empty = sitk.Image(sitk.ReadImage(str(mr / "sax_labels.nii.gz")))
    empty = sitk.Multiply(empty, 0)
    sitk.WriteImage(empty, str(tmp_path / "empty_labels.nii.gz"))
    far = sitk.ReadImage(str(mr / "lax_4ch_labels.nii.gz"))
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + 1000.0))
    far_path = tmp_path / "far_lax.nii.gz"
    sitk.WriteImage(far, str(far_path))
    cases = {
        "2D": ["reconstruct", "--sax", flat, "--out", str(tmp_path / "o")],
        "NaN": ["reconstruct", "--sax", nan_path, "--out", str(tmp_path / "o")],
        "label": ["reconstruct", "--sax", str(mr / "sax_image.nii.gz"), "--sax-labels", bad_labels, "--out", str(tmp_path / "o")],
        "no label": ["reconstruct", "--sax", str(mr / "sax_image.nii.gz"), "--sax-labels",
                     str(tmp_path / "empty_labels.nii.gz"), "--out", str(tmp_path / "o")],
        "intersect": ["lax-dice", "--labels", str(mr / "truth_labels.nii.gz"), "--lax-labels", str(far_path)],
        "missing": ["reconstruct", "--sax", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "o")],
    }  # fmt: skip
    for what, argv in cases.items():
        code, err = error_of(argv, capsys)
        assert code == 2, what
        assert len(err) == 1 and err[0].startswith("error: "), (what, err)
    assert not (tmp_path / "o").exists()


def test_outputs_say_what_made_them_and_nothing_stale_is_left(mr, tmp_path, capsys):
    """geometry.json records the input's frame, method, settings and output grid; rerunning into the folder with a
    method that makes no labels removes the earlier labels and LAX table (else they would pass for this run's);
    options of another method and a negative phantom seed are refused; lax-dice checks its --out first; a
    phantom written again into its folder replaces its DICOM series instead of adding to it."""
    out = tmp_path / "r"
    assert run_reconstruct(mr, out) == 0
    geometry = json.loads((out / "geometry.json").read_text())
    sax = sitk.ReadImage(str(mr / "sax_image.nii.gz"))
    assert geometry["method"] == "shape" and geometry["settings"] == {"spacing_mm": 1.0}
    np.testing.assert_allclose(geometry["input"]["first_slice_origin_lps"], sax.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(geometry["input"]["row_direction_lps"], np.array(sax.GetDirection())[0::3], atol=1e-5)
    assert geometry["output"]["size"] == list(sitk.ReadImage(str(out / "reconstruction_image.nii.gz")).GetSize())
    capsys.readouterr()
    assert main(["reconstruct", "--method", "linear", "--sax", str(mr / "sax_image.nii.gz"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["geometry.json", "reconstruction_image.nii.gz"]
    assert "removed reconstruction_labels.nii.gz of an earlier run" in capsys.readouterr().out
    # a folder no reconstruct run wrote (no geometry.json): a user's own lax_dice.json there is kept, and said
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "lax_dice.json").write_text('{"my": "own table"}')
    assert main(["reconstruct", "--method", "linear", "--sax", str(mr / "sax_image.nii.gz"), "--out", str(mine)]) == 0
    assert (mine / "lax_dice.json").read_text() == '{"my": "own table"}'
    assert f"warning: {mine / 'lax_dice.json'} is not from this run (kept" in capsys.readouterr().out
    code, err = error_of(["reconstruct", "--method", "shape", "--steps", "5", "--sax", str(mr / "sax_image.nii.gz"),
                          "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "--steps: options of --method dmcvr" in err[-1]
    code, err = error_of(["phantom", "--seed", "-3", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--seed -3" in err[-1] and not (tmp_path / "o").exists()
    code, err = error_of(["lax-dice", "--labels", str(out.parent / "r" / "geometry.json"), "--lax-labels",
                          str(mr / "lax_4ch_labels.nii.gz"), "--out", str(tmp_path)], capsys)  # fmt: skip
    assert code == 2 and "is a folder" in err[-1]  # said before the labels were read
    again = tmp_path / "phantom"
    for gap in ("8", "10"):
        assert main(["phantom", "--seed", "3", "--gap", gap, "--matrix", "48", "--out", str(again)]) == 0
    assert len(list((again / "dicom" / "sax").glob("*.dcm"))) == sitk.ReadImage(str(again / "sax_image.nii.gz")).GetSize()[2]


def test_demo_prints_table_and_writes_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--methods", "nearest", "shape"]) == 0
    out = capsys.readouterr().out
    assert "shape 4ch" in out and "nearest 2ch" in out
    table = json.loads((tmp_path / "lax_dice.json").read_text())["table"]
    assert table["4ch"]["shape"]["LV"] > 0.9
    assert (tmp_path / "report.png").stat().st_size > 20_000
    assert (tmp_path / "reconstruction" / "shape" / "reconstruction_labels.nii.gz").is_file()
    lma = json.loads((tmp_path / "lma" / "lma.json").read_text())
    assert lma["lead"]["segment"] in (4, 5, 6, 10, 11, 12)  # a free-wall segment, never septal
    assert "mean abs error" in out
    labels = sitk.ReadImage(str(next((tmp_path / "synthetic").glob("sample_*_labels.nii.gz"))))
    assert labels.GetSize() == (32, 32, 32) and labels.GetSpacing() == pytest.approx((5.0, 5.0, 5.0))
    made_by = json.loads((tmp_path / "synthetic" / "labels.json").read_text())["model"]
    assert made_by["sha256"] == sha256_file(find_model(made_by["name"])["path"]) and made_by["version"]


@pytest.mark.parametrize("options, said", [(["--seed", "-1"], "--seed -1: give a whole number"),
                                           (["--device", "bogus"], "--device bogus: unknown device"),
                                           (["--device", "cuda:99"], "CUDA")])  # fmt: skip
def test_demo_refuses_bad_options_before_any_work(tmp_path, capsys, options, said):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *options]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: ") and said in error and not out.exists()
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--out", str(out), "--methods", "foo"])
    assert stop.value.code == 2 and "invalid choice: 'foo'" in capsys.readouterr().err and not out.exists()


def test_help_imports_no_heavy_library():
    """Building the parser (``--help``, every Slicer child process) imports neither torch nor SimpleITK/VTK/matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from CardiacDiffusionLib.cli.main import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in ('torch', 'SimpleITK', 'vtk', 'matplotlib', 'monai', 'scipy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
def test_gap_protocol_without_the_kept_labels(tmp_path):
    """--no-labels: dmcvr segments the kept slices itself; label-copying baselines get images only."""
    args = ["evaluate", "gap", "--data", str(ACDC), "--patients", "61", "--limit", "1", "--device", "cpu"]
    assert main(args + ["--methods", "shape", "--out", str(tmp_path / "with.json")]) == 0
    assert main(args + ["--methods", "shape", "dmcvr", "--steps", "5", "--no-labels", "--out", str(tmp_path / "without.json")]) == 0
    with_labels, without = (json.loads((tmp_path / f).read_text()) for f in ("with.json", "without.json"))
    assert without["shape"]["dice"] == {"LV": None, "MYO": None, "RV": None} and not without["shape"]["kept_labels"]
    assert without["shape"]["psnr"] == with_labels["shape"]["psnr"]  # its images do not use labels
    assert without["dmcvr"]["dice"]["LV"] > 0.7 and without["dmcvr"]["dice"]["MYO"] > 0.4  # found and segmented the heart


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
@pytest.mark.parametrize("volume, unsure", [("patient057_frame01", True), ("patient068_frame12", False)])
def test_reconstruct_says_when_the_heart_was_found_unsure(tmp_path, capsys, volume, unsure):
    """dmcvr without SAX labels: ACDC 057 (a 512 x 428 image at the files' nominal 1.5 mm, so a heart twice
    life-size) is localised with net confidence 0.88, below LOCALISATION_MIN_CONFIDENCE: a warning on the
    console and in geometry.json; 068 ES (found, 0.94) gets none."""
    from CardiacDiffusionLib.io.acdc import read_acdc

    pixels = read_acdc(ACDC / f"{volume}.h5").pixels[::2]  # the gap protocol's kept slices, images only
    sax = write(pixels, tmp_path / "sax.nii.gz", spacing=(1.5, 1.5, 20.0))
    assert main(["reconstruct", "--method", "dmcvr", "--steps", "1", "--sax", sax, "--out", str(tmp_path / "out"),
                 "--progress", "json"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    said = [line for line in lines if "dmcvr is unsure where the heart is" in line]
    events = [json.loads(line) for line in lines if line.startswith("{")]  # the Slicer module's progress bar
    fractions = [e["progress"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 2
    assert all(e["event"] == "progress" and e["message"].startswith("dmcvr: DDIM step") for e in events)
    geometry = json.loads((tmp_path / "out" / "geometry.json").read_text())
    kept = [w for w in geometry["warnings"] if "unsure" in w]
    assert (len(said), len(kept)) == ((1, 1) if unsure else (0, 0)), said
    shipped = find_model(geometry["settings"]["model"])  # which model made it: name, version, the file's sha256
    assert geometry["model"]["sha256"] == sha256_file(shipped["path"]) == shipped["sha256"]
    assert (geometry["model"]["name"], geometry["model"]["version"]) == (shipped["name"], shipped["version"])
    if unsure:
        assert said[0].startswith("warning: ") and "net confidence 0.8" in said[0] and "give SAX labels" in said[0]


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
def test_geometry_json_keeps_what_the_reader_warned_about(tmp_path, capsys):
    """An ACDC HDF5 file stores no spacing: the reader's warning is printed and kept in geometry.json."""
    assert main(["reconstruct", "--method", "shape", "--sax", str(ACDC / "patient061_frame01.h5"),
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    printed = [line[len("warning: "):] for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    kept = json.loads((tmp_path / "geometry.json").read_text())["warnings"]
    assert kept == printed and any("spacing" in w for w in kept)


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
def test_gap_protocol_per_volume_rows_carry_the_warnings(tmp_path):
    """--per-volume: each volume's scores; the means are the rows' means; dmcvr's QualityWarning on 057
    (unsure where the heart is, without labels) is kept with its volume."""
    out = tmp_path / "gap.json"
    argv = ["evaluate", "gap", "--data", str(ACDC), "--patients", "57-57", "--methods", "linear", "dmcvr",
            "--steps", "1", "--no-labels", "--per-volume", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = json.loads(out.read_text())
    for method in ("linear", "dmcvr"):
        rows = table[method]["rows"]
        assert [r["volume"] for r in rows] == ["patient057_frame01.h5", "patient057_frame09.h5"]
        assert table[method]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in rows]), abs=1e-3)
    assert all(r["dice"]["LV"] is None and r["warnings"] == [] for r in table["linear"]["rows"])
    assert all(len(r["warnings"]) == 1 and "unsure where the heart is" in r["warnings"][0] for r in table["dmcvr"]["rows"])
    assert table["dmcvr"]["model"]["sha256"] == sha256_file(find_model(table["dmcvr"]["model"]["name"])["path"])
    assert "model" not in table["linear"]


@pytest.mark.skipif(not ACDC.is_dir(), reason="shared ACDC data missing")
def test_compare_gives_paired_differences_of_a_per_volume_table(tmp_path, capsys):
    """`evaluate compare`: per-volume differences; their mean is the difference of the table's means (every
    volume scored by both); a table without rows or a method it lacks is a clear error."""
    table = tmp_path / "gap.json"
    argv = ["evaluate", "gap", "--data", str(ACDC), "--patients", "61-62", "--methods", "nearest", "shape",
            "--per-volume", "--out", str(table)]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "paired.json"
    assert main(["evaluate", "compare", str(table), "--method", "shape", "--against", "nearest", "--out", str(out)]) == 0
    assert "shape - nearest" in capsys.readouterr().out
    gap, paired = json.loads(table.read_text()), json.loads(out.read_text())["nearest"]
    assert paired["psnr"]["n"] == 4 and paired["psnr"]["wins"] == 4  # shape's image is linear's: above nearest
    assert paired["psnr"]["mean"] == pytest.approx(gap["shape"]["psnr"] - gap["nearest"]["psnr"], abs=2e-4)
    assert paired["dice"]["MYO"]["mean"] == pytest.approx(gap["shape"]["dice"]["MYO"] - gap["nearest"]["dice"]["MYO"], abs=2e-4)
    assert main(["evaluate", "compare", str(table), "--method", "dmcvr", "--against", "nearest"]) == 2
    assert "no method 'dmcvr'" in capsys.readouterr().err
    gap["nearest"].pop("rows")
    table.write_text(json.dumps(gap))
    assert main(["evaluate", "compare", str(table), "--method", "shape", "--against", "nearest"]) == 2
    assert "--per-volume" in capsys.readouterr().err
    table.write_text('{"linear": 1}')
    assert main(["evaluate", "compare", str(table), "--method", "linear", "--against", "nearest"]) == 2
    assert "not a table" in capsys.readouterr().err
    assert main(["evaluate", "compare", str(out), "--method", "psnr", "--against", "ssim", "--out", str(out)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_outputs_never_replace_inputs_and_bad_output_places_are_named(mr, tmp_path, capsys):
    """Found by a bad-input audit: `--out` the inputs' own folder overwrote them (exit 0); an --out that is a
    file, or lies under one, ended in a traceback, and only after the whole computation."""
    import shutil

    shutil.copy(mr / "sax_image.nii.gz", tmp_path / "reconstruction_image.nii.gz")
    shutil.copy(mr / "sax_labels.nii.gz", tmp_path / "reconstruction_labels.nii.gz")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    argv = ["reconstruct", "--sax", str(tmp_path / "reconstruction_image.nii.gz"),
            "--sax-labels", str(tmp_path / "reconstruction_labels.nii.gz"), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    lax = str(mr / "lax_4ch_labels.nii.gz")
    labels = str(tmp_path / "reconstruction_labels.nii.gz")
    assert main(["lax-dice", "--labels", labels, "--lax-labels", lax, "--out", lax]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    a_file = tmp_path / "note.txt"
    a_file.write_text("mine")
    for out, said in ((a_file, "is a file"), (a_file / "sub", "lies under the file")):
        assert main(["reconstruct", "--sax", str(mr / "sax_image.nii.gz"), "--out", str(out)]) == 2
        assert said in capsys.readouterr().err
    assert main(["lax-dice", "--labels", labels, "--lax-labels", lax, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("spacing, said", [("nan", "at least 0.1"), ("inf", "at least 0.1"), ("0.01", "at least 0.1"),
                                           ("1000", "one slice")])  # fmt: skip
def test_output_spacing_must_make_a_volume(mr, tmp_path, capsys, spacing, said):
    """NaN crashed deep in numpy, inf wrote NaN geometry, 1000 mm a one-slice volume, 0.0001 mm ran out of memory."""
    argv = ["reconstruct", "--sax", str(mr / "sax_image.nii.gz"), "--spacing", spacing, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --spacing") and said in err


def test_options_that_would_be_ignored_or_mean_nothing_are_refused(mr, tmp_path, capsys):
    """Audit: --patients 80-61 and --limit 0 said "no volumes found"; --h5-spacing on a NIfTI was ignored;
    a seed past 64 bits ended in an overflow traceback."""
    cases = {
        "the first patient comes first": ["evaluate", "gap", "--data", str(tmp_path), "--patients", "80-61"],
        "--limit 0: give at least 1": ["evaluate", "gap", "--data", str(tmp_path), "--limit", "0"],
        "--h5-spacing: only for an ACDC HDF5": ["reconstruct", "--sax", str(mr / "sax_image.nii.gz"),
                                                "--h5-spacing", "1.5", "10", "--out", str(tmp_path / "o")],
        "--seed 99999999999999999999: give a seed": ["sample", "--seed", "99999999999999999999", "--out", str(tmp_path / "s")],
    }  # fmt: skip
    for said, argv in cases.items():
        assert main(argv) == 2, said
        assert said in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`sample --progress json | head -1`: the command stops at the closed pipe, with no `error:` line (it said
    'error: a file: Broken pipe') and no traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "CardiacDiffusionLib.cli.main", "sample", "--steps", "3", "--progress", "json",
               "--out", str(tmp_path / "pairs"), "--device", "cpu"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        first = json.loads(child.stdout.readline())
        child.stdout.close()  # the reader goes away after one line
        err = child.stderr.read()
        code = child.wait(timeout=120)
    assert first["event"] == "progress" and first["progress"] > 0
    assert code == 1 and "error" not in err and "Traceback" not in err

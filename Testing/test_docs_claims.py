"""The numbers and output formats README.md and docs/{LMA,METRICS,GPU}.md state stay those of their sources: each
table against the evaluation JSON it was made from (docs/models/*_eval/, docs/gpu_check_h200.json), and the claims
cheap enough to measure again measured again here (TOS accuracy, RV insertion on MR phantoms, the HD definitions on
ACDC, a gap-protocol spot check, the keys of lma.json and of an ``evaluate gap`` table).
test_docs_truth.py checks links, paths and options; this file checks what the docs say the numbers and files are."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
LMA = (ROOT / "docs" / "LMA.md").read_text(encoding="utf-8")
METRICS = (ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8")
GPU = (ROOT / "docs" / "GPU.md").read_text(encoding="utf-8")
DMCVR_EVAL = ROOT / "docs" / "models" / "dmcvr_eval"
SADIR_EVAL = ROOT / "docs" / "models" / "sadir_eval"
ACDC = ROOT.parent / "shared" / "data" / "acdc"
#: a table's value given to 3 decimals matches its source to half a unit in the last place (0.4075 -> 0.408)
HALF = 0.5e-3 + 1e-9


def _says(doc: str, text: str) -> bool:
    """``text`` is in ``doc``, whatever the line breaks of either."""
    return " ".join(text.split()) in " ".join(doc.split())


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _table_rows(text: str, header: str) -> dict[str, list[float | None]]:
    """The rows of the Markdown table under ``header`` (its first line): first cell -> the other cells as numbers."""
    block = text.split(header, 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
        numbers = [re.fullmatch(r"(-?\d+(?:\.\d+)?)(?: ms| s| mm)?", c) for c in cells[1:]]
        rows[cells[0]] = [float(m.group(1)) if m else None for m in numbers]
    return rows


def _row(rows: dict, prefix: str) -> list:
    found = [v for k, v in rows.items() if k.startswith(prefix)]
    assert len(found) == 1, f"one row starting {prefix!r}, found {len(found)}"
    return found[0]


# ---- README: Volume reconstruction: measured ---------------------------------------------------------------------
def test_gap_table_is_its_evaluation_json():
    rows = _table_rows(README, "| method | Dice LV | Dice MYO | Dice RV | PSNR (dB) | SSIM |")
    gap = _load(DMCVR_EVAL / "gap_acdc_val.json")
    sources = {
        "nearest": gap["nearest"], "linear": gap["linear"], "shape": gap["shape"],
        "dmcvr v0.4 (default": _load(DMCVR_EVAL / "guard_val_acdc_61-80.json")["rows"]["1.2"],
        "dmcvr v0.4 without the roughness guard": gap["dmcvr"],
        "dmcvr v0.4, network labels only": _load(DMCVR_EVAL / "gap_acdc_val_noprior.json")["dmcvr"],
        "dmcvr v0.4, kept slices' labels withheld": _load(DMCVR_EVAL / "gap_acdc_val_nolabels.json")["dmcvr"],
        "dmcvr v0.4, partial inversion": _load(DMCVR_EVAL / "gap_acdc_val_strength0.1.json")["dmcvr"],
        "dmcvr v0.3": _load(DMCVR_EVAL / "v0.3" / "gap_acdc_val.json")["dmcvr"],
    }  # fmt: skip
    assert len(rows) == len(sources)
    for prefix, source in sources.items():
        lv, myo, rv, psnr, ssim = _row(rows, prefix)
        want = [source["dice"]["LV"], source["dice"]["MYO"], source["dice"]["RV"], source["ssim"]]
        assert np.allclose([lv, myo, rv, ssim], want, atol=HALF, rtol=0), prefix
        assert psnr == pytest.approx(source["psnr"], abs=0.005 + 1e-9), prefix


def test_lax_phantom_table_is_its_evaluation_json():
    rows = _table_rows(README, "| method | 2ch LV | 2ch MYO | 3ch LV | 3ch MYO | 3ch RV | 4ch LV | 4ch MYO | 4ch RV |")
    cells = ["2ch LV", "2ch MYO", "3ch LV", "3ch MYO", "3ch RV", "4ch LV", "4ch MYO", "4ch RV"]
    lax = _load(DMCVR_EVAL / "lax_phantoms.json")
    noprior = _load(DMCVR_EVAL / "lax_phantoms_noprior.json")
    assert lax["seeds"] == noprior["seeds"] == [7, 8, 9]
    guard = _load(DMCVR_EVAL / "guard_phantoms_0-19.json")["views"]["1.2"]  # subjects 0-19: 7-9 are rows 7:10
    sources = {
        "nearest = linear": lax["table"]["nearest"], "shape": lax["table"]["shape"],
        "dmcvr v0.4 (default": {c: float(np.mean(guard[c][7:10])) for c in cells},
        "dmcvr v0.4 without the guard": lax["table"]["dmcvr"],
        "dmcvr v0.4, network labels only": noprior["table"]["dmcvr"],
        "dmcvr v0.4, no SAX labels (prior": lax["table"]["dmcvr-nolabels"],
        "dmcvr v0.4, no SAX labels, network labels only": noprior["table"]["dmcvr-nolabels"],
    }  # fmt: skip
    assert len(rows) == len(sources)
    for prefix, source in sources.items():
        assert np.allclose(_row(rows, prefix), [source[c] for c in cells], atol=HALF, rtol=0), prefix


def test_reconstruction_speed_figures_are_the_benchmark_jsons():
    def median(name: str, method: str = "dmcvr") -> float:
        return _load(DMCVR_EVAL / name)["results"][method]["median_s"]

    default = _load(DMCVR_EVAL / "reconstruct_cpu.json")
    assert _says(README, f"takes {median('reconstruct_cpu.json'):.1f} s with the default")
    assert _says(README, f"peak RSS {default['results']['dmcvr']['peak_rss_mib'] / 1024:.1f} GB")
    assert _says(README, f"and {median('reconstruct_cpu_steps10.json'):.1f} s with `--steps 10`")
    assert _says(README, f"against {median('reconstruct_cpu.json', 'shape'):.2f} s for shape")
    before = median("reconstruct_cpu_xeon_before_channels_last.json")
    after = median("reconstruct_cpu_xeon_channels_last.json")
    assert _says(README, f"cut the default {before / after:.2f}x on a 2-core Intel Xeon, {before:.1f} -> {after:.1f} s")


def test_paired_comparison_is_measured_again(tmp_path, capsys):
    """``evaluate compare`` on the stored per-volume gap table gives the stored paired table and README's figures
    (dmcvr without the guard against shape: SSIM +0.009 [+0.006, +0.011] in 35 of 40, MYO, PSNR)."""
    from CardiacDiffusionLib.cli.main import main

    out = tmp_path / "paired.json"
    table = DMCVR_EVAL / "gap_acdc_val_per_volume.json"
    assert main(["evaluate", "compare", str(table), "--method", "dmcvr", "--against", "linear", "shape",
                 "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    got, stored = json.loads(out.read_text()), _load(DMCVR_EVAL / "gap_acdc_val_paired.json")
    for against in ("linear", "shape"):
        assert {k: got[against][k] for k in stored[against]} == stored[against]

    flat = " ".join(README.split())
    number = r"([+-]\d\.\d+)"
    ssim = re.search(rf"only SSIM \({number} \[{number}, {number}\], (\d+) of (\d+) volumes\)", flat)
    rest = re.search(rf"against shape MYO {number} \[{number}, {number}\] \((\d+) of (\d+)\) and PSNR {number} "
                     rf"\[{number}, {number}\] dB", flat)  # fmt: skip
    shape = got["shape"]
    for score, said in [(shape["ssim"], ssim.groups()), (shape["dice"]["MYO"], rest.groups()[:5]),
                        (shape["psnr"], rest.groups()[5:])]:  # fmt: skip
        values = [float(v) for v in said[:3]]
        assert np.allclose(values, [score["mean"], *score["ci95"]], atol=HALF, rtol=0), said
        if len(said) == 5:
            assert (int(said[3]), int(said[4])) == (score["wins"], score["n"])


def test_command_timings_are_docs_bench_cli_json():
    """README's (and LMA.md's) whole-command timings, before -> after, are those of docs/bench_cli.json."""
    r = {k: v["median_s"] for k, v in _load(ROOT / "docs" / "bench_cli.json")["results"].items()}
    near, lin = r["reconstruct_nearest_phantom"], r["reconstruct_linear_phantom"]
    assert f"{near['current']:.2f}" == f"{lin['current']:.2f}"  # one "after" figure for both
    lma_shape, lma_sadir = r["lma_shape_phantom"], r["lma_sadir_phantom"]
    said = [
        f"`reconstruct` nearest/linear {near['baseline']:.2f}-{lin['baseline']:.2f} -> {near['current']:.2f} s",
        "shape {baseline:.2f} -> {current:.2f} s on the phantom".format(**r["reconstruct_shape_phantom"]),
        "{baseline:.2f} -> {current:.2f} s on an ACDC file".format(**r["reconstruct_shape_acdc"]),
        "`lax-dice` {baseline:.2f} -> {current:.2f} s".format(**r["lax_dice_phantom"]),
        "`inspect` {baseline:.2f} -> {current:.2f} s".format(**r["inspect_phantom"]),
        (f"`lma` shape {lma_shape['baseline']:.2f} -> {lma_shape['current']:.2f} s and sadir "
         f"{lma_sadir['baseline']:.1f} -> {lma_sadir['current']:.1f} s"),
        "`phantom` {baseline:.2f} -> {current:.2f} s".format(**r["phantom_mr"]),
        "`sample` ({current:.1f} s,".format(**r["sample_10_steps"]),
    ]  # fmt: skip
    assert [s for s in said if not _says(README, s)] == []
    assert _says(LMA, f"`lma --method sadir` {lma_sadir['baseline']:.1f} -> {lma_sadir['current']:.1f} s, shape "
                      f"{lma_shape['baseline']:.2f} -> {lma_shape['current']:.2f} s")  # fmt: skip


# ---- README: the 3D myocardium (SADIR) ---------------------------------------------------------------------------
def test_sadir_table_is_its_evaluation_json():
    checked = 0
    table = README.split("| slices | method | Dice | Jaccard | HD95 (mm) | min det D(phi^-1) |", 1)[1]
    for raw in table.split("\n\n", 1)[0].splitlines()[2:]:
        cells = [c.strip().strip("*").strip() for c in raw.strip().strip("|").split("|")]
        slices, method, numbers = cells[0], cells[1], [float(c) if c else None for c in cells[2:]]
        refined = "refinement" in method  # the refined run's file; the other rows are the network-alone run's
        summary = _load(SADIR_EVAL / f"sadir_eval_{slices}slices{'_refined' if refined else ''}.json")["summary"]
        key = {"SADIR": "sadir_refined" if refined else "sadir", "shape-based": "shape", "3D UNet": "unet3d"}
        source = summary[next(v for k, v in key.items() if method.startswith(k))]
        want = [source["dice"], source["jaccard"], source["hd95_mm"], source.get("jacobian_min")]
        for got, expected in zip(numbers, want):
            assert (got is None) == (expected is None), raw
            if got is not None:
                assert got == pytest.approx(expected, abs=0.005 if got > 1 else HALF), raw
        checked += 1
    assert checked == 8


# ---- docs/GPU.md: the H200 check --------------------------------------------------------------------------------
def test_gpu_table_is_gpu_check_h200_json():
    check = _load(ROOT / "docs" / "gpu_check_h200.json")
    d, e, ldm = check["dmcvr"], check["epdiff"], check["ldm"]
    assert f"torch {check['torch']}" in GPU and f"CPU: {check['cpu_threads']} threads" in GPU
    dice = [d["default_accel_vs_cpu"][k] for k in ("dice_LV", "dice_MYO", "dice_RV")]
    expected = [
        (f"| {d['default_accel_s']:.2f} s | {d['default_cpu_s']:.2f} s | label Dice {min(dice):.5f}-{max(dice):.5f}, "
         f"image PSNR {d['default_accel_vs_cpu']['image_psnr_db']:.0f} dB |"),
        f"| {d['full_inversion_ddim50_accel_s']:.2f} s | - |",
        (f"| {e['cuda_s']:.3f} s | {e['cpu_s']:.2f} s | max displacement difference "
         f"{e['max_disp_diff_vox']:.1e} voxel |").replace("e-05", "e-5"),
        (f"| {ldm['shipped32_ddim50_cuda_s']:.2f} s | {ldm['shipped32_ddim50_cpu_s']:.2f} s | "
         f"{100 * ldm['shipped32_accel_vs_cpu_label_agreement']:.2f} % of label voxels equal |"),
        "| {arch64_ddim10_accel_s:.2f} / {arch64_ddim20_accel_s:.2f} / {arch64_ddim50_accel_s:.2f} s |".format(**ldm),
        (f"took {d['shape_cpu_s']:.2f} s on that CPU: the 10-step dmcvr on the GPU takes "
         f"{d['default_accel_ratio_to_shape']:.0f}x shape's time there"),
    ]  # fmt: skip
    assert [s for s in expected if not _says(GPU, s)] == []
    # README quotes the same run
    full = d["full_inversion_ddim50_accel_s"]
    assert _says(README, f"the 10-step setting takes {d['default_accel_s']:.2f} s and full inversion with 50 steps "
                         f"{full:.1f} s")  # fmt: skip
    steps10 = _load(DMCVR_EVAL / "reconstruct_cpu_steps10.json")["results"]
    dmcvr, shape = steps10["dmcvr"]["median_s"], steps10["shape"]["median_s"]
    assert _says(GPU, f"take {dmcvr:.1f} s against {shape:.2f} s: ~{round(dmcvr / shape, -1):.0f}x")


# ---- docs/LMA.md: measured again -----------------------------------------------------------------------------------
def test_tos_accuracy_table_is_measured_again():
    """Held-out activation phantoms 100000-100039 per pattern, 3 slices x 18 sectors, noise sd 0.004: MAE of the
    onset detector and of the shipped regressor, against the table in docs/LMA.md (and Resources/models.json)."""
    from CardiacDiffusionLib.activation.regressor import load_default, predict_tos
    from CardiacDiffusionLib.activation.tos import detect_tos
    from CardiacDiffusionLib.phantoms.activation import ActivationPhantom

    rows = _table_rows(LMA, "| pattern, frames | detector | regressor |")
    model = load_default()
    settings = [("lbbb", 17.0, 40), ("lbbb", 25.0, 30), ("normal", 17.0, 40), ("normal", 25.0, 30)]
    for pattern, frame_ms, frames in settings:
        detector, regressor = [], []
        for seed in range(100_000, 100_040):
            phantom = ActivationPhantom(seed, pattern)
            strain = phantom.strain_matrices(3, 18, frames, frame_ms, noise=0.004)
            truth = np.maximum(phantom.sector_tos(3, 18), frame_ms)  # no onset is visible before the first frame
            detector.append(np.abs(detect_tos(strain, frame_ms) - truth).mean())
            regressor.append(np.abs(predict_tos(strain, frame_ms, model) - truth).mean())
        label = f"{'LBBB' if pattern == 'lbbb' else 'normal'}, {frame_ms:g} ms x {frames}"
        got = [round(float(np.mean(detector)), 1), round(float(np.mean(regressor)), 1)]
        assert got == [rows[label][0], rows[label][1]], label


def test_rv_insertion_bounds_on_mr_phantoms_are_measured_again():
    """LMA.md: the label's anterior insertion against the analytic one, MR phantoms 0-5 (the eval_lma scan: mean
    1.5, max 4.3 deg, 39 slices with RV) and 0-11 (within 4.3 deg, 76 slices)."""
    from CardiacDiffusionLib.activation.phantom_case import PhantomCase, heart_dir

    def in_plane(v, axis):
        v = v - (v @ axis) * axis
        return v / np.linalg.norm(v)

    errors = {}
    for seed in range(12):
        case = PhantomCase(seed, 100_000)
        f = case.frame
        errors[seed] = [
            np.degrees(np.arccos(np.clip(in_plane(f.insertion_points[i] - f.centres[i], f.axis)
                                         @ in_plane(heart_dir(case.phantom, case.thetas[i]), f.axis), -1, 1)))
            for i in np.flatnonzero(case.has_rv)
        ]  # fmt: skip
    first6 = np.concatenate([errors[s] for s in range(6)])
    every = np.concatenate(list(errors.values()))
    assert _says(LMA, f"RV insertion {first6.mean():.1f} degrees from the analytic truth on average "
                      f"(max {first6.max():.1f}, {len(first6)} slices")  # fmt: skip
    assert _says(LMA, f"the label's within {every.max():.1f} deg of it ({len(every)} slices)")


def test_acdc_insertion_twist_is_measured_again():
    """LMA.md: on the 160 ACDC volumes the per-slice (label) insertions lie within 41 deg of their volume's mean
    direction, each volume's largest deviation having median 12.6 deg (activation.qa says 40.9 and 12.6)."""
    import warnings

    from CardiacDiffusionLib.activation.sectors import lv_frame
    from CardiacDiffusionLib.io.acdc import list_acdc, read_acdc

    if not ACDC.is_dir():
        pytest.skip(f"shared ACDC data missing at {ACDC}")
    largest = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no spacing, no orientation stored: said by the reader, known here
        for _, _, path in list_acdc(ACDC):
            frame = lv_frame(read_acdc(path))
            own = np.array(frame.insertion_source) == "labels"
            largest.append(np.degrees(np.abs(np.angle(np.exp(1j * frame.insertion_angles[own])))).max())
    assert len(largest) == 160
    assert _says(LMA, f"stay within {max(largest):.0f} degrees of each volume's mean (each volume's largest: median "
                      f"{np.median(largest):.1f};")  # fmt: skip


def test_lma_json_has_every_key_the_doc_names(tmp_path, capsys):
    """Every key LMA.md's ``lma.json`` paragraph names is in the lma.json of real ``cardiac-diffusion lma`` runs: strain
    with the regressor, SADIR (its keys), and a TOS table (its ``file``)."""
    from helpers import lma_phantom_files, strict_json

    from CardiacDiffusionLib.cli.main import main

    folder, _ = lma_phantom_files(tmp_path)
    common = ["lma", "--slices", str(folder / "labels.nii.gz"), "--device", "cpu"]
    runs = {"regressor": ["--strain", str(folder / "strain.npy"), "--tos-method", "regressor"],
            "sadir": ["--strain", str(folder / "strain.npy"), "--method", "sadir", "--sadir-refine", "0"],
            "table": ["--tos-csv", str(tmp_path / "regressor" / "sector_tos.csv")]}  # fmt: skip
    keys: set[str] = set()

    def collect(value):
        if isinstance(value, dict):
            keys.update(value)
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    for name, options in runs.items():  # the table run reads the regressor run's sector_tos.csv
        assert main([*common, *options, "--out", str(tmp_path / name)]) == 0, name
        lma = strict_json((tmp_path / name / "lma.json").read_text())
        collect(lma)
    capsys.readouterr()
    assert lma["tos_source"]["kind"] == "table" and "file" in lma["tos_source"]
    paragraph = LMA.split("`lma.json`: `workflow`", 1)[1].split("\n\n", 1)[0]
    named = {"workflow", *re.findall(r"`([a-z_0-9]+)`", paragraph)} - {"nan", "null"}  # values, not keys
    assert len(named) > 60 and sorted(named - keys) == []


# ---- docs/METRICS.md ---------------------------------------------------------------------------------------------
def test_metrics_doc_figures_on_acdc_es_vs_ed():
    """Patients 001-006, ES vs ED at 10 x 1.5 x 1.5 mm: the directed-max HD95 exceeds the pooled one by up to 1.5 mm
    (005 RV 12.9 vs 11.4, 001 RV 14.5 vs 13.3) and SimpleITK's Hausdorff filter equals ``hd`` on 16 of the 18
    structures, not on the LV of 002 (15.0 vs 14.77 mm) and of 006 (10.61 vs 10.44)."""
    h5py = pytest.importorskip("h5py")
    import SimpleITK as sitk

    from CardiacDiffusionLib.metrics.surface import surface_distances

    if not ACDC.is_dir():
        pytest.skip(f"shared ACDC data missing at {ACDC}")
    spacing = (10.0, 1.5, 1.5)
    gaps, differ = {}, {}
    for patient in range(1, 7):
        ed_file, es_file = sorted(ACDC.glob(f"patient{patient:03d}_frame*.h5"))
        ed, es = (h5py.File(f, "r")["label"][:] for f in (ed_file, es_file))
        for value, name in {1: "RV", 2: "MYO", 3: "LV"}.items():
            pred, ref = es == value, ed == value
            sd = surface_distances(pred, ref, spacing)
            gaps[(patient, name)] = (sd.hd95("directed-max"), sd.hd95("pooled"))
            images = []
            for mask in (pred, ref):
                image = sitk.GetImageFromArray(mask.astype(np.uint8))
                image.SetSpacing(spacing[::-1])
                images.append(image)
            f = sitk.HausdorffDistanceImageFilter()
            f.Execute(*images)
            if abs(f.GetHausdorffDistance() - sd.hd()) > 1e-6:
                differ[(patient, name)] = (sd.hd(), f.GetHausdorffDistance())
    largest = max(a - b for a, b in gaps.values())
    assert _says(METRICS, f"the gap was up to {largest:.1f} mm")
    assert max(gaps, key=lambda k: gaps[k][0] - gaps[k][1]) == (5, "RV")  # the example the doc gives first
    said = "(patient005 RV: {:.1f} vs {:.1f} mm; patient001 RV {:.1f} vs {:.1f} mm)"
    assert _says(METRICS, said.format(*gaps[5, "RV"], *gaps[1, "RV"]))
    assert sorted(differ) == [(2, "LV"), (6, "LV")] and len(gaps) == 18
    assert _says(METRICS, "the LV of 002 gives {:.1f} vs {:.2f} mm and of 006 {:.2f} vs {:.2f} mm".format(
        *differ[2, "LV"], *differ[6, "LV"]))  # fmt: skip


# ---- README: evaluate gap, as a user runs it ------------------------------------------------------------------------
def test_evaluate_gap_table_keys_and_a_spot_check_of_the_measured_rows(tmp_path, capsys):
    """``evaluate gap --per-volume`` on patients 061-062 writes the keys README names, and its linear and shape rows
    are those of the per-volume table the README's figures come from (docs/models/dmcvr_eval)."""
    from CardiacDiffusionLib.cli.main import main

    if not ACDC.is_dir():
        pytest.skip(f"shared ACDC data missing at {ACDC}")
    out = tmp_path / "gap.json"
    assert main(["evaluate", "gap", "--data", str(ACDC), "--methods", "nearest", "linear", "shape",
                 "--patients", "61-62", "--per-volume", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    table = json.loads(out.read_text())
    described = README.split('`{"settings": {', 1)[1]
    settings = re.findall(r"(\w+)(?: \([^)]*\))?(?:, |\})", described.split("}", 1)[0] + "}")
    assert sorted(settings) == sorted(table["settings"])
    method_keys = re.findall(r'"(\w+)": ', described.split("}}`", 1)[0].split('"<method>": {', 1)[1])
    assert {k for k in method_keys if k not in {"LV", "MYO", "RV"}} <= set(table["shape"])
    reference = _load(DMCVR_EVAL / "gap_acdc_val_per_volume.json")
    for method in ("linear", "shape"):
        want = {r["volume"]: r for r in reference[method]["rows"]}
        for row in table[method]["rows"]:
            ref = want[row["volume"]]
            assert row["dice"] == pytest.approx(ref["dice"], abs=1e-4), row["volume"]
            assert (row["psnr"], row["ssim"]) == pytest.approx((ref["psnr"], ref["ssim"]), abs=1e-4)
        assert len(table[method]["rows"]) == 4


def test_wheel_size_claim_tracks_the_shipped_models():
    """README: the wheel carries the shipped models, ~39 MB (built 2026-11-29: 39.06 MB, the models' 41.5 MB
    deflated); a model added or grown should change that figure."""
    total = sum(p.stat().st_size for p in (ROOT / "Resources").rglob("*") if p.is_file()) / 1e6
    assert "the wheel carries the shipped models, ~39 MB" in README
    assert 39 / 1.15 < total < 39 * 1.15, f"Resources/ holds {total:.1f} MB: update README's wheel size"


def test_lma_output_folder_that_cannot_be_made_is_said_as_out(tmp_path, capsys):
    """README: an output that cannot be written ends in one ``error:`` line naming it (exit code 2). ``lma`` made its
    folder in the library after the work, and a folder that cannot be made read ``error: file not found: DIR``."""
    from helpers import lma_phantom_files

    from CardiacDiffusionLib.cli.main import main

    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no folder can be made")
    folder, _ = lma_phantom_files(tmp_path)
    out = "/proc/cardiac-diffusion-test/lma"
    code = main(["lma", "--slices", str(folder / "labels.nii.gz"), "--strain", str(folder / "strain.npy"), "--out", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: --out {out}: "), err
    assert "choose another place" in err[0]


def test_ctseg_mixing_table_is_its_results_json():
    """docs/TRAINING.md's real + synthetic fine-tuning table and README's two means: the eval script's results.json."""
    data = json.loads((ROOT / "docs/models/ctseg_eval/mix_300steps_seeds0-1.json").read_text())
    text = (ROOT / "docs/TRAINING.md").read_text()
    rows = {"a_real_only": "| real only (", "b_ssl_then_real_plus_syn": "| SSL, then real + synthetic (the preset)",
            "c_ssl_then_real_only": "| SSL, then real only ("}  # fmt: skip
    means = {}
    for arm, start in rows.items():
        line = next(line for line in text.splitlines() if line.startswith(start))
        cells = [c.strip().strip("*") for c in line.split("|")[-4:-1]]
        seeds = [data["arms"][arm][f"seed{s}"]["dice"]["mean"] for s in data["seeds"]]
        means[arm] = np.mean(seeds)
        assert cells == [f"{seeds[0]:.3f}", f"{seeds[1]:.3f}", f"{means[arm]:.3f}"], (arm, cells)
    readme = (ROOT / "README.md").read_text()
    assert f"mean Dice yours only {means['a_real_only']:.3f}, the default {means['b_ssl_then_real_plus_syn']:.3f}" in readme


def test_ctseg_flips_table_is_its_results_jsons():
    """docs/TRAINING.md's mirroring table (per seed: mean, LA, RA, LV, RV with and without flips; their means)."""
    runs = {flips: json.loads((ROOT / f"docs/models/ctseg_eval/flips_{flips}_300steps_seeds0-4.json").read_text())
            for flips in ("true", "false")}  # fmt: skip
    text = (ROOT / "docs/TRAINING.md").read_text()
    start = text.index("| real only, seed | flips: mean |")
    lines = text[start:].splitlines()[2:8]
    keys = ("mean", "LA", "RA", "LV", "RV")
    for line, seed in zip(lines, [*range(5), "mean"]):
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert cells[0] == str(seed), line
        expect = []
        for flips in ("true", "false"):
            arm = runs[flips]["arms"]["a_real_only"]
            dice = [arm[f"seed{s}"]["dice"] for s in range(5)]
            expect += [np.mean([d[k] for d in dice]) if seed == "mean" else dice[seed][k] for k in keys]
        assert cells[1:] == [f"{v:.3f}" for v in expect], line

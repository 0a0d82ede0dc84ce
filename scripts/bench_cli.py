"""Benchmark: the commands a clinician runs, end to end (fresh process each: imports, reading, work, writing),
this checkout against a baseline revision, interleaved run by run.

The baseline is ``git archive REV CardiacDiffusionLib`` unpacked beside a link to this checkout's ``Resources/``
(the same models), run with ``PYTHONPATH`` pointing at it; the current code is the working tree. Each case runs
baseline, current, baseline, current, ... ``--repeats`` times each; the report (``utils/bench.py`` machine and
versions) gives every wall time, the medians and baseline median / current median, and says whether the two
wrote the same outputs (NIfTI voxels and geometry, JSON content, every other file byte for byte).

    OMP_NUM_THREADS=1 python scripts/bench_cli.py --baseline HEAD --repeats 5 --out docs/bench_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RUNNER = "import sys; from CardiacDiffusionLib.cli.main import main; sys.exit(main(sys.argv[1:]))"


def baseline_tree(rev: str, folder: Path) -> Path:
    """``CardiacDiffusionLib`` of ``rev`` under ``folder`` with ``Resources`` linked to this checkout's."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "CardiacDiffusionLib"], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "Resources").symlink_to(ROOT / "Resources")
    return folder


def inputs(work: Path) -> dict[str, Path]:
    """MR phantom seed 7 (SAX, labels, LAX labels), the LMA phantom's labels and strain, and the shared real data."""
    from CardiacDiffusionLib.activation.phantom_case import PhantomCase
    from CardiacDiffusionLib.phantoms.scanner import make_subject, write_subject

    files = write_subject(make_subject(7), work / "phantom", dicom=False)
    case = PhantomCase(7)
    sitk.WriteImage(case.stack.to_image(labels=True), str(work / "lma_labels.nii.gz"))
    np.save(work / "strain.npy", case.strain)
    out = {k: Path(v) for k, v in files.items()}
    out["lma_labels"], out["strain"] = work / "lma_labels.nii.gz", work / "strain.npy"
    return out


def cases(f: dict[str, Path], include_sadir: bool) -> dict[str, list[str]]:
    lax = [str(f[f"lax_{v}_labels"]) for v in ("2ch", "3ch", "4ch")]
    sax = ["--sax", str(f["sax_image"]), "--sax-labels", str(f["sax_labels"])]
    out = {f"reconstruct_{m}_phantom": ["reconstruct", "--method", m, *sax, "--lax-labels", *lax]
           for m in ("nearest", "linear", "shape")}  # fmt: skip
    out["lax_dice_phantom"] = ["lax-dice", "--labels", str(f["truth_labels"]), "--lax-labels", *lax]
    out["inspect_phantom"] = ["inspect", *sax, "--lax-labels", *lax]
    out["lma_shape_phantom"] = ["lma", "--slices", str(f["lma_labels"]), "--strain", str(f["strain"])]
    if include_sadir:
        out["lma_sadir_phantom"] = [*out["lma_shape_phantom"], "--method", "sadir", "--device", "cpu"]
    acdc = SHARED / "acdc" / "patient001_frame01.h5"
    if acdc.exists():
        out["reconstruct_shape_acdc"] = ["reconstruct", "--method", "shape", "--sax", str(acdc)]
        out["inspect_acdc"] = ["inspect", "--sax", str(acdc)]
    dicom = SHARED / "sunnybrook-SC-HF-I-1" / "dicom"
    if dicom.exists():
        out["inspect_sunnybrook_dicom"] = ["inspect", "--sax", str(dicom)]
        out["reconstruct_linear_sunnybrook_dicom"] = ["reconstruct", "--method", "linear", "--sax", str(dicom)]
    out["sample_10_steps"] = ["sample", "--steps", "10"]
    out["phantom_mr"] = ["phantom", "--kind", "mr", "--seed", "7"]
    out["demo_classical"] = ["demo", "--methods", "nearest", "linear", "shape", "--skip", "lma", "synthetic"]
    return out


def run_once(argv: list[str], out: Path, pythonpath: str | None) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    target = out / "out.json" if argv[0] in ("inspect", "lax-dice") else out  # these two write one file
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", RUNNER, *argv, "--out", str(target)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True)  # not the checkout: "" leads sys.path
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def same_outputs(a: Path, b: Path, base_tree: Path) -> dict:
    """Files compared by content: NIfTI voxels + geometry, JSON (less run-specific keys; the baseline's model paths
    under ``base_tree`` read as this checkout's), every other file byte for byte."""
    differ, compared = [], 0
    for path in sorted(a.rglob("*")):
        other = b / path.relative_to(a)
        if path.name.endswith(".nii.gz"):
            x, y = sitk.ReadImage(str(path)), sitk.ReadImage(str(other))
            same = (sitk.GetArrayViewFromImage(x).tobytes() == sitk.GetArrayViewFromImage(y).tobytes()
                    and x.GetOrigin() == y.GetOrigin() and x.GetSpacing() == y.GetSpacing()
                    and x.GetDirection() == y.GetDirection())  # fmt: skip
        elif path.suffix == ".json":
            same = _comparable(path, base_tree) == _comparable(other, base_tree)
        elif path.is_file():
            same = path.read_bytes() == other.read_bytes()
        else:
            continue
        compared += 1
        if not same:
            differ.append(str(path.relative_to(a)))
    return {"files_compared": compared, "differ": differ}


def _comparable(path: Path, base_tree: Path) -> str:
    data = json.loads(path.read_text().replace(str(base_tree), str(ROOT)))
    if isinstance(data, dict):  # where the run wrote, and when
        for key in ("outputs", "output", "created", "out", "seconds"):
            data.pop(key, None)
    return json.dumps(data, sort_keys=True).replace(str(path.parent), "OUT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision of the baseline (default HEAD)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="*", help="only these cases (default all)")
    parser.add_argument("--no-sadir", action="store_true", help="leave out lma --method sadir (about 10 s a run)")
    parser.add_argument("--out", default="bench_cli.json")
    args = parser.parse_args()
    from CardiacDiffusionLib.utils.bench import machine_info, versions
    from CardiacDiffusionLib.utils.jsonfile import write_json

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "baseline").mkdir()
        base = baseline_tree(args.baseline, tmp / "baseline")
        files = inputs(tmp / "inputs")
        todo = cases(files, not args.no_sadir)
        todo = {k: v for k, v in todo.items() if not args.cases or k in args.cases}
        results = {}
        for name, argv in todo.items():
            times = {"baseline": [], "current": []}
            for r in range(args.repeats):
                for who, path in (("baseline", str(base)), ("current", None)):
                    out = tmp / "out" / name / f"{who}{r}"
                    times[who].append(run_once(argv, out, path))
            med = {k: statistics.median(v) for k, v in times.items()}
            results[name] = {
                "argv": argv, "times_s": times, "median_s": med,
                "baseline_over_current": med["baseline"] / med["current"],
                "outputs": same_outputs(tmp / "out" / name / "baseline0", tmp / "out" / name / "current0", base),
            }  # fmt: skip
            print(f"{name:40s} {med['baseline']:7.2f} s -> {med['current']:7.2f} s "
                  f"({results[name]['baseline_over_current']:.2f}x; outputs differ: {results[name]['outputs']['differ']})")  # fmt: skip
    report = {
        "benchmark": "CLI commands end to end, baseline revision vs this checkout, interleaved fresh processes",
        "config": {"baseline": args.baseline, "repeats": args.repeats, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "machine": machine_info(), "versions": versions(), "results": results,
    }  # fmt: skip
    write_json(args.out, report)


if __name__ == "__main__":
    main()

"""``cardiac-diffusion demo``: every workflow on embedded phantom data, with a report.

1. Volume reconstruction: an MR phantom subject is reconstructed from its SAX stack with each
   method available (classical baselines; DMCVR when a trained model is shipped), checked on its
   2ch/3ch/4ch LAX planes; the Dice table is printed and written with the volumes and a PNG report.
2. Late mechanical activation: the same phantom heart with an LBBB activation phantom's DENSE-like
   strain; TOS painted on the myocardium, bullseye and lead suggestion, TOS error against truth.
3. Synthetic data: one CT image + 8-label pair sampled from the shipped latent diffusion model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..utils.jsonfile import write_json
from .common import output_folder, say_runs_on_cpu
from .reconstruct import BASELINES, METHODS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the workflows on a phantom and write a report")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--seed", type=int, default=7, help="phantom seed")
    p.add_argument("--methods", nargs="*", default=None, choices=METHODS,
                   help="reconstruction methods (default: all available)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps for the diffusion steps")
    p.add_argument("--skip", nargs="*", default=[], choices=("lma", "synthetic"), help="workflows to leave out")
    p.set_defaults(func=run)


def default_methods() -> list[str]:
    """The baselines, plus dmcvr when a trained model is registered."""
    from ..models.store import list_models

    shipped = any(m.get("architecture") == "dmcvr" for m in list_models())
    return [*BASELINES, *(["dmcvr"] if shipped else [])]


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)
    if not 0 <= args.seed <= 2**63 - 2:  # numpy phantoms take seeds >= 0, torch sampling 64-bit ones
        raise InputError(f"--seed {args.seed}: give a whole number from 0 to {2**63 - 2}")
    methods = args.methods or default_methods()
    if "dmcvr" in methods or "synthetic" not in args.skip:  # the diffusion steps' device, checked before any work
        from ..utils.device import resolve_device

        resolve_device(args.device)
    else:  # an unknown --device refused, an accelerator the CPU-only workflows leave unused said
        say_runs_on_cpu(args.device, f"this demo (--methods {' '.join(methods)}, synthetic skipped)",
                        "dmcvr or the synthetic workflow")
    reconstruction_demo(Path(args.out), args.seed, methods, args.device)
    if "lma" not in args.skip:
        lma_demo(Path(args.out) / "lma", args.seed)
    if "synthetic" not in args.skip:
        synthetic_demo(Path(args.out) / "synthetic", args.seed, args.device)
    out = Path(args.out)
    pictures = [out / "report.png"] + ([out / "lma" / "bullseye.png", out / "lma" / "myocardium_tos.png"]
                                       if "lma" not in args.skip else [])  # fmt: skip
    print(f"[demo] done; pictures to look at: {', '.join(map(str, pictures))} (research software, decision support, "
          "not a diagnosis)")  # fmt: skip
    return 0


def reconstruction_demo(out: Path, seed: int, methods: list[str], device: str) -> None:
    from ..io.volumes import write_image
    from ..phantoms.scanner import make_subject, write_subject
    from ..reconstruction.lax_check import format_table, methods_lax_dice
    from ..report import write_report

    print(f"[demo] MR phantom subject seed {seed} -> {out / 'phantom'}")
    subject = make_subject(seed)
    write_subject(subject, out / "phantom", dicom=False)
    for warning in subject.sax.geometry_report()["warnings"]:
        print(f"warning: {warning}")
    volumes = {}

    def keep(method, result) -> None:  # each method's volumes written, its labels kept for the report
        folder = out / "reconstruction" / method
        write_image(result.image, folder / "reconstruction_image.nii.gz")
        write_image(result.labels, folder / "reconstruction_labels.nii.gz")
        volumes[method] = result.labels
        print(f"[demo] {method}: wrote {folder}")

    print(f"[demo] reconstruct with {', '.join(methods)}, each checked on the LAX planes")
    by_method, timings = methods_lax_dice(subject.sax, methods, 1.0, subject.lax_labels,
                                          {"dmcvr": {"device": device}}, keep)  # fmt: skip
    table = {view: {method: by_method[method][view] for method in methods} for view in subject.lax_labels}
    rows = {f"{method} {view}": table[view][method] for method in methods for view in table}
    print("[demo] Dice against the LAX labels per method and plane (0-1, 1 = identical; n/a: label in neither):")
    print(format_table(rows))
    write_json(out / "lax_dice.json", {"table": table, "seconds": timings})
    view = "4ch"
    report = write_report(
        out / "report.png", subject.sax, subject.lax[view], subject.lax_labels[view], volumes,
        {m: table[view][m] for m in methods}, title=f"CardiacDiffusion demo: phantom {seed}, LAX {view}",
    )  # fmt: skip
    print(f"[demo] wrote {out / 'lax_dice.json'} (all planes) and {report} (SAX slices, the {view} plane, its Dice)")


def lma_demo(out: Path, seed: int) -> None:
    """LMA on the phantom heart with an LBBB activation; TOS error on the mesh against the truth."""
    import numpy as np

    from vtk.util.numpy_support import vtk_to_numpy

    from ..activation.mapping import mesh_points
    from ..activation.phantom_case import PhantomCase
    from ..activation.pipeline import TOS_ARRAY, run_lma, write_outputs
    from ..activation.render import render_tos_png

    print(f"[demo] lma: phantom {seed} with an LBBB activation, DENSE-like strain -> {out}")
    case = PhantomCase(seed)
    result = run_lma(case.stack, strain=case.strain, frame_ms=case.frame_ms)
    paths = write_outputs(result, out)
    truth, _, _ = case.truth_at(mesh_points(result.mesh))
    painted = vtk_to_numpy(result.mesh.GetPointData().GetArray(TOS_ARRAY))
    lead = result.lead
    ties = f"; within {lead['near_tie_ms']:g} ms: {', '.join(map(str, lead['near_ties']))}" if lead["near_ties"] else ""
    print(f"[demo] lma: TOS on {len(painted)} mesh points, mean abs error {np.mean(np.abs(painted - truth)):.1f} ms "
          f"vs the phantom truth; suggested LV lead segment {lead['segment']} ({lead['name']}{ties}); "
          "decision support, not a diagnosis")  # fmt: skip
    lateral = np.deg2rad(240.0)  # AHA sector order from the anterior RV insertion: the lateral wall
    view = np.cos(lateral) * result.frame.e0 + np.sin(lateral) * result.frame.e1
    picture = render_tos_png(result.mesh, out / "myocardium_tos.png", result.frame.axis, view)
    print(f"[demo] wrote {paths['bullseye']} (AHA bullseye), {picture} (lateral wall, base up), {paths['segments']}, "
          f"{paths['vtp']} (open in Slicer/ParaView) and {paths['json']}")  # fmt: skip


def synthetic_demo(out: Path, seed: int, device: str, steps: int = 20) -> None:
    """One sampled CT image + label pair, with the label clean-up's effect."""
    from ..ldm.generate import DEFAULT_MODEL, load_ldm, sample_pairs, write_pairs
    from ..utils.device import prepare_device

    print(f"[demo] synthetic: one CT pair from {DEFAULT_MODEL}, {steps} DDIM steps -> {out}")
    model = load_ldm(DEFAULT_MODEL, prepare_device(device))
    pairs = sample_pairs(model, 1, seed, steps)
    written = write_pairs(out, pairs, float(model.config["spacing_mm"]), {"model": DEFAULT_MODEL, "seed": seed, "steps": steps})
    noisy = pairs[0]["noise_before"]["noisy_fraction"], pairs[0]["noise_after"]["noisy_fraction"]
    print(f"[demo] synthetic: noisy label voxels {100 * noisy[0]:.2f} % -> {100 * noisy[1]:.2f} % after clean-up; "
          f"wrote {', '.join(str(p) for p in written)}")  # fmt: skip

"""``cardiac-diffusion evaluate gap``: the drop-every-other-slice protocol on ACDC-layout data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..utils.jsonfile import dumps, loads_strict
from .common import output_file, write_json_file
from .reconstruct import add_roughness_guard, guard_setting, roughness_guard


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluation protocols")
    protocols = p.add_subparsers(dest="protocol", required=True)
    g = protocols.add_parser("gap", help="drop every other SAX slice and predict it (ACDC-layout HDF5 folder)")
    g.add_argument("--data", required=True, nargs="+",
                   help="folder(s) of ACDC-layout .h5 volumes (a file name found in two folders is named by its path)")
    g.add_argument("--methods", nargs="+", default=["nearest", "linear", "shape"],
                   help="nearest, linear, shape, dmcvr (default: nearest linear shape)")
    g.add_argument("--patients", help="patient range, e.g. 61-80 (default: all)")
    g.add_argument("--limit", type=int, help="evaluate at most this many volumes")
    g.add_argument("--steps", type=int, help="DDIM steps of dmcvr (default: the model's)")
    g.add_argument("--strength", type=float, help="dmcvr: fraction of the diffusion schedule inverted (1 = full)")
    g.add_argument("--device", help="auto|cpu|cuda|cuda:N|mps for dmcvr (default auto)")
    g.add_argument("--model", help="dmcvr model name or .safetensors (default: the shipped one)")
    g.add_argument("--shape-prior", type=float, help="dmcvr: weight of the shape prior in generated labels (default 0.4)")
    add_roughness_guard(g)
    g.add_argument("--no-labels", action="store_true",
                   help="remove the kept slices' labels: dmcvr segments them itself; the other methods are scored "
                        "on images only (their Dice is null)")  # fmt: skip
    g.add_argument("--per-volume", action="store_true",
                   help="add each volume's scores (and any warning its method gave) under \"rows\"")
    g.add_argument("--out", help="write the JSON table here too (with the inputs and settings under \"settings\")")
    g.set_defaults(func=run_gap)
    c = protocols.add_parser("compare", help="paired per-volume differences of one method against others in a "
                                             "gap table made with --per-volume (mean, 95%% CI, wins, Wilcoxon p)")
    c.add_argument("table", help="JSON written by `evaluate gap --per-volume --out`")
    c.add_argument("--method", required=True, help="the method to compare, e.g. dmcvr")
    c.add_argument("--against", nargs="+", required=True, help="baselines, e.g. linear shape")
    c.add_argument("--out", help="write the JSON comparison here too")
    c.set_defaults(func=run_compare)
    register_ldm(protocols)


def parse_range(text: str | None):
    if not text:
        return None
    try:
        first, dash, last = text.partition("-")
        first, last = int(first), int(last) if dash else int(first)
    except ValueError:
        raise InputError(f"--patients {text!r}: expected a patient number or a range like 61-80") from None
    if first < 0:
        raise InputError(f"--patients {text!r}: patient numbers are >= 0")
    if last < first:
        raise InputError(f"--patients {text!r}: the first patient comes first, e.g. {last}-{first}")
    return range(first, last + 1)


#: the dmcvr-only options of `evaluate gap` (argument name: keyword of the dmcvr method)
DMCVR_OPTIONS = {"steps": "steps", "device": "device", "model": "model", "strength": "strength",
                 "shape_prior": "shape_prior", "roughness_guard": "guard"}  # fmt: skip


def check_methods(methods: list[str], args: argparse.Namespace) -> dict:
    """The methods exist and are given once; dmcvr options only with dmcvr. Returns dmcvr's options."""
    from ..reconstruction.baselines import get_method

    for method in methods:
        if methods.count(method) > 1:
            raise InputError(f"--methods: {method} is given twice; give each method once")
        try:
            get_method(method)
        except InputError:
            raise InputError(f"--methods {method}: unknown method; choose from nearest, linear, shape, dmcvr") from None
    dmcvr = {key: getattr(args, name) for name, key in DMCVR_OPTIONS.items() if getattr(args, name) is not None}
    only_dmcvr = [name for name in DMCVR_OPTIONS if name != "device" and getattr(args, name) is not None]
    if only_dmcvr and "dmcvr" not in methods:  # --device is every command's: harmless without dmcvr
        given = ", ".join(f"--{name.replace('_', '-')}" for name in only_dmcvr)
        raise InputError(f"{given}: only dmcvr uses these, and --methods {' '.join(methods)} has no dmcvr; "
                         "add dmcvr or leave the option out")  # fmt: skip
    if "guard" in dmcvr:  # a ratio > 0 or off, refused by the option's name before any work
        dmcvr["guard"] = roughness_guard(dmcvr["guard"])
    return dmcvr


def dmcvr_settings(dmcvr: dict) -> dict:
    """dmcvr's options as the table's settings record them: by option name, the roughness guard as a ratio or "off"
    (strict JSON has no Infinity)."""
    names = {key: name for name, key in DMCVR_OPTIONS.items()}
    return {names[k]: guard_setting(v) if k == "guard" else v for k, v in dmcvr.items()}


def read_volumes(folders: list[Path], patients: str | None, limit: int | None) -> list:
    """The labelled stacks of the chosen patients, every file checked before the long run."""
    from ..io.acdc import list_acdc
    from ..reconstruction.gap import acdc_entries, acdc_stacks, unreadable_volumes

    chosen = parse_range(patients)
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"--data {folder}: folder not found")
        try:
            list_acdc(folder)
        except InputError:
            raise InputError(f"--data {folder}: no ACDC-layout patientNNN_frameFF.h5 volumes in it; give the folder "
                             "that holds them") from None  # fmt: skip
    entries = acdc_entries(folders, chosen, limit)
    bad = unreadable_volumes(path for _, _, path in entries)  # headers only: every bad file named before any work
    if bad:
        them = ("that patient", "the file") if len(bad) == 1 else ("those patients", "the files")
        raise InputError(f"--data: {len(bad)} of {len(entries)} volume file(s) cannot be read: {'; '.join(bad)}; "
                         f"leave {them[0]} out with --patients, or move {them[1]} out of the folder")  # fmt: skip
    try:
        stacks = list(acdc_stacks(folders, chosen, limit))
    except InputError as e:  # a file without labels or unreadable: name it and say how to go on without it
        raise InputError(f"--data: {str(e).rstrip('.')} (the protocol scores every volume against its labels: leave "
                         "that patient out with --patients, or move the file out of the folder)") from None  # fmt: skip
    if not stacks:
        held = sorted({p for f in folders for p, _, _ in list_acdc(f)})
        raise InputError(f"--patients {patients}: no such patient in --data; it holds patients {held[0]}-{held[-1]}")
    return stacks


def run_gap(args: argparse.Namespace) -> int:
    from ..reconstruction.gap import evaluate_gap, volume_names

    volumes = [str(f) for d in args.data for f in sorted(Path(d).glob("*.h5"))]  # the inputs --out must not replace
    if args.out:
        output_file(args.out, volumes)  # checked before the long run
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit {args.limit}: give at least 1 volume (or leave it out for all)")
    dmcvr = check_methods(args.methods, args)
    folders = [Path(d) for d in args.data]
    stacks = read_volumes(folders, args.patients, args.limit)
    names = volume_names(stacks)
    given = "without the kept slices' labels" if args.no_labels else "with the kept slices' labels"
    print(f"gap protocol: {len(stacks)} volumes, methods {', '.join(args.methods)}, {given}", file=sys.stderr)

    def progress(index: int, name: str) -> None:
        print(f"gap protocol: volume {index + 1}/{len(stacks)} done ({name})", file=sys.stderr, flush=True)

    scored = evaluate_gap(stacks, args.methods, progress=progress, options={"dmcvr": dmcvr},
                          kept_labels=not args.no_labels, per_volume=args.per_volume)  # fmt: skip
    settings = {"command": "evaluate gap", "data": [str(f) for f in folders], "patients": args.patients,
                "limit": args.limit, "methods": list(args.methods), "kept_labels": not args.no_labels,
                "dmcvr": dmcvr_settings(dmcvr) if "dmcvr" in args.methods else None, "volumes": names}  # fmt: skip
    table = {"settings": settings, **scored}
    if "dmcvr" in table:  # which model made the dmcvr rows: name, version, sha256
        from ..dmcvr.reconstruction import default_model_name
        from ..models.store import model_provenance

        table["dmcvr"]["model"] = model_provenance(args.model or default_model_name())
    print(dumps(table, "evaluate gap", indent=2))
    print(markdown_table(scored), file=sys.stderr)
    for method, row in scored.items():
        for note in row["notes"]:
            print(f"note: {method}: {note}", file=sys.stderr)
    if args.out:
        write_json_file(args.out, table, inputs=volumes)
    return 0


def markdown_table(scored: dict) -> str:
    """The means as a Markdown table, with the number of volumes behind each (mean (n))."""

    def cell(value, n) -> str:
        return "n/a" if value is None else f"{value:.4g} ({n})"

    lines = ["| method | volumes | Dice LV | Dice MYO | Dice RV | PSNR dB | SSIM |", "|---|---|---|---|---|---|---|"]
    for method, row in scored.items():
        dice = [cell(row["dice"][k], row["n"]["dice"][k]) for k in ("LV", "MYO", "RV")]
        lines.append(f"| {method} | {row['volumes']} | {' | '.join(dice)} | {cell(row['psnr'], row['n']['psnr'])} | "
                     f"{cell(row['ssim'], row['n']['ssim'])} |")  # fmt: skip
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    from ..reconstruction.gap import compare_methods

    if args.out:
        output_file(args.out, [args.table])
    path = Path(args.table)
    try:
        table = loads_strict(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON gap table ({e})") from None
    try:
        result = compare_methods(table, args.method, args.against)
    except InputError as e:  # name the file the table came from
        raise InputError(f"{path}: {e}") from None
    for baseline, scores in result.items():
        print(f"{args.method} - {baseline}: {scores['volumes']} volumes paired"
              + (f" ({len(scores['unpaired'])} in only one of them, left out)" if scores["unpaired"] else "")
              + "; mean difference [95% CI], wins/ties/losses, Wilcoxon p, volumes behind it")  # fmt: skip
        for name, d in [("PSNR dB", scores["psnr"]), ("SSIM", scores["ssim"])] + [
                (f"Dice {k}", v) for k, v in scores["dice"].items()]:  # fmt: skip
            if d["n"]:
                ci = "n/a" if d["ci95"] is None else f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
                p = "n/a" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.3g}"
                print(f"  {name:9s} {d['mean']:+.4f} {ci}  {d['wins']}/{d['ties']}/{d['losses']}  p={p}  n={d['n']}")
            else:
                print(f"  {name:9s} n/a: no volume has both scores")
    settings = {"command": "evaluate compare", "table": str(path), "method": args.method,
                "against": list(args.against), "gap_settings": table.get("settings")}  # fmt: skip
    if args.out:
        write_json_file(args.out, {"settings": settings, **result}, inputs=[args.table])
    return 0


# ---- evaluate ldm (synthetic CT pairs; CardiacDiffusionLib/ldm/evaluate.py) ----------------------
#: --repeats at most this many (each a full evaluation: three networks trained, ~3 min on one thread at the defaults)
LDM_MAX_REPEATS = 100
#: --ssl-steps / --finetune-steps at most this many (~0.1 s a step on one thread; the documented runs use 200-600)
LDM_MAX_STEPS = 100_000


def register_ldm(protocols: argparse._SubParsersAction) -> None:
    q = protocols.add_parser("ldm", help="LDM fidelity and downstream Dice of scratch / SSL / SSL + mixed fine-tuning")
    q.add_argument("--model", help="registered LDM name or .safetensors (default the shipped one)")
    q.add_argument("--real", type=int, default=8, help="real-role training phantoms (at least 2, default 8)")
    q.add_argument("--generated", type=int, default=24, help="generated pairs (at least 2, default 24 = 3x real)")
    q.add_argument("--test", type=int, default=8, help="held-out test phantoms (default 8)")
    q.add_argument("--ssl-steps", type=int, default=200,
                   help=f"masked-image pretraining steps (1-{LDM_MAX_STEPS}, default 200)")
    q.add_argument("--finetune-steps", type=int, default=200,
                   help=f"fine-tuning steps of every arm (1-{LDM_MAX_STEPS}, default 200)")
    q.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps per generated batch (default 20)")
    q.add_argument("--seed", type=int, default=0, help="seed of the first repeat (0 to 1e9, default 0)")
    q.add_argument("--repeats", type=int, default=1,
                   help=f"run seeds SEED..SEED+N-1 and report each arm's mean and sd (1-{LDM_MAX_REPEATS}, default 1)")
    q.add_argument("--real-ct", nargs=2, metavar=("CT", "HEART_MASK"),
                   help="a real CT and its heart mask (e.g. TotalSegmentator's heart.nii.gz): its heart HU shown beside "
                        "the phantoms' and the generated pairs' (default: not compared)")  # fmt: skip
    q.add_argument("--out", help="write the JSON result here too")
    q.set_defaults(func=run_ldm)


def run_ldm(args: argparse.Namespace) -> int:
    from ..ldm.evaluate import evaluate_ldm, format_repeats, format_table, real_ct_heart, summarise_repeats
    from ..ldm.generate import DEFAULT_MODEL, load_ldm
    from ..models.store import model_provenance

    if args.out:
        output_file(args.out, [args.model, *(args.real_ct or [])])
    for name in ("test", "ssl_steps", "finetune_steps", "ddim_steps", "repeats"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if args.repeats > LDM_MAX_REPEATS:
        raise InputError(f"--repeats {args.repeats}: at most {LDM_MAX_REPEATS} (each repeat trains three networks, "
                         "about 3 min on one CPU thread at the defaults; the mean's sd hardly changes beyond tens of "
                         "seeds); run further seeds as another run with --seed")  # fmt: skip
    for name in ("ssl_steps", "finetune_steps"):
        if getattr(args, name) > LDM_MAX_STEPS:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: at most {LDM_MAX_STEPS} (about 0.1 s "
                             "a step on one CPU thread: hours per arm already; the docs' runs use 200-600)")  # fmt: skip
    for name in ("real", "generated"):  # pairs for the diversity measure, batches of 2 in SSL and fine-tuning
        if getattr(args, name) < 2:
            raise InputError(f"--{name} {getattr(args, name)}: give at least 2 (diversity compares pairs of volumes; "
                             "the networks train on batches of 2)")  # fmt: skip
    if not 0 <= args.seed <= 10**9:  # numpy's and MONAI's seeds are 32-bit; samples use seed + 10000 + i
        raise InputError(f"--seed {args.seed}: give a seed from 0 to {10**9}")
    real_heart = real_ct_heart(args.real_ct) if args.real_ct else None  # read (and checked) before the work
    model = load_ldm(args.model or DEFAULT_MODEL, command="evaluate ldm")
    if args.ddim_steps > model.scheduler.num_train_timesteps:
        raise InputError(f"--ddim-steps {args.ddim_steps}: at most {model.scheduler.num_train_timesteps}")
    check_ldm_memory(args, int(model.config["image_size"]))
    runs = []
    for seed in range(args.seed, args.seed + args.repeats):
        runs.append(evaluate_ldm(model, args.real, args.generated, args.test, args.ssl_steps, args.finetune_steps,
                                 args.ddim_steps, seed, log=lambda m: print(m, file=sys.stderr),
                                 real_heart=real_heart))  # fmt: skip
        print(format_table(runs[-1]))
    result = runs[0]
    if args.repeats > 1:
        result = {"repeats": summarise_repeats(runs), "runs": runs}
        print(format_repeats(result["repeats"]))
    result["model"] = model_provenance(model)  # name, version, sha256 of the LDM evaluated
    if args.out:
        write_json_file(args.out, result, inputs=[args.model, *(args.real_ct or [])])
    return 0


#: bytes per voxel of each volume evaluate ldm holds at once: image, labels and a prediction (a generous bound)
LDM_BYTES_PER_VOXEL = 48


def check_ldm_memory(args: argparse.Namespace, size: int) -> None:
    """Refuse --real/--generated/--test counts whose volumes (all held in memory together) would not fit."""
    from ..utils.device import available_memory

    volumes, free = args.real + args.generated + args.test, available_memory()
    need = volumes * size**3 * LDM_BYTES_PER_VOXEL
    if free is not None and need > free:
        raise InputError(f"--real {args.real} --generated {args.generated} --test {args.test}: {volumes} volumes of "
                         f"{size}^3 voxels would need about {need / 1e9:.3g} GB of memory and this machine has "
                         f"{free / 1e9:.3g} GB available; give fewer (defaults 8, 24, 8)")  # fmt: skip

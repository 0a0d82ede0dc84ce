"""Batch SAX reconstruction in 3D Slicer without a window, or in plain Python with slicer-core.

    Slicer --no-main-window --python-script scripts/slicer_batch.py --sax SAX.nrrd [--sax-labels L.nrrd] \
        [--lax LAX.nrrd ... --lax-labels LL.nrrd ...] --method shape --spacing 1 --out DIR
    python scripts/slicer_batch.py ...      (the same, with `pip install slicer-core`)

The inputs are loaded into ``slicer.mrmlScene`` with storage nodes (a DICOM folder through the
Lib's reader), the Reconstruction module's logic runs blocking (the work itself in a child process,
as from the panel), and the new nodes are written with storage nodes to ``--out``:
``reconstruction_<method>.nrrd``, ``reconstruction_<method>.seg.nrrd`` (with labels) and
``lax_dice_<method>.tsv`` (with LAX labels). Labels may be labelmap files or ``.seg.nrrd``.
Exit code: 0 done, 2 bad input (one ``error:`` line), 1 the reconstruction failed.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

METHODS = ("shape", "linear", "nearest", "dmcvr")
EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="slicer_batch.py", description=__doc__.splitlines()[0])
    p.add_argument("--sax", required=True, help="SAX volume file (NRRD/NIfTI/MHA) or DICOM folder")
    p.add_argument("--sax-labels", help="labels of the SAX stack: labelmap file or .seg.nrrd")
    p.add_argument("--lax", action="extend", nargs="+", default=[], help="LAX images (loaded for reference)")
    p.add_argument("--lax-labels", action="extend", nargs="+", default=[], help="LAX labels for the Dice table")
    p.add_argument("--method", choices=METHODS, default="shape")
    p.add_argument("--spacing", type=float, default=1.0, help="through-plane spacing of the output (mm)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (dmcvr)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--label-convention", choices=("project", "acdc"), default="project",
                   help="values of labelmap files: project (1 LV, 2 MYO, 3 RV) or acdc (1 RV, 2 MYO, 3 LV); "
                   ".seg.nrrd segmentations are read by segment name")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def _import_lib() -> None:
    """Make ``CardiacDiffusionLib`` importable from a source checkout (installed extensions have it)."""
    try:
        import CardiacDiffusionLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(globals().get("__file__", "scripts/x")).resolve().parents[1]))


def batch_scene():
    """``slicer.mrmlScene`` in Slicer; in plain Python a new scene with the logics Slicer would set up."""
    import slicer

    if getattr(slicer, "mrmlScene", None) is not None:
        return slicer.mrmlScene
    from CardiacDiffusionLib.slicer_adapter.mrml import headless_scene

    scene = headless_scene()
    slicer.mrmlScene = scene
    return scene


def _stem(path: Path) -> str:
    return path.name[: -len(".seg.nrrd")] if path.name.endswith(".seg.nrrd") else path.name.split(".")[0]


def load_volume(scene, path: str, option: str):
    """A scalar volume node: files through a storage node, DICOM folders through the Lib's reader."""
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.io.volumes import DICOM_SUFFIXES, read_image
    from CardiacDiffusionLib.slicer_adapter import mrml

    file = Path(path)
    if not file.exists():
        raise InputError(f"{option} {path}: file not found; check the path")
    if file.is_dir() or file.name.lower().endswith(DICOM_SUFFIXES):
        return mrml.volume_node_from_image(scene, read_image(file, name=option), _stem(file))
    return mrml.load_volume(scene, file, _stem(file))


def load_labels(scene, path: str, option: str):
    """A labelmap volume node, or a segmentation node for ``.seg.nrrd``."""
    import slicer
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.slicer_adapter import mrml

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{option} {path}: file not found; check the path")
    if not file.name.endswith(".seg.nrrd"):
        return mrml.load_volume(scene, file, _stem(file), labelmap=True)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(_stem(file)))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(file))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"{option} {path}: could not be read as a segmentation (.seg.nrrd)")
    node.CreateDefaultDisplayNodes()
    return node


def _write(storage, node, path: Path) -> Path:
    from CardiacDiffusionLib.errors import InputError

    storage.SetFileName(str(path))
    if not storage.WriteData(node):
        raise InputError(f"--out: could not write {path}; is the folder writable?")
    return path


def _check_packages() -> None:
    """Fail early and clearly when a package is missing (the panel offers to install; batch does not)."""
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.slicer_adapter import dependencies

    try:
        dependencies.check_protected()
    except dependencies.DependencyError as error:
        raise InputError(str(error)) from None
    todo = [p.requirement for p in dependencies.missing()]
    todo += [f"{p.requirement} (installed: {found})" for p, found in dependencies.outdated()]
    if todo:
        raise InputError(
            f"Python packages missing or too old: {', '.join(todo)}; click Apply once in the Reconstruction "
            "module: it installs or upgrades them without touching torch, numpy, SimpleITK or vtk"
        )


def run(args: argparse.Namespace, scene=None) -> dict[str, Path]:
    """Load, reconstruct (blocking) and save; returns the written files by kind. Messages name the files given
    (the module's job names the nodes they were loaded into, which a batch user never sees)."""
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed

    files: dict[str, str] = {}  # node name -> the file it was loaded from
    try:
        return _run(args, scene, files)
    except InputError as error:
        raise InputError(in_batch_terms(str(error), files)) from None
    except ProcessFailed as error:
        said = in_batch_terms(str(error), files)
        raise ProcessFailed(said, error.returncode, in_batch_terms(error.detail, files)) from None


def in_batch_terms(text: str, files: dict[str, str]) -> str:
    """``text`` with each node the batch loaded (``node 'NAME'``) named by its file, as the user gave it."""
    for name in sorted(files, key=len, reverse=True):
        text = text.replace(f"node '{name}'", files[name])
    return text


def _run(args: argparse.Namespace, scene, files: dict[str, str]) -> dict[str, Path]:
    import slicer
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob

    _check_packages()
    scene = scene or batch_scene()
    if args.lax and args.lax_labels and len(args.lax) != len(args.lax_labels):
        raise InputError(f"--lax: {len(args.lax)} images but {len(args.lax_labels)} --lax-labels; give one per view")

    def loaded(node, path: str):
        files[node.GetName()] = path
        return node

    sax = loaded(load_volume(scene, args.sax, "--sax"), args.sax)
    sax_labels = loaded(load_labels(scene, args.sax_labels, "--sax-labels"), args.sax_labels) if args.sax_labels else None
    for path in args.lax:
        loaded(load_volume(scene, path, "--lax"), path)
    lax_labels = [loaded(load_labels(scene, path, "--lax-labels"), path) for path in args.lax_labels]

    def report(fraction, text):
        text = in_batch_terms(text, files) if text else text
        if text and not text.startswith("error: "):  # the child's refusal: said once, by main(), on stderr
            print(text if fraction is None else f"{100 * fraction:3.0f}% {text}", flush=True)

    device = args.device
    if args.method == "dmcvr":  # without CUDA: say so and run on the CPU
        from CardiacDiffusionLib.slicer_adapter.dependencies import check_device

        device, note = check_device(args.device)
        if note:
            print(f"warning: {note}", flush=True)
    job = ReconstructionJob(
        scene, sax, sax_labels, lax_labels, method=args.method, spacing=args.spacing, steps=args.steps,
        device=device, label_numbering=args.label_convention,
    )  # fmt: skip
    result = job.start(report).wait()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"volume": out / f"reconstruction_{args.method}.nrrd"}
    mrml.save_volume(result.volume, written["volume"])
    if result.segmentation is not None:
        written["segmentation"] = _write(
            slicer.vtkMRMLSegmentationStorageNode(), result.segmentation, out / f"reconstruction_{args.method}.seg.nrrd"
        )
    if result.table is not None:
        written["table"] = _write(slicer.vtkMRMLTableStorageNode(), result.table, out / f"lax_dice_{args.method}.tsv")
    for kind, path in written.items():
        print(f"wrote {kind}: {path}", flush=True)
    return written


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    _import_lib()
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed

    try:
        run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_INPUT
    except ProcessFailed as error:
        if error.returncode == EXIT_INPUT:  # the command refused an input (e.g. labels on another grid)
            print(f"error: {error.detail}", file=sys.stderr, flush=True)
            return EXIT_INPUT
        print(f"error: reconstruction failed: {error}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK


def _exit(code: int) -> None:
    try:
        import slicer
    except ImportError:
        slicer = None
    if hasattr(slicer, "app"):  # in Slicer: leave the application with the code
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except SystemExit as stop:  # argparse: --help or bad arguments
        status = stop.code if isinstance(stop.code, int) else EXIT_INPUT
    except Exception:  # anything else: report it and still leave Slicer (it would keep running)
        traceback.print_exc()
        status = EXIT_FAILED
    _exit(status)

"""The Python packages the Lib needs, found missing and offered for install on first use in Slicer.

Each module's logic calls :func:`offer_torch` and :func:`ensure` when Apply is clicked, never at start-up.
torch is never pip-installed: it comes from Slicer's PyTorch extension, whose PyTorch Utils module picks
the CUDA or CPU build. numpy, SimpleITK and vtk come with Slicer; a pip-installed copy breaks
Slicer (Slicer/Slicer#6711, #7661), so pip runs with a constraints file that pins them (and torch)
to what is installed: a package whose dependencies would replace one of them fails to install
instead of breaking Slicer. Pure Python; ``slicer`` is imported only by :func:`slicer_pip_install`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence


@dataclass(frozen=True)
class Package:
    module: str  # import name
    requirement: str  # pip requirement (distribution name and versions)


#: what the Lib imports, with the pip requirement that provides it (versions as in pyproject.toml)
REQUIRED: tuple[Package, ...] = (
    Package("monai", "monai>=1.4"),
    Package("einops", "einops>=0.7"),
    Package("scipy", "scipy>=1.10"),
    Package("skimage", "scikit-image>=0.21"),
    Package("h5py", "h5py>=3.8"),
    Package("nibabel", "nibabel>=5"),
    Package("pydicom", "pydicom>=2.4"),
    Package("safetensors", "safetensors>=0.4"),
    Package("yaml", "pyyaml>=6"),
    Package("tqdm", "tqdm>=4.60"),
    Package("matplotlib", "matplotlib>=3.7"),
)
#: never installed or upgraded here: import name -> distribution name
PROTECTED: dict[str, str] = {"torch": "torch", "numpy": "numpy", "SimpleITK": "SimpleITK", "vtk": "vtk"}

TORCH_MESSAGE = (
    "CardiacDiffusion needs PyTorch: install the 'PyTorch' extension in the Extensions Manager, restart "
    "Slicer, then install torch in the PyTorch Utils module (it picks the CUDA or CPU build for this "
    "computer) and click Apply again."
)
SLICER_MESSAGE = (
    "{name} is missing from Slicer's Python; it comes with Slicer: reinstall Slicer (never pip-install it)."
)

FindSpec = Callable[[str], object]
Version = Callable[[str], str]


class DependencyError(RuntimeError):
    """A package cannot be installed from here; the message says what the user should do."""


def missing(packages: Sequence[Package] = REQUIRED, find_spec: FindSpec = importlib.util.find_spec) -> list[Package]:
    """The packages whose module is not importable."""
    return [p for p in packages if find_spec(p.module) is None]


def check_protected(find_spec: FindSpec = importlib.util.find_spec) -> None:
    """Raise :class:`DependencyError` when torch, numpy, SimpleITK or vtk cannot be imported."""
    for module in PROTECTED:
        if find_spec(module) is None:
            raise DependencyError(TORCH_MESSAGE if module == "torch" else SLICER_MESSAGE.format(name=module))


def constraints(
    find_spec: FindSpec = importlib.util.find_spec, version: Version = importlib.metadata.version
) -> list[str]:
    """pip constraint lines that keep torch, numpy, SimpleITK and vtk as they are.

    An installed distribution is pinned to its version; one importable but not installed by pip
    (Slicer builds its own VTK) gets ``<0``, which no release satisfies, so pip cannot add one.
    """
    lines = []
    for module, distribution in PROTECTED.items():
        if find_spec(module) is None:
            continue
        try:
            lines.append(f"{distribution}=={version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{distribution}<0")
    return lines


def install_message(packages: Sequence[Package]) -> str:
    names = ", ".join(p.requirement for p in packages)
    return (
        f"CardiacDiffusion needs Python packages that are not installed yet: {names}. Install them now? "
        "This downloads them with pip and may take several minutes; torch, numpy, SimpleITK and vtk are "
        "left as they are."
    )


def ensure(
    install_callback: Callable[[list[str], Path], object],
    confirm_callback: Callable[[str], bool],
    find_spec: FindSpec = importlib.util.find_spec,
    version: Version = importlib.metadata.version,
) -> bool:
    """Check, ask, install: True when every required package is importable, False if the user declined.

    ``install_callback(requirements, constraints_file)`` installs with pip (in Slicer:
    :func:`slicer_pip_install`); ``confirm_callback(message)`` asks the user (in Slicer:
    ``slicer.util.confirmOkCancelDisplay``). Raises :class:`DependencyError` when torch is missing
    (the PyTorch extension provides it), when Slicer's own numpy/SimpleITK/vtk are missing, or when
    something is still missing after the install.
    """
    check_protected(find_spec)
    todo = missing(REQUIRED, find_spec)
    if not todo:
        return True
    if not confirm_callback(install_message(todo)):
        return False
    with tempfile.TemporaryDirectory(prefix="CardiacDiffusion-pip-") as folder:
        path = Path(folder) / "constraints.txt"
        path.write_text("\n".join(constraints(find_spec, version)) + "\n")
        install_callback([p.requirement for p in todo], path)
    importlib.invalidate_caches()
    still = missing(todo, find_spec)
    if still:
        names = ", ".join(p.requirement for p in still)
        raise DependencyError(f"still missing after the install: {names}; see the Python console for pip's output")
    return True


def offer_torch(ask: bool = True, find_spec: FindSpec = importlib.util.find_spec,
                import_module: Callable[[str], object] = importlib.import_module) -> bool:
    """torch missing and Slicer's PyTorch extension present: run its installer (it picks the CUDA or CPU build,
    asking first when ``ask``). False when the user declined; True otherwise (without the extension,
    :func:`ensure` then says to install it)."""
    if find_spec("torch") is not None or find_spec("PyTorchUtils") is None:
        return True
    return import_module("PyTorchUtils").PyTorchUtilsLogic().installTorch(askConfirmation=ask) is not None


def slicer_pip_install(requirements: list[str], constraints_file: Path) -> None:
    """Install with Slicer's pip: ``constraints=`` (Slicer >= 5.11), else pip's ``-c`` option."""
    import inspect

    import slicer.util

    parameters = inspect.signature(slicer.util.pip_install).parameters.values()
    if any(p.name == "constraints" or p.kind is p.VAR_KEYWORD for p in parameters):
        slicer.util.pip_install(" ".join(requirements), constraints=str(constraints_file))
    else:  # Slicer < 5.11: pip_install(requirements) passes a list on as pip arguments
        slicer.util.pip_install(["-c", str(constraints_file), *requirements])


# ---- device -----------------------------------------------------------------------------------
def device_for(requested: str, cuda_available: bool, cuda_built: bool) -> tuple[str, Optional[str]]:
    """The device to run on and a message for the user when CUDA was wanted but cannot be used.

    ``auto`` and ``cuda`` both fall back to the CPU without CUDA (the panel never fails for it).
    """
    if requested not in ("auto", "cuda") or cuda_available:
        return requested, None
    why = (
        "the installed torch is a CPU-only build" if not cuda_built else "no CUDA GPU or driver was found"
    )
    return "cpu", (
        f"No CUDA: {why}. Running on the CPU, which is much slower for the dmcvr method. To use an "
        "NVIDIA GPU, install a CUDA build of torch in the PyTorch Utils module and restart Slicer."
    )


def check_device(requested: str) -> tuple[str, Optional[str]]:
    """:func:`device_for` with the installed torch (imported here, so only on first use)."""
    import torch

    return device_for(requested, torch.cuda.is_available(), torch.version.cuda is not None)

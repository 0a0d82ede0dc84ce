"""The Python packages the Lib needs, found missing or too old and offered for install on first use in Slicer.

Each module's logic calls :func:`offer_torch` and :func:`ensure` when Apply is clicked, never at start-up.
torch is never pip-installed: it comes from Slicer's PyTorch extension, whose PyTorch Utils module picks
the CUDA or CPU build. numpy, SimpleITK and vtk come with Slicer; a pip-installed copy breaks
Slicer (Slicer/Slicer#6711, #7661), so pip runs with a constraints file that pins them (and torch)
to what is installed: a package whose dependencies would replace one of them fails to install
instead of breaking Slicer. Slicer bundles some packages the Lib needs (scipy, an older pydicom): a version
below the Lib's minimum is offered for upgrade like a missing package; torch, numpy, SimpleITK or vtk below
it is said (:class:`DependencyError`), never upgraded. Pure Python; ``slicer`` is imported only by
:func:`slicer_pip_install`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Container, Optional, Sequence


@dataclass(frozen=True)
class Package:
    module: str  # import name
    requirement: str  # pip requirement (distribution name and versions)

    @property
    def distribution(self) -> str:
        return re.split(r"[<>=!~ \[;]", self.requirement, maxsplit=1)[0]


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
#: the versions of those the Lib needs (pyproject.toml): one below is said, never upgraded
PROTECTED_MINIMUM: tuple[Package, ...] = (
    Package("torch", "torch>=2.2"),
    Package("numpy", "numpy>=1.24"),
    Package("SimpleITK", "SimpleITK>=2.3"),
    Package("vtk", "vtk>=9.3"),
)

TORCH_MESSAGE = (
    "CardiacDiffusion needs PyTorch: install the 'PyTorch' extension in the Extensions Manager, restart "
    "Slicer, then install torch in the PyTorch Utils module (it picks the CUDA or CPU build for this "
    "computer) and click Apply again."
)
SLICER_MESSAGE = (
    "{name} is missing from Slicer's Python; it comes with Slicer: reinstall Slicer (never pip-install it)."
)
TORCH_OLD_MESSAGE = (
    "CardiacDiffusion needs {requirement} and Slicer's Python has torch {found}: update torch in the PyTorch "
    "Utils module (it picks the CUDA or CPU build for this computer), restart Slicer and click Apply again."
)
SLICER_OLD_MESSAGE = (
    "CardiacDiffusion needs {requirement} and Slicer's Python has {name} {found}; it comes with Slicer and is "
    "never pip-installed here (that breaks Slicer): use a newer Slicer release."
)

FindSpec = Callable[[str], object]
Version = Callable[[str], str]


class DependencyError(RuntimeError):
    """A package cannot be installed from here; the message says what the user should do."""


def missing(packages: Sequence[Package] = REQUIRED, find_spec: FindSpec = importlib.util.find_spec) -> list[Package]:
    """The packages whose module is not importable."""
    return [p for p in packages if find_spec(p.module) is None]


def outdated(
    packages: Sequence[Package] = REQUIRED, find_spec: FindSpec = importlib.util.find_spec,
    version: Version = importlib.metadata.version,
) -> list[tuple[Package, str]]:  # fmt: skip
    """(package, installed version) of the importable packages whose installed version is below the requirement.

    A module importable without pip's metadata (a build of Slicer's own, e.g. VTK) has no version to read and
    is taken as it is.
    """
    out = []
    for package in packages:
        if find_spec(package.module) is None:
            continue
        try:
            found = version(package.distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not satisfies(found, package.requirement):
            out.append((package, found))
    return out


def satisfies(installed: str, requirement: str) -> bool:
    """Whether version ``installed`` meets the versions of pip requirement ``requirement`` (``pydicom>=2.4``).

    packaging's ``Requirement``/``Version`` where importable (PEP 440: pre-releases, local versions such as
    ``2.4.1+cu121``, epochs). packaging is not in the standard library and this check runs before anything is
    installed, so it cannot rely on it: without it (or for a version it cannot parse) the leading numbers are
    compared, which is exact for the ``>=`` minimums of :data:`REQUIRED`.
    """
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return _numbers_satisfy(installed, requirement)
    try:
        return Requirement(requirement).specifier.contains(Version(installed), prereleases=True)
    except (InvalidRequirement, InvalidVersion):
        return _numbers_satisfy(installed, requirement)


def _numbers(text: str) -> tuple[int, ...] | None:
    """The leading dotted numbers of a version, trailing zeros dropped (2.4.0 == 2.4; 2.4rc1 -> 2.4); None: none."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text)
    if not match:
        return None
    numbers = [int(n) for n in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _numbers_satisfy(installed: str, requirement: str) -> bool:
    """:func:`satisfies` without packaging: each ``OP VERSION`` clause by its leading numbers (``~=`` as ``>=``).
    A version without numbers cannot be compared and is taken as it is, like one without pip's metadata."""
    have = _numbers(installed)
    if have is None:
        return True
    checks = {">=": have.__ge__, ">": have.__gt__, "<=": have.__le__, "<": have.__lt__, "==": have.__eq__,
              "!=": have.__ne__, "~=": have.__ge__}  # fmt: skip
    clauses = re.findall(r"(>=|<=|==|!=|~=|>|<)\s*([^,;\s]+)", requirement)
    return all(checks[op](_numbers(value) or ()) for op, value in clauses)


def check_protected(
    find_spec: FindSpec = importlib.util.find_spec, version: Version = importlib.metadata.version
) -> None:
    """Raise :class:`DependencyError` when torch, numpy, SimpleITK or vtk cannot be imported or is older than the
    Lib needs (never upgraded here: what to do instead is said)."""
    for module in PROTECTED:
        if find_spec(module) is None:
            raise DependencyError(TORCH_MESSAGE if module == "torch" else SLICER_MESSAGE.format(name=module))
    for package, found in outdated(PROTECTED_MINIMUM, find_spec, version):
        message = TORCH_OLD_MESSAGE if package.module == "torch" else SLICER_OLD_MESSAGE
        raise DependencyError(message.format(requirement=package.requirement, name=package.module, found=found))


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


def install_message(packages: Sequence[Package], old: Sequence[tuple[Package, str]] = ()) -> str:
    needs = []
    if packages:
        needs.append(f"Python packages that are not installed yet: {', '.join(p.requirement for p in packages)}")
    if old:
        needs.append("newer versions of " + ", ".join(f"{p.requirement} (installed: {found})" for p, found in old))
    return (
        f"CardiacDiffusion needs {'; and '.join(needs)}. {'Install' if not old else 'Install or upgrade'} them now? "
        "This downloads them with pip and may take several minutes; torch, numpy, SimpleITK and vtk are "
        "left as they are."
    )


def ensure(
    install_callback: Callable[[list[str], Path], object],
    confirm_callback: Callable[[str], bool],
    find_spec: FindSpec = importlib.util.find_spec,
    version: Version = importlib.metadata.version,
    imported: Container[str] = sys.modules,
) -> bool:
    """Check, ask, install: True when every required package is importable and new enough, False if the user
    declined.

    ``install_callback(requirements, constraints_file)`` installs with pip (in Slicer:
    :func:`slicer_pip_install`; a requirement an older installed version does not meet makes pip upgrade it);
    ``confirm_callback(message)`` asks the user (in Slicer: ``slicer.util.confirmOkCancelDisplay``). Raises
    :class:`DependencyError` when torch is missing or too old (the PyTorch extension provides it), when Slicer's
    own numpy/SimpleITK/vtk are missing or too old, when something is still missing or too old after the
    install, or when an upgraded package was already imported (in ``imported``): restart Slicer.
    """
    check_protected(find_spec, version)
    todo = missing(REQUIRED, find_spec)
    old = outdated([p for p in REQUIRED if p not in todo], find_spec, version)
    if not todo and not old:
        return True
    if not confirm_callback(install_message(todo, old)):
        return False
    with tempfile.TemporaryDirectory(prefix="CardiacDiffusion-pip-") as folder:
        path = Path(folder) / "constraints.txt"
        path.write_text("\n".join(constraints(find_spec, version)) + "\n")
        install_callback([p.requirement for p in [*todo, *(p for p, _ in old)]], path)
    importlib.invalidate_caches()
    still = missing(todo, find_spec)
    if still:
        names = ", ".join(p.requirement for p in still)
        raise DependencyError(f"still missing after the install: {names}; see the Python console for pip's output")
    still_old = outdated([p for p, _ in old], find_spec, version)
    if still_old:
        names = ", ".join(f"{p.requirement} (installed: {found})" for p, found in still_old)
        raise DependencyError(f"still too old after the install: {names}; see the Python console for pip's output")
    loaded = [p.distribution for p, _ in old if p.module in imported]
    if loaded:
        raise DependencyError(f"upgraded {', '.join(loaded)}, but Slicer had already imported the old version: "
                              "restart Slicer and click Apply again")  # fmt: skip
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
def device_for(requested: str, cuda_available: bool, cuda_built: bool,
               work: str = "the diffusion models") -> tuple[str, Optional[str]]:  # fmt: skip
    """The device to run on and a message for the user when CUDA was wanted but cannot be used (``work``: what
    runs slower on the CPU, in the panel's words).

    ``auto`` and ``cuda`` both fall back to the CPU without CUDA (the panel never fails for it); on macOS silently
    for ``auto`` (the panels offer no MPS: see docs/ARCHITECTURE.md, Platforms).
    """
    if requested not in ("auto", "cuda") or cuda_available:
        return requested, None
    if sys.platform == "darwin":  # no CUDA build of torch exists for macOS: advice to install one would mislead
        return "cpu", None if requested == "auto" else f"No CUDA on macOS: running on the CPU, which is slower for {work}."
    why = (
        "the installed torch is a CPU-only build" if not cuda_built else "no CUDA GPU or driver was found"
    )
    return "cpu", (
        f"No CUDA: {why}. Running on the CPU, which is much slower for {work}. To use an "
        "NVIDIA GPU, install a CUDA build of torch in the PyTorch Utils module and restart Slicer."
    )


def check_device(requested: str, work: str = "the diffusion models") -> tuple[str, Optional[str]]:
    """:func:`device_for` with the installed torch (imported here, so only on first use)."""
    import torch

    return device_for(requested, torch.cuda.is_available(), torch.version.cuda is not None, work)

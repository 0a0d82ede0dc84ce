"""First-use dependency check: what is missing, what pip may touch, the ask/install flow, CUDA absent."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from CardiacDiffusionLib.slicer_adapter import dependencies as deps

ROOT = Path(__file__).resolve().parents[1]


def fake_environment(absent: set[str]):
    """A find_spec that reports ``absent`` import names as missing, everything else present."""
    return lambda name: None if name in absent else object()


SLICER = {"torch": "2.4.1+cu121", "numpy": "1.26.4", "SimpleITK": "2.4.0"}  # vtk: Slicer's own build, no metadata


def fake_version(name: str, installed: dict[str, str] = SLICER) -> str:
    """importlib.metadata.version of an environment holding ``installed``; others (Slicer's VTK) have no metadata."""
    if name not in installed:
        raise importlib.metadata.PackageNotFoundError(name)
    return installed[name]


def test_required_packages_match_pyproject_and_never_the_protected_ones():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in declared}
    ours = {re.split(r"[<>=!~ \[]", p.requirement)[0].lower() for p in deps.REQUIRED}
    protected = {d.lower() for d in deps.PROTECTED.values()}
    assert ours | protected == names  # every Lib dependency is either offered or protected
    assert not ours & protected
    assert set(deps.REQUIRED) >= {deps.Package("skimage", "scikit-image>=0.21"), deps.Package("yaml", "pyyaml>=6")}
    for package in deps.REQUIRED:  # the requirement is the one pyproject declares
        assert package.requirement in declared


def test_this_environment_has_everything():
    assert deps.missing() == []
    deps.check_protected()
    lines = deps.constraints()
    assert f"torch=={importlib.metadata.version('torch')}" in lines
    assert f"numpy=={importlib.metadata.version('numpy')}" in lines
    assert len(lines) == 4


def test_missing_uses_import_names():
    find_spec = fake_environment({"skimage", "yaml", "monai"})
    found = [p.requirement for p in deps.missing(find_spec=find_spec)]
    assert found == ["monai>=1.4", "scikit-image>=0.21", "pyyaml>=6"]


def test_constraints_pin_installed_and_forbid_slicer_builds():
    lines = deps.constraints(fake_environment(set()), fake_version)
    assert lines == ["torch==2.4.1+cu121", "numpy==1.26.4", "SimpleITK==2.4.0", "vtk<0"]


class Recorder:
    def __init__(self, answer: bool = True, installs: set[str] | None = None, absent: set[str] = frozenset(),
                 versions: dict[str, str] | None = None):  # fmt: skip
        self.answer, self.absent = answer, set(absent)
        self.versions = {**SLICER, **(versions or {})}  # installed distributions (pip metadata)
        self.installs = installs if installs is not None else set(absent) | set(versions or ())  # what pip manages
        self.asked: list[str] = []
        self.installed: list[tuple[list[str], str]] = []

    def find_spec(self, name):
        return None if name in self.absent else object()

    def version(self, name: str) -> str:
        return fake_version(name, self.versions)

    def confirm(self, message: str) -> bool:
        self.asked.append(message)
        return self.answer

    def install(self, requirements: list[str], constraints_file: Path) -> None:
        self.installed.append((requirements, constraints_file.read_text()))
        by_requirement = {p.requirement: p for p in deps.REQUIRED}
        for package in (by_requirement[r] for r in requirements):
            if package.module in self.installs or package.distribution in self.installs:
                self.absent.discard(package.module)
                self.versions[package.distribution] = "99.0"  # pip's newest


def _ensure(recorder: Recorder, imported=()) -> bool:
    return deps.ensure(recorder.install, recorder.confirm, recorder.find_spec, recorder.version, imported)


def test_nothing_missing_asks_nothing():
    recorder = Recorder()
    assert _ensure(recorder) is True
    assert recorder.asked == [] and recorder.installed == []


def test_missing_packages_are_installed_after_confirmation_with_constraints():
    recorder = Recorder(absent={"einops", "h5py"})
    assert _ensure(recorder) is True
    assert len(recorder.asked) == 1 and "einops>=0.7, h5py>=3.8" in recorder.asked[0]
    assert recorder.installed == [
        (["einops>=0.7", "h5py>=3.8"], "torch==2.4.1+cu121\nnumpy==1.26.4\nSimpleITK==2.4.0\nvtk<0\n")
    ]


def test_declined_installs_nothing():
    recorder = Recorder(answer=False, absent={"einops"})
    assert _ensure(recorder) is False
    assert recorder.installed == [] and len(recorder.asked) == 1


def test_still_missing_after_install_is_an_error():
    recorder = Recorder(absent={"einops", "monai"}, installs={"einops"})
    with pytest.raises(deps.DependencyError, match=r"still missing after the install: monai>=1\.4;"):
        _ensure(recorder)


@pytest.mark.parametrize("module", ["torch", "numpy", "SimpleITK", "vtk"])
def test_protected_packages_are_never_installed(module):
    recorder = Recorder(absent={module, "einops"})
    with pytest.raises(deps.DependencyError) as error:
        _ensure(recorder)
    assert recorder.installed == [] and recorder.asked == []
    if module == "torch":
        assert "'PyTorch' extension" in str(error.value) and "PyTorch Utils" in str(error.value)
    else:
        assert str(error.value).startswith(f"{module} is missing") and "reinstall Slicer" in str(error.value)


def test_torch_is_offered_through_the_pytorch_extension_only_when_missing():
    """Every module's Apply offers PyTorch Utils' installer when torch is missing and the extension is there."""
    calls = []

    class PyTorchUtilsLogic:  # the PyTorch extension's logic: installTorch returns None when declined
        def installTorch(self, askConfirmation: bool):
            calls.append(askConfirmation)
            return answer

    extension = type("PyTorchUtils", (), {"PyTorchUtilsLogic": PyTorchUtilsLogic})
    for absent, answer, expected, asked in ((set(), None, True, []), ({"torch", "PyTorchUtils"}, None, True, []),
                                            ({"torch"}, None, False, [True]), ({"torch"}, "torch 2.4", True, [True])):  # fmt: skip
        calls.clear()
        assert deps.offer_torch(True, fake_environment(absent), lambda name: extension) is expected
        assert calls == asked
    assert deps.offer_torch(False, fake_environment({"torch"}), lambda name: extension) and calls[-1] is False


def test_versions_are_compared_with_packaging_and_without_it(monkeypatch):
    """PEP 440 through packaging; its absence (it is not in the standard library) falls back to the numbers."""
    cases = [("2.2.0", "pydicom>=2.4", False), ("2.4", "pydicom>=2.4", True), ("2.4.0", "pydicom>=2.4", True),
             ("2.10.1", "pydicom>=2.4", True), ("1.9.3", "scipy>=1.10", False), ("1.10.0rc1", "scipy>=1.9", True),
             ("2.4.1+cu121", "torch>=2.2", True), ("2.1.2+cpu", "torch>=2.2", False), ("5.0", "nibabel>=5", True),
             ("4.0.2", "nibabel>=5", False), ("1.4.0", "monai>=1.4,<2", True), ("2.0", "monai>=1.4,<2", False)]  # fmt: skip
    assert [deps.satisfies(found, req) for found, req, _ in cases] == [ok for _, _, ok in cases]
    monkeypatch.setitem(sys.modules, "packaging", None)  # import packaging.* now fails
    with pytest.raises(ImportError):
        import packaging.version  # noqa: F401
    assert [deps.satisfies(found, req) for found, req, _ in cases] == [ok for _, _, ok in cases]
    # a version without numbers cannot be compared: taken as it is, like a module without pip metadata
    assert deps.satisfies("unknown", "pydicom>=2.4") is True and deps.satisfies("3", "pydicom") is True


def test_outdated_reads_the_installed_versions():
    """Slicer's pydicom 2.2 and scipy 1.9 are below the minimums; a module without pip metadata is taken as it is."""
    installed = {"pydicom": "2.2.0", "scipy": "1.9.3", "monai": "1.4.0", "scikit-image": "0.19.3", "pyyaml": "6.0.1"}
    found = deps.outdated(find_spec=fake_environment({"h5py"}), version=lambda n: fake_version(n, installed))
    assert [(p.requirement, v) for p, v in found] == [("scipy>=1.10", "1.9.3"), ("scikit-image>=0.21", "0.19.3"),
                                                      ("pydicom>=2.4", "2.2.0")]  # fmt: skip
    assert deps.outdated() == []  # this environment


def test_too_old_packages_are_upgraded_after_confirmation():
    recorder = Recorder(absent={"einops"}, versions={"pydicom": "2.2.0", "scipy": "1.11.4"})
    assert _ensure(recorder) is True
    assert len(recorder.asked) == 1
    assert "not installed yet: einops>=0.7; and newer versions of pydicom>=2.4 (installed: 2.2.0)" in recorder.asked[0]
    assert recorder.installed == [
        (["einops>=0.7", "pydicom>=2.4"], "torch==2.4.1+cu121\nnumpy==1.26.4\nSimpleITK==2.4.0\nvtk<0\n")
    ]
    assert _ensure(recorder) is True and len(recorder.asked) == 1  # nothing left to do: not asked again
    declined = Recorder(answer=False, versions={"pydicom": "2.2.0"})
    assert _ensure(declined) is False and declined.installed == []


def test_an_upgrade_that_does_not_take_or_is_already_imported_is_an_error():
    stuck = Recorder(versions={"pydicom": "2.2.0"}, installs=set())  # pip could not upgrade it
    with pytest.raises(deps.DependencyError, match=r"still too old after the install: pydicom>=2\.4 \(installed: 2\.2\.0\)"):
        _ensure(stuck)
    loaded = Recorder(versions={"scipy": "1.9.3"})
    with pytest.raises(deps.DependencyError, match="upgraded scipy, but Slicer had already imported the old version: "
                                                   "restart Slicer"):  # fmt: skip
        _ensure(loaded, imported={"scipy", "numpy"})
    assert loaded.installed[0][0] == ["scipy>=1.10"]


@pytest.mark.parametrize("module, found, said", [
    ("torch", "2.1.2+cu118", "needs torch>=2.2 and Slicer's Python has torch 2.1.2+cu118: update torch in the "
                             "PyTorch Utils module"),
    ("numpy", "1.23.5", "needs numpy>=1.24 and Slicer's Python has numpy 1.23.5; it comes with Slicer and is never "
                        "pip-installed here (that breaks Slicer): use a newer Slicer release"),
    ("SimpleITK", "2.2.1", "needs SimpleITK>=2.3 and Slicer's Python has SimpleITK 2.2.1"),
    ("vtk", "9.2.6", "needs vtk>=9.3 and Slicer's Python has vtk 9.2.6"),
])  # fmt: skip
def test_protected_packages_too_old_are_said_never_upgraded(module, found, said):
    recorder = Recorder(absent={"einops"}, versions={module: found, "pydicom": "2.2.0"})
    with pytest.raises(deps.DependencyError) as error:
        _ensure(recorder)
    assert said in str(error.value)
    assert recorder.installed == [] and recorder.asked == []


def test_protected_minimums_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {p.requirement for p in deps.PROTECTED_MINIMUM} <= set(declared)
    assert [p.module for p in deps.PROTECTED_MINIMUM] == list(deps.PROTECTED)
    assert {p.distribution for p in deps.PROTECTED_MINIMUM} == set(deps.PROTECTED.values())


def test_cuda_absent_falls_back_to_cpu_with_a_message():
    assert deps.device_for("auto", True, True) == ("auto", None)
    assert deps.device_for("cuda", True, True) == ("cuda", None)
    assert deps.device_for("cpu", False, False) == ("cpu", None)
    device, note = deps.device_for("cuda", False, False)
    assert device == "cpu" and "CPU-only build" in note and "PyTorch Utils" in note
    device, note = deps.device_for("auto", False, True)
    assert device == "cpu" and "no CUDA GPU or driver" in note and "slower for the diffusion models" in note
    assert "slower for sampling." in deps.device_for("auto", False, True, "sampling")[1]  # the panel's own work
    # this machine: the CPU build of torch
    import torch

    device, note = deps.check_device("auto")
    if torch.cuda.is_available():
        assert (device, note) == ("auto", None)
    else:
        assert device == "cpu" and note.startswith("No CUDA: ")


def test_slicer_pip_install_passes_constraints(monkeypatch, tmp_path):
    if importlib.util.find_spec("slicer") is None:
        pytest.skip("slicer-core is not installed")
    import slicer.util

    calls = []

    def new_style(requirements, **kwargs):  # Slicer >= 5.11 (delegates to slicer.packaging)
        calls.append((requirements, kwargs["constraints"]))

    monkeypatch.setattr(slicer.util, "pip_install", new_style)
    deps.slicer_pip_install(["einops>=0.7", "h5py>=3.8"], tmp_path / "c.txt")
    assert calls == [("einops>=0.7 h5py>=3.8", str(tmp_path / "c.txt"))]

    def old_style(requirements):  # Slicer 5.8-5.10: a list of pip arguments
        calls.append(requirements)

    monkeypatch.setattr(slicer.util, "pip_install", old_style)
    deps.slicer_pip_install(["einops>=0.7"], tmp_path / "c.txt")
    assert calls[-1] == ["-c", str(tmp_path / "c.txt"), "einops>=0.7"]


def test_networks_and_training_import_without_simpleitk_or_vtk():
    """A GPU server may lack SimpleITK and VTK: the networks, samplers, DMCVR and SADIR training (from packs) need neither."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('SimpleITK', 'vtk', 'nibabel', 'h5py'): sys.modules[name] = None\n"
        "import CardiacDiffusionLib.dmcvr.reconstruction, CardiacDiffusionLib.dmcvr.tasks\n"
        "import CardiacDiffusionLib.ldm.diffusion, CardiacDiffusionLib.sadir.epdiff, CardiacDiffusionLib.training.cli\n"
        "import CardiacDiffusionLib.sadir.train, CardiacDiffusionLib.sadir.reconstruct\n"
        "from CardiacDiffusionLib.geometry.stack import SliceStack\n"
        "from CardiacDiffusionLib.metrics import dice, psnr\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]

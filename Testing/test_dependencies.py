"""First-use dependency check: what is missing, what pip may touch, the ask/install flow, CUDA absent."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

from CardiacDiffusionLib.slicer_adapter import dependencies as deps

ROOT = Path(__file__).resolve().parents[1]


def fake_environment(absent: set[str]):
    """A find_spec that reports ``absent`` import names as missing, everything else present."""
    return lambda name: None if name in absent else object()


def fake_version(name: str) -> str:
    if name == "vtk":  # Slicer's own VTK build: importable, not a pip distribution
        raise importlib.metadata.PackageNotFoundError(name)
    return {"torch": "2.4.1+cu121", "numpy": "1.26.4", "SimpleITK": "2.4.0"}[name]


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
    def __init__(self, answer: bool = True, installs: set[str] | None = None, absent: set[str] = frozenset()):
        self.answer, self.absent = answer, set(absent)
        self.installs = installs if installs is not None else set(absent)  # what pip "manages" to install
        self.asked: list[str] = []
        self.installed: list[tuple[list[str], str]] = []

    def find_spec(self, name):
        return None if name in self.absent else object()

    def confirm(self, message: str) -> bool:
        self.asked.append(message)
        return self.answer

    def install(self, requirements: list[str], constraints_file: Path) -> None:
        self.installed.append((requirements, constraints_file.read_text()))
        by_requirement = {p.requirement: p.module for p in deps.REQUIRED}
        self.absent -= {by_requirement[r] for r in requirements} & self.installs


def _ensure(recorder: Recorder) -> bool:
    return deps.ensure(recorder.install, recorder.confirm, recorder.find_spec, fake_version)


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


def test_cuda_absent_falls_back_to_cpu_with_a_message():
    assert deps.device_for("auto", True, True) == ("auto", None)
    assert deps.device_for("cuda", True, True) == ("cuda", None)
    assert deps.device_for("cpu", False, False) == ("cpu", None)
    device, note = deps.device_for("cuda", False, False)
    assert device == "cpu" and "CPU-only build" in note and "PyTorch Utils" in note
    device, note = deps.device_for("auto", False, True)
    assert device == "cpu" and "no CUDA GPU or driver" in note
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

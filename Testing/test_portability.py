"""Windows and macOS, simulated on Linux where that is honest: Unix-only modules and /proc absent, Windows' pipe
encoding (the ANSI code page), Python's EncodingWarning for files opened in the locale's encoding, manifests
written with backslashes, case-insensitive file names, and MPS's lack of float64.

What needs the real platform (TerminateProcess, taskkill, torch on MPS) is listed in docs/ARCHITECTURE.md's
platform note, not faked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.slicer_adapter.process import ChildProcess
from CardiacDiffusionLib.utils import device

REPO = Path(__file__).resolve().parents[1]
NAME = "Zoë Müller 中 →"  # Latin-1, CJK and a symbol: the last two are outside cp1252, Windows' usual code page
UNIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp", "posix")
POSIX_OS = ("sched_getaffinity", "killpg", "setsid", "getuid", "getpgid", "sysconf", "getloadavg", "fork")


def _python(code: str, *flags: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          encoding="utf-8", env=full, cwd=REPO, timeout=timeout)  # fmt: skip


# ---- 1. imports and Unix-only calls ---------------------------------------------------------------
def test_every_module_imports_without_unix_only_modules():
    """Every module of the Lib (those the Slicer modules and the CLI import) imports with the Unix-only modules
    and os functions gone, as on Windows; the CLI's parser builds and a torch command refuses bad input cleanly."""
    code = f"""
        import os, sys, pkgutil, importlib, importlib.abc

        class Windows(importlib.abc.MetaPathFinder):
            # our package's imports of Unix-only modules raise ImportError, as on Windows (third-party packages
            # take their own POSIX paths on Linux, so theirs are left alone)
            def find_spec(self, name, path=None, target=None):
                if name not in {UNIX_ONLY!r}:
                    return None
                frame = sys._getframe(1)
                while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                    frame = frame.f_back
                if frame and frame.f_globals.get("__name__", "").startswith("CardiacDiffusionLib"):
                    raise ImportError(f"No module named {{name!r}} (Windows)")
                return None

        for name in {UNIX_ONLY[:-1]!r}:
            sys.modules.pop(name, None)  # imported again through the finder
        sys.meta_path.insert(0, Windows())
        import monai, SimpleITK, torch, vtk  # noqa: F401 - third party first: monai calls os.getuid on import
        for name in {POSIX_OS!r}:  # our modules' import-time code must not call them either
            if hasattr(os, name):
                delattr(os, name)
        import CardiacDiffusionLib
        failed = []
        for info in pkgutil.walk_packages(CardiacDiffusionLib.__path__, "CardiacDiffusionLib."):
            if info.name.endswith("__main__"):
                continue  # runs a command
            try:
                importlib.import_module(info.name)
            except ImportError as error:
                failed.append(f"{{info.name}}: {{error}}")
        print("FAILED", failed)
        from CardiacDiffusionLib.cli.main import main
        sys.exit(main(["reconstruct", "--sax", "no such file.nii.gz", "--method", "dmcvr", "--out", "x"]))
    """
    done = _python(code)
    assert "FAILED []" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr


def _no_proc(monkeypatch, module):
    """``module``'s open() of /proc and /sys fails as on macOS and Windows (other paths open as usual)."""

    def fake_open(path, *args, **kwargs):
        if str(path).startswith(("/proc", "/sys")):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(module, "open", fake_open, raising=False)
    monkeypatch.setattr(device.Path, "read_text", lambda self, *a, **k: fake_open(self).read(), raising=True)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_thread_policy_and_memory_without_proc(monkeypatch, platform):
    _no_proc(monkeypatch, device)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    if platform == "win32":
        monkeypatch.delattr(os, "sysconf", raising=False)
    else:  # macOS has sysconf, but no SC_AVPHYS_PAGES: ValueError
        real = os.sysconf
        monkeypatch.setattr(os, "sysconf", lambda key: real(key) if key != "SC_AVPHYS_PAGES" else
                            (_ for _ in ()).throw(ValueError("unrecognized configuration name")))  # fmt: skip
    assert device.busy_cpus(0.01) is None
    assert device.physical_cores() == os.cpu_count()
    threads, env, said = device.thread_policy(device.busy_cpus(0.01), device.physical_cores(), {})
    assert (threads, env) == (os.cpu_count(), {}) and "could not be read" in said
    assert device.thread_policy(None, 8, {"OMP_NUM_THREADS": "3"})[0] == 3
    assert device.available_memory() is None  # unknown: the caller skips its memory check


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_keep_freed_memory_without_glibc(monkeypatch, platform):
    monkeypatch.setattr(sys, "platform", platform)
    assert device.keep_freed_memory() is False and device.release_freed_memory() is False


def test_bench_measures_without_resource_or_proc(monkeypatch):
    from CardiacDiffusionLib.utils import bench

    _no_proc(monkeypatch, bench)
    out = bench.measure(lambda: sum(range(1000)), repeats=2, warmup=0)
    assert out["repeats"] == 2 and len(out["times_s"]) == 2 and out["peak_rss_mib"] > 10  # ru_maxrss (macOS way)
    assert out["peak_rss_kind"].startswith("ru_maxrss")
    monkeypatch.setitem(sys.modules, "resource", None)  # Windows
    out = bench.measure(lambda: sum(range(1000)), repeats=2, warmup=0)
    assert out["peak_rss_mib"] is None and out["median_s"] > 0
    monkeypatch.delattr(os, "sysconf", raising=False)
    assert bench.machine_info()["ram_gib"] is None


def test_mps_fallback_is_set_on_macos_before_torch_loads():
    code = """
        import os, sys
        sys.platform = "darwin"
        from CardiacDiffusionLib.cli.main import main
        code = main(["reconstruct", "--sax", "missing.nii.gz", "--method", "dmcvr", "--out", "x"])
        print(code, os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK"))
    """
    unset = code.replace("import os, sys", "import os, sys; os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None)")
    done = _python(unset)
    assert done.stdout.split()[-2:] == ["2", "1"], done.stdout + done.stderr
    kept = _python(code, env={"PYTORCH_ENABLE_MPS_FALLBACK": "0"})  # the user's choice is kept
    assert kept.stdout.split()[-1] == "0"
    linux = _python(unset.replace('sys.platform = "darwin"', ""))
    assert linux.stdout.split()[-2:] == ["2", "None"]


# ---- 2. the Slicer child process -------------------------------------------------------------------
def test_child_output_is_utf8_under_a_windows_code_page():
    """PYTHONIOENCODING=cp1252 is what a Python child's pipes use on a Western-European Windows; the job's child
    must still send (and the parent read) any name: CJK and arrows are outside cp1252."""
    code = f"import sys; print({NAME!r}); print('error: ' + {NAME!r}, file=sys.stderr); sys.exit(2)"
    child = ChildProcess([sys.executable, "-c", code], env={**os.environ, "PYTHONIOENCODING": "cp1252"})
    messages = []
    assert child.wait(60, messages.append) == 2
    assert [m.text for m in messages if m.kind == "log"] == [NAME]
    assert child.error_message().endswith(f": {NAME}")


def test_child_on_windows_gets_its_own_group_and_no_console_window(monkeypatch):
    """The options Popen gets on Windows (Windows' documented flag values; Popen itself cannot take them here)."""
    from CardiacDiffusionLib.slicer_adapter import process

    assert process.popen_options() == {"start_new_session": True}
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x8000000, raising=False)
    monkeypatch.setattr(process.os, "name", "nt")
    assert process.popen_options() == {"creationflags": 0x8000200}


@pytest.mark.mrml
def test_reconstruction_job_in_a_non_ascii_folder_with_spaces(mrml_scene, tmp_path, monkeypatch):
    """The Slicer job's temporary folder under a user folder like C:\\Users\\Zoë Müller: real child, outputs loaded,
    under Windows' pipe code page."""
    import tempfile

    import SimpleITK as sitk

    from CardiacDiffusionLib.geometry.stack import SliceStack
    from CardiacDiffusionLib.reconstruction.volume import reconstruct
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob
    from test_mrml_adapter import sax_images

    temp = tmp_path / NAME / "AppData Local Temp"
    temp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    image, labels = sax_images()
    sax = mrml.volume_node_from_image(mrml_scene, image, f"SAX {NAME}")
    seg = mrml.segmentation_from_labels(mrml_scene, labels, f"labels {NAME}", surfaces=False)
    job = ReconstructionJob(mrml_scene, sax, seg, method="linear", spacing=3.0).start()
    assert NAME in str(job.folder)
    result = job.wait(timeout=120)
    assert result is not None, job.log
    expected = reconstruct(SliceStack.from_image(image, labels), "linear", 3.0)
    volume = mrml.image_from_volume_node(result.volume)
    np.testing.assert_allclose(volume.GetOrigin(), expected.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(expected.image), atol=1e-4)
    assert not job.folder.exists() and not any(temp.iterdir())


@pytest.mark.mrml
def test_cancel_without_clean_up_leaves_scene_and_disk_as_they_were(mrml_scene, monkeypatch):
    """Windows' cancel is TerminateProcess: the child runs no handler. Killed so (SIGKILL to its group) while it
    works, the job adds no node and leaves no temporary folder: it loads outputs only after success."""
    import signal

    from CardiacDiffusionLib.slicer_adapter import mrml, process
    from CardiacDiffusionLib.slicer_adapter.reconstruction import ReconstructionJob
    from test_mrml_adapter import sax_images

    monkeypatch.setattr(process, "kill_tree", lambda pid, grace=3.0, popen=None: os.killpg(pid, signal.SIGKILL))
    image, labels = sax_images()
    sax = mrml.volume_node_from_image(mrml_scene, image, "SAX")
    seg = mrml.segmentation_from_labels(mrml_scene, labels, "labels", surfaces=False)
    count = mrml_scene.GetNumberOfNodes()
    said = []
    job = ReconstructionJob(mrml_scene, sax, seg, method="linear", spacing=3.0).start(lambda f, text: said.append(text))
    folder = job.folder
    deadline = time.monotonic() + 60
    while not (folder / "out").exists() and time.monotonic() < deadline:  # the child has begun its output
        job.child.poll(job._on_message)
        time.sleep(0.01)
    job.cancel()
    assert job.child.returncode == -signal.SIGKILL  # killed, not finished
    with pytest.raises(InputError, match="cancelled"):
        job.finish()
    assert mrml_scene.GetNumberOfNodes() == count and not folder.exists() and "cancelled" in said


# ---- 3. files: explicit UTF-8 -------------------------------------------------------------------------
def test_round_trips_of_non_ascii_names_use_no_locale_encoding(tmp_path):
    """Each file users write and we read back (frames manifest, training config, model card, model registry, TOS
    CSV, the segments CSV) holding a non-ASCII name, with Python's EncodingWarning an error: an open() in the locale's
    encoding (Windows: the ANSI code page) fails here, not only on a clinician's Windows machine."""
    code = f"""
        import csv, json, sys
        from pathlib import Path
        import numpy as np
        root = Path(sys.argv[-1]) / {NAME!r}
        (root / "cine {NAME}").mkdir(parents=True)
        (root / "cine {NAME}" / "f é.nii.gz").write_bytes(b"")
        from CardiacDiffusionLib.cli.reconstruct_frames import _manifest
        manifest = root / "frames.json"
        manifest.write_bytes(b"\\xef\\xbb\\xbf" + json.dumps({{"frames": [{{"sax": "cine {NAME}\\\\f é.nii.gz"}}]}},
                                                         ensure_ascii=False).encode())  # Notepad: BOM, backslash
        print(json.dumps({{"manifest": _manifest(manifest)[0]["sax"]}}))
        from CardiacDiffusionLib.training.config import read_config_file
        config = root / "config.yaml"
        config.write_bytes('data:\\n  root: "C:/Users/{NAME}/sax"\\n'.encode())
        print(json.dumps({{"config": read_config_file(config)["data"]["root"]}}))
        from CardiacDiffusionLib.models import store
        card = root / "card.yaml"
        card.write_bytes("description: Müller et al. 中\\n".encode())
        registry = root / "models.json"
        registry.write_bytes(json.dumps({{"models": []}}).encode())
        print(json.dumps({{"card": store._read_card(card)["description"], "registry": store.read_registry(registry)}}))
        from CardiacDiffusionLib.activation.tos import read_tos_csv, write_tos_csv
        from CardiacDiffusionLib.activation.bullseye import write_segments_csv
        tos = write_tos_csv(root / "tos.csv", {{0: np.arange(18.0) * 10 + 100}})
        print(json.dumps({{"tos": read_tos_csv(tos, "--tos")[0].tolist()}}))
        rows = [dict(segment=1, name="basal anterior", tos_median_ms=1.0, tos_mean_ms=1.0, points=3, late_fraction=0.0,
                     late=False, septal=False, scar=False)]
        write_segments_csv(root / "segments.csv", rows)
        print(json.dumps({{"segments": (root / "segments.csv").read_text(encoding="utf-8").splitlines()[0]}}))
    """
    done = _python(code.replace("sys.argv[-1]", repr(str(tmp_path))), "-X", "warn_default_encoding", "-W",
                   "error::EncodingWarning")  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = {k: v for line in done.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    assert got["manifest"] == str(tmp_path / NAME / f"cine {NAME}" / "f é.nii.gz")
    assert got["config"] == f"C:/Users/{NAME}/sax"
    assert got["card"] == "Müller et al. 中" and got["registry"] == []
    assert got["tos"] == list(np.arange(18.0) * 10 + 100)
    assert got["segments"].startswith("segment,name,tos_median_ms")


def test_manifest_with_backslashes_finds_its_frames(tmp_path):
    """A frames manifest written on Windows (``sub\\frame.nii.gz``) read on macOS/Linux; a name with a real
    backslash, legal there, is still taken as it is."""
    from CardiacDiffusionLib.cli.reconstruct_frames import _manifest

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.nii.gz").write_bytes(b"")
    (tmp_path / "odd\\name.nii.gz").write_bytes(b"")
    manifest = tmp_path / "frames.json"
    manifest.write_text(json.dumps({"frames": [{"sax": "sub\\a.nii.gz", "sax_labels": "odd\\name.nii.gz"}]}),
                        encoding="utf-8")  # fmt: skip
    entry = _manifest(manifest)[0]
    assert entry == {"sax": str(tmp_path / "sub" / "a.nii.gz"), "sax_labels": str(tmp_path / "odd\\name.nii.gz")}


# ---- 4. case-insensitive file names ------------------------------------------------------------------
def test_model_names_differing_only_in_case_are_refused(tmp_path, monkeypatch):
    """The user store keeps models/<name>.safetensors: 'Mine' and 'mine' are one file on macOS and Windows, so the
    second add would overwrite the first model's weights (then refused as damaged)."""
    from CardiacDiffusionLib.models import store
    from CardiacDiffusionLib.models.store import add_model, list_models, load_model, save_model
    from CardiacDiffusionLib.training.toy import ToyMLP

    monkeypatch.setenv("CARDIAC_DIFFUSION_HOME", str(tmp_path / "home"))
    shipped = tmp_path / "shipped.json"
    shipped.write_text('{"models": []}', encoding="utf-8")
    monkeypatch.setattr(store, "shipped_registry_path", lambda: shipped)
    config = {"features": 4, "hidden": 8, "dropout": 0.0}
    torch.manual_seed(0)
    save_model(ToyMLP(**config), tmp_path / "a.safetensors", config, architecture="toy_mlp")
    save_model(ToyMLP(**config), tmp_path / "b.safetensors", config, architecture="toy_mlp")
    add_model("Mine", "dmcvr", tmp_path / "a.safetensors")
    for force in (False, True):
        with pytest.raises(InputError, match="differs only in capitals"):
            add_model("mine", "dmcvr", tmp_path / "b.safetensors", force=force)
    assert [m["name"] for m in list_models()] == ["Mine"]
    assert load_model("Mine").meta is not None  # its file untouched
    add_model("Mine", "dmcvr", tmp_path / "b.safetensors", force=True)  # the same name replaces it
    assert [m["name"] for m in list_models()] == ["Mine"]


def test_output_file_names_differ_in_more_than_case_and_hold_no_colon():
    """Every output file name the commands write (literals in the Lib) stays distinct on a case-insensitive file
    system (macOS, Windows) and is a valid Windows name."""
    import re

    names = set()
    for path in (REPO / "CardiacDiffusionLib").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"[\"']([\w.-]+\.(?:nii\.gz|nrrd|json|jsonl|csv|png|vtk|vtp|mha|npz|safetensors))[\"']", text))
    assert len(names) > 20  # the pattern finds them
    by_case = {}
    for name in names:
        by_case.setdefault(name.lower(), set()).add(name)
    assert [v for v in by_case.values() if len(v) > 1] == []
    assert not [n for n in names if set(n) & set('<>:"|?*\\')]


# ---- 5. devices: MPS -------------------------------------------------------------------------------
class NoFloat64(TorchFunctionMode):
    """MPS has no float64: any float64 tensor made is refused, as torch on an Apple GPU refuses it (run on the CPU
    here, so this is strict: a float64 CPU scalar would pass there)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype in (torch.float64, torch.complex128):
                raise TypeError(f"{func}: Cannot convert a MPS Tensor to float64 dtype")
        return out


def test_ddim_sampling_makes_no_float64_tensor():
    from monai.networks.schedulers import DDPMScheduler

    from CardiacDiffusionLib.dmcvr.ddim import ddim_decode, ddim_encode

    abar = DDPMScheduler(num_train_timesteps=100).alphas_cumprod.float()

    def eps(x, t):  # a constant noise estimate: each DDIM step is affine and the same both ways
        return torch.full_like(x, 0.3)

    x0 = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    want = ddim_decode(eps, ddim_encode(eps, x0, abar, 5), abar, 5)
    with NoFloat64():
        got = ddim_decode(eps, ddim_encode(eps, x0, abar, 5), abar, 5)
    assert torch.equal(got, want)
    torch.testing.assert_close(got, x0, atol=1e-4, rtol=0)  # so decoding inverts encoding


def test_sadir_sampling_makes_no_float64_tensor():
    from CardiacDiffusionLib.sadir.model import SadirModel

    torch.manual_seed(0)
    model = SadirModel({"size": 16, "output_size": 32, "channels": [8, 8, 8], "num_head_channels": 8,
                        "truncation": 7, "sample_steps": 2}).eval()  # fmt: skip
    cond = torch.zeros(1, 2, 16, 16, 16)
    want = model.sample(cond, seed=3)
    with NoFloat64():
        got = model.sample(cond, seed=3)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_auto_device_on_a_mac_is_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_mps_available", lambda: True)
    assert device.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    assert device.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="MPS"):
        device.resolve_device("mps")


def test_panel_device_on_a_mac_runs_on_the_cpu_without_cuda_advice(monkeypatch):
    """The panels offer auto/cpu/cuda; on a Mac auto is the CPU, said nowhere, and asking for CUDA does not send
    the user to install a CUDA build of torch, which does not exist for macOS."""
    from CardiacDiffusionLib.slicer_adapter import dependencies as deps

    monkeypatch.setattr(sys, "platform", "darwin")
    assert deps.device_for("auto", False, False) == ("cpu", None)
    device_, note = deps.device_for("cuda", False, False, "sampling")
    assert device_ == "cpu" and "macOS" in note and "sampling" in note and "install" not in note
    assert deps.device_for("cpu", False, False) == ("cpu", None)

"""CPU speed outside the networks (``scripts/bench_cli.py``): each change gives the outputs of the code it replaced.

- SADIR's test-time refinement steps Adam through ``torch.optim.adam.adam`` (``sadir.reconstruct.adam_step``) instead
  of building ``torch.optim.Adam``, whose ``__init__`` imports ``torch._dynamo``: bit for bit the same update.
- The LMA modules import the VTK classes they use from ``vtkmodules`` instead of ``import vtk`` (all of VTK): the
  same mesh file and the same rendered picture.
- ``io`` and ``metrics`` import their names on first use: reading NIfTI loads no h5py, the LAX check no scikit-image;
  ``reconstruction.volume`` imports the methods when it runs one and ``baselines`` SciPy where it is used.
- The MR phantom evaluates the factors its surfaces share once (``MRPhantom._regions``): the same labels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ---- SADIR refinement: Adam without torch.optim.Adam ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_step_equals_torch_adam_bit_for_bit(dtype):
    from CardiacDiffusionLib.sadir.reconstruct import adam_step

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the step counter's dtype follows it, as in torch.optim.Adam
    try:
        g = torch.Generator().manual_seed(0)
        start = torch.randn(2, 5, 7, 2, generator=g)
        grads = [torch.randn(start.shape, generator=g) * 10.0 ** (k % 5 - 2) for k in range(12)]
        ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
        step, opt = adam_step(ours, 1e-3), torch.optim.Adam([theirs], lr=1e-3)
        for grad in grads:
            ours.grad, theirs.grad = grad.clone(), grad.clone()
            step()
            opt.step()
            assert torch.equal(ours, theirs)
        assert not torch.equal(ours, start)
    finally:
        torch.set_default_dtype(default)


def _reference_refine(net, v_hat, sparse, mask, iters, lr=None, prior=None):
    """The refinement as it was: torch.optim.Adam."""
    from CardiacDiffusionLib.sadir import reconstruct as rec
    from CardiacDiffusionLib.sadir.model import soft_dice

    lr, prior = lr or rec.REFINE_LR, rec.REFINE_PRIOR if prior is None else prior
    anchor = v_hat.detach()
    param = torch.view_as_real(anchor.clone()).requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    seen = mask.sum().clamp_min(1)
    for _ in range(iters):
        v = torch.view_as_complex(param)
        _, disp = net.deform(v)
        moved, _ = net.fine_atlas_warp(disp)
        loss = ((mask * (moved - sparse) ** 2).sum() / seen + 1 - soft_dice(mask * moved, mask * sparse).mean()
                + prior * net.shooting.energy(v - anchor).mean() / net.atlas[0, 0].numel())  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.view_as_complex(param.detach())


def test_sadir_refinement_equals_the_torch_optim_version(monkeypatch):
    """The shipped model on the LMA phantom, 4 refinement steps: the same displacement and myocardium, bit for bit."""
    from CardiacDiffusionLib.activation.phantom_case import PhantomCase
    from CardiacDiffusionLib.sadir import reconstruct as rec

    stack = PhantomCase(7).stack
    ours = rec.reconstruct_myocardium(stack, device="cpu", refine_iters=4)
    monkeypatch.setattr(rec, "refine", _reference_refine)
    theirs = rec.reconstruct_myocardium(stack, device="cpu", refine_iters=4)
    network = rec.reconstruct_myocardium(stack, device="cpu", refine_iters=0)
    assert np.array_equal(ours.displacement, theirs.displacement)
    assert ours.slice_dice == theirs.slice_dice and ours.jacobian_min == theirs.jacobian_min
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(ours.labels), sitk.GetArrayFromImage(theirs.labels))
    assert np.abs(ours.displacement - network.displacement).max() > 1e-3  # the refinement did move it


# ---- imports: only what the command uses --------------------------------------------------------------------------
def test_commands_load_only_what_they_use(tmp_path):
    """``lax-dice``, ``reconstruct --method linear`` and ``lma`` (shape) in a fresh process: the results as the library
    computes them, without ``import vtk`` (all of VTK), scikit-image's metrics, h5py or torch._dynamo, and the first
    two without SciPy's ndimage."""
    setup = """
import json
from pathlib import Path
import numpy as np, SimpleITK as sitk
from CardiacDiffusionLib.activation.phantom_case import PhantomCase
from CardiacDiffusionLib.phantoms.scanner import make_subject, write_subject
case = PhantomCase(7)
sitk.WriteImage(case.stack.to_image(labels=True), "labels.nii.gz")
np.save("strain.npy", case.strain)
print(json.dumps({k: str(v) for k, v in write_subject(make_subject(7), Path("phantom").resolve(), dicom=False).items()}))
"""
    files = json.loads(run_python(setup, tmp_path).splitlines()[-1])
    code = f"""
import json, sys
from CardiacDiffusionLib.cli.main import main
files = {files!r}
lax = [files[f"lax_{{v}}_labels"] for v in ("2ch", "3ch", "4ch")]
assert main(["lax-dice", "--labels", files["truth_labels"], "--lax-labels", *lax, "--out", "dice.json"]) == 0
assert main(["reconstruct", "--method", "linear", "--sax", files["sax_image"], "--sax-labels", files["sax_labels"],
             "--out", "linear"]) == 0
unused = ("vtk", "vtkmodules.vtkRenderingVolumeOpenGL2", "skimage.metrics", "h5py", "torch._dynamo", "scipy.ndimage")
before_lma = sorted(m for m in unused if m in sys.modules)
assert main(["lma", "--slices", "labels.nii.gz", "--strain", "strain.npy", "--out", "lma"]) == 0
loaded = sorted(m for m in unused[:-1] if m in sys.modules)  # lma's sectors use scipy.ndimage
print(json.dumps({{"before_lma": before_lma, "loaded": loaded, "lax": lax, "truth": files["truth_labels"]}}))
"""
    out = json.loads(run_python(code, tmp_path).splitlines()[-1])
    assert out["before_lma"] == [] and out["loaded"] == []
    import SimpleITK as sitk

    from CardiacDiffusionLib.reconstruction.lax_check import lax_dice

    written = json.loads((tmp_path / "dice.json").read_text())
    truth = sitk.ReadImage(out["truth"])
    for path in out["lax"]:
        expected = lax_dice(truth, sitk.ReadImage(path))
        assert written[Path(path).name] == pytest.approx(expected) and expected["LV"] > 0.99  # 1 mm truth: ~1
    lma = json.loads((tmp_path / "lma" / "lma.json").read_text())
    assert lma["lead"]["segment"] in range(1, 18)


def test_mesh_and_picture_equal_those_made_with_all_of_vtk_loaded(tmp_path):
    """The LMA phantom's painted mesh (.vtp bytes) and its offscreen picture (pixels): the same whether the process
    imported ``vtk`` (every module and its factories, as before) or only the ``vtkmodules`` used now."""
    code = """
import sys
if sys.argv[1] == "all":
    import vtk  # noqa: F401
import numpy as np, SimpleITK as sitk
from CardiacDiffusionLib.activation.mapping import write_stl, write_vtp
from CardiacDiffusionLib.activation.phantom_case import PhantomCase
from CardiacDiffusionLib.activation.pipeline import run_lma
from CardiacDiffusionLib.activation.render import render_tos_png
case = PhantomCase(7)
r = run_lma(case.stack, strain=case.strain, frame_ms=case.frame_ms)
write_vtp(r.mesh, sys.argv[1] + ".vtp")
write_stl(r.mesh, sys.argv[1] + ".stl")
render_tos_png(r.mesh, sys.argv[1] + ".png", r.frame.axis, r.frame.e0)
print("vtkmodules.vtkRenderingVolumeOpenGL2" in sys.modules)
"""
    for who in ("all", "used"):
        done = subprocess.run([sys.executable, "-c", code, who], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-1] == str(who == "all")
    for suffix in (".vtp", ".stl"):
        assert (tmp_path / f"all{suffix}").read_bytes() == (tmp_path / f"used{suffix}").read_bytes()
    import SimpleITK as sitk

    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{w}.png"))) for w in ("all", "used"))
    assert a.shape == b.shape and np.array_equal(a, b)
    assert len(np.unique(a.reshape(-1, a.shape[-1]), axis=0)) > 50  # a coloured mesh, a bar, text: not blank


def test_lazy_packages_give_the_same_names():
    import CardiacDiffusionLib.io as io
    import CardiacDiffusionLib.metrics as metrics
    from CardiacDiffusionLib.io import acdc, contours, dicom, volumes
    from CardiacDiffusionLib.metrics import image, overlap, paired, surface

    for package, modules in ((io, (acdc, contours, dicom, volumes)), (metrics, (image, overlap, paired, surface))):
        for name in package.__all__:
            owners = [m for m in modules if name in vars(m)]
            assert len(owners) >= 1 and getattr(package, name) is getattr(owners[0], name), name
        assert set(package.__all__) <= set(dir(package))
        with pytest.raises(AttributeError):
            package.no_such_name  # noqa: B018
    assert metrics.dice(np.array([1, 1, 0]), np.array([1, 0, 0])) == pytest.approx(2 / 3)


# ---- MR phantom: shared factors evaluated once ---------------------------------------------------------------------
def _reference_regions(self, local):
    """``MRPhantom._regions`` as it was: each surface's radius from ``_radius``."""
    s = self.shape
    x1, x2, z = local[..., 0], local[..., 1], local[..., 2]
    rho, theta, below_base = np.hypot(x1, x2), np.arctan2(x2, x1), z >= 0
    endo = below_base & (rho < self._radius(z, theta, s.r_endo, s.l_endo, s))
    epi = below_base & (rho < self._radius(z, theta, s.r_epi, s.l_epi, s))
    r_mean = s.r_epi * self._longitudinal(z / s.l_epi) * self._profile(z, s.l_epi)
    width = s.rv_width * np.sqrt(np.clip(1.0 - (z / s.l_rv) ** 2, 0.0, None))
    regions = {"endo": endo, "epi": epi}
    for name, extra in (("rv", 0.0), ("rv_wall", 3.5)):
        outer, inner = r_mean + width + extra, -self.rv_inner * r_mean
        centre, half = (outer + inner) / 2, np.maximum((outer - inner) / 2, 1e-6)
        breadth = self.rv_breadth * (r_mean + width) + extra
        inside = ((x1 - centre) / half) ** 2 + (x2 / np.maximum(breadth, 1e-6)) ** 2 < 1.0
        level = below_base & (z < s.l_rv) if name == "rv" else below_base & (z < s.l_rv + extra)
        regions[name] = inside & level & ~epi & (x1 > 0.05 * r_mean)
    regions["rv"] &= width > 0
    return regions


@pytest.mark.parametrize("seed,phase", [(0, "ED"), (7, "ES"), (11, "ED")])
def test_phantom_regions_equal_the_reference(seed, phase):
    from CardiacDiffusionLib.phantoms.mr import MRPhantom

    phantom = MRPhantom(seed, phase)
    low, high = phantom.box(pad=3.0)
    axes = [np.arange(a, b, 0.7) for a, b in zip(low, high)]
    local = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    ours, theirs = phantom._regions(local), _reference_regions(phantom, local)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    assert all(theirs[name].sum() > 1000 for name in theirs)  # every region is there

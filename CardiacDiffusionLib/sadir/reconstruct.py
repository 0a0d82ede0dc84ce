"""``reconstruct_myocardium``: the 3D LV myocardium of a labelled SAX stack as a deformed atlas (SADIR).

Output: a uint8 SimpleITK volume with the project label 2 (LV myocardium) on the 64^3 normalised LV
frame grid (1.75 mm, axes along the stack's row, column and normal; for a stack described apex -> base,
its column, row and reversed normal), positioned in the input's LPS frame, so it overlays the input
slices directly. It is the shipped atlas (>= 0.5 after warping)
moved by the shot diffeomorphism, so its topology is the atlas's; this is checked, not assumed:
the minimum Jacobian determinant of phi^-1 (> 0: the map folds nowhere) and the topology of the
output (one 26-connected component, no enclosed cavity, Euler characteristic 1, i.e. a shell of
genus 0 - a solid cup like the atlas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import euler_number

from ..errors import InputError
from ..geometry.stack import SliceStack, normal_points_to_apex
from ..models.store import load_model
from ..utils.device import resolve_device
from . import data
from .model import SadirModel, soft_dice
from .warp import jacobian_determinant

if TYPE_CHECKING:  # results carry SimpleITK images; training (train.py) runs without SimpleITK
    import SimpleITK as sitk

#: name of the shipped model in Resources/models.json
DEFAULT_MODEL = "sadir-myocardium"
MYOCARDIUM_LABEL = data.MYO
#: test-time refinement defaults (steps, Adam lr on the v0 coefficients, pull towards the network's v0)
REFINE_STEPS, REFINE_LR, REFINE_PRIOR = 20, 1e-3, 1.0
#: a slice whose myocardium the output overlaps less than this (Dice) is named in the flags
SLICE_DICE_FLAG = 0.5


@dataclass
class SadirResult:
    labels: sitk.Image  # uint8, 2 = LV myocardium, 0 elsewhere
    probability: sitk.Image  # float32 deformed soft atlas in [0, 1]
    jacobian_min: float  # min det D(phi^-1) on the model grid
    topology: dict
    slice_dice: float  # agreement of the output with the given slices on their planes (output grid)
    frame: data.LVFrame
    flags: list[str] = field(default_factory=list)
    method: str = "sadir"
    #: (3, n, n, n) displacement of phi^-1 on the output grid, voxel units, channel i along array axis i (z, y, x)
    displacement: np.ndarray | None = None
    #: per given slice (caller's order): Dice of the output with its myocardium, sampled on its pixels (NaN: none)
    slice_dices: np.ndarray | None = None


def topology(mask: np.ndarray) -> dict:
    """Components (26-connectivity), enclosed cavities (6-connected background not reaching the border),
    Euler characteristic and genus of the boundary (handles = components + cavities - Euler)."""
    mask = np.asarray(mask, bool)
    components = int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1])
    background = np.pad(~mask, 1, constant_values=True)
    cavities = int(ndimage.label(background)[1]) - 1 if background.any() else 0
    euler = int(euler_number(mask, connectivity=3)) if mask.any() else 0
    genus = components + cavities - euler
    return {"components": components, "cavities": cavities, "euler": euler, "genus": genus,
            "ok": components == 1 and cavities == 0 and genus == 0}  # fmt: skip


def per_slice_dice(stack: SliceStack, labels: np.ndarray, frame: data.LVFrame) -> np.ndarray:
    """(n,) Dice of the output myocardium (``labels`` > 0 on ``frame``'s grid, array order z, y, x) with each
    slice's myocardium, the output sampled (nearest) at every pixel of the slice through its own geometry;
    NaN for a slice where neither holds myocardium."""
    rows, cols = stack.shape2d
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    sx, sy = stack.pixel_spacing
    out = np.full(stack.n, np.nan)
    for k in range(stack.n):
        points = stack.origins[k] + (c * sx)[..., None] * stack.row_dir + (r * sy)[..., None] * stack.col_dir
        x, y, z = np.moveaxis(np.round((points - frame.origin) @ frame.direction / frame.spacing).astype(int), -1, 0)
        inside = (np.minimum(np.minimum(x, y), z) >= 0) & (np.maximum(np.maximum(x, y), z) < frame.size)
        pred = np.zeros((rows, cols), bool)
        pred[inside] = labels[z[inside], y[inside], x[inside]] > 0
        truth = stack.labels[k] == data.MYO
        total = pred.sum() + truth.sum()
        out[k] = 2 * (pred & truth).sum() / total if total else np.nan
    return out


def refine(net: SadirModel, v_hat: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor, iters: int,
           lr: float = REFINE_LR, prior: float = REFINE_PRIOR) -> torch.Tensor:  # fmt: skip
    """Test-time refinement: ``iters`` Adam steps on v0 from the network's answer ``v_hat``, fitting the
    output-size deformed atlas to the given slices on their planes (``sparse``, ``mask``: (1, 1, m^3) on the
    output grid): masked SSD + (1 - masked soft Dice) + ``prior`` <L(v0 - v_hat), v0 - v_hat> / voxels.

    The prior keeps v0 near the network's answer in the shooting metric (the slices alone under-determine
    the shape between them); the answer stays a shot diffeomorphism of the atlas. Chosen on the tuning
    phantoms (docs/models/sadir.md); a first version (fit on the 3.5 mm model grid, v0 pulled towards 0)
    lowered the volume Dice."""
    anchor = v_hat.detach()
    param = torch.view_as_real(anchor.clone()).requires_grad_(True)
    step = adam_step(param, lr)
    seen = mask.sum().clamp_min(1)
    for _ in range(iters):
        v = torch.view_as_complex(param)
        _, disp = net.deform(v)
        moved, _ = net.fine_atlas_warp(disp)
        ssd = (mask * (moved - sparse) ** 2).sum() / seen
        dice = soft_dice(mask * moved, mask * sparse).mean()
        pull = net.shooting.energy(v - anchor).mean() / net.atlas[0, 0].numel()
        loss = ssd + 1 - dice + prior * pull
        param.grad = None
        loss.backward()
        step()
    return torch.view_as_complex(param.detach())


def adam_step(param: torch.Tensor, lr: float):
    """``torch.optim.Adam([param], lr=lr).step`` (defaults; the same update function, bit for bit) without building
    the optimizer: ``Optimizer.__init__`` imports ``torch._dynamo``, 1-2.5 s of a 20-step CPU refinement."""
    from torch.optim.adam import adam

    moments = torch.zeros_like(param), torch.zeros_like(param)
    count = torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32)

    def step() -> None:
        with torch.no_grad():
            adam([param], [param.grad], [moments[0]], [moments[1]], [], [count], amsgrad=False, beta1=0.9,
                 beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8, maximize=False)  # fmt: skip

    return step


def _load(model) -> SadirModel:
    if isinstance(model, SadirModel):
        return model
    name = model or DEFAULT_MODEL
    try:
        loaded = load_model(name)
    except InputError as error:
        raise InputError(
            f"SADIR model: {error}. Train one (cardiac-diffusion train sadir --out DIR) and pass "
            "DIR/finetune/model.safetensors"
        ) from None
    if not isinstance(loaded.module, SadirModel):
        raise InputError(f"SADIR model {name}: is a {loaded.architecture} model, not a SADIR model")
    return loaded.module


def reconstruct_myocardium(
    stack: SliceStack, model: SadirModel | str | Path | None = None, steps: int | None = None, device: str = "auto",
    seed: int = 0, refine_iters: int = REFINE_STEPS,
) -> SadirResult:  # fmt: skip
    """SADIR reconstruction of the LV myocardium from a SAX stack whose slices carry labels (2 = myocardium).

    ``model``: a :class:`SadirModel`, a registered name or a .safetensors path (default: the shipped
    ``sadir-myocardium``). ``steps``: DDIM steps (default: the model's). ``seed``: the start noise.
    ``refine_iters``: test-time fit of v0 to the given slices after sampling (:func:`refine`; 0: the network's
    v0 as sampled).
    """
    if stack.n < data.MIN_SLICES:
        raise InputError(f"{stack.source}: {stack.n} slice(s); SADIR needs at least {data.MIN_SLICES} SAX slices")
    if refine_iters < 0:
        raise InputError(f"refine steps {refine_iters}: give 0 (off) or a positive number")
    data.check_stack(stack)
    given = stack  # the caller's slice order, for the slices named in the flags
    if not normal_points_to_apex(stack):  # the frame's z must run base -> apex, as in training
        stack = stack.transposed()
    net = _load(model)
    dev = resolve_device(device)
    net = net.to(dev).eval()
    # the network conditions on the slices that show myocardium, as in training; the refinement and the
    # slice check use every slice: those above the base and below the apex bound where the myocardium ends
    shown = data.myocardium_slices(stack, None)
    frame = data.lv_frame(shown, net.atlas.shape[-1])
    fine = frame.resized(net.atlas_fine.shape[-1])
    sparse, mask = data.sparse_volume(data.spread_slices(shown), frame)
    cond = torch.from_numpy(np.stack([sparse, mask]))[None].to(dev)
    sparse_fine, mask_fine = data.sparse_volume(stack, fine)
    with torch.no_grad():
        v_hat, _, disp = net.sample(cond, steps, seed=seed)
    if refine_iters > 0:
        target, seen = (torch.from_numpy(a)[None, None].to(dev) for a in (sparse_fine, mask_fine))
        with torch.enable_grad():
            v_hat = refine(net, v_hat, target, seen, refine_iters)
    with torch.no_grad():
        if refine_iters > 0:
            _, disp = net.deform(v_hat)
        prob, up = net.fine_atlas_warp(disp)
        jac = float(jacobian_determinant(disp).min())
    prob = prob[0, 0].cpu().numpy().astype(np.float32)
    myo = prob >= 0.5
    topo = topology(myo)
    observed = mask_fine > 0
    seen_truth, seen_pred = sparse_fine[observed] > 0.5, myo[observed]
    denom = seen_truth.sum() + seen_pred.sum()
    slice_dice = float(2 * (seen_truth & seen_pred).sum() / denom) if denom else 1.0
    flags = []
    if jac <= 0:
        flags.append(f"deformation folds: min Jacobian determinant {jac:.3f} <= 0")
    if not topo["ok"]:
        flags.append(f"output topology differs from a single closed shell: {topo}")
    if slice_dice < 0.7:
        flags.append(f"reconstruction agrees poorly with the given slices (Dice {slice_dice:.2f})")
    planes = data.slice_planes(shown, frame)
    outside = int(np.sum((planes < 0) | (planes >= frame.size)))
    if outside:
        span = float(np.ptp(shown.positions))
        flags.append(f"{outside} of {shown.n} myocardium slices lie outside the model's {data.FOV_MM:.0f} mm frame "
                     f"(the myocardium slices span {span:.0f} mm) and were not used: the output misses the "
                     "myocardium there; check the slice spacing")  # fmt: skip
    each = per_slice_dice(given, myo, fine)
    shows = np.any(given.labels == data.MYO, axis=(1, 2))
    poor = [int(k) for k in np.flatnonzero(shows & (np.nan_to_num(each, nan=1.0) < SLICE_DICE_FLAG))]
    if poor:
        flags.append(f"the output barely overlaps the myocardium of slice(s) {poor} (0-based, as given; Dice "
                     f"{', '.join(f'{each[k]:.2f}' for k in poor)} < {SLICE_DICE_FLAG}): it ends short of them, as for "
                     "a heart longer than the model's atlas reaches, or they are not where the geometry puts them")  # fmt: skip
    labels = fine.to_image((myo * MYOCARDIUM_LABEL).astype(np.uint8))
    return SadirResult(labels, fine.to_image(prob), jac, topo, slice_dice, fine, flags,
                       displacement=up[0].cpu().numpy(), slice_dices=each)  # fmt: skip

"""CT phantom pairs for the LDM: HU window, one-hot labels, and the paper's training augmentations.

Intensities: HU clipped to the window [-200, 800] and scaled linearly to [-1, 1] (blood pool with
contrast ~ +0.2, myocardium ~ -0.25, fat -0.8, lung and air clip to -1, bone clips to +1).
Augmentations (Hu et al.), drawn from numpy's global generator (the runner seeds it):
random crop (p=0.3, box side 75-100 % at a random position) or else centre crop (p=0.3, same
sizes), each resized back (image trilinear, labels nearest); flips along x (left-right) and y
(antero-posterior) each p=0.2; a +50 HU contrast boost of the blood pool (every label but MYO)
with p=0.05. The crop probabilities are ours: the paper names the operations, not their rates.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..phantoms.ct import MYO, make_ct_phantom

HU_WINDOW = (-200.0, 800.0)
#: held-out phantoms start here; training seeds are 0..n-1
TEST_SEED = 100_000


def hu_to_unit(hu: np.ndarray | torch.Tensor, window=HU_WINDOW):
    """HU clipped to ``window`` and mapped linearly to [-1, 1]."""
    lo, hi = window
    x = (hu - lo) / (hi - lo) * 2.0 - 1.0
    return x.clip(-1.0, 1.0)


def unit_to_hu(x: np.ndarray | torch.Tensor, window=HU_WINDOW):
    """Inverse of :func:`hu_to_unit` inside the window."""
    lo, hi = window
    return (x + 1.0) / 2.0 * (hi - lo) + lo


def phantom_pair(seed: int, size: int, contrast: bool = True, noise_hu: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """(HU float32 (z, y, x), labels uint8) of one CT phantom."""
    image, labels, _ = make_ct_phantom(seed, size=size, contrast=contrast, noise_hu=noise_hu)
    return sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(labels)


def _crop_resize(hu: np.ndarray, lab: np.ndarray, start: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    n = hu.shape[0]
    sl = tuple(slice(int(s), int(s) + side) for s in start)
    img = torch.from_numpy(np.ascontiguousarray(hu[sl]))[None, None]
    lbl = torch.from_numpy(np.ascontiguousarray(lab[sl])).float()[None, None]
    img = F.interpolate(img, size=(n, n, n), mode="trilinear", align_corners=False)[0, 0].numpy()
    lbl = F.interpolate(lbl, size=(n, n, n), mode="nearest")[0, 0].numpy().astype(np.uint8)
    return img, lbl


def augment(hu: np.ndarray, lab: np.ndarray, p_crop: float = 0.3, p_flip: float = 0.2,
            p_boost: float = 0.05, min_side: float = 0.75) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One draw of the paper's augmentations on a cubic (z, y, x) HU volume and its labels."""
    n = hu.shape[0]
    r = np.random.uniform()
    if r < 2 * p_crop:
        side = int(round(n * np.random.uniform(min_side, 1.0)))
        if r < p_crop:  # random crop
            start = np.random.randint(0, n - side + 1, 3)
        else:  # centre crop
            start = np.full(3, (n - side) // 2)
        if side < n:
            hu, lab = _crop_resize(hu, lab, start, side)
    if np.random.uniform() < p_flip:  # horizontal: x (left-right)
        hu, lab = hu[:, :, ::-1], lab[:, :, ::-1]
    if np.random.uniform() < p_flip:  # vertical: y (antero-posterior)
        hu, lab = hu[:, ::-1], lab[:, ::-1]
    if np.random.uniform() < p_boost:  # +50 HU contrast boost of the blood pool
        hu = hu + 50.0 * ((lab > 0) & (lab != MYO))
    return np.ascontiguousarray(hu), np.ascontiguousarray(lab)


class CTPhantomPairs(Dataset):
    """Seeded CT phantoms (``contrast_fraction`` of them contrast-enhanced), as unit-range images + labels.

    Items: ``{"image": (1, n, n, n) float32 in [-1, 1], "labels": (n, n, n) int64, "contrast": 0/1}``.
    """

    def __init__(self, phantoms: int = 200, first_seed: int = 0, size: int = 32, contrast_fraction: float = 0.75,
                 noise_hu: float = 15.0, augment: bool = True):  # fmt: skip
        # no ``root``: ``train ldm --data DIR`` is refused by the runner (the recipe makes its own phantoms)
        self.size, self.augment = size, augment
        self.items = []
        for seed in range(first_seed, first_seed + phantoms):
            contrast = bool(np.random.default_rng([seed, 7]).uniform() < contrast_fraction)
            hu, lab = phantom_pair(seed, size, contrast, noise_hu)
            self.items.append((hu, lab, contrast))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        hu, lab, contrast = self.items[i]
        if self.augment:
            hu, lab = augment(hu, lab)
        return {"image": torch.from_numpy(hu_to_unit(hu))[None].float(),
                "labels": torch.from_numpy(lab.astype(np.int64)), "contrast": torch.tensor(float(contrast))}  # fmt: skip


class EncodedPairs(Dataset):
    """``draws`` augmented passes over ``pairs``, encoded once by a frozen VAE: items ``{"mu", "sigma"}``.

    Training the latent diffusion on these skips the VAE encoder in every step (at 64^3 it cost more
    than the latent UNet's step); the latent is still sampled from N(mu, sigma) at every step, but
    each phantom contributes ``draws`` fixed augmentations instead of a fresh one per step.
    """

    def __init__(self, pairs: Dataset, vae, draws: int, batch_size: int = 8):
        device = next(vae.parameters()).device
        order = [i for _ in range(int(draws)) for i in range(len(pairs))]
        self.mu, self.sigma = [], []
        with torch.no_grad():
            for j in range(0, len(order), batch_size):
                chunk = [pairs[i] for i in order[j : j + batch_size]]  # one batch of volumes in memory at a time
                image = torch.stack([d["image"] for d in chunk]).to(device)
                labels = torch.stack([d["labels"] for d in chunk]).to(device)
                mu, sigma = vae.encode(image, labels)
                self.mu.extend(mu.cpu())
                self.sigma.extend(sigma.cpu())

    def __len__(self) -> int:
        return len(self.mu)

    def __getitem__(self, i: int) -> dict:
        return {"mu": self.mu[i], "sigma": self.sigma[i]}

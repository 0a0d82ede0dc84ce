"""glibc keeping freed memory (utils.device.keep_freed_memory) where a workflow starts its CPU network work changes no
arithmetic: LDM sampling (ldm/generate.py) gives the same bytes with and without it. Each run is its own process (the
malloc settings are process-wide, set once)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CODE = textwrap.dedent("""
    import hashlib, sys, torch
    torch.set_num_threads(1)
    from CardiacDiffusionLib.ldm import generate
    from CardiacDiffusionLib.utils import device
    calls = []
    real = device.keep_freed_memory
    generate.keep_freed_memory = (lambda: calls.append(real()) or True) if sys.argv[1] == "kept" else (lambda: False)
    pair = generate.sample_pairs(generate.load_ldm(device="cpu"), 1, seed=4, steps=3)[0]
    digest = hashlib.sha256(b"".join(pair[k].tobytes() for k in ("hu", "raw_labels", "labels"))).hexdigest()
    print(digest, calls, int((pair["labels"] > 0).sum()))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_ldm_sampling_is_bit_identical_with_kept_memory():
    out = {}
    for mode in ("kept", "default"):
        run = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert run.returncode == 0, run.stderr
        digest, *calls, foreground = run.stdout.split()
        out[mode] = digest, " ".join(calls), int(foreground)
    if out["kept"][1] == "[False]":
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    assert out["kept"][1] == "[True]"  # called once, on the CPU
    assert out["default"][1] == "[]"
    assert out["kept"][0] == out["default"][0]  # image, raw and cleaned labels: the same bytes
    assert out["kept"][2] == out["default"][2] > 100  # a live sample: heart labels drawn in the 32^3 volume

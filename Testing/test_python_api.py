"""docs/PYTHON_API.md: every ```python block runs (in order, one namespace, an empty folder) and prints the ```text
block after it (numbers to 2e-3); the library calls there give what the commands write (same bytes / values)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.cli.main import main
from CardiacDiffusionLib.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PYTHON_API.md"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def doc_blocks() -> list[tuple[str, str | None]]:
    """(python code, the ```text block right after it or None), in the page's order."""
    found = re.findall(r"```(\w*)\n(.*?)```", DOC.read_text(), re.S)
    blocks = []
    for i, (kind, body) in enumerate(found):
        if kind == "python":
            after = found[i + 1] if i + 1 < len(found) else ("", "")
            blocks.append((body, after[1] if after[0] == "text" else None))
    return blocks


def same_output(got: str, expected: str, tol: float = 2e-3) -> bool:
    """The same text with every number within ``tol`` (Dice and the like are rounded by the print)."""
    if NUMBER.sub("#", got).split() != NUMBER.sub("#", expected).split():
        return False
    pairs = zip(NUMBER.findall(got), NUMBER.findall(expected))
    return all(abs(float(a) - float(b)) <= tol for a, b in pairs)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every block executed in an empty folder; (folder, namespace, [(code, expected, printed)])."""
    folder = tmp_path_factory.mktemp("python_api")
    home = os.environ.get("CARDIAC_DIFFUSION_HOME")
    os.environ["CARDIAC_DIFFUSION_HOME"] = str(folder / "home")  # no user models in the listing
    here = os.getcwd()
    os.chdir(folder)
    namespace, results = {"__name__": "doc"}, []
    try:
        for code, expected in doc_blocks():
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the page's own examples
            results.append((code, expected, buffer.getvalue()))
        yield folder, namespace, results
    finally:
        os.chdir(here)
        if home is None:
            os.environ.pop("CARDIAC_DIFFUSION_HOME", None)
        else:
            os.environ["CARDIAC_DIFFUSION_HOME"] = home


def test_page_is_short_and_linked():
    assert len(DOC.read_text().splitlines()) < 200
    assert "docs/PYTHON_API.md" in (ROOT / "README.md").read_text()
    assert len(doc_blocks()) >= 7 and all(expected is not None for _, expected in doc_blocks())


def test_same_output_can_fail():
    assert same_output("LV 0.9596 [1, 2]", "LV 0.9601 [1, 2]")
    assert not same_output("LV 0.9596", "LV 0.9496")
    assert not same_output("LV 0.9596", "MYO 0.9596")


def test_every_block_prints_what_the_page_says(ran):
    for code, expected, printed in ran[2]:
        assert same_output(printed, expected), f"block\n{code}\nprinted\n{printed}\nthe page says\n{expected}"


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_reconstruct_equals_the_command(ran, capsys):
    folder, ns, _ = ran
    sax, labels = str(folder / "phantom/sax_image.nii.gz"), str(folder / "phantom/sax_labels.nii.gz")
    lax = [str(folder / f"phantom/lax_{v}_labels.nii.gz") for v in ("2ch", "3ch", "4ch")]
    out = folder / "cli_shape"
    assert _run(["reconstruct", "--method", "shape", "--sax", sax, "--sax-labels", labels, "--lax-labels", *lax,
                 "--out", str(out)], capsys)[0] == 0  # fmt: skip
    assert json.loads((out / "lax_dice.json").read_text()) == ns["table"]
    for name, image in (("image", ns["shape"].image), ("labels", ns["shape"].labels)):
        written = sitk.ReadImage(str(out / f"reconstruction_{name}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
        assert written.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-4)
        assert written.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
    assert ns["table"]["lax_4ch_labels.nii.gz"]["LV"] > 0.9  # a real reconstruction, not an empty one
    out = folder / "cli_dmcvr"
    assert _run(["reconstruct", "--method", "dmcvr", "--steps", "10", "--device", "cpu", "--sax", sax,
                 "--sax-labels", labels, "--out", str(out)], capsys)[0] == 0  # fmt: skip
    assert (out / "reconstruction_labels.nii.gz").read_bytes() == (folder / "dmcvr_labels.nii.gz").read_bytes()
    assert np.array_equal(_array(out / "reconstruction_image.nii.gz"), sitk.GetArrayFromImage(ns["dmcvr"].image))


def test_lma_equals_the_command(ran, capsys):
    folder, ns, _ = ran
    out = folder / "cli_lma"
    code, said = _run(["lma", "--slices", str(folder / "phantom/sax_image.nii.gz"), "--slice-labels",
                       str(folder / "phantom/sax_labels.nii.gz"), "--tos-csv", str(folder / "tos.csv"), "--spacing",
                       "2", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, said
    assert f"suggested LV lead segment {ns['result'].lead['segment']} " in said
    for name in ("segments.csv", "sector_tos.csv", "myocardium_labels.nii.gz"):
        assert (out / name).read_bytes() == (folder / "lma" / name).read_bytes(), name
    cli, lib = (json.loads((f / "lma.json").read_text()) for f in (out, folder / "lma"))
    for run in (cli, lib):  # the TOS table as each was given: absolute here, relative on the page
        assert Path(run["tos_source"].pop("file")).name == "tos.csv"
    assert {k: v for k, v in cli.items() if k != "input"} == lib


def test_sample_equals_the_command(ran, capsys):
    folder, ns, _ = ran
    out = folder / "cli_sample"
    assert _run(["sample", "--n", "2", "--seed", "0", "--steps", "5", "--device", "cpu", "--out", str(out)],
                capsys)[0] == 0  # fmt: skip
    for i in range(2):
        for kind in ("image", "labels"):
            name = f"sample_{i:03d}_{kind}.nii.gz"
            assert np.array_equal(_array(out / name), _array(folder / "synthetic" / name)), name
    assert np.array_equal(_array(out / "sample_000_labels.nii.gz"), ns["pairs"][0]["labels"])
    assert json.loads((out / "labels.json").read_text()) == json.loads((folder / "synthetic/labels.json").read_text())


def test_errors_are_the_commands(ran, capsys):
    folder, ns, _ = ran
    with pytest.raises(InputError) as raised:
        ns["reconstruct"](ns["stack"], "shape", spacing=0.0)
    code, said = _run(["reconstruct", "--sax", str(folder / "phantom/sax_image.nii.gz"), "--spacing", "0", "--out",
                       str(folder / "cli_bad")], capsys)  # fmt: skip
    assert code == 2 and said.strip().splitlines()[-1] == f"error: {raised.value}"
    assert not (folder / "cli_bad").exists()


def test_the_library_refuses_what_the_commands_refuse(tmp_path):
    """Was: shape given dmcvr's `steps` raised Python's TypeError, an unknown method's list left out dmcvr (registered
    on first use), sample_pairs raised MONAI's ValueError for too many steps and returned [] for n = 0."""
    from CardiacDiffusionLib.errors import InputError
    from CardiacDiffusionLib.ldm.generate import load_ldm, sample_pairs
    from CardiacDiffusionLib.phantoms.mr import MRPhantom
    from CardiacDiffusionLib.phantoms.scanner import acquire_sax
    from CardiacDiffusionLib.reconstruction.volume import reconstruct

    stack = acquire_sax(MRPhantom(0, "ED"))
    with pytest.raises(InputError, match=r"^steps: not an option of the shape method \(its options: layers\)"):
        reconstruct(stack, "shape", 2.0, steps=3)
    with pytest.raises(InputError, match=r"choose one of \['dmcvr', 'linear', 'nearest', 'shape'\]"):
        reconstruct(stack, "cubic", 2.0)
    model = load_ldm("ldm-ct-phantom-32", "cpu")
    for kwargs, said in (({"n": 0}, "--n 0: give at least 1 pair"), ({"n": 1, "seed": -1}, "--seed -1"),
                         ({"n": 1, "steps": 5000}, "--steps 5000: at most 1000 DDIM steps")):  # fmt: skip
        with pytest.raises(InputError, match=re.escape(said)):
            sample_pairs(model, **kwargs)

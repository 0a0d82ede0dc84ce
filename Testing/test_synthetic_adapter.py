"""The SyntheticData module's job on real MRML (slicer-core).

Most tests run a stand-in ``sample`` command that writes known pairs with the Lib's own ``write_pairs`` (same
files, names and labels.json as the real one), so that what is tested is the job: arguments, loading, segment
names/colours/geometry, scene left alone on failure. One runs the real command on the shipped LDM.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from CardiacDiffusionLib.errors import InputError
from CardiacDiffusionLib.labels import CT_LABELS
from CardiacDiffusionLib.slicer_adapter.process import ProcessFailed

pytestmark = pytest.mark.mrml

STAND_IN = '''
import argparse, sys
import numpy as np
from CardiacDiffusionLib.ldm.generate import write_pairs

p = argparse.ArgumentParser()
p.add_argument("command"); p.add_argument("--n", type=int); p.add_argument("--seed", type=int)
p.add_argument("--steps", type=int); p.add_argument("--device"); p.add_argument("--model")
p.add_argument("--no-cleanup", action="store_true"); p.add_argument("--out"); p.add_argument("--progress")
a = p.parse_args()
assert a.command == "sample" and a.progress == "json"
if a.model == "broken":
    print("error: --model broken: no such model", file=sys.stderr); sys.exit(2)
if a.model == "slow":  # a long run: says it started, then works until cancelled
    print('{"event": "progress", "progress": 0.1, "message": "DDIM step 1/10"}', flush=True)
    import time; time.sleep(300)
pairs = []
for i in range(a.n):
    labels = np.zeros((20, 22, 24), np.uint8)
    for value in range(1, 9):  # one slab per structure, shifted by the seed
        labels[2 * value: 2 * value + 2, 3:19, (a.seed + i) % 4: 20] = value
    hu = (labels.astype(np.float32) * 50.0 - 100.0)
    pairs.append({"seed": a.seed + i, "hu": hu, "labels": labels, "noise_before": {}, "noise_after": {}})
write_pairs(a.out, pairs, 1.5, {"model": a.model or "ldm-ct-phantom-32", "seed": a.seed, "steps": a.steps})  # the shipped one
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> str:
    (tmp_path / "sample_stand_in.py").write_text(STAND_IN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "sample_stand_in"


def test_sample_job_loads_volumes_and_named_segmentations(mrml_scene, stand_in):
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.synthetic import CT_COLORS, CT_DESCRIPTIONS, SampleJob

    job = SampleJob(mrml_scene, count=2, seed=7, steps=3, device="cpu", surfaces=False)
    job.cli_module = stand_in
    result = job.start().wait(timeout=60)
    assert [v.GetName() for v in result.volumes] == ["Synthetic CT seed 7", "Synthetic CT seed 8"]
    assert result.info["steps"] == 3 and [s["seed"] for s in result.info["samples"]] == [7, 8]
    for index, (volume, segmentation) in enumerate(zip(result.volumes, result.segmentations)):
        image = mrml.image_from_volume_node(volume)
        assert image.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
        assert image.GetOrigin() == pytest.approx((-17.25, -15.75, -14.25))  # centred: -(n - 1) / 2 * 1.5
        labels = sitk.GetArrayFromImage(mrml.labels_from_segmentation(
            segmentation, image, {CT_DESCRIPTIONS[name]: value for value, name in CT_LABELS.items()}))
        hu = sitk.GetArrayFromImage(image)
        np.testing.assert_array_equal(hu, labels.astype(np.int16) * 50 - 100)  # image and labels: one pair
        assert (labels[2:4, 3:19, (7 + index) % 4: 20] == 1).all()
        segments = segmentation.GetSegmentation()
        by_name = {segments.GetNthSegment(i).GetName(): segments.GetNthSegment(i) for i in range(8)}
        assert set(by_name) == set(CT_DESCRIPTIONS.values())
        assert by_name["Aorta"].GetColor() == pytest.approx(CT_COLORS["AO"])


def test_sample_job_arguments_and_failure(mrml_scene, stand_in):
    from CardiacDiffusionLib.slicer_adapter.synthetic import SampleJob

    with pytest.raises(InputError, match="1..100"):
        SampleJob(mrml_scene, count=0)
    with pytest.raises(InputError, match="device"):
        SampleJob(mrml_scene, device="tpu")
    for seed in (-1, 2**63 - 1):
        with pytest.raises(InputError, match="seed must be 0.."):
            SampleJob(mrml_scene, seed=seed)
    job = SampleJob(mrml_scene, count=1, seed=3, steps=20, device="cuda", model="my.safetensors", cleanup=False)
    assert job._export(None) == [
        "--n", "1", "--seed", "3", "--steps", "20", "--device", "cuda", "--progress", "json", "--model",
        "my.safetensors", "--no-cleanup",
    ]  # fmt: skip
    nodes_before = mrml_scene.GetNumberOfNodes()
    broken = SampleJob(mrml_scene, model="broken")
    broken.cli_module = stand_in
    broken.start()
    with pytest.raises(ProcessFailed, match="no such model"):
        broken.wait(timeout=60)
    assert mrml_scene.GetNumberOfNodes() == nodes_before and not broken.folder.exists()


def test_synthetic_module_logic_on_slicer_core(mrml_scene, monkeypatch, stand_in):
    from helpers import load_panel

    from CardiacDiffusionLib.errors import InputError as LibInputError
    from CardiacDiffusionLib.ldm.generate import DEFAULT_MODEL
    from CardiacDiffusionLib.models.store import find_model
    from CardiacDiffusionLib.slicer_adapter.synthetic import SampleJob

    monkeypatch.setattr(SampleJob, "cli_module", stand_in)
    module = load_panel("SyntheticData", monkeypatch, mrml_scene)
    assert module.SyntheticDataLogic().ensureDependencies(ask=False)
    result = module.SyntheticDataLogic().run(count=1, seed=2, steps=2, device="cpu", wait=True)
    assert [v.GetName() for v in result.volumes] == ["Synthetic CT seed 2"]
    assert result.segmentations[0].GetSegmentation().GetNumberOfSegments() == 8
    try:
        find_model(DEFAULT_MODEL)
    except LibInputError:  # no LDM installed: the self test says so and skips
        outcome = module.SyntheticDataTest("runTest").run()
        assert outcome.wasSuccessful() and [reason for _, reason in outcome.skipped] == [
            f"no LDM model {DEFAULT_MODEL!r} is installed"
        ]


def test_sample_job_on_the_shipped_ldm(mrml_scene):
    """The real ``sample`` command on the shipped LDM: one pair whose segmentation, read back on its volume's grid,
    holds the 8 named structures, the heart chambers inside the image's soft-tissue range."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.synthetic import CT_DESCRIPTIONS, SampleJob

    reports = []
    job = SampleJob(mrml_scene, count=1, seed=0, steps=10, device="cpu", surfaces=False)
    result = job.start(lambda fraction, text: reports.append(fraction)).wait(timeout=300)
    steps = [f for f in reports if f is not None and 0.05 < f < 0.9]  # the child's DDIM steps on the bar
    assert len(steps) == 9 and steps == sorted(steps), reports
    image = mrml.image_from_volume_node(result.volumes[0])
    labels = sitk.GetArrayFromImage(mrml.labels_from_segmentation(
        result.segmentations[0], image, {CT_DESCRIPTIONS[name]: value for value, name in CT_LABELS.items()}))  # fmt: skip
    assert labels.shape == sitk.GetArrayFromImage(image).shape
    assert set(np.unique(labels)) == set(range(9)), np.unique(labels)  # background and every structure
    hu = sitk.GetArrayFromImage(image)
    assert -200 < np.median(hu[labels == 1]) < 600 and np.median(hu[labels == 0]) < np.median(hu[labels == 1])


def test_sample_job_keeps_the_users_nodes_and_names_repeats_apart(mrml_scene, stand_in):
    """A node of the user's with the name a pair would take, and the pairs of an earlier run of the same seed: all
    left as they were; the new nodes get unique names."""
    from CardiacDiffusionLib.slicer_adapter import mrml
    from CardiacDiffusionLib.slicer_adapter.synthetic import SampleJob

    users = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    users.SetOrigin((1.0, 2.0, 3.0))
    own = mrml.volume_node_from_image(mrml_scene, users, "Synthetic CT seed 7")
    first = SampleJob(mrml_scene, count=1, seed=7, device="cpu", surfaces=False)
    first.cli_module = stand_in
    earlier = first.start().wait(timeout=60)
    again = SampleJob(mrml_scene, count=1, seed=7, device="cpu", surfaces=False)
    again.cli_module = stand_in
    later = again.start().wait(timeout=60)
    names = [own.GetName(), earlier.volumes[0].GetName(), later.volumes[0].GetName()]
    assert names[0] == "Synthetic CT seed 7" and len(set(names)) == 3 and all(n.startswith(names[0]) for n in names)
    assert earlier.segmentations[0].GetName() != later.segmentations[0].GetName()
    kept = mrml.image_from_volume_node(own)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(kept), sitk.GetArrayFromImage(users))
    assert kept.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))


def test_cancelled_sample_job_adds_nothing_and_stops_its_child(mrml_scene, stand_in):
    from CardiacDiffusionLib.slicer_adapter.synthetic import SampleJob

    nodes_before = mrml_scene.GetNumberOfNodes()
    reports = []
    job = SampleJob(mrml_scene, count=2, model="slow", device="cpu")
    job.cli_module = stand_in
    job.start(lambda fraction, text: reports.append((fraction, text)))
    while not any(text == "DDIM step 1/10" for _, text in reports):  # the child is working
        assert not job.poll()
    assert (0.05 < [f for f, t in reports if t == "DDIM step 1/10"][0] < 0.9)  # its progress moves the bar
    job.cancel()
    assert job.child.finished and job.child.process.returncode != 0
    assert mrml_scene.GetNumberOfNodes() == nodes_before and not job.folder.exists()
    with pytest.raises(InputError, match="cancelled"):
        job.finish()
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_sample_refusals_read_in_the_panels_terms(mrml_scene, tmp_path, capsys):
    """Real refusals of ``sample`` (its ``main`` run here with the job's arguments) for what a SyntheticData panel
    user can type, through the job's translation: the panel's field labels, no option, no temporary path."""
    import torch

    from CardiacDiffusionLib.cli.main import main
    from CardiacDiffusionLib.slicer_adapter.job import TERMINAL_COMMAND
    from CardiacDiffusionLib.slicer_adapter.synthetic import SampleJob

    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases = [  # (job options, what the panel user reads)
        ({"model": "no-such-ldm"}, "model 'no-such-ldm': not registered"),
        ({"model": "dmcvr-acdc-64"}, "Model dmcvr-acdc-64: a dmcvr model; sample needs a latent diffusion model"),
        ({"model": str(tmp_path / "empty.safetensors")}, "empty.safetensors"),
        ({"steps": 5000}, "DDIM steps 5000: at most"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "set Device to cpu"))
    for index, (options, expected) in enumerate(cases):
        job = SampleJob(mrml_scene, **options)
        job.folder = tmp_path / f"CardiacDiffusion-sample-{index}"
        job.folder.mkdir()
        assert main([job.command, *job._export(job.folder), "--out", str(job.folder / "out")]) == 2
        said = job._in_module_terms([e for e in capsys.readouterr().err.splitlines() if e.startswith("error: ")][-1])
        assert "--" not in TERMINAL_COMMAND.sub("", said) and str(job.folder) not in said, said
        assert expected in said, said
    assert not (tmp_path / "CardiacDiffusion-sample-0" / "out").exists()  # refused before anything was written
    from CardiacDiffusionLib.cli.sample import _check_space

    with pytest.raises(InputError) as full:  # the disk check on the job's own temporary folder (as if 1 PB a pair)
        _check_space(job.folder / "out", 2, 10**15)
    said = job._in_module_terms(str(full.value))
    assert said.startswith("Pairs 2: 2 pairs may take up to 2e+06 GB and the module's temporary folder has"), said
    assert "--" not in said and str(job.folder) not in said and "TMPDIR" in said

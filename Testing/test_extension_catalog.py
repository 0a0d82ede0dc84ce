"""Extension Manager packaging: the ExtensionsIndex catalog entry, CMake's EXTENSION_* fields, images.

The catalog entry is checked against the constraints of Slicer's catalog-entry schema v1.0.2
(written out here: no network, and jsonschema is not a dependency).
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "CardiacDiffusion.json"
SCHEMA_URL = re.compile(
    r"^https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
    r"slicer-extension-catalog-entry-schema-v1\.0\.[0-2]\.json#$"
)
#: schema v1.0.2: property -> type; "additionalProperties": false
PROPERTIES = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool, "tier": int,
}  # fmt: skip
REQUIRED = {"$schema", "category", "scm_url"}


def _cmake_fields() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    fields = {k: v.strip('"') for k, v in re.findall(r'set\((EXTENSION_\w+)\s+("[^"]*"|[^)]+?)\s*\)', text)}
    fields["project"] = re.search(r"^project\((\w+)", text, re.M).group(1)
    return fields


def _png_size(path: Path) -> tuple[int, int, int]:
    """(width, height, colour type) from the PNG header."""
    data = path.read_bytes()[:33]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, colour


def test_catalog_entry_follows_the_schema():
    entry = json.loads(CATALOG.read_text())
    assert REQUIRED <= set(entry), f"missing {sorted(REQUIRED - set(entry))}"
    assert set(entry) <= set(PROPERTIES), f"not in the schema: {sorted(set(entry) - set(PROPERTIES))}"
    for key, value in entry.items():
        assert type(value) is PROPERTIES[key], f"{key}: {type(value).__name__}"
    assert SCHEMA_URL.match(entry["$schema"]), entry["$schema"]
    assert all(isinstance(name, str) for name in entry["build_dependencies"])
    assert 1 <= entry.get("tier", 1) <= 5
    assert entry.get("scm_type", "git") in ("git", "local")


def test_catalog_entry_agrees_with_cmake():
    entry = json.loads(CATALOG.read_text())
    cmake = _cmake_fields()
    assert CATALOG.stem == cmake["project"]  # the index file is named after the extension
    assert entry["category"] == cmake["EXTENSION_CATEGORY"]
    depends = [] if cmake["EXTENSION_DEPENDS"] == "NA" else cmake["EXTENSION_DEPENDS"].split()
    assert sorted(entry["build_dependencies"]) == sorted(depends) == ["PyTorch"]
    repository = entry["scm_url"].removesuffix(".git")
    assert repository == cmake["EXTENSION_HOMEPAGE"]
    owner_repo = urlparse(repository).path.strip("/")
    raw = f"https://raw.githubusercontent.com/{owner_repo}/{entry['scm_revision']}/"
    urls = [cmake["EXTENSION_ICONURL"], *cmake["EXTENSION_SCREENSHOTURLS"].split()]
    for url in urls:  # each image is served from the catalogued repository and revision, and exists
        assert url.startswith(raw), url
        assert (ROOT / url.removeprefix(raw)).is_file(), url
    assert (ROOT / "LICENSE.txt").read_text().strip()


def test_icon_and_screenshot_sizes():
    cmake = _cmake_fields()
    icon = ROOT / cmake["EXTENSION_ICONURL"].split("/main/", 1)[1]
    assert _png_size(icon) == (128, 128, 6)  # RGBA
    for url in cmake["EXTENSION_SCREENSHOTURLS"].split():
        shot = ROOT / url.split("/main/", 1)[1]
        width, height, _ = _png_size(shot)
        assert width >= 800 and height >= 600 and 1.0 <= width / height <= 2.0, (width, height)
        assert shot.stat().st_size < 200_000  # catalog image: a 256-colour palette (the RGBA render was 467 kB)
    for png in (icon, *(ROOT / "CardiacDiffusion").glob("*/Resources/Icons/*.png")):
        assert png.stat().st_size < 20_000, png


def test_icon_is_what_the_script_draws(tmp_path):
    import matplotlib.image

    path = ROOT / "scripts" / "make_extension_images.py"
    spec = importlib.util.spec_from_file_location("make_extension_images", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    drawn = matplotlib.image.imread(script.draw_icon(tmp_path / "icon.png"))
    committed = matplotlib.image.imread(script.ICON)
    assert drawn.shape == committed.shape == (128, 128, 4)
    assert np.abs(drawn - committed).mean() < 0.01
    # not blank: transparent corners, the LV cavity in the middle in the label colour Slicer's segments get
    from CardiacDiffusionLib.labels import MR_LABEL_COLORS

    assert committed[0, 0, 3] == 0
    np.testing.assert_allclose(committed[64, 74, :3], MR_LABEL_COLORS["LV"], atol=0.02)
    for draw, path in ((script.draw_activation_icon, script.ACTIVATION_ICON),
                       (script.draw_synthetic_icon, script.SYNTHETIC_ICON),
                       (script.draw_reconstruction_icon, script.RECONSTRUCTION_ICON)):  # fmt: skip
        drawn, committed = matplotlib.image.imread(draw(tmp_path / path.name)), matplotlib.image.imread(path)
        assert drawn.shape == committed.shape and np.abs(drawn - committed).mean() < 0.01, path.name


@pytest.mark.parametrize("module_icon", sorted((ROOT / "CardiacDiffusion").glob("*/Resources/Icons/*.png")))
def test_module_icons_are_png(module_icon):
    width, height, _ = _png_size(module_icon)
    assert width == height and width >= 32

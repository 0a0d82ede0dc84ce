"""Packaging beyond pyproject.toml: the shipped models travel in the wheel as ``CardiacDiffusionResources``
beside the Lib, where the Slicer extension installs them too (``models.store.shipped_registry_path``), so a
plain ``pip install .`` (or a wheel on a GPU server) finds them. A checkout or an editable install reads
``Resources/`` itself."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["CardiacDiffusionLib", "CardiacDiffusionLib.*"]), "CardiacDiffusionResources"],
    package_dir={"CardiacDiffusionResources": "Resources"},
    package_data={
        "CardiacDiffusionLib.training": ["presets/*.yaml"],
        "CardiacDiffusionResources": ["*.json", "models/*.safetensors", "atlas/*.json", "atlas/*.nii.gz"],
    },
)

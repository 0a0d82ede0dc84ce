"""``cardiac-diffusion train``: the shared training runner (see training/cli.py)."""

from ..training.cli import register  # noqa: F401

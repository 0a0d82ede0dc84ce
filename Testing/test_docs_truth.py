"""The docs stay true mechanically: their links and repository paths exist, docs/ARCHITECTURE.md names exactly the
modules on disk, every ``cardiac-diffusion`` option the docs show is one the parser has, and the lists of presets and
architectures in docs/TRAINING.md are the code's."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "CardiacDiffusionLib"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "models").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", FENCE.sub("", doc.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_and_anchors_resolve(doc):
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading '{anchor}' in {target.name}")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_repository_paths_named_in_code_spans_exist(doc):
    """``scripts/x.py``, ``Testing/test_x.py``, ``docs/...`` etc. (placeholders like ``<name>`` or ``*`` aside)."""
    tops = "scripts|Testing|docs|Resources|CardiacDiffusionLib|CardiacDiffusion|\\.ci"
    named = re.findall(rf"`((?:{tops})/[^`\s]*)`", doc.read_text())
    missing = [p for p in named if not re.search(r"[<>*{}]", p) and not (ROOT / p).exists()]
    assert not missing, missing


def _architecture_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)/` \| (.*) \|$", text, re.MULTILINE)}


def test_architecture_names_every_lib_module_and_only_those():
    rows = _architecture_rows()
    packages = sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").is_file())
    assert sorted(rows) == packages, "docs/ARCHITECTURE.md's folder table vs the Lib's packages"
    for folder, text in rows.items():
        modules = {p.stem for p in (LIB / folder).glob("*.py") if p.stem != "__init__"}
        unnamed = [m for m in sorted(modules) if f"{m}.py`" not in text and f"`{m}`" not in text]
        assert not unnamed, f"{folder}/: modules on disk that docs/ARCHITECTURE.md does not name: {unnamed}"
        gone = sorted(set(re.findall(r"`(?:\w+/)?(\w+)\.py`", text)) - modules)
        assert not gone, f"{folder}/: docs/ARCHITECTURE.md names modules that do not exist: {gone}"
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    top = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
    assert [m for m in top if f"`{m}.py`" not in text] == []


def test_architecture_names_the_slicer_modules():
    cmake = (ROOT / "CardiacDiffusion" / "CMakeLists.txt").read_text()
    modules = re.findall(r"^add_subdirectory\((\w+)\)", cmake, re.MULTILINE)
    folders = sorted(p.parent.name for p in (ROOT / "CardiacDiffusion").glob("*/CMakeLists.txt"))
    assert sorted(modules) == folders and modules
    section = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("## `CardiacDiffusion/` (Slicer)")[1]
    assert [m for m in modules if f"`{m}`" not in section] == []


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) sub-command's parser by its words, e.g. ``"evaluate gap"``."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


def _documented_commands() -> list[tuple[str, str]]:
    """(doc, command line) of every ``cardiac-diffusion ...`` / ``python -m CardiacDiffusionLib.training ...``
    line of a code block and of every code span starting with ``cardiac-diffusion``; README's command table too."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0]
                m = re.search(r"(?:cardiac-diffusion|-m CardiacDiffusionLib\.training)\b(.*)", line)
                if m:
                    words = m.group(1) if "cardiac-diffusion" in m.group(0) else f" train {m.group(1)}"
                    found.append((doc.name, words.strip()))
        found += [(doc.name, s) for s in re.findall(r"`(?:[A-Z_]+=\S+ )*cardiac-diffusion ([^`]+)`", text)]
    table = (ROOT / "README.md").read_text().split("| command | what it does |")[1].split("\n\n")[0]
    found += [("README.md table", s.replace("\\|", "|")) for s in re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE)]
    return found


def test_every_documented_option_exists_on_its_command():
    from CardiacDiffusionLib.cli.main import build_parser

    parsers = _subparsers(build_parser())
    commands = _documented_commands()
    assert len(commands) > 40
    wrong = []
    for doc, line in commands:
        words = line.split()
        if not words or words[0].startswith("<"):
            continue  # `cardiac-diffusion <command> --help`
        name = next((n for n in (" ".join(words[:2]), words[0]) if n in parsers), None)
        if name is None:
            wrong.append(f"{doc}: unknown command in '{line}'")
            continue
        options = {o for a in parsers[name]._actions for o in a.option_strings}
        wrong += [f"{doc}: {name} has no {o} ('{line}')" for o in re.findall(r"(?<![\w-])--[a-z][\w-]*", line)
                  if o not in options]  # fmt: skip
    assert not wrong, wrong


def test_documented_script_options_exist():
    """``scripts/x.py --option`` in a code block or span: the option is one the script's parser declares."""
    wrong = []
    for doc in DOCS:
        text = doc.read_text()
        lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
        for line in lines + re.findall(r"`([^`\n]*scripts/\w+\.py[^`]*)`", FENCE.sub("", text)):
            m = re.search(r"scripts/(\w+\.py)\b(.*)", line.split(" #")[0])
            if not m:
                continue
            source = (ROOT / "scripts" / m.group(1)).read_text()
            wrong += [f"{doc.name}: {m.group(1)} {o}" for o in re.findall(r"(?<![\w-])--[a-z][\w-]*", m.group(2))
                      if f'"{o}"' not in source]  # fmt: skip
    assert not wrong, wrong


def test_training_doc_lists_the_presets_and_architectures_there_are():
    from CardiacDiffusionLib.models.store import BUILTIN_ARCHITECTURES
    from CardiacDiffusionLib.training.workflows import available

    text = (ROOT / "docs" / "TRAINING.md").read_text()
    presets = re.search(r"`training/presets/<workflow>\.yaml`: ([\w, ]+)\)", text).group(1)
    assert sorted(presets.split(", ")) == sorted(available())
    built_in = re.search(r"`BUILTIN_ARCHITECTURES`\):\s*(.+?)\. ", text, re.DOTALL).group(1)
    names = sorted(re.findall(r"(?:^|, )`(\w+)`", built_in))
    assert names == sorted(BUILTIN_ARCHITECTURES)


#: first words of dotted code spans that are config keys (``train.steps``) rather than Python names
CONFIG_SECTIONS = {"data", "model", "optim", "schedule", "train"}
#: dotted code spans that are keys of an output file, not Python names (``lma.json``'s ``reconstruction.model``)
JSON_KEYS = {"reconstruction.model"}
FILE_SUFFIXES = {"csv", "gz", "h5", "json", "jsonl", "md", "mha", "npy", "npz", "nrrd", "png", "py", "safetensors",
                 "sh", "stl", "tsv", "txt", "vtp", "yaml"}  # fmt: skip


def test_dotted_python_names_in_the_docs_resolve():
    """``store.model_provenance``, ``activation.tos.frame_times``: a code span whose first word is a module of the
    Lib names something that module (or one of the modules of that name) has."""
    import importlib
    import pkgutil

    import CardiacDiffusionLib

    modules: dict[str, list[str]] = {"CardiacDiffusionLib": ["CardiacDiffusionLib"]}
    for info in pkgutil.walk_packages(CardiacDiffusionLib.__path__, "CardiacDiffusionLib."):
        modules.setdefault(info.name.rpartition(".")[2], []).append(info.name)

    def resolves(parts: list[str]) -> bool:
        for module in modules[parts[0]]:
            names = [*module.split("."), *parts[1:]]
            for i in range(len(names), module.count("."), -1):  # the longest importable prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(names[:i]))
                except ImportError:
                    continue
                for attribute in names[i:]:
                    obj = getattr(obj, attribute, None)
                if obj is not None:
                    return True
                break
        return False

    wrong = []
    for doc in DOCS:
        for name in re.findall(r"`([A-Za-z_]\w*(?:\.\w+)+)(?:\([^`]*\))?`", doc.read_text()):
            parts = name.split(".")
            python = parts[0] in modules and parts[0] not in CONFIG_SECTIONS and parts[-1] not in FILE_SUFFIXES
            if python and name not in JSON_KEYS and not resolves(parts):
                wrong.append(f"{doc.relative_to(ROOT)}: {name}")
    assert not wrong, wrong

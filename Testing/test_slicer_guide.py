"""docs/SLICER_GUIDE.md against the panels and the code it quotes: a renamed, added or reordered panel field, a
reworded refusal or QA flag, a moved heading or file, or a timing not in the measured docs makes these fail.

Conventions of the guide: **"..."** is a panel text (a .ui string or a string of the modules' Widget code); the
first column of a "field" table lists the panel's form labels in .ui order; the first column of a "message
contains" / "flag says" table is a fragment of a message in the package's sources (``<...>``: a value filled in).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "SLICER_GUIDE.md"
MODULES = ROOT / "CardiacDiffusion"
#: guide section heading -> the module folder whose .ui it describes
SECTIONS = {
    "Cardiac SAX Reconstruction": "Reconstruction",
    "Cardiac Activation Map": "ActivationMap",
    "Cardiac Synthetic Data": "SyntheticData",
}
LABEL = re.compile(r'\*\*"([^"*]+)"\*\*')
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
MESSAGE_HEADERS = ("message contains", "flag says")


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The text under ``## title`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {title}' in {GUIDE.name}"
    return match.group(1)


def tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """Markdown tables: (header's first cell, rows of cells) for each."""
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*-+\s*\|)+", lines[i + 1]):
            if i > 0 and lines[i - 1].startswith("|"):
                continue
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split(" | ")])
            out.append((line.strip("|").split("|")[0].strip(), rows))
    return out


def ui_files() -> list[Path]:
    return sorted(MODULES.glob("*/Resources/UI/*.ui"))


def ui_strings(path: Path) -> set[str]:
    return {s.text for s in ET.parse(path).iter("string") if s.text}


def ui_texts(path: Path, widget_class: str) -> list[str]:
    """The ``text`` property of the widgets of ``widget_class``, in file (panel) order."""
    out = []
    for widget in ET.parse(path).iter("widget"):
        if widget.get("class") == widget_class:
            for prop in widget.findall("property"):
                if prop.get("name") == "text" and prop.find("string") is not None:
                    out.append(prop.find("string").text)
    return out


def _strings(path: Path) -> list[str]:
    """Every string literal of a Python file; an f-string with ``{}`` where a value goes."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
    return out


@lru_cache(maxsize=None)
def widget_strings() -> frozenset[str]:
    """What a panel can show: the .ui strings and the modules' Widget code strings."""
    found = set().union(*(ui_strings(p) for p in ui_files()))
    for path in MODULES.glob("*/*.py"):
        found.update(_strings(path))
    return frozenset(found)


@lru_cache(maxsize=None)
def package_strings() -> tuple[str, ...]:
    """Every string literal of CardiacDiffusionLib (where the messages come from)."""
    return tuple(s for path in sorted((ROOT / "CardiacDiffusionLib").rglob("*.py")) for s in _strings(path))


def fragment_pattern(fragment: str) -> re.Pattern:
    """A quoted message fragment as a pattern: ``<...>`` placeholders match any value (or the code's ``{}``)."""
    pieces = re.split(r"<[^<>]+>", fragment)
    return re.compile(".*?".join(re.escape(p) for p in pieces))


def github_slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


# ---- panel texts --------------------------------------------------------------------------------------------------
def test_every_quoted_panel_text_is_on_a_panel():
    quoted = LABEL.findall(guide())
    assert len(quoted) > 60, "the guide quotes the panels' labels as **\"...\"**"
    missing = sorted({q for q in quoted if q not in widget_strings()})
    assert not missing, f"quoted as panel texts but on no panel (.ui or Widget code): {missing}"


@pytest.mark.parametrize("title", list(SECTIONS))
def test_field_tables_list_each_panels_labels_in_panel_order(title):
    """The first column of a module's field table: exactly its .ui form labels, in the panel's order."""
    fields = [t for t in tables(section(guide(), title)) if t[0] == "field"]
    assert len(fields) == 1, f"{title}: one field table expected"
    listed = [label for row in fields[0][1] for label in LABEL.findall(row[0])]
    ui = next((MODULES / SECTIONS[title]).glob("Resources/UI/*.ui"))
    assert listed == ui_texts(ui, "QLabel"), f"{title}: the field table differs from {ui.name}'s labels"


def test_every_button_and_check_box_is_named():
    """A panel's buttons and check boxes (Apply, Cancel, Browse..., All cine frames, ...) are quoted somewhere."""
    quoted = set(LABEL.findall(guide()))
    texts = {t for ui in ui_files() for c in ("QPushButton", "QCheckBox") for t in ui_texts(ui, c)}
    assert {"Apply", "Cancel", "All cine frames"} <= texts  # what the parser finds
    assert texts <= quoted, f"panel buttons or check boxes the guide does not name: {sorted(texts - quoted)}"


# ---- messages -----------------------------------------------------------------------------------------------------
def quoted_messages() -> list[str]:
    out = []
    for header, rows in tables(guide()):
        if header in MESSAGE_HEADERS:
            for row in rows:
                out += re.findall(r"`([^`]+)`", row[0])
    return out


def test_every_quoted_refusal_and_flag_is_in_the_code():
    messages = quoted_messages()
    assert len(messages) >= 40, f"refusal and QA tables expected, found {len(messages)} fragments"
    strings = package_strings()
    missing = [m for m in messages if not any(fragment_pattern(m).search(s) for s in strings)]
    assert not missing, f"message fragments found in no string of CardiacDiffusionLib: {missing}"


def test_fragment_pattern_cannot_match_a_reworded_message():
    """The check above fails on a reworded message (placeholders stand for values only)."""
    code = "{}: slices holding LV myocardium: {} slice(s); an LMA map needs at least {} (basal, mid and apical)"
    assert fragment_pattern("an LMA map needs at least <n> (basal, mid and apical)").search(code)
    assert not fragment_pattern("an LMA map needs at least <n> (base, mid and apex)").search(code)
    assert not fragment_pattern("an LMA map needs 3 slices").search(code)


# ---- links and numbers --------------------------------------------------------------------------------------------
def test_every_link_resolves():
    links = LINK.findall(guide())
    assert len(links) >= 10
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (GUIDE.parent / target).resolve() if target else GUIDE
        assert path.is_file(), f"link {link}: {path} does not exist"
        if anchor:
            assert anchor in anchors(path), f"link {link}: no heading '#{anchor}' in {path.name}"


def test_timings_are_those_of_the_cited_docs():
    """Each figure of the 'How long' table is written, as such, in the document its row cites."""
    (rows,) = [rows for header, rows in tables(section(guide(), "How long")) if header == "work"]
    assert len(rows) >= 5
    for row in rows:
        (link,) = LINK.findall(row[-1])
        source = (GUIDE.parent / link.partition("#")[0]).read_text(encoding="utf-8")
        figures = re.findall(r"\d+(?:\.\d+)? s\b", row[1])
        assert figures, row
        for figure in figures:
            assert re.search(rf"(?<![\d.]){re.escape(figure)}", source), f"{row[0]}: {figure} is not in {link}"


def test_readme_links_the_guide_from_its_slicer_section():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    slicer = re.search(r"^## In 3D Slicer\n(.*?)(?=^## )", readme, re.M | re.S).group(1)
    assert "(docs/SLICER_GUIDE.md)" in slicer

"""Static checks of the files only Slicer runs: module scripts, .ui panels, CMake lists.

Slicer's Qt side cannot run here, so what would break at load time in Slicer is checked by
reading the files: syntax, classes, widget names used by the code, parameter-node bindings,
widget types the parameterNodeWrapper can connect, and that CMake packages every file.
"""

from __future__ import annotations

import ast
import importlib
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES_DIR = ROOT / "CardiacDiffusion"
MODULES = sorted(
    p.parent.name for p in MODULES_DIR.glob("*/CMakeLists.txt") if (p.parent / f"{p.parent.name}.py").exists()
)

#: widget classes parameterNodeWrapper's GUI connectors accept, by field type (Slicer's guiConnectors.py;
#: note ctkDoubleSpinBox is NOT among them)
CONNECTABLE = {
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox", "QPushButton"},
    "str": {"QLineEdit", "QTextEdit"},
    "choice": {"QComboBox"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}


def test_there_is_a_module():
    assert "Reconstruction" in MODULES


# ---- helpers ----------------------------------------------------------------------------------
def _tree(module: str) -> ast.Module:
    return ast.parse((MODULES_DIR / module / f"{module}.py").read_text())


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _parameter_node_class(tree: ast.Module) -> ast.ClassDef:
    for node in _classes(tree).values():
        if any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return node
    raise AssertionError("no @parameterNodeWrapper class")


def _aliases(tree: ast.Module) -> dict[str, ast.expr]:
    return {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }


def _field_kind(annotation: ast.expr, aliases: dict[str, ast.expr]) -> tuple[str, set[str]]:
    """('float'|'int'|'bool'|'str'|'choice'|'node', node class names) of a field annotation."""
    if isinstance(annotation, ast.Name) and annotation.id in aliases:
        return _field_kind(aliases[annotation.id], aliases)
    if isinstance(annotation, ast.Name):
        if annotation.id.startswith("vtkMRML"):
            return "node", {annotation.id}
        return annotation.id, set()
    if isinstance(annotation, ast.Subscript):
        head = ast.unparse(annotation.value)
        items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        if head in ("Annotated", "typing.Annotated"):
            kind, types = _field_kind(items[0], aliases)
            if any(isinstance(a, ast.Call) and ast.unparse(a.func) == "Choice" for a in items[1:]):
                return "choice", types
            return kind, types
        if head in ("Union", "typing.Union", "Optional", "typing.Optional"):
            kinds = [_field_kind(item, aliases) for item in items if ast.unparse(item) != "None"]
            assert {k for k, _ in kinds} == {"node"}, ast.unparse(annotation)
            return "node", set().union(*(t for _, t in kinds))
    raise AssertionError(f"unsupported parameter annotation {ast.unparse(annotation)}")


def _fields(module: str) -> dict[str, tuple[str, set[str]]]:
    tree = _tree(module)
    aliases = _aliases(tree)
    cls = _parameter_node_class(tree)
    return {
        node.target.id: _field_kind(node.annotation, aliases)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def _ui(module: str) -> ET.Element:
    return ET.parse(MODULES_DIR / module / "Resources" / "UI" / f"{module}.ui").getroot()


def _widgets(ui: ET.Element) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ui.iter("widget")}


def _string_property(widget: ET.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string")
    return None


def _cmake_list(text: str, variable: str, module: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    return [item.replace("${MODULE_NAME}", module) for item in match.group(1).split()]


# ---- the module script ------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_module_script_compiles_and_defines_the_four_classes(module, tmp_path):
    py_compile.compile(str(MODULES_DIR / module / f"{module}.py"), cfile=str(tmp_path / "m.pyc"), doraise=True)
    classes = _classes(_tree(module))
    bases = {
        module: "ScriptedLoadableModule",
        f"{module}Widget": "ScriptedLoadableModuleWidget",
        f"{module}Logic": "ScriptedLoadableModuleLogic",
        f"{module}Test": "ScriptedLoadableModuleTest",
    }
    for name, base in bases.items():
        assert name in classes, f"{module}.py defines no class {name}"
        assert base in [ast.unparse(b) for b in classes[name].bases], f"{name} does not derive from {base}"


@pytest.mark.parametrize("module", MODULES)
def test_widget_never_points_an_output_field_at_a_result(module):
    """A result set into an output field is filled by the next Apply: with another method "SAX shape" would hold
    dmcvr's volume and the shape result be lost. The output fields are the user's alone."""
    widget = _classes(_tree(module))[f"{module}Widget"]
    assigned = [ast.unparse(t) for node in ast.walk(widget) if isinstance(node, ast.Assign) for t in node.targets]
    outputs = [t for t in assigned if re.fullmatch(r"self\._parameterNode\.output\w*", t)]
    assert outputs == [], f"{module}Widget sets {outputs}"


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata(module):
    body = _classes(_tree(module))[module].body
    init = next(f for f in body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assigned = {ast.unparse(n.targets[0]): n.value for n in ast.walk(init) if isinstance(n, ast.Assign)}
    assert ast.literal_eval(assigned["self.parent.categories"]) == ["Cardiac"]
    for key in ("title", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{key}" in assigned, key
    if module == "Reconstruction":
        text = ast.unparse(assigned["self.parent.acknowledgementText"])
        assert "DMCVR" in text and "MICCAI 2023" in text


@pytest.mark.parametrize("module", MODULES)
def test_library_names_imported_by_the_module_exist(module):
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("CardiacDiffusionLib"):
            imported = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(imported, alias.name):  # a submodule: `from package import module`
                    importlib.import_module(f"{node.module}.{alias.name}")


# ---- the .ui panel against the code ------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_every_ui_widget_used_in_code_exists(module):
    widgets = _widgets(_ui(module))
    used = {
        node.attr
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used, "the widget uses no self.ui.<widget>"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_match_fields_and_widget_types(module):
    fields = _fields(module)
    bound = {}
    for name, widget in _widgets(_ui(module)).items():
        parameter = _string_property(widget, "SlicerParameterName")
        if parameter is not None:
            assert parameter not in bound, f"{parameter} is bound to two widgets"
            bound[parameter] = widget
    assert set(bound) <= set(fields), f"not parameter-node fields: {sorted(set(bound) - set(fields))}"
    assert set(fields) <= set(bound), f"fields without a widget: {sorted(set(fields) - set(bound))}"
    for parameter, widget in bound.items():
        kind, node_types = fields[parameter]
        assert widget.get("class") in CONNECTABLE[kind], (
            f"{parameter}: a {kind} field cannot be connected to a {widget.get('class')}"
        )
        if kind == "node":
            types_property = [p for p in widget.findall("property") if p.get("name") == "nodeTypes"]
            ui_types = {s.text for p in types_property for s in p.iter("string")}
            assert ui_types == node_types, f"{parameter}: .ui nodeTypes {ui_types} != field types {node_types}"


@pytest.mark.parametrize("module", MODULES)
def test_node_combo_boxes_receive_the_scene(module):
    ui = _ui(module)
    root = ui.find("widget")
    assert root.get("class") == "qMRMLWidget"
    combos = {n for n, w in _widgets(ui).items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("sender") == root.get("name")
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert combos <= connected, f"no scene for {sorted(combos - connected)}"  # a module may have none
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    used = {w.get("class") for w in ui.iter("widget")}
    assert {c for c in used if c.startswith(("qMRML", "ctk"))} <= declared


def test_reconstruction_all_cine_frames_box_is_wired_to_the_lib():
    """'All cine frames': a check box bound to ``allFrames``, off in the .ui until the code enables it from
    ``cine.all_frames_offer`` (with its tooltip), and Apply passes ``cine.panel_run_options`` to ``logic.run``."""
    from CardiacDiffusionLib.slicer_adapter.cine import ALL_FRAMES

    box = _widgets(_ui("Reconstruction"))["allFramesCheckBox"]
    assert (box.get("class"), _string_property(box, "SlicerParameterName")) == ("QCheckBox", "allFrames")
    assert _string_property(box, "text") == ALL_FRAMES and _number_property(box, "enabled") is False
    source = ast.unparse(_classes(_tree("Reconstruction"))["ReconstructionWidget"])
    assert "offer = cine.all_frames_offer(" in source
    assert "self.ui.allFramesCheckBox.enabled = offer.enabled" in source
    assert "self.ui.allFramesCheckBox.toolTip = offer.tooltip" in source
    apply = next(f for f in _classes(_tree("Reconstruction"))["ReconstructionWidget"].body
                 if isinstance(f, ast.FunctionDef) and f.name == "onApplyButton")  # fmt: skip
    call = next(n for n in ast.walk(apply) if isinstance(n, ast.Call) and ast.unparse(n.func) == "self.logic.run")
    keywords = {k.arg for k in call.keywords}
    assert None in keywords and not keywords & {"frames", "output_volume", "output_segmentation"}  # all from **chosen
    chosen = next(n for n in ast.walk(apply) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "chosen")
    assert ast.unparse(chosen.value.func) == "cine.panel_run_options"
    assert [k.value.id for k in call.keywords if k.arg is None] == ["chosen"]


def test_reconstruction_choices_match_the_cli():
    from CardiacDiffusionLib.slicer_adapter.reconstruction import METHODS

    cli = ast.parse((ROOT / "CardiacDiffusionLib" / "cli" / "reconstruct.py").read_text())
    cli_methods = next(
        ast.literal_eval(n.value)
        for n in cli.body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "METHODS"
    )
    assert set(METHODS) == set(cli_methods)


# ---- CMake ------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_every_file(module):
    folder = MODULES_DIR / module
    text = (folder / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS", module)
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES", module)
    on_disk_py = {
        p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "Testing" not in p.relative_to(folder).parts
    }
    on_disk_resources = {p.relative_to(folder).as_posix() for p in (folder / "Resources").rglob("*") if p.is_file()}
    assert set(scripts) == on_disk_py
    assert set(resources) == on_disk_resources
    assert f"Resources/UI/{module}.ui" in resources and f"Resources/Icons/{module}.png" in resources
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert call and "WITH_GENERIC_TESTS" in call.group(1).split()
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)


def test_modules_are_added_to_the_build():
    text = (MODULES_DIR / "CMakeLists.txt").read_text()
    added = set(re.findall(r"^\s*add_subdirectory\((\w+)\)", text, re.M))
    assert set(MODULES) <= added
    assert "ctkMacroCompilePythonScript" in text and "CardiacDiffusionLib" in text  # the Lib ships beside them


def test_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    fields = dict(re.findall(r'set\((EXTENSION_\w+)\s+("[^"]*"|[^)\s]+)\s*\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        value = fields.get(f"EXTENSION_{key}", "").strip('"')
        assert value and value != "NA" or key == "DEPENDS" and value, f"EXTENSION_{key} is empty"
    assert "PyTorch" in fields["EXTENSION_DEPENDS"].strip('"').split()
    assert fields["EXTENSION_CATEGORY"].strip('"') == "Cardiac"
    for key in ("HOMEPAGE", "ICONURL"):
        assert fields[f"EXTENSION_{key}"].strip('"').startswith("https://")
    assert re.search(r"add_subdirectory\(CardiacDiffusion\)", text)
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text


# ---- the modules load before the first-use install ---------------------------------------------
def test_modules_load_without_the_packages_installed_on_first_use():
    """Slicer imports each module at start-up, before ``dependencies.ensure`` (Apply) could install monai & co.
    and before the PyTorch extension gave torch: the Lib names the modules import must not need them."""
    import subprocess
    import sys

    from CardiacDiffusionLib.slicer_adapter import dependencies

    absent = ["torch", *(p.module for p in dependencies.REQUIRED)]
    imports = sorted({
        f"from {node.module} import {', '.join(a.name for a in node.names)}"
        for module in MODULES for node in _tree(module).body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("CardiacDiffusionLib")
    })  # fmt: skip
    code = f"import sys\nfor name in {absent!r}: sys.modules[name] = None\n" + "\n".join(imports)
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert len(imports) >= len(MODULES) and done.returncode == 0, done.stderr[-2000:]


# ---- CMake: configure, build and install against a stand-in Slicer ------------------------------
SCRIPTED = "lib/Slicer-5.8/qt-scripted-modules"
STAND_IN_SLICER = {
    "SlicerConfig.cmake": f"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED})
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED})
set(Slicer_USE_FILE ${{CMAKE_CURRENT_LIST_DIR}}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${{CMAKE_CURRENT_LIST_DIR}}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${{CMAKE_CURRENT_LIST_DIR}}/Empty.cmake)
""",
    "Empty.cmake": "",
    # CTK's macro less the byte compilation: each file copied to DESTINATION_DIR/<its path below SOURCE_DIR>
    # at build time, and the whole DESTINATION_DIR installed; Slicer's module macro calls it per module.
    "UseSlicer.cmake": """
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(_copied)
  foreach(_file ${MY_SCRIPTS} ${MY_RESOURCES})
    add_custom_command(OUTPUT ${MY_DESTINATION_DIR}/${_file} DEPENDS ${MY_SOURCE_DIR}/${_file}
      COMMAND ${CMAKE_COMMAND} -E copy ${MY_SOURCE_DIR}/${_file} ${MY_DESTINATION_DIR}/${_file})
    list(APPEND _copied ${MY_DESTINATION_DIR}/${_file})
  endforeach()
  add_custom_target(Copy${MY_TARGET_NAME}PythonFiles ALL DEPENDS ${_copied})
  install(DIRECTORY "${MY_DESTINATION_DIR}/" DESTINATION "${MY_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  ctkMacroCompilePythonScript(TARGET_NAME ${MY_NAME} SCRIPTS "${MY_SCRIPTS}" RESOURCES "${MY_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} NO_INSTALL_SUBDIR)
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT})
    message(FATAL_ERROR "slicer_add_python_unittest: no ${MY_SCRIPT}")
  endif()
endmacro()
""",
}

#: what the installed Lib sees, run with only the tree on PYTHONPATH (and an empty user model store)
TREE_PROBE = """
import json, sys
import CardiacDiffusionLib
from CardiacDiffusionLib.models import store
from CardiacDiffusionLib.training import workflows
shipped = [m for m in store.list_models() if m["source"] == "shipped"]
print(json.dumps({
    "lib": CardiacDiffusionLib.__file__, "registry": str(store.shipped_registry_path()),
    "models": {m["name"]: [m["path"], store.sha256_file(m["path"]) == m["sha256"]] for m in shipped},
    "presets": workflows.available(),
    "tos": store.verify_model("tos-regressor")["parameters"],
}))
"""


@pytest.fixture(scope="module")
def cmake_trees(tmp_path_factory):
    """(build tree, install tree) of the extension's scripted-modules folder, CMake run on the checkout."""
    import shutil
    import subprocess

    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("cmake or a C++ compiler is not installed")
    work = tmp_path_factory.mktemp("cmake")
    for name, text in STAND_IN_SLICER.items():
        (work / "slicer" / name).parent.mkdir(exist_ok=True)
        (work / "slicer" / name).write_text(text)
    configure = ["cmake", "-S", ROOT, "-B", work / "build", f"-DSlicer_DIR={work / 'slicer'}", "-DBUILD_TESTING=ON",
                 f"-DCMAKE_INSTALL_PREFIX={work / 'install'}"]  # fmt: skip
    for command in (configure, ["cmake", "--build", work / "build"], ["cmake", "--install", work / "build"]):
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{command[:2]}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return work / "build" / SCRIPTED, work / "install" / SCRIPTED


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["build", "install"])
def test_cmake_puts_modules_lib_and_shipped_models_together(cmake_trees, tree, tmp_path):
    """Slicer runs the modules from the install tree, and their self tests (ctest) from the build tree:
    both hold every module file, every Lib module, the recipes and the shipped models the Lib finds there."""
    import json
    import os
    import subprocess
    import sys

    folder = cmake_trees[tree == "install"]
    for module in MODULES:
        for name in (f"{module}.py", f"Resources/Icons/{module}.png", f"Resources/UI/{module}.ui"):
            assert (folder / name).is_file(), f"{tree}: {name}"
    lib = ROOT / "CardiacDiffusionLib"
    missing = [p for p in lib.rglob("*.py") if not (folder / p.relative_to(ROOT)).is_file()]
    assert not missing, f"{tree}: {missing[:5]}"
    env = {**os.environ, "PYTHONPATH": str(folder), "CARDIAC_DIFFUSION_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", TREE_PROBE], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert Path(seen["lib"]).is_relative_to(folder) and Path(seen["registry"]).is_relative_to(folder)
    shipped = json.loads((ROOT / "Resources" / "models.json").read_text())["models"]
    assert set(seen["models"]) == {m["name"] for m in shipped}
    for name, (path, sha_ok) in seen["models"].items():
        assert Path(path).is_relative_to(folder / "CardiacDiffusionResources") and sha_ok, name
    assert seen["presets"] == sorted(p.stem for p in (lib / "training" / "presets").glob("*.yaml"))
    assert seen["tos"] > 1000  # the shipped TOS regressor rebuilt from the tree's copy
    atlas = {p.name for p in (ROOT / "Resources" / "atlas").iterdir()}
    assert atlas and atlas <= {p.name for p in (folder / "CardiacDiffusionResources" / "atlas").iterdir()}
    if tree == "install":
        assert (folder / "CardiacDiffusionScripts" / "slicer_batch.py").is_file()


# ---- the panels against the command line they run ------------------------------------------------
#: module -> (CLI command, {parameter field: CLI dest, or (dest, {field value: the CLI value it stands for}),
#: or (dest, "not") for a negated flag, or None for a Slicer-only field}, {CLI dest: why the panel lacks it}).
#: A new CLI option fails test_every_cli_option_is_offered_or_left_out_on_purpose until it is in one of them.
PANEL_CLI = {
    "Reconstruction": ("reconstruct", {
        "saxVolume": "sax", "saxLabels": "sax_labels", "laxLabels1": "lax_labels", "laxLabels2": "lax_labels",
        "laxLabels3": "lax_labels", "labelNumbering": "label_convention", "method": "method", "spacing": "spacing",
        "steps": ("steps", {0: None}), "shapePrior": ("shape_prior", {-0.05: None}), "device": "device",
        "model": ("model", {"": None}), "outputVolume": None, "outputSegmentation": None,
        "allFrames": None,  # Slicer-only: every frame of a cine's sequence (one command for all, cine.FramesJob)
    }, {
        "lax": "LAX images are kept for reference only; the LAX check needs their labels",
        "strength": "expert tuning of the diffusion schedule; the model's default was chosen on training patients",
        "roughness_guard": "expert tuning (default chosen on training patients); ReconstructionLogic.run(roughness_guard=)",
        "no_baselines": "the panel always shows the classical baselines beside the method (under a second); "
                        "ReconstructionLogic.run(baselines=False)",
        "phase": "a volume node holds one cardiac phase (pick the phase when loading a cine)",
        "lax_phase": "the panel checks LAX labels on one reconstructed frame only (All cine frames refuses them), "
                     "so the frame they were drawn at is the one shown",
        "frame_labels": "All cine frames: each frame's labels go into the frames manifest the job writes",
        "h5_spacing": "ACDC HDF5 files are not loaded as nodes; their volumes come with spacing",
        "progress": "the job always asks for JSON progress (the progress bar)",
        "out": "the job's temporary folder; results become nodes",
    }),
    "ActivationMap": ("lma", {
        "saxVolume": "slices", "saxLabels": "slice_labels", "rvInsertion": "rv_insertion", "basePoint": "base",
        "apexPoint": "apex", "strainFile": ("strain", {"": None}), "tosFile": ("tos_csv", {"": None}),
        "strainSlices": ("strain_slices", {"": None}), "frameMs": "frame_ms", "tosMethod": "tos_method",
        "method": "method", "spacing": "spacing", "latePercentile": "late_percentile",
        "lateThresholdMs": ("late_threshold", {0.0: None}), "scar": ("scar", {"": []}),
        "includeApical": "include_apical", "device": "device", "labelNumbering": "label_convention",
    }, {
        "phase": "a volume node holds one cardiac phase (pick the phase when loading a cine)",
        "h5_spacing": "ACDC HDF5 files are not loaded as nodes; their volumes come with spacing",
        "sadir_model": "expert: another SADIR model (the shipped one is used)",
        "sadir_refine": "expert: SADIR test-time fit steps (the library's default)",
        "progress": "the job always asks for JSON progress (the progress bar)",
        "out": "the job's temporary folder; results become nodes",
    }),
    "SyntheticData": ("sample", {
        "count": "n", "seed": "seed", "steps": "steps", "device": "device", "model": ("model", {"": None}),
        "cleanup": ("no_cleanup", "not"),
    }, {
        "progress": "the job always asks for JSON progress (the progress bar)",
        "out": "the job's temporary folder; results become nodes",
    }),
}


def _module_namespace(module: str) -> dict:
    """The Lib names the module imports, to evaluate its Choice(...) and WithinRange(...) arguments."""
    namespace = {}
    for node in _tree(module).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("CardiacDiffusionLib"):
            imported = importlib.import_module(node.module)
            for alias in node.names:  # a name, or a submodule (`from package import module`)
                value = getattr(imported, alias.name, None) or importlib.import_module(f"{node.module}.{alias.name}")
                namespace[alias.asname or alias.name] = value
    return namespace


def _field_specs(module: str) -> dict[str, dict]:
    """{field: {"default": value or absent, "range": (low, high) or absent, "choices": [...] or absent}}."""
    namespace, specs = _module_namespace(module), {}
    for node in _parameter_node_class(_tree(module)).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        spec = {} if node.value is None else {"default": ast.literal_eval(node.value)}
        if isinstance(node.annotation, ast.Subscript) and ast.unparse(node.annotation.value) == "Annotated":
            for marker in node.annotation.slice.elts[1:]:
                arguments = [eval(ast.unparse(a), dict(namespace)) for a in marker.args]  # noqa: S307 (own source)
                spec[{"WithinRange": "range", "Choice": "choices"}[ast.unparse(marker.func)]] = (
                    tuple(arguments) if ast.unparse(marker.func) == "WithinRange" else list(arguments[0])
                )
        specs[node.target.id] = spec
    return specs


def _number_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            for tag in ("double", "number", "bool"):
                if prop.find(tag) is not None:
                    text = prop.findtext(tag)
                    return text == "true" if tag == "bool" else float(text)
    return None


@pytest.mark.parametrize("module", MODULES)
def test_widget_ranges_and_values_are_the_parameter_nodes(module):
    """A spin box shows the field's WithinRange and default (the wrapper would clamp a wider widget, and a
    narrower one would cut the range), a check box the field's default."""
    specs = _field_specs(module)
    for widget in _widgets(_ui(module)).values():
        field = _string_property(widget, "SlicerParameterName")
        if field is None:
            continue
        spec = specs[field]
        if widget.get("class") in ("QSpinBox", "QDoubleSpinBox"):
            low, high = spec["range"]
            assert (_number_property(widget, "minimum"), _number_property(widget, "maximum")) == (low, high), field
            shown = _number_property(widget, "value")
            assert (max(0.0, low) if shown is None else shown) == spec["default"], f"{field}: .ui value"
        elif widget.get("class") == "QCheckBox":
            assert bool(_number_property(widget, "checked")) == spec["default"], f"{field}: .ui checked"


def _cli_actions(command: str) -> dict:
    from CardiacDiffusionLib.cli.main import build_parser

    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return {a.dest: a for a in subparsers.choices[command]._actions if a.dest != "help"}


@pytest.mark.parametrize("module", MODULES)
def test_every_cli_option_is_offered_or_left_out_on_purpose(module):
    command, mapping, left_out = PANEL_CLI[module]
    assert set(mapping) == set(_field_specs(module)), "PANEL_CLI lists other fields than the parameter node"
    offered = {m if isinstance(m, str) else m[0] for m in mapping.values() if m is not None}
    actions = _cli_actions(command)
    assert offered | set(left_out) >= set(actions), f"{command}: not in the panel: {sorted(set(actions) - offered - set(left_out))}"
    assert not (offered & set(left_out)) and (offered | set(left_out)) <= set(actions)


@pytest.mark.parametrize("module", MODULES)
def test_parameter_defaults_and_choices_are_the_clis(module):
    """What a panel does untouched is what the command does without the option; its choices are the command's."""
    command, mapping, _ = PANEL_CLI[module]
    actions, specs = _cli_actions(command), _field_specs(module)
    for field, target in mapping.items():
        if target is None or "default" not in specs[field]:  # Slicer-only, or a node (none selected)
            continue
        dest, meaning = (target, {}) if isinstance(target, str) else target
        default = specs[field]["default"]
        if meaning == "not":
            assert (not default) == actions[dest].default, field
        else:
            assert meaning.get(default, default) == actions[dest].default, f"{field} = {default!r} vs --{dest}"
        if "choices" in specs[field] and actions[dest].choices is not None:
            assert set(specs[field]["choices"]) <= set(actions[dest].choices), field


JOBS = {"Reconstruction": ("reconstruction", "ReconstructionJob"), "ActivationMap": ("activation", "ActivationJob"),
        "SyntheticData": ("synthetic", "SampleJob")}  # fmt: skip


@pytest.mark.parametrize("module", MODULES)
def test_job_says_each_option_it_passes_by_the_panels_label(module):
    """The child's messages name command-line options; the job shows each option the panel sets (PANEL_CLI) by
    the label of its field in the .ui (``CLIJob.options``), and its hints name no option a panel cannot set."""
    from CardiacDiffusionLib.slicer_adapter.job import MODULE_HINTS

    submodule, name = JOBS[module]
    job = getattr(importlib.import_module(f"CardiacDiffusionLib.slicer_adapter.{submodule}"), name)
    command, mapping, _ = PANEL_CLI[module]
    offered = {m if isinstance(m, str) else m[0] for m in mapping.values() if m is not None}
    assert {f"--{dest.replace('_', '-')}" for dest in offered} <= set(job.options), f"{command}: option not translated"
    labels = {re.sub(r"^or |( \d)?:$", "", w.findtext("property/string") or "")  # "LAX labels 1:" -> "LAX labels"
              for w in _ui(module).iter("widget") if w.get("class") == "QLabel"}  # fmt: skip
    assert set(job.options.values()) <= labels, f"not a label of {module}.ui: {set(job.options.values()) - labels}"
    assert all("--" not in hint for hint in MODULE_HINTS.values())



def _cli_limits() -> dict:
    """{(module, field): (lowest, highest) a command takes} for each numeric panel field: its checks' constants and
    the shipped models' schedules (open bounds as the nearest float inside)."""
    import math

    from CardiacDiffusionLib.activation.pipeline import SADIR_MAX_SPACING_MM
    from CardiacDiffusionLib.activation.tos import TOS_RANGE_MS
    from CardiacDiffusionLib.dmcvr.reconstruction import DEFAULT_STRENGTH, load_dmcvr
    from CardiacDiffusionLib.ldm.generate import DEFAULT_MODEL, load_ldm
    from CardiacDiffusionLib.reconstruction.volume import MIN_SPACING_MM

    above, below = (lambda v: math.nextafter(v, math.inf)), (lambda v: math.nextafter(v, -math.inf))
    dmcvr_steps = max(1, round(DEFAULT_STRENGTH * len(load_dmcvr(None, "cpu")[0].alphas_cumprod)))  # no strength field
    return {
        ("Reconstruction", "spacing"): (MIN_SPACING_MM, math.inf),
        ("Reconstruction", "steps"): (1, dmcvr_steps),
        ("Reconstruction", "shapePrior"): (0.0, below(1.0)),
        ("ActivationMap", "spacing"): (MIN_SPACING_MM, SADIR_MAX_SPACING_MM),  # sadir's; shape has no upper limit
        ("ActivationMap", "frameMs"): (above(0.0), math.inf),
        ("ActivationMap", "latePercentile"): (above(0.0), below(100.0)),
        ("ActivationMap", "lateThresholdMs"): (above(TOS_RANGE_MS[0]), TOS_RANGE_MS[1]),
        ("SyntheticData", "count"): (1, math.inf),
        ("SyntheticData", "steps"): (1, load_ldm(DEFAULT_MODEL, "cpu").scheduler.num_train_timesteps),
        ("SyntheticData", "seed"): (0, 2**63 - 1 - 100),  # pair i's seed + i, up to 100 pairs
    }


#: the lowest real value of a field whose minimum is a special value meaning "the command's default" (PANEL_CLI)
FIRST_REAL_VALUE = {("Reconstruction", "steps"): 1, ("Reconstruction", "shapePrior"): 0.0,
                    ("ActivationMap", "lateThresholdMs"): 1.0}  # fmt: skip
#: fields wider than one method takes: the job refuses the rest before a child starts (Testing/test_panel_refusals.py)
REFUSED_BY_THE_JOB = {("ActivationMap", "spacing"): "sadir"}


def test_panel_ranges_are_what_the_commands_take():
    """Every value a panel's spin box offers (less the special value meaning 'the command's default') is one the
    command takes, or one the job refuses itself in the panel's words: no panel value ends in a command's refusal."""
    from CardiacDiffusionLib.slicer_adapter.activation import sadir_max_spacing

    limits = _cli_limits()
    numeric = {(m, f): s["range"] for m in MODULES for f, s in _field_specs(m).items() if "range" in s}
    assert set(numeric) == set(limits), f"numeric panel fields without a limit here: {set(numeric) ^ set(limits)}"
    for key, (low, high) in numeric.items():
        taken_low, taken_high = limits[key]
        target = PANEL_CLI[key[0]][1][key[1]]
        if isinstance(target, tuple) and target[1].get(low, low) is None:  # the minimum means "default"
            low = FIRST_REAL_VALUE[key]
        assert taken_low <= low, f"{key}: the panel offers {low}, the command takes from {taken_low}"
        if key in REFUSED_BY_THE_JOB:
            assert sadir_max_spacing() == taken_high < high, key
        else:
            assert high <= taken_high, f"{key}: the panel offers up to {high}, the command takes up to {taken_high}"

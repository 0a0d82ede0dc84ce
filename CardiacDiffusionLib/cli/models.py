"""``cardiac-diffusion models list|add|verify``: the shipped and the user's trained models."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..utils.jsonfile import dumps
from ..models.store import WORKFLOWS, add_model, list_models, user_home, user_registry_path, verify_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, register and verify trained models",
                       description="The model store: shipped models and the user's, in $CARDIAC_DIFFUSION_HOME "
                                   "(default ~/.cardiac-diffusion): models.json and models/<name>.safetensors.")  # fmt: skip
    actions = p.add_subparsers(dest="models_command", required=True)
    ls = actions.add_parser("list", help="shipped and user models")
    ls.add_argument("--json", action="store_true", help="print the entries as JSON")
    ls.set_defaults(func=run_list)
    add = actions.add_parser("add", help="check a trained model (.safetensors) and copy it into the user store "
                                         "($CARDIAC_DIFFUSION_HOME, default ~/.cardiac-diffusion)")  # fmt: skip
    add.add_argument("--name", required=True, help="letters, digits, '.', '_' and '-'")
    add.add_argument("--workflow", required=True, choices=WORKFLOWS)
    add.add_argument("--file", required=True, help="model file written by training (model.safetensors)")
    add.add_argument("--card", help="YAML/JSON model card: version, description, input, labels, training, metrics")
    add.add_argument("--force", action="store_true", help="replace a user model of the same name")
    add.set_defaults(func=run_add)
    verify = actions.add_parser("verify", help="check a model's sha256, file and architecture (every registered "
                                               "model when none is named)")  # fmt: skip
    verify.add_argument("model", nargs="?", help="registered name or .safetensors path (default: every shipped and "
                                                 "user model, one line each; exit code 2 if any fails)")  # fmt: skip
    verify.set_defaults(func=run_verify)


def run_list(args: argparse.Namespace) -> int:
    models = list_models()
    for m in models:
        m["missing"] = not Path(m["path"]).is_file()
    if args.json:
        print(dumps(models, "models list --json", indent=2))
        return 0
    print(f"user store: {user_registry_path()} ($CARDIAC_DIFFUSION_HOME, default ~/.cardiac-diffusion)")
    if not models:
        print("no models registered (add one with: cardiac-diffusion models add --name ... --workflow ... --file ...)")
        return 0
    rows = [("name", "workflow", "version", "architecture", "source", "file")]
    rows += [(m["name"], m["workflow"], str(m["version"]), m["architecture"], m["source"],
              m["path"] + ("  (MISSING: re-add or remove this entry)" if m["missing"] else "")) for m in models]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def run_add(args: argparse.Namespace) -> int:
    entry = add_model(args.name, args.workflow, args.file, card=args.card, force=args.force)
    sha = entry["sha256"][:16]
    print(f"registered {entry['name']} ({entry['architecture']}, sha256 {sha}...): copied to "
          f"{user_home() / entry['file']}, listed in {user_registry_path()}")  # fmt: skip
    return 0


def run_verify(args: argparse.Namespace) -> int:
    if args.model:
        print(_verified(args.model, verify_model(args.model)))
        return 0
    models = list_models()
    if not models:
        print("no models registered (add one with: cardiac-diffusion models add --name ... --workflow ... --file ...)")
        return 0
    failed = []
    for m in models:  # each one said, whatever happened to the others
        try:
            line = _verified(m["name"], verify_model(m["name"]))
        except InputError as error:
            failed.append(m["name"])
            line = f"{m['name']} ({m['source']}): FAILED: {error}"
        except Exception as error:  # noqa: BLE001 - any failure of one model must not hide the others
            failed.append(m["name"])
            line = f"{m['name']} ({m['source']}): FAILED: {type(error).__name__}: {error}"
        print(line, flush=True)
    if failed:
        raise InputError(f"models verify: {len(failed)} of {len(models)} models failed ({', '.join(failed)}); "
                         "re-download, re-train or re-register them (lines above)")  # fmt: skip
    print(f"all {len(models)} models verified")
    return 0


def _verified(model: str, summary: dict) -> str:
    checked = f"{summary['checked']} ok" if summary["checked"] else (
        "not registered and saved without a content hash: its bytes are NOT checked")  # fmt: skip
    version = f" (version {summary['version']})" if summary.get("version") else ""
    return (f"{model}{version}: {checked}, {summary['architecture']} rebuilt strictly, {summary['parameters']} "
            f"parameters, sha256 {summary['sha256']}")  # fmt: skip

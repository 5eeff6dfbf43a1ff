"""Write the JSON Schema files of the wire contract from the pydantic models.

    python -m schemas.generate          # (re)write schemas/json/
    python -m schemas.generate --check  # exit 1 if the committed files differ from the models

One file per event schema version (``json/events/<EventType>.v<N>.json``, legacy versions
included) and one per API model (``json/api/<Model>.json``). The output is deterministic
(sorted keys, two-space indent, trailing newline); tests/test_schemas.py fails on drift.

``schemas/openapi.json`` is the records service's OpenAPI document, rendered here the same way.
The document itself comes from the service's route table (``schemas/`` imports nothing from
``services/``), so it is written by ``casetrail openapi`` (``--check`` to compare only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas import api
from schemas.events import EVENT_CLASSES
from schemas.upcasting import LEGACY_MODELS

JSON_DIR = Path(__file__).resolve().parent / "json"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
SUBDIRS = ("events", "api")


def _render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _event_schema(model: type[BaseModel], event_type: str, version: int) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    schema["title"] = event_type
    schema["$id"] = f"events/{event_type}.v{version}.json"
    schema["x-event-type"] = event_type
    schema["x-schema-version"] = version
    return schema


def build() -> dict[str, str]:
    """Every schema file: path relative to ``schemas/json`` (POSIX) -> file content."""
    files: dict[str, str] = {}
    for cls in EVENT_CLASSES:
        name = f"events/{cls.event_type}.v{cls.schema_version}.json"
        files[name] = _render(_event_schema(cls, cls.event_type, cls.schema_version))
    for (event_type, version), model in LEGACY_MODELS.items():
        name = f"events/{event_type}.v{version}.json"
        files[name] = _render(_event_schema(model, event_type, version))
    for model in api.REQUEST_MODELS:
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"api/{model.__name__}.json"
        files[f"api/{model.__name__}.json"] = _render(schema)
    for model in api.RESPONSE_MODELS:
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"api/{model.__name__}.json"
        files[f"api/{model.__name__}.json"] = _render(schema)
    return dict(sorted(files.items()))


def on_disk(root: Path = JSON_DIR) -> dict[str, str]:
    """The schema files currently in ``root`` (same keys as :func:`build`)."""
    files: dict[str, str] = {}
    for sub in SUBDIRS:
        folder = root / sub
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                files[f"{sub}/{path.name}"] = path.read_text(encoding="utf-8")
    return files


def drift(root: Path = JSON_DIR) -> list[str]:
    """Human-readable differences between the models and the files in ``root``."""
    wanted, present = build(), on_disk(root)
    problems = [f"missing: {name}" for name in wanted if name not in present]
    problems += [f"stale (no model): {name}" for name in present if name not in wanted]
    problems += [f"differs: {name}" for name in wanted
                 if name in present and present[name] != wanted[name]]
    return problems


def write(root: Path = JSON_DIR) -> list[str]:
    """Write every schema file and delete stale ones; returns the paths changed."""
    wanted, present = build(), on_disk(root)
    changed: list[str] = []
    for name, content in wanted.items():
        if present.get(name) != content:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8", newline="\n")
            changed.append(name)
    for name in present:
        if name not in wanted:
            (root / name).unlink()
            changed.append(name)
    return changed


def openapi_drift(document: dict[str, Any], path: Path = OPENAPI_FILE) -> list[str]:
    """How the committed OpenAPI document differs from ``document`` (empty when it matches)."""
    if not path.is_file():
        return [f"missing: {path.name}"]
    if path.read_text(encoding="utf-8") != _render(document):
        return [f"differs: {path.name}"]
    return []


def write_openapi(document: dict[str, Any], path: Path = OPENAPI_FILE) -> bool:
    """Write the OpenAPI document; True when the file changed."""
    if not openapi_drift(document, path):
        return False
    path.write_text(_render(document), encoding="utf-8", newline="\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only report drift; exit 1 when files differ from the models")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run `python -m schemas.generate` and commit schemas/json/", file=sys.stderr)
        return 1 if problems else 0
    changed = write()
    for name in changed:
        print(f"wrote schemas/json/{name}")
    print(f"{len(build())} schema files up to date ({len(changed)} changed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

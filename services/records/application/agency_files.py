"""Per-agency configuration folders: one ``<agency>.json`` file per agency, all read at startup.

Reading every file when the service starts means a file that cannot be used stops the start with
a message naming it, instead of failing a request later (after its write had committed).
"""

from __future__ import annotations

import re
from pathlib import Path

from services.common.settings import ConfigurationError

AGENCY_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def read_agency_files(folder: Path | None, setting: str) -> dict[str, tuple[Path, bytes]]:
    """The bytes of each ``<agency>.json`` file in ``folder``, by agency (none when unset)."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise ConfigurationError(f"{setting}={folder}: not a folder")
    files: dict[str, tuple[Path, bytes]] = {}
    for path in sorted(folder.glob("*.json")):
        if not AGENCY_FILE_NAME.match(path.stem):
            raise ConfigurationError(
                f"{path}: name the file <agency>.json, the agency as in tokens (letters, digits,"
                " '.', '_' or '-', at most 100)")
        try:
            files[path.stem] = (path, path.read_bytes())
        except OSError as error:
            raise ConfigurationError(f"{path}: cannot be read ({error.strerror})") from error
    return files

"""Language guides per agency: the packaged guide, extended by ``<agency>.json`` files.

Every file is read and checked when the service starts (a malformed one stops the start with a
message naming it); a request only looks its agency's guide up.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.common.settings import ConfigurationError
from services.records.application.agency_files import read_agency_files
from services.records.domain import LanguageGuide, load_base_guide

SETTING = "CASETRAIL_LANGUAGE_GUIDE_DIR"
# The base guide's own keys; anything else in an agency file is most likely a typo ("term"),
# which would otherwise silently extend nothing.
_KEYS = {"version", "description", "terms", "remove", "not_flagged"}


class LanguageGuides:
    def __init__(self, folder: Path | None) -> None:
        self._base = load_base_guide()
        self._by_agency = {agency: self._extend(path, raw)
                           for agency, (path, raw) in read_agency_files(folder, SETTING).items()}

    def for_agency(self, agency: str) -> LanguageGuide:
        return self._by_agency.get(agency, self._base)

    def _extend(self, path: Path, raw: bytes) -> LanguageGuide:
        try:
            data = json.loads(raw)
        except ValueError as error:  # also UnicodeDecodeError
            raise ConfigurationError(f"{path}: not valid JSON ({error})") from error
        if isinstance(data, dict) and (unknown := sorted(set(data) - _KEYS)):
            raise ConfigurationError(
                f"{path}: unknown keys {unknown} (expected {sorted(_KEYS)})")
        try:
            return self._base.merge(data)
        except ValueError as error:
            raise ConfigurationError(f"{path}: {error}") from error

"""Language guides per agency: the packaged guide, extended by ``<agency>.json`` files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from services.records.domain import LanguageGuide, load_base_guide

_AGENCY_FILE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class LanguageGuides:
    def __init__(self, folder: Path | None) -> None:
        self._folder = folder
        self._base = load_base_guide()
        self._cache: dict[str, LanguageGuide] = {}

    def for_agency(self, agency: str) -> LanguageGuide:
        if agency not in self._cache:
            self._cache[agency] = self._load(agency)
        return self._cache[agency]

    def _load(self, agency: str) -> LanguageGuide:
        if self._folder is None or not _AGENCY_FILE.match(agency):
            return self._base
        path = self._folder / f"{agency}.json"
        if not path.exists():
            return self._base
        return self._base.merge(json.loads(path.read_text()))

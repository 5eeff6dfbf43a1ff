"""What an audit of deploy/ found the image and the manifests lacked: the font PDF exports are
set in, a sender address a real mail relay takes, and tokens that pass the audience and issuer
check the example configuration offers. Also guards that the distribution carries every data
file the services read and that the configuration tables name every setting."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from email.utils import parseaddr
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from reportlab.pdfbase.ttfonts import TTFont

from services.cli import main
from services.common.auth import TokenVerifier
from services.common.server import SHUTDOWN_SECONDS
from services.common.settings import ServiceSettings, Settings
from services.notifier.feed import FeedToken
from services.notifier.settings import NotifierSettings
from services.records.export import pdf

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
KUBERNETES: list[dict[str, Any]] = [
    doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "casetrail.yaml").read_text())
    if doc]
# The Debian package that puts DejaVu Sans where services/records/export/pdf.py looks for it
FONT_PACKAGE, FONT_FILE = "fonts-dejavu-core", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PARTICIPANT_NAME = "Ольга Ἀθηνᾶ"  # Cyrillic and Greek


def final_stage(dockerfile: str) -> str:
    return re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[-1]


def apt_installed(stage: str) -> set[str]:
    """The packages the stage's `apt-get install` lines name (continuation lines joined)."""
    joined = stage.replace("\\\n", " ")
    return {word for command in re.findall(r"apt-get install ([^&\n]+)", joined)
            for word in command.split() if not word.startswith("-")}


def glyphs(font_file: str) -> set[str]:
    return set(map(chr, TTFont(f"Audit-{Path(font_file).stem}", font_file).face.charToGlyph))


def test_the_image_has_the_font_pdf_exports_are_set_in() -> None:
    # python:*-slim installs no font; without DejaVu the PDF falls back to reportlab's Vera
    vera = glyphs("Vera.ttf")
    assert not set(PARTICIPANT_NAME.replace(" ", "")) & vera  # boxes, not a name
    assert Path(FONT_FILE) in pdf._FONT_FILES
    assert FONT_PACKAGE in apt_installed(final_stage(DOCKERFILE))


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs Debian's dpkg to ask")
def test_that_package_is_the_one_holding_the_font() -> None:
    found = subprocess.run(["dpkg", "-S", FONT_FILE], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"{FONT_FILE} is not installed here")
    assert found.stdout.split(":")[0] == FONT_PACKAGE
    assert set(PARTICIPANT_NAME.replace(" ", "")) <= glyphs(FONT_FILE)


def notifier_env() -> dict[str, str]:
    [notifier] = [c for doc in KUBERNETES if doc["kind"] == "Deployment"
                  for c in doc["spec"]["template"]["spec"]["containers"]
                  if c["name"] == "notifier"]
    return {v["name"]: v["value"] for v in notifier["env"] if "value" in v}


def test_the_production_notifier_sends_as_a_domain_a_relay_may_send_for() -> None:
    env = notifier_env()
    defaults = NotifierSettings.model_fields
    for name, field in (("NOTIFIER_FROM", "mail_from"),
                        ("NOTIFIER_MESSAGE_ID_DOMAIN", "message_id_domain")):
        # the development default (casetrail.local) is refused by a relay checking senders
        assert env.get(name) not in (None, defaults[field].default), name
    settings = NotifierSettings.model_validate(env)
    sender_domain = parseaddr(settings.mail_from)[1].rpartition("@")[2]
    for domain in (sender_domain, settings.message_id_domain):
        assert "." in domain
        assert not domain.endswith((".local", ".localhost", "localhost")), domain


def test_tokens_signed_with_the_secret_pass_the_audience_and_issuer_check(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # casetrail.env.example offers CASETRAIL_JWT_AUDIENCE/ISSUER beside the HS256 secret
    example = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$",
                              (DEPLOY / "casetrail.env.example").read_text(), re.MULTILINE))
    for name in ("CASETRAIL_JWT_SECRET", "CASETRAIL_JWT_AUDIENCE", "CASETRAIL_JWT_ISSUER"):
        monkeypatch.setenv(name, example[name])
    verifier = TokenVerifier(Settings())
    assert main(["token", "--sub", "cm-1", "--role", "case_manager", "--agency", "a"]) == 0
    verifier.verify(capsys.readouterr().out.strip())
    verifier.verify(FeedToken(NotifierSettings()).value())


def package_data_patterns() -> list[str]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    includes = setuptools["packages"]["find"]["include"]
    assert setuptools["packages"]["find"].get("namespaces", True)  # folders without __init__
    assert sorted(includes) == ["schemas*", "services*"]
    patterns: list[str] = setuptools["package-data"]["*"]
    return patterns


@pytest.mark.parametrize("top", ["services", "schemas"])
def test_every_data_file_the_services_read_is_in_the_distribution(top: str) -> None:
    # the image installs a wheel: a template, migration or guide left out of package-data
    # works from the checkout and is missing in production
    patterns = package_data_patterns()
    files = [f for f in (ROOT / top).rglob("*") if f.is_file() and "__pycache__" not in f.parts
             and f.suffix not in (".py", ".pyc")]
    assert files
    left_out = [str(f.relative_to(ROOT)) for f in files
                if not any(fnmatch(f.name, pattern) for pattern in patterns)]
    assert left_out == []


def documented(text: str) -> dict[str, str]:
    """Each variable a configuration table names, with its default cell."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.update({name: cells[1] for name in re.findall(r"`([A-Z][A-Z0-9_]+)`",
                                                               cells[0])})
    return rows


def readme_configuration() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Configuration")
    return readme[start:readme.index("\n## ", start + 1)]


@pytest.mark.parametrize(("model", "text", "elsewhere"), [
    (Settings, readme_configuration(), set()),
    # what both services read (the database, tokens, logs, body size) is in the README's table
    (NotifierSettings, (ROOT / "docs" / "notifier.md").read_text(),
     set(documented(readme_configuration()))),
], ids=["README", "docs/notifier.md"])
def test_the_configuration_tables_name_every_setting_and_only_those(
        model: type[ServiceSettings], text: str, elsewhere: set[str]) -> None:
    rows = documented(text)
    aliases = {field.alias for field in model.model_fields.values() if field.alias}
    assert aliases - elsewhere - set(rows) == set()
    assert set(rows) - aliases == set()
    for field in model.model_fields.values():
        if field.alias in rows and isinstance(field.default, int | float | str) \
                and not isinstance(field.default, bool):
            default = f"{field.default:g}" if isinstance(field.default, float) \
                else str(field.default)
            assert f"`{default}`" in rows[field.alias], field.alias


def test_every_pod_is_given_the_time_its_server_takes_to_stop() -> None:
    # past terminationGracePeriodSeconds the kubelet kills the process: requests in flight
    # get SHUTDOWN_SECONDS after the preStop pause, and closing the pool needs a moment more
    for doc in (d for d in KUBERNETES if d["kind"] == "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        [container] = pod["containers"]
        pause = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        paused = int(pause["command"][1]) if pause else 0
        assert pod["terminationGracePeriodSeconds"] - paused >= SHUTDOWN_SECONDS + 5, doc[
            "metadata"]["name"]

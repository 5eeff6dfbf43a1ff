"""deploy/ against the code it configures: every variable it sets is one a service reads, every
command line parses, ports and probes agree, the compose services find each other, and the
Kubernetes objects are valid against the Kubernetes API's own schemas.

The image itself is built and run by deploy/smoke-test.sh, which needs a container engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser
from services.common.settings import Settings
from services.notifier.http.app import api as notifier_api
from services.notifier.settings import NotifierSettings
from services.records.http.app import api as records_api

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ENV_EXAMPLE = DEPLOY / "casetrail.env.example"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
KUBERNETES: list[dict[str, Any]] = [
    doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "casetrail.yaml").read_text())
    if doc]
SERVED_PATHS = {"records": records_api.openapi()["paths"],
                "notifier": notifier_api.openapi()["paths"]}


def settings_read() -> set[str]:
    return {field.alias for model in (Settings, NotifierSettings)
            for field in model.model_fields.values() if field.alias}


def env_example() -> dict[str, str]:
    """Its assignments, commented-out ones included: those document an option."""
    pairs = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    return dict(pairs)


def containers(kind: str) -> list[dict[str, Any]]:
    return [container for doc in KUBERNETES if doc["kind"] == kind
            for container in doc["spec"]["template"]["spec"]["containers"]]


def variables_set() -> dict[str, set[str]]:
    dockerfile_env = re.search(r"^ENV (.+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert dockerfile_env is not None
    return {
        "casetrail.env.example": set(env_example()),
        "compose.yaml": {name for service in COMPOSE["services"].values()
                         for name in service.get("environment", {})
                         if "build" in service},
        "kubernetes": {variable["name"] for kind in ("Deployment", "Job")
                       for container in containers(kind) for variable in container["env"]},
        "Dockerfile": {pair.split("=")[0] for pair in dockerfile_env.group(1).split()},
    }


@pytest.mark.parametrize("source", sorted(variables_set()))
def test_every_variable_deploy_sets_is_one_a_service_reads(source: str) -> None:
    # pydantic-settings ignores a variable it does not know, so a misspelt name would pass
    # silently in production: SMTP_START_TLS would leave mail unencrypted
    assert variables_set()[source] - settings_read() == set()


def command_lines() -> list[list[str]]:
    compose = [service["command"] for service in COMPOSE["services"].values()
               if "build" in service]
    kubernetes = [c["args"] for kind in ("Deployment", "Job") for c in containers(kind)]
    cmd = re.search(r"^CMD (.+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    return [*compose, *kubernetes, yaml.safe_load(cmd.group(1))]


@pytest.mark.parametrize("argv", command_lines(), ids=" ".join)
def test_every_command_line_parses(argv: list[str]) -> None:
    parsed = build_parser().parse_args(argv)
    assert parsed.run.__name__ == f"cmd_{argv[0]}"


@pytest.mark.parametrize("container", containers("Deployment"), ids=lambda c: c["name"])
def test_ports_and_probes_agree_with_the_command(container: dict[str, Any]) -> None:
    args = build_parser().parse_args(container["args"])
    assert [p["containerPort"] for p in container["ports"]] == [args.port]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == args.port
        assert "get" in SERVED_PATHS[container["args"][0]][get["path"]]


def test_the_kubernetes_service_reaches_the_records_pods() -> None:
    services = [doc for doc in KUBERNETES if doc["kind"] == "Service"]
    deployments = {doc["metadata"]["name"]: doc for doc in KUBERNETES
                   if doc["kind"] == "Deployment"}
    notifier_env = {v["name"]: v.get("value") for c in containers("Deployment")
                    if c["name"] == "notifier" for v in c["env"]}
    records_url = urlsplit(notifier_env["RECORDS_URL"])
    (service,) = [s for s in services if s["metadata"]["name"] == records_url.hostname]
    records = deployments["casetrail-records"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= records["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == records_url.port
    assert port["targetPort"] == records["spec"]["containers"][0]["ports"][0]["containerPort"]


@pytest.mark.parametrize("deployment", [doc for doc in KUBERNETES if doc["kind"] == "Deployment"],
                         ids=lambda d: d["metadata"]["name"])
def test_each_deployment_is_reachable_through_a_service(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]
    ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
    reaching = [doc for doc in KUBERNETES if doc["kind"] == "Service"
                and doc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()]
    assert {p["targetPort"] for s in reaching for p in s["spec"]["ports"]} == ports


def test_the_compose_services_find_each_other() -> None:
    services = COMPOSE["services"]
    notifier = services["notifier"]["environment"]
    hosts = {urlsplit(env_example()["DATABASE_URL"]).hostname,
             urlsplit(notifier["RECORDS_URL"]).hostname, notifier["SMTP_HOST"]}
    assert hosts <= set(services)
    for service in services.values():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services)
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            assert (DEPLOY / service["env_file"]).is_file()
    records_port = build_parser().parse_args(services["records"]["command"]).port
    assert urlsplit(notifier["RECORDS_URL"]).port == records_port


@pytest.mark.parametrize("version", ["1.29", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("doc", KUBERNETES, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_the_kubernetes_objects_are_valid(doc: dict[str, Any], version: str) -> None:
    # strict: a misspelt or misplaced field is an error, not silently dropped by the API server
    kubernetes_validate.validate(doc, version, strict=True)

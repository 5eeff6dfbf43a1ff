"""deploy/ against the code it configures: every variable it sets is one a service reads, every
command line parses, ports and probes agree, the compose services find each other, the
Kubernetes objects are valid against the Kubernetes API's own schemas, each pod gets only the
secrets it uses and runs locked down, releases roll, and the README documents what operators
watch (probes, metrics) as the code serves it.

The image itself is built and run by deploy/smoke-test.sh, which needs a container engine."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser
from services.common.database import READY_WITHIN_SECONDS
from services.common.settings import Settings
from services.notifier.http.app import api as notifier_api
from services.notifier.metrics import NotifierMetrics
from services.notifier.settings import NotifierSettings
from services.records.http.app import api as records_api
from services.records.http.metrics import RecordsMetrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
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
    # /readyz answers within READY_WITHIN_SECONDS even when the database hangs: a probe
    # timing out first (Kubernetes' default is 1 s) never sees the answer
    assert container["readinessProbe"].get("timeoutSeconds", 1) > READY_WITHIN_SECONDS


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


# Secrets: each pod sees only the keys it uses.

def pods() -> list[dict[str, Any]]:
    """The objects that run pods: the migration Job and the Deployments."""
    return [doc for doc in KUBERNETES if doc["kind"] in ("Job", "Deployment")]


def deployments() -> list[dict[str, Any]]:
    return [doc for doc in KUBERNETES if doc["kind"] == "Deployment"]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def name_of(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["name"])


def secret_files(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each file of a Secret the pod's containers see: its path, and (Secret, key); a volume
    without ``items`` holds every key of its Secret, written ``*``."""
    spec = pod_spec(doc)
    volumes = {v["name"]: v["secret"] for v in spec.get("volumes", []) if "secret" in v}
    files: dict[str, tuple[str, str]] = {}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            if mount["name"] in volumes:
                secret = volumes[mount["name"]]
                for item in secret.get("items", [{"key": "*", "path": "*"}]):
                    files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"],
                                                                    item["key"])
    return files


def secret_keys(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (Secret, key) a pod can read: variables, files, whole Secrets (key ``*``)."""
    spec = pod_spec(doc)
    keys = set(secret_files(doc).values())
    for container in spec["containers"]:
        for variable in container.get("env", []):
            if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                keys.add((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            if ref := source.get("secretRef"):
                keys.add((ref["name"], "*"))
    return keys


SECRETS, MIGRATE_SECRETS = "casetrail-secrets", "casetrail-migrate-secrets"
SECRET_KEYS_USED = {
    "casetrail-migrate": {(MIGRATE_SECRETS, "OWNER_DATABASE_URL")},
    "casetrail-records": {(SECRETS, "RECORDS_DATABASE_URL"), (SECRETS, "jwt-public.pem"),
                          (SECRETS, "export-signing-key.pem")},
    "casetrail-notifier": {(SECRETS, "NOTIFIER_DATABASE_URL"), (SECRETS, "RECORDS_TOKEN"),
                           (SECRETS, "SMTP_USERNAME"), (SECRETS, "SMTP_PASSWORD"),
                           (SECRETS, "jwt-public.pem")},
}


@pytest.mark.parametrize("doc", pods(), ids=name_of)
def test_each_pod_mounts_only_the_secret_files_it_reads(doc: dict[str, Any]) -> None:
    # a secret volume without `items` writes every key of the Secret into the pod: the
    # database URLs, the service token, the signing key
    spec = pod_spec(doc)
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            assert volume["secret"].get("items"), volume["name"]
    read = {variable["value"] for container in spec["containers"]
            for variable in container.get("env", []) if variable["name"].endswith("_FILE")}
    assert set(secret_files(doc)) == read


@pytest.mark.parametrize("doc", pods(), ids=name_of)
def test_each_pod_sees_exactly_the_secret_keys_it_uses(doc: dict[str, Any]) -> None:
    assert secret_keys(doc) == SECRET_KEYS_USED[name_of(doc)]


def test_only_the_migration_job_can_read_the_owners_url() -> None:
    (job,) = [doc for doc in KUBERNETES if doc["kind"] == "Job"]
    job_secrets = {secret for secret, _ in secret_keys(job)}
    assert (MIGRATE_SECRETS, "OWNER_DATABASE_URL") in secret_keys(job)
    for deployment in deployments():
        keys = secret_keys(deployment)
        assert not {key for _, key in keys} & {"OWNER_DATABASE_URL", "*"}, name_of(deployment)
        # a Secret of its own, so that who may read the services' Secret cannot read this one
        assert not {secret for secret, _ in keys} & job_secrets, name_of(deployment)


def test_each_service_connects_as_its_own_database_role() -> None:
    urls = {container["name"]: variable["valueFrom"]["secretKeyRef"]["key"]
            for container in containers("Deployment") for variable in container["env"]
            if variable["name"] == "DATABASE_URL"}
    assert urls == {"records": "RECORDS_DATABASE_URL", "notifier": "NOTIFIER_DATABASE_URL"}
    # and production-roles.sql makes those two roles
    roles_sql = (DEPLOY / "production-roles.sql").read_text()
    for role in ("casetrail_records", "casetrail_notifier"):
        assert f"CREATE ROLE {role} LOGIN" in roles_sql


CREDENTIALS = {"DATABASE_URL", "RECORDS_TOKEN", "SMTP_USERNAME", "SMTP_PASSWORD",
               "CASETRAIL_JWT_SECRET"}


def test_credentials_come_from_secrets_and_tokens_are_checked_for_audience_and_issuer() -> None:
    for kind in ("Deployment", "Job"):
        for container in containers(kind):
            for variable in container["env"]:
                if variable["name"] in CREDENTIALS:
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable
                # production verifies tokens with a public key; a shared secret could sign them
                assert variable["name"] != "CASETRAIL_JWT_SECRET"
    notifier = {v["name"] for c in containers("Deployment") if c["name"] == "notifier"
                for v in c["env"]}
    assert {"SMTP_USERNAME", "SMTP_PASSWORD"} <= notifier
    checked = set()
    for container in containers("Deployment"):
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env.get("CASETRAIL_JWT_AUDIENCE"), container["name"]
        assert env.get("CASETRAIL_JWT_ISSUER"), container["name"]
        checked.add((env["CASETRAIL_JWT_AUDIENCE"], env["CASETRAIL_JWT_ISSUER"]))
    assert len(checked) == 1  # one identity provider's tokens, used against both services


# Releases: one pinned image everywhere, and a migration Job that runs again.

def release_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_every_pod_runs_the_release_being_deployed() -> None:
    # `:latest` (or no tag) never changes the pod template, so a Deployment never rolls
    images = {container["image"] for doc in pods()
              for container in pod_spec(doc)["containers"] + pod_spec(doc).get(
                  "initContainers", [])}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(rf"casetrail:{re.escape(release_version())}(@sha256:[0-9a-f]{{64}})?",
                        image), image


def test_the_smoke_test_and_the_build_commands_use_that_release() -> None:
    smoke = (DEPLOY / "smoke-test.sh").read_text()
    default = re.search(r"^IMAGE=\$\{IMAGE:-(\S+)\}", smoke, re.MULTILINE)
    assert default is not None
    tags = {default.group(1), *re.findall(r"docker build .*-t (\S+)", smoke),
            *re.findall(r"docker build .*-t (\S+)", (DEPLOY / "README.md").read_text())}
    assert tags == {f"casetrail:{release_version()}"}


def test_the_migration_job_is_gone_before_the_next_release_and_can_be_applied_alone() -> None:
    (job,) = [doc for doc in KUBERNETES if doc["kind"] == "Job"]
    # a finished Job is never run again, and its pod template cannot be changed
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600
    # deploy/README.md applies it on its own first: its label selects the Job and nothing else
    selector = re.search(r"kubectl apply -f \S+ -l (\S+)=(\S+)",
                         (DEPLOY / "README.md").read_text())
    assert selector is not None
    key, value = selector.groups()
    assert [doc for doc in KUBERNETES
            if doc["metadata"].get("labels", {}).get(key) == value] == [job]


# Pods run locked down, drain before they stop, and are scraped.

@pytest.mark.parametrize("doc", pods(), ids=name_of)
def test_every_pod_runs_locked_down(doc: dict[str, Any]) -> None:
    uid = re.search(r"useradd .*--uid (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert uid is not None
    spec = pod_spec(doc)
    context = spec["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"]) == (True, int(uid.group(1)))
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False  # none of them calls the API server
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}


def test_records_may_write_to_tmp_as_a_pdf_export_needs() -> None:
    # beyond 4 MiB a PDF export spills to a temporary file (services/records/export/pdf.py);
    # with a read-only root filesystem and no /tmp, Python finds no usable temporary directory
    (records,) = [doc for doc in deployments() if name_of(doc) == "casetrail-records"]
    spec = pod_spec(records)
    volumes = {v["name"]: v for v in spec["volumes"]}
    [container] = spec["containers"]
    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert not tmp.get("readOnly")
    smoke = (DEPLOY / "smoke-test.sh").read_text()
    assert re.search(r"docker run [^\n]*--read-only --tmpfs /tmp", smoke)


@pytest.mark.parametrize("deployment", deployments(), ids=name_of)
def test_each_deployment_drains_before_it_stops(deployment: dict[str, Any]) -> None:
    spec = pod_spec(deployment)
    [container] = spec["containers"]
    # the endpoints go before the process stops taking requests
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pause > 0
    assert pause + 10 <= spec["terminationGracePeriodSeconds"]  # and time left to finish
    # `sleep` is in the image: Debian's slim Python images have coreutils (distroless has not)
    bases = re.findall(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert re.fullmatch(r"python:[\d.]+-slim(-\w+)?", bases[-1])


@pytest.mark.parametrize("deployment", deployments(), ids=name_of)
def test_each_deployment_keeps_a_pod_through_voluntary_disruptions(
        deployment: dict[str, Any]) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [doc for doc in KUBERNETES if doc["kind"] == "PodDisruptionBudget"
               and doc["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    [budget] = budgets
    assert budget["spec"]["minAvailable"] == 1
    assert deployment["spec"]["replicas"] > 1  # with one replica the budget blocks every drain


@pytest.mark.parametrize("deployment", deployments(), ids=name_of)
def test_prometheus_scrapes_each_deployments_metrics(deployment: dict[str, Any]) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    [container] = pod_spec(deployment)["containers"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "get" in SERVED_PATHS[container["args"][0]]["/metrics"]


def test_compose_waits_for_postgres_over_tcp_and_restarts_a_service_that_fails() -> None:
    check = COMPOSE["services"]["postgres"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    # without -h pg_isready asks the Unix socket, where the image's temporary init server
    # answers before the real one listens on TCP
    assert "-h" in check
    assert not check[check.index("-h") + 1].startswith("/")
    for name, service in COMPOSE["services"].items():
        if "build" in service:
            assert service.get("restart") == "on-failure", name


# The build context (compose builds with context `..`).

def dockerignore_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression over a slash-separated path."""
    out, i, pattern = "", 0, pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignored(path: str) -> bool:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")]  # none: this matcher ignores them
    parts = PurePosixPath(path).parts
    # a directory that matches is left out with everything in it
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(re.fullmatch(dockerignore_regex(p), prefix) for p in patterns for prefix in prefixes)


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".venv/bin/python", ".casetrail/jwt-secret",
    ".casetrail/export-signing-key.pem", "agency-export-key.pem", "deploy/casetrail.env",
    "services/records/__pycache__/chain.cpython-311.pyc", "casetrail.egg-info/PKG-INFO",
    ".pytest_cache/README.md", ".hypothesis/examples/x", ".mypy_cache/3.11/x", ".ruff_cache/x",
    "bench/append.py"])
def test_the_build_context_leaves_out_local_and_secret_files(path: str) -> None:
    assert dockerignored(path)


def test_the_build_context_keeps_everything_the_image_is_built_from() -> None:
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOY / "Dockerfile").read_text(),
                        re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    assert {"pyproject.toml", "README.md", "services", "schemas"} <= set(sources)
    for source in sources:
        files = [ROOT / source] if (ROOT / source).is_file() else [
            f for f in (ROOT / source).rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        assert files
        for file in files:
            assert not dockerignored(file.relative_to(ROOT).as_posix()), file


# What the README tells operators, as the code has it.

README = (ROOT / "README.md").read_text()


def readme_section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_the_readme_command_table_lists_every_command_in_one_table() -> None:
    lines = readme_section("Command line").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    documented = {match.group(1) for row in table[2:]
                  if (match := re.match(r"\| `casetrail ([a-z-]+)", row))}
    [subcommands] = [action.choices for action in build_parser()._actions
                     if isinstance(action, argparse._SubParsersAction)]
    assert documented == set(subcommands)


def test_the_readme_gives_each_services_own_body_limit() -> None:
    [row] = [line for line in README.splitlines()
             if line.startswith("| `CASETRAIL_MAX_BODY_BYTES`")]
    for model in (Settings, NotifierSettings):
        assert f"`{model.model_fields['max_body_bytes'].default}`" in row, model.__name__


def test_the_readme_operations_section_names_every_probe_and_metric() -> None:
    section = readme_section("Operations")
    for service, paths in SERVED_PATHS.items():
        assert service.capitalize() in section or service in section
        for path in ("/healthz", "/readyz", "/metrics"):
            assert "get" in paths[path]
            assert f"`{path}`" in section
    for registry in (RecordsMetrics().registry, NotifierMetrics().registry):
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            assert f"`{name}`" in section, name

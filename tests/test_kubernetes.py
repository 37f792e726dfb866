"""deploy/kubernetes/ against the Kubernetes API schemas (kubernetes-validate ships them: this
runs offline), strictly (an unknown field is an error), for the oldest and newest versions it
knows; and against the server itself: commands parse with our CLI, every variable is a setting,
probes ask the ports the processes listen on, selectors pick the pods they mean."""

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from notify_server.cli import build_parser
from notify_server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSIONS = sorted(
    {kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version()}
)


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((path.name, document))
    return found


def resource(kind: str, name: str) -> dict:
    [found] = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def dockerfile_env() -> dict[str, str]:
    final_stage = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    return dict(re.findall(r"\b(NOTIFY_\w+)=(\S+)", final_stage))


def settings_of(container: dict, monkeypatch) -> Settings:
    """The Settings the container's process builds: the image's ENV, then the manifest's."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"NOTIFY_{name.upper()}", raising=False)
    secret = resource("Secret", "notify-server")["stringData"]
    for name, value in {
        **dockerfile_env(),
        **secret,
        **{e["name"]: e["value"] for e in container.get("env", [])},
    }.items():
        monkeypatch.setenv(name, value)
    return Settings()


API = ("Deployment", "notify-server-api")
WORKER = ("Deployment", "notify-server-worker")
MIGRATE = ("Job", "notify-server-migrate")
WORKLOADS = (API, WORKER, MIGRATE)


class TestSchemas:
    @pytest.mark.parametrize("version", VERSIONS)
    @pytest.mark.parametrize(
        "document", [pytest.param(d, id=f"{file}:{d['kind']}") for file, d in documents()]
    )
    def test_valid_for_kubernetes(self, document, version):
        kubernetes_validate.validate(document, version, strict=True)

    def test_the_validator_rejects_what_kubernetes_would(self):
        # Without this, a validator that accepts anything would pass the test above.
        broken = copy.deepcopy(resource(*API))
        pod(broken)["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
        with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
            kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
        missing = copy.deepcopy(resource(*API))
        del missing["spec"]["selector"]
        with pytest.raises(kubernetes_validate.ValidationError, match="selector"):
            kubernetes_validate.validate(missing, VERSIONS[-1], strict=True)

    def test_what_the_issue_asks_for_is_there(self):
        kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in documents())
        assert kinds == sorted(
            [
                API,
                WORKER,
                MIGRATE,
                ("PodDisruptionBudget", "notify-server-api"),
                ("Secret", "notify-server"),
                ("Service", "notify-server"),
            ]
        )

    def test_kustomization_lists_every_manifest(self):
        kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
        listed = set(kustomization["resources"])
        assert listed == {file for file, _ in documents()}
        assert all((MANIFESTS / name).is_file() for name in listed)


class TestProcesses:
    @pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w[1])
    def test_commands_parse_and_wait_for_the_database(self, workload):
        [container] = pod(resource(*workload))["containers"]
        program, *argv = container["command"]
        assert program == "notify-server"
        args = build_parser().parse_args(argv)
        assert args.wait_for_db >= 60
        expected = {
            API: ("serve", None),
            WORKER: ("worker", None),
            MIGRATE: ("db", "upgrade"),
        }[workload]
        assert (args.command, getattr(args, "db_command", None)) == expected
        if workload != MIGRATE:
            # The Job migrates; the others wait for it.
            assert args.no_migrate

    @pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w[1])
    def test_every_variable_is_a_setting_and_the_secret_reaches_every_process(self, workload):
        [container] = pod(resource(*workload))["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "notify-server"}}]
        names = [e["name"] for e in container.get("env", [])]
        names += list(resource("Secret", "notify-server")["stringData"])
        for name in names:
            assert name.removeprefix("NOTIFY_").lower() in Settings.model_fields, name

    def test_the_secret_holds_the_key_and_the_database_url(self):
        secret = resource("Secret", "notify-server")
        assert set(secret["stringData"]) == {"NOTIFY_SECRET_KEY", "NOTIFY_DATABASE_URL"}
        assert secret["stringData"]["NOTIFY_DATABASE_URL"].startswith("postgresql+psycopg://")

    @pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w[1])
    def test_runs_as_the_images_user_without_privileges(self, workload):
        spec = pod(resource(*workload))
        uid = re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
        assert uid
        assert spec["securityContext"]["runAsUser"] == int(uid[1])
        assert spec["securityContext"]["runAsNonRoot"] is True
        [container] = spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


class TestProbes:
    def test_api_ready_on_readyz_alive_on_healthz_on_the_api_port(self, monkeypatch):
        [container] = pod(resource(*API))["containers"]
        settings = settings_of(container, monkeypatch)
        assert settings.host == "0.0.0.0"
        assert settings.worker_enabled is False
        readiness = container["readinessProbe"]["httpGet"]
        liveness = container["livenessProbe"]["httpGet"]
        startup = container["startupProbe"]["httpGet"]
        assert readiness["path"] == "/readyz"
        assert liveness["path"] == startup["path"] == "/healthz"
        for probe in (readiness, liveness, startup):
            assert port_number(container, probe["port"]) == settings.port

    def test_worker_alive_on_healthz_on_its_health_port(self, monkeypatch):
        [container] = pod(resource(*WORKER))["containers"]
        settings = settings_of(container, monkeypatch)
        assert settings.worker_enabled is True
        # Reachable by the kubelet from outside the pod.
        assert (settings.metrics_host or settings.host) == "0.0.0.0"
        for probe in ("livenessProbe", "startupProbe"):
            check = container[probe]["httpGet"]
            assert check["path"] == "/healthz"
            assert port_number(container, check["port"]) == settings.metrics_port

    @pytest.mark.parametrize("workload", (API, WORKER), ids=lambda w: w[1])
    def test_startup_outlasts_the_wait_for_the_database(self, workload):
        [container] = pod(resource(*workload))["containers"]
        args = build_parser().parse_args(container["command"][1:])
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] > args.wait_for_db


def matches(selector: dict[str, str], workload: tuple[str, str]) -> bool:
    labels = resource(*workload)["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


class TestSelectors:
    @pytest.mark.parametrize("workload", (API, WORKER), ids=lambda w: w[1])
    def test_deployments_select_their_own_pods(self, workload):
        deployment = resource(*workload)
        assert matches(deployment["spec"]["selector"]["matchLabels"], workload)

    def test_the_service_reaches_the_api_pods_and_no_others(self):
        service = resource("Service", "notify-server")
        assert matches(service["spec"]["selector"], API)
        assert not matches(service["spec"]["selector"], WORKER)
        assert not matches(service["spec"]["selector"], MIGRATE)
        [container] = pod(resource(*API))["containers"]
        [port] = service["spec"]["ports"]
        assert port_number(container, port["targetPort"]) == 8000

    def test_the_budget_keeps_an_api_pod_and_allows_a_drain(self):
        budget = resource("PodDisruptionBudget", "notify-server-api")
        assert matches(budget["spec"]["selector"]["matchLabels"], API)
        assert not matches(budget["spec"]["selector"]["matchLabels"], WORKER)
        assert 1 <= budget["spec"]["minAvailable"] < resource(*API)["spec"]["replicas"]

"""`omad deploy k8s EXPORT_DIR --image IMAGE --out DIR`: a kustomization that serves an export on
Kubernetes, one Deployment (and one Service) per agent.

What it writes (docs/guides/operations.md explains each choice):

    kustomization.yaml   lists the files below (`kubectl apply --server-side -k DIR`)
    models.yaml          the team's graphs and manifest.json in one ConfigMap (the configmap layout)
    Dockerfile.models    with models/: bakes the export into the serving image (the image layout)
    deployments.yaml     one Deployment per agent: `omad serve --model /models/<agent>.onnx`
    services.yaml        one Service per agent, selecting that agent's pods of this team
    networkpolicy.yaml   gRPC only from client pods, metrics only from the monitoring namespace, no egress

Every object carries the team id (omad.runtime.team) as a label, and the Deployments and the
ConfigMap have it in their names, so two exports' servers can run side by side and a rollout is a
switch of the Services' selectors (blue/green).
"""

from __future__ import annotations

import base64
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from omad.core.errors import OmadError
from omad.runtime.schema import MANIFEST_NAME
from omad.runtime.team import UNKNOWN_TEAM, team_id
from omad.serve.config import TLS_ENV, TOKEN_ENV, ServeConfig, ServeConfigError, build_serve_config
from omad.serve.launcher import EXIT_MARGIN_S

MODELS_DIR = "/models"  # where the serving image's WORKDIR is and the container reads graphs from
TLS_DIR = "/etc/omad/tls"
SERVER_UID = 10001  # the serving image's user (Dockerfile)
DEFAULT_METRICS_PORT = 9100  # the serving image's EXPOSE
DEFAULT_HEALTH_PORT = 8081
# The API server refuses a ConfigMap over 1 MiB; the rest of the object needs some room.
CONFIGMAP_MAX_BYTES = 900 * 1024
PRE_STOP_S = 5  # the endpoint's removal reaches clients and proxies before the drain starts
TOKEN_KEY = "token"  # key of the token in its Secret
# Keys of a kubernetes.io/tls Secret (cert-manager adds ca.crt).
TLS_KEYS = {"tls_cert": "tls.crt", "tls_key": "tls.key", "tls_client_ca": "ca.crt"}

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_AGENT = "omad.dev/agent"
LABEL_TEAM = "omad.dev/team"
LABEL_CLIENT = "omad.dev/client"  # pods with this label "true" may call the servers
TEAM_LABEL_CHARS = 16

# The Kubernetes version the manifests are written for and validated against (kubernetes-validate's
# schemas, shipped in its wheel: the check runs offline).
KUBERNETES_VERSION = "1.37.0"

FILES = ("kustomization.yaml", "models.yaml", "deployments.yaml", "services.yaml", "networkpolicy.yaml")


class DeployError(OmadError):
    pass


@dataclass(frozen=True)
class K8sOptions:
    image: str
    name: str = "omad"
    namespace: str | None = None
    replicas: int = 1
    port: int = ServeConfig.model_fields["port"].default
    metrics_port: int = DEFAULT_METRICS_PORT
    health_port: int = DEFAULT_HEALTH_PORT
    grace_s: float = ServeConfig.model_fields["grace_s"].default
    threads: int = ServeConfig.model_fields["threads"].default
    cpu_request: str = "500m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "512Mi"
    token_secret: str | None = "omad-token"
    tls_secret: str | None = "omad-tls"
    mtls: bool = True
    models: Literal["auto", "configmap", "image"] = "auto"
    models_image: str | None = None
    metrics_namespace: str = "monitoring"


@dataclass(frozen=True)
class Agent:
    name: str  # as the export names it
    slug: str  # as Kubernetes names allow
    file: str


@dataclass(frozen=True)
class Plan:
    """What `write` puts in the out dir: the objects by file, and the export files the image layout copies."""

    team: str  # the export's team id
    stamped: bool  # whether the graphs carry it (servers report "unknown" otherwise)
    layout: Literal["configmap", "image"]
    files: dict[str, list[dict[str, Any]]]
    model_files: list[Path]
    dockerfile: str | None


# -- names and quantities -------------------------------------------------------------------------
def slug(text: str, what: str) -> str:
    """A DNS-1123 label from an agent or instance name: lower case, runs of other characters as '-'."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not out or not out[0].isalpha():
        raise DeployError(f"{what} {text!r} gives no Kubernetes name (it must start with a letter)")
    return out


def cpu_cores(quantity: str) -> float:
    """Cores in a CPU quantity ("500m", "1", "2.5")."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", quantity.strip())
    if not match:
        raise DeployError(f"CPU quantity {quantity!r}: use cores (1, 2.5) or millicores (500m)")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def check_memory(quantity: str) -> str:
    if not re.fullmatch(r"\d+(?:\.\d+)?(?:Ki|Mi|Gi|Ti|k|M|G|T)?", quantity.strip()):
        raise DeployError(f"memory quantity {quantity!r}: use bytes with a suffix such as 256Mi or 1Gi")
    return quantity.strip()


def termination_grace_s(grace_s: float) -> int:
    """Seconds Kubernetes waits after the pre-stop pause began before SIGKILL: the pause, the server's
    drain (--grace-s) and the margin the launcher also gives a draining server."""
    return PRE_STOP_S + math.ceil(grace_s) + math.ceil(EXIT_MARGIN_S)


# -- the plan -------------------------------------------------------------------------------------
def plan(export_dir: str | Path, options: K8sOptions) -> Plan:
    from omad.runtime.onnx_policy import load_export, read_manifest  # (ONNX Runtime loads only here)

    export_dir = Path(export_dir)
    policies = load_export(export_dir)  # every graph verified, as a server will load it
    manifest = read_manifest(export_dir)
    check_options(options)
    infos = [p.info for p in policies.values()]
    team = team_id([info.weights_sha256 for info in infos])
    stamped = manifest.get("team_id") not in (None, "", UNKNOWN_TEAM)
    if stamped and manifest["team_id"] != team:
        raise DeployError(
            f"{export_dir / MANIFEST_NAME}: team_id {manifest['team_id'][:12]}... is not the hash of its agents' "
            f"weights ({team[:12]}...); re-export"
        )

    agents = [Agent(e["agent"], slug(e["agent"], "agent"), e["file"]) for e in manifest["agents"]]
    seen: dict[str, str] = {}
    for agent in agents:
        if agent.slug in seen:
            raise DeployError(
                f"agents {seen[agent.slug]!r} and {agent.name!r} both become {agent.slug!r} in Kubernetes"
            )
        seen[agent.slug] = agent.name
        if not re.fullmatch(r"[-._a-zA-Z0-9]+", agent.file):
            raise DeployError(f"{agent.file!r} cannot be a ConfigMap key; rename the agent")

    model_files = [export_dir / a.file for a in agents] + [export_dir / MANIFEST_NAME]
    size = sum(f.stat().st_size for f in model_files)
    layout = choose_layout(options, size)
    instance = slug(options.name, "--name")
    team_label = team[:TEAM_LABEL_CHARS]
    configmap = f"{instance}-models-{team[:8]}"

    files: dict[str, list[dict[str, Any]]] = {}
    if layout == "configmap":
        files["models.yaml"] = [models_configmap(configmap, instance, team, model_files)]
    files["deployments.yaml"] = [
        deployment(agent, instance, team, team_label, layout, configmap, options) for agent in agents
    ]
    files["services.yaml"] = [service(agent, instance, team_label, options) for agent in agents]
    files["networkpolicy.yaml"] = [network_policy(instance, options)]
    files["kustomization.yaml"] = [kustomization(list(files), options)]
    dockerfile = models_dockerfile(options.image, team) if layout == "image" else None
    return Plan(team, stamped, layout, files, model_files if layout == "image" else [], dockerfile)


def check_options(options: K8sOptions) -> None:
    if not options.image:
        raise DeployError("--image: name the serving image (built from the Dockerfile)")
    if options.replicas < 1:
        raise DeployError("--replicas must be at least 1")
    ports = {"--port": options.port, "--metrics-port": options.metrics_port}
    if options.tls_secret:
        ports["--health-port"] = options.health_port
    for flag, port in ports.items():
        if not 0 < port < 65536:
            raise DeployError(f"{flag} {port}: a container port is 1..65535")
    if len(set(ports.values())) != len(ports):
        raise DeployError(f"ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}")
    # The server's own checks of the flags it will get (the model path is the container's).
    try:
        build_serve_config(model=MODELS_DIR, port=options.port, grace_s=options.grace_s, threads=options.threads)
    except ServeConfigError as err:
        raise DeployError(str(err)) from None
    if cpu_cores(options.cpu_request) > cpu_cores(options.cpu_limit):
        raise DeployError(f"--cpu-request {options.cpu_request} is above --cpu-limit {options.cpu_limit}")
    check_memory(options.memory_request)
    check_memory(options.memory_limit)


def choose_layout(options: K8sOptions, size: int) -> Literal["configmap", "image"]:
    fits = size <= CONFIGMAP_MAX_BYTES
    layout = options.models if options.models != "auto" else ("configmap" if fits else "image")
    if layout == "configmap" and not fits:
        raise DeployError(
            f"the export's graphs and manifest take {size / 1024:.0f} KiB, over the {CONFIGMAP_MAX_BYTES // 1024} KiB "
            "a ConfigMap can hold: use --models image"
        )
    if layout == "image" and not options.models_image:
        raise DeployError(
            f"the image layout (the export takes {size / 1024:.0f} KiB) runs an image with the export at {MODELS_DIR}: "
            "pass --models-image REF, the tag you build out/Dockerfile.models as"
        )
    return layout


# -- the objects ----------------------------------------------------------------------------------
def labels(instance: str, **extra: str) -> dict[str, str]:
    return {LABEL_NAME: "omad", LABEL_INSTANCE: instance, LABEL_COMPONENT: "policy-server", **extra}


def models_configmap(name: str, instance: str, team: str, files: list[Path]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels(instance, **{LABEL_TEAM: team[:TEAM_LABEL_CHARS]})},
        "immutable": True,  # a new export is a new ConfigMap (its name holds the team id)
        "data": {f.name: f.read_text() for f in files if f.name == MANIFEST_NAME},
        "binaryData": {f.name: base64.b64encode(f.read_bytes()).decode() for f in files if f.name != MANIFEST_NAME},
    }


def server_args(agent: Agent, options: K8sOptions) -> list[str]:
    """`omad serve` flags of one agent's container (the image's entrypoint is `omad serve`)."""
    inference_thread = "on" if cpu_cores(options.cpu_limit) >= options.threads + 1 else "off"
    args = [
        "--model", f"{MODELS_DIR}/{agent.file}",
        "--host", "0.0.0.0",
        "--port", str(options.port),
        "--metrics-port", str(options.metrics_port),
        "--grace-s", f"{options.grace_s:g}",
        "--threads", str(options.threads),
        "--inference-thread", inference_thread,
    ]  # fmt: skip
    if options.tls_secret:
        args += ["--health-port", str(options.health_port)]
    return args


def probe_port(options: K8sOptions) -> int:
    """Kubelet's gRPC probes speak plaintext: with TLS they ask the plaintext health-only port."""
    return options.health_port if options.tls_secret else options.port


def deployment(
    agent: Agent,
    instance: str,
    team: str,
    team_label: str,
    layout: str,
    configmap: str,
    options: K8sOptions,
) -> dict[str, Any]:
    selector = {LABEL_INSTANCE: instance, LABEL_AGENT: agent.slug, LABEL_TEAM: team_label}
    pod_labels = labels(instance, **{LABEL_AGENT: agent.slug, LABEL_TEAM: team_label})
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if layout == "configmap":
        volumes.append({"name": "models", "configMap": {"name": configmap}})
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    if options.token_secret:
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": options.token_secret, "key": TOKEN_KEY}}})
    if options.tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": options.tls_secret, "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        for field, key in TLS_KEYS.items():
            if field != "tls_client_ca" or options.mtls:
                env.append({"name": TLS_ENV[field], "value": f"{TLS_DIR}/{key}"})
    ports = [
        {"name": "grpc", "containerPort": options.port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": options.metrics_port, "protocol": "TCP"},
    ]
    if options.tls_secret:
        ports.append({"name": "health", "containerPort": options.health_port, "protocol": "TCP"})
    grpc_probe = {"grpc": {"port": probe_port(options)}}
    container = {
        "name": "server",
        "image": options.models_image if layout == "image" else options.image,
        "imagePullPolicy": "IfNotPresent",
        "args": server_args(agent, options),
        "env": env,
        "ports": ports,
        # Loading and warming up the model: up to 2 min before liveness takes over.
        "startupProbe": {**grpc_probe, "periodSeconds": 2, "failureThreshold": 60, "timeoutSeconds": 2},
        "readinessProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 1, "timeoutSeconds": 2},
        "livenessProbe": {**grpc_probe, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 2},
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_S}}},
        "resources": {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVER_UID,
            "runAsGroup": SERVER_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{instance}-{agent.slug}-{team[:8]}",
            "labels": pod_labels,
            "annotations": {"omad.dev/team-id": team, "omad.dev/agent-name": agent.name},
        },
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(options.metrics_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": termination_grace_s(options.grace_s),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": SERVER_UID,
                        "runAsGroup": SERVER_UID,
                        "fsGroup": SERVER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(agent: Agent, instance: str, team_label: str, options: K8sOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{instance}-{agent.slug}", "labels": labels(instance, **{LABEL_AGENT: agent.slug})},
        "spec": {
            "type": "ClusterIP",
            # The team is part of the selector: applying another export's services.yaml switches
            # every agent's traffic to that team's pods.
            "selector": {LABEL_INSTANCE: instance, LABEL_AGENT: agent.slug, LABEL_TEAM: team_label},
            "ports": [
                {"name": "grpc", "port": options.port, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "metrics", "port": options.metrics_port, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def network_policy(instance: str, options: K8sOptions) -> dict[str, Any]:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": options.metrics_namespace}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{instance}-servers", "labels": labels(instance)},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_INSTANCE: instance, LABEL_COMPONENT: "policy-server"}},
            "policyTypes": ["Ingress", "Egress"],  # no egress rule: a server calls nothing
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {LABEL_CLIENT: "true"}}}],
                    "ports": [{"port": options.port, "protocol": "TCP"}],
                },
                {"from": [monitoring], "ports": [{"port": options.metrics_port, "protocol": "TCP"}]},
            ],
        },
    }


def kustomization(files: list[str], options: K8sOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if options.namespace:
        out["namespace"] = options.namespace
    out["resources"] = files
    return out


def models_dockerfile(image: str, team: str) -> str:
    return (
        f"# The serving image with this export (team {team}) at {MODELS_DIR}, for the image layout:\n"
        "#   docker build -f Dockerfile.models -t MODELS_IMAGE .   (MODELS_IMAGE: the --models-image given)\n"
        f"FROM {image}\n"
        f"COPY --chown={SERVER_UID}:{SERVER_UID} models/ {MODELS_DIR}/\n"
    )


class _PlainDumper(yaml.SafeDumper):
    """Writes a shared dict out in full each time (no YAML anchors and aliases for a reader to follow)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# -- writing --------------------------------------------------------------------------------------
def write(plan_: Plan, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the plan into `out` (created; an existing one only with `overwrite`, and only if it holds
    an earlier kustomization). Returns the files written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DeployError(f"{out} exists and is not empty; pass --overwrite to replace it")
        if not (out / "kustomization.yaml").is_file():
            raise DeployError(f"{out} holds no kustomization.yaml; refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objects in plan_.files.items():
        path = out / name
        path.write_text(yaml.dump_all(objects, Dumper=_PlainDumper, sort_keys=False, width=120))
        written.append(path)
    if plan_.dockerfile is not None:
        (out / "Dockerfile.models").write_text(plan_.dockerfile)
        (out / "models").mkdir()
        for f in plan_.model_files:
            shutil.copyfile(f, out / "models" / f.name)
        written += [out / "Dockerfile.models", out / "models"]
    return written


def validate(out: str | Path, version: str = KUBERNETES_VERSION) -> list[tuple[str, str | None]]:
    """Every object of the kustomization in `out` checked against the Kubernetes schemas of `version`
    (strict: unknown fields are errors): ("file kind/name", None if valid else the error) per object."""
    try:
        import kubernetes_validate
    except ImportError:
        raise DeployError("validating needs the kubernetes-validate package (the dev extra)") from None
    out = Path(out)
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    results: list[tuple[str, str | None]] = []
    for name in kustomization["resources"]:
        for obj in yaml.safe_load_all((out / name).read_text()):
            where = f"{name} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                results.append((where, f"at {'.'.join(map(str, err.path)) or '(top)'}: {err.message}"))
            else:
                results.append((where, None))
    return results


def summary(plan_: Plan, out: str | Path) -> str:
    agents = [d["metadata"]["annotations"]["omad.dev/agent-name"] for d in plan_.files["deployments.yaml"]]
    where = "a ConfigMap" if plan_.layout == "configmap" else "the image (Dockerfile.models)"
    lines = [f"wrote {out}: {len(agents)} agents ({', '.join(agents)}), team {plan_.team[:12]}..., models in {where}"]
    if not plan_.stamped:
        lines.append(
            "note: this export carries no team id, so its servers report team 'unknown'; "
            "re-export it to have them report the id above"
        )
    lines.append(f"apply: kubectl apply --server-side -k {out}")
    return "\n".join(lines)

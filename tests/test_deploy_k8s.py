"""`omad deploy k8s`: the kustomization for an export, validated offline against the Kubernetes
schemas (kubernetes-validate ships them), and checked for what the schemas cannot see: probes on the
ports the servers listen on, a grace period longer than the drain, the export byte for byte in the
ConfigMap, and container arguments that `omad serve` accepts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from omad.cli import build_parser, main
from omad.deploy import k8s
from omad.deploy.k8s import KUBERNETES_VERSION, DeployError, K8sOptions, plan, validate, write
from omad.runtime.onnx_policy import OnnxPolicy, read_manifest
from omad.runtime.schema import MANIFEST_NAME
from omad.runtime.team import team_id
from omad.serve.cli import config_flag_values
from omad.serve.config import TLS_ENV, TOKEN_ENV, build_serve_config

IMAGE = "registry.example/omad-serve:0.1.0"


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def objects(out: Path) -> dict[str, list[dict]]:
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    return {name: list(yaml.safe_load_all((out / name).read_text())) for name in kustomization["resources"]}


@pytest.fixture(scope="module")
def written(tiny_export_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("k8s") / "team"
    write(plan(tiny_export_dir, K8sOptions(image=IMAGE)), out)
    return out


def test_every_object_is_valid_against_the_pinned_kubernetes_schemas(written, tiny_export_dir, tmp_path):
    results = validate(written)
    kinds = sorted(where.split()[1].split("/")[0] for where, _ in results)
    agents = len(read_manifest(tiny_export_dir)["agents"])
    assert kinds == sorted(["ConfigMap", "NetworkPolicy"] + ["Deployment", "Service"] * agents)
    assert [error for _, error in results if error] == []
    # The plaintext layout too, and the check can fail: a misspelt field is refused (strict).
    plain = tmp_path / "plain"
    write(plan(tiny_export_dir, K8sOptions(image=IMAGE, tls_secret=None, token_secret=None)), plain)
    assert [error for _, error in validate(plain) if error] == []
    docs = list(yaml.safe_load_all((plain / "deployments.yaml").read_text()))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    (plain / "deployments.yaml").write_text(yaml.safe_dump_all(docs))
    errors = [error for _, error in validate(plain) if error]
    assert len(errors) == 1 and "grpcc" in errors[0]


def test_probes_ask_the_port_the_server_listens_on(written, tmp_path, tiny_export_dir):
    def check(out: Path, tls: bool) -> None:
        for deployment in objects(out)["deployments.yaml"]:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            args = container["args"]
            served = int(flag(args, "--health-port") if tls else flag(args, "--port"))
            if tls:  # kubelet's gRPC probe has no TLS: it asks the plaintext health port
                assert "--tls-cert" not in args and {e["name"] for e in container["env"]} >= set(TLS_ENV.values())
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"]["port"] == served
                assert container[probe]["grpc"].get("service", "") == ""  # the whole server's health
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["grpc"] == int(flag(args, "--port"))
            assert ports["metrics"] == int(flag(args, "--metrics-port"))
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == flag(args, "--metrics-port")
            assert flag(args, "--host") == "0.0.0.0"  # the default 127.0.0.1 would refuse the kubelet

    check(written, tls=True)
    plain = tmp_path / "plain"
    write(plan(tiny_export_dir, K8sOptions(image=IMAGE, tls_secret=None, port=6000, metrics_port=6001)), plain)
    check(plain, tls=False)


@pytest.mark.parametrize("grace_s", [0.5, 10.0, 31.0])
def test_the_pod_grace_period_exceeds_the_pre_stop_pause_plus_the_drain(tiny_export_dir, grace_s, tmp_path):
    write(plan(tiny_export_dir, K8sOptions(image=IMAGE, grace_s=grace_s)), tmp_path / "out")
    for deployment in objects(tmp_path / "out")["deployments.yaml"]:
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        drain = float(flag(container["args"], "--grace-s"))
        assert drain == grace_s
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_container_arguments_are_accepted_by_omad_serve(written):
    for deployment in objects(written)["deployments.yaml"]:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        args = build_parser("serve").parse_args(["serve", *container["args"]])
        config = build_serve_config(model=args.model, **config_flag_values(args))
        assert config.host == "0.0.0.0" and config.model.parent == Path(k8s.MODELS_DIR)
        env = {e["name"]: e for e in container["env"]}
        assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {"name": "omad-token", "key": "token"}
        security = container["securityContext"]
        assert (
            security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
        )
        assert container["resources"]["limits"] and container["resources"]["requests"]


def test_the_configmap_holds_the_export_byte_for_byte_and_it_loads(written, tiny_export_dir, tmp_path):
    (configmap,) = objects(written)["models.yaml"]
    mounted = tmp_path / "models"  # what the pod sees at /models
    mounted.mkdir()
    for name, text in configmap["data"].items():
        (mounted / name).write_text(text)
    for name, data in configmap["binaryData"].items():
        (mounted / name).write_bytes(base64.b64decode(data))
    for f in Path(tiny_export_dir).iterdir():
        if f.is_file():
            assert (mounted / f.name).read_bytes() == f.read_bytes()
    for deployment in objects(written)["deployments.yaml"]:
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        OnnxPolicy(mounted / Path(flag(args, "--model")).name)  # verified against the manifest beside it


def test_team_id_labels_select_one_export(written, tiny_export_dir):
    manifest = read_manifest(tiny_export_dir)
    expected = team_id([a["weights_sha256"] for a in manifest["agents"]])
    found = objects(written)
    for deployment, svc in zip(found["deployments.yaml"], found["services.yaml"]):
        assert deployment["metadata"]["annotations"]["omad.dev/team-id"] == expected
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert svc["spec"]["selector"][k8s.LABEL_TEAM] == expected[: k8s.TEAM_LABEL_CHARS]
    assert found["models.yaml"][0]["metadata"]["name"].endswith(expected[:8])


def test_large_exports_take_the_image_layout(tiny_export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(k8s, "CONFIGMAP_MAX_BYTES", 1000)
    with pytest.raises(DeployError, match="--models-image"):
        plan(tiny_export_dir, K8sOptions(image=IMAGE))
    with pytest.raises(DeployError, match="over the 0 KiB a ConfigMap can hold"):
        plan(tiny_export_dir, K8sOptions(image=IMAGE, models="configmap"))
    result = plan(tiny_export_dir, K8sOptions(image=IMAGE, models_image="registry.example/omad-team:1"))
    write(result, tmp_path / "out")
    assert "models.yaml" not in objects(tmp_path / "out")
    assert [error for _, error in validate(tmp_path / "out") if error] == []
    dockerfile = (tmp_path / "out" / "Dockerfile.models").read_text()
    assert f"FROM {IMAGE}" in dockerfile and f"models/ {k8s.MODELS_DIR}/" in dockerfile
    for f in Path(tiny_export_dir).iterdir():
        if f.is_file():
            assert (tmp_path / "out" / "models" / f.name).read_bytes() == f.read_bytes()
    for deployment in objects(tmp_path / "out")["deployments.yaml"]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "registry.example/omad-team:1"
        assert "models" not in {v["name"] for v in pod["volumes"]}


def test_bad_options_fail_in_one_line(tiny_export_dir, tmp_path):
    for options, message in [
        (K8sOptions(image=IMAGE, port=9100), "ports must differ"),
        (K8sOptions(image=IMAGE, cpu_request="2", cpu_limit="1"), "above --cpu-limit"),
        (K8sOptions(image=IMAGE, memory_limit="lots"), "memory quantity"),
        (K8sOptions(image=IMAGE, grace_s=0), "grace-s"),
        (K8sOptions(image=IMAGE, name="9lives"), "start with a letter"),
    ]:
        with pytest.raises(DeployError, match=message) as info:
            plan(tiny_export_dir, options)
        assert "\n" not in str(info.value)
    out = tmp_path / "out"
    (out / "keep").parent.mkdir()
    (out / "keep").write_text("not ours")
    with pytest.raises(DeployError, match="not empty"):
        write(plan(tiny_export_dir, K8sOptions(image=IMAGE)), out)
    with pytest.raises(DeployError, match=r"no kustomization\.yaml"):
        write(plan(tiny_export_dir, K8sOptions(image=IMAGE)), out, overwrite=True)
    assert (out / "keep").read_text() == "not ours"


def test_cli_writes_validates_and_names_the_team(tiny_export_dir, tmp_path, capsys):
    out = tmp_path / "k"
    code = main(["deploy", "k8s", str(tiny_export_dir), "--image", IMAGE, "--out", str(out), "--validate"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert text.count(f"valid against Kubernetes {KUBERNETES_VERSION} (strict)") == len(validate(out))
    manifest = json.loads((Path(tiny_export_dir) / MANIFEST_NAME).read_text())
    assert team_id([a["weights_sha256"] for a in manifest["agents"]])[:12] in text

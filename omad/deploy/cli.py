"""`omad deploy` (listed in the `omad` command table, omad.cli)."""

from __future__ import annotations

import argparse

from omad.deploy.k8s import DEFAULT_HEALTH_PORT, DEFAULT_METRICS_PORT, KUBERNETES_VERSION, K8sOptions


def configure_deploy(p: argparse.ArgumentParser) -> None:
    defaults = K8sOptions(image="")
    p.description = (
        "Write deployment manifests for an export. k8s: a kustomization with one Deployment and one Service per "
        "agent (`omad serve` of its graph, gRPC health probes, non-root read-only containers, token and TLS from "
        "Secrets, Prometheus scrape annotations), the models in a ConfigMap or an image, and a NetworkPolicy."
    )
    p.add_argument("target", choices=["k8s"], help="what to write for (k8s: Kubernetes)")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="export dir made by `omad export`")
    p.add_argument("--image", required=True, help="the serving image (built from the Dockerfile)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the kustomization into")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier kustomization at --out")
    p.add_argument(
        "--name", default=defaults.name, help=f"instance name, prefix of every object; default: {defaults.name}"
    )
    p.add_argument("--namespace", help="namespace set in the kustomization; default: none (kubectl's)")
    p.add_argument("--replicas", type=int, default=defaults.replicas, help="pods per agent; default: 1")
    p.add_argument("--port", type=int, default=defaults.port, help=f"gRPC port; default: {defaults.port}")
    p.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help=f"metrics port; default: {DEFAULT_METRICS_PORT}"
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=DEFAULT_HEALTH_PORT,
        help="plaintext health-only port the probes ask when the gRPC port has TLS (kubelet's gRPC probes "
        f"speak no TLS); default: {DEFAULT_HEALTH_PORT}",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=defaults.grace_s,
        help=f"the server's drain on SIGTERM; the pod's termination grace period exceeds it; default: {defaults.grace_s:g}",
    )
    p.add_argument("--threads", type=int, default=defaults.threads, help="ONNX Runtime threads per server; default: 1")
    p.add_argument("--cpu-request", default=defaults.cpu_request, help=f"default: {defaults.cpu_request}")
    p.add_argument("--cpu-limit", default=defaults.cpu_limit, help=f"default: {defaults.cpu_limit}")
    p.add_argument("--memory-request", default=defaults.memory_request, help=f"default: {defaults.memory_request}")
    p.add_argument("--memory-limit", default=defaults.memory_limit, help=f"default: {defaults.memory_limit}")
    p.add_argument(
        "--token-secret",
        default=defaults.token_secret,
        help=f"Secret holding the bearer token under key 'token'; default: {defaults.token_secret}",
    )
    p.add_argument("--no-token", action="store_true", help="serve without a bearer token")
    p.add_argument(
        "--tls-secret",
        default=defaults.tls_secret,
        help=f"kubernetes.io/tls Secret (tls.crt, tls.key, and ca.crt for mTLS); default: {defaults.tls_secret}",
    )
    p.add_argument("--no-tls", action="store_true", help="serve plaintext gRPC (no TLS Secret)")
    p.add_argument("--no-mtls", action="store_true", help="TLS without client certificates (no ca.crt needed)")
    p.add_argument(
        "--models",
        choices=["auto", "configmap", "image"],
        default=defaults.models,
        help="where the graphs live: a ConfigMap (up to 900 KiB) or an image built from the serving image with the "
        "export inside; default: auto (the ConfigMap when they fit)",
    )
    p.add_argument(
        "--models-image", metavar="REF", help="the image layout's image (build it with DIR/Dockerfile.models)"
    )
    p.add_argument(
        "--metrics-namespace",
        default=defaults.metrics_namespace,
        help=f"namespace whose pods may scrape the metrics port; default: {defaults.metrics_namespace}",
    )
    p.add_argument(
        "--validate",
        action="store_true",
        help=f"check every written object against the Kubernetes {KUBERNETES_VERSION} schemas, offline "
        "(needs kubernetes-validate); exit 1 if one fails",
    )
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from omad.deploy.k8s import plan, summary, validate, write

    options = K8sOptions(
        image=args.image,
        name=args.name,
        namespace=args.namespace,
        replicas=args.replicas,
        port=args.port,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        grace_s=args.grace_s,
        threads=args.threads,
        cpu_request=args.cpu_request,
        cpu_limit=args.cpu_limit,
        memory_request=args.memory_request,
        memory_limit=args.memory_limit,
        token_secret=None if args.no_token else args.token_secret,
        tls_secret=None if args.no_tls else args.tls_secret,
        mtls=not args.no_mtls,
        models=args.models,
        models_image=args.models_image,
        metrics_namespace=args.metrics_namespace,
    )
    result = plan(args.export_dir, options)
    write(result, args.out, overwrite=args.overwrite)
    print(summary(result, args.out))
    if args.validate:
        results = validate(args.out)
        for where, error in results:
            print(f"{where}: {error or f'valid against Kubernetes {KUBERNETES_VERSION} (strict)'}")
        return 1 if any(error for _, error in results) else 0
    return 0

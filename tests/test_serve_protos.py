"""The wire schema: committed stubs match protos/, our KServe proto matches tritonclient's on the
wire, both can live in one process, and omad.serve never imports torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_the_protos():
    pytest.importorskip("grpc_tools")
    from omad.serve import protogen

    fresh = protogen.generate()
    committed = {p.name for p in protogen.GENERATED_DIR.iterdir() if p.is_file() and p.name != "__init__.py"}
    assert committed == set(fresh), "run: python -m omad.serve.protogen"
    for name, text in fresh.items():
        assert (protogen.GENERATED_DIR / name).read_text() == text, (
            f"{name} is stale; run: python -m omad.serve.protogen"
        )


def _fields(descriptor) -> dict:
    """name -> (number, type, repeated, nested message fields) for a message, recursively."""
    out = {}
    for f in descriptor.fields:
        nested = (
            _fields(f.message_type)
            if f.message_type is not None and not f.message_type.GetOptions().map_entry
            else None
        )
        out[f.name] = (f.number, f.type, f.is_repeated, nested)
    return out


def test_kserve_proto_is_wire_compatible_with_tritonclient():
    """Every message and method we define exists in tritonclient's grpc_service.proto with the same
    field numbers and types (Triton's proto is a superset of the KServe v2 one)."""
    from tritonclient.grpc import model_config_pb2 as triton_config_pb2
    from tritonclient.grpc import service_pb2 as triton_pb2

    from omad.serve._generated import grpc_service_pb2 as ours

    our_file, triton_file = ours.DESCRIPTOR, triton_pb2.DESCRIPTOR
    assert our_file.package == triton_file.package == "inference"
    # ModelConfig and its parts come from Triton's model_config.proto (a separate file there).
    triton_messages = {**triton_config_pb2.DESCRIPTOR.message_types_by_name, **triton_file.message_types_by_name}
    for name, enum in our_file.enum_types_by_name.items():
        their_values = {v.name: v.number for v in triton_config_pb2.DESCRIPTOR.enum_types_by_name[name].values}
        assert {v.name: v.number for v in enum.values}.items() <= their_values.items(), name
    for name, message in our_file.message_types_by_name.items():
        theirs = _fields(triton_messages[name])
        for field, spec in _fields(message).items():
            assert field in theirs, f"{name}.{field}"
            number, kind, repeated, nested = spec
            assert theirs[field][:3] == (number, kind, repeated), f"{name}.{field}"
            if nested is not None:
                assert {k: v[:3] for k, v in nested.items()}.items() <= {
                    k: v[:3] for k, v in theirs[field][3].items()
                }.items()
    our_service = our_file.services_by_name["GRPCInferenceService"]
    their_service = triton_file.services_by_name["GRPCInferenceService"]
    for method in our_service.methods:
        theirs = their_service.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (theirs.input_type.name, theirs.output_type.name)
    assert {m.name for m in our_service.methods} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
    }


def test_kserve_stubs_and_tritonclient_share_a_process():
    # tritonclient registers `inference.*` in the default descriptor pool; ours must not clash with it
    code = "import tritonclient.grpc; import omad.serve.lifecycle; import omad.serve._generated.grpc_service_pb2 as k; k.ServerLiveRequest()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    code = "import omad.serve.lifecycle; import tritonclient.grpc"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_serving_never_imports_torch():
    # statically: no omad.serve source mentions an import of torch, even a lazy one
    for path in (REPO / "omad.serve").rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*(import torch|from torch)\b", line), f"{path}: {line.strip()}"
    # and at run time: every module of the package imports without pulling torch in
    code = (
        "import importlib, pkgutil, sys\n"
        "import omad.serve\n"
        "for m in pkgutil.walk_packages(omad.serve.__path__, 'omad.serve.'): importlib.import_module(m.name)\n"
        "from omad.serve import PolicyClient\n"
        "import omad.cli\n"
        "for command in omad.cli.COMMANDS: omad.cli.build_parser(command)  # every command's flags\n"
        "assert 'torch' not in sys.modules, 'omad.serve imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_cli_import_is_light():
    # `omad --help` and `omad health` must not pay for the server, ONNX Runtime or gRPC at import
    code = (
        "import sys, omad.serve.cli\n"
        "heavy = [m for m in ('grpc', 'onnxruntime', 'omad.serve.lifecycle') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)

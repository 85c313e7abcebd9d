"""Compile protos/ into the committed Python stubs in omad/serve/_generated/.

    python -m omad.serve.protogen          # rewrite the stubs after editing a .proto
    python -m omad.serve.protogen --check  # exit 1 if the committed stubs are stale

Needs grpcio-tools (a dev dependency); the server itself never imports this module. The stubs are
committed so the serving image needs no compiler, and tests/test_serve_protos.py checks they match.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "protos"
GENERATED_DIR = Path(__file__).resolve().parent / "_generated"

# (proto path under protos/, also generate gRPC service code?)
PROTOS = [("omad/v1/policy.proto", True), ("inference/grpc_service.proto", False)]

# The KServe messages live in package `inference`, exactly like tritonclient's own stubs. Both in
# the default descriptor pool would clash ("duplicate symbol") as soon as one process imports
# tritonclient and omad.serve, so our copy goes into a private pool.
_DEFAULT_POOL_LINE = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_LINES = (
    "# Private pool: tritonclient registers the same `inference.*` names in the default pool.\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generate() -> dict[str, str]:
    """File name -> contents of every generated stub, compiled fresh from protos/."""
    from grpc_tools import protoc  # dev-only dependency

    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for proto, with_grpc in PROTOS:
            args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
            if with_grpc:
                args.append(f"--grpc_python_out={tmp}")
            if protoc.main([*args, str(PROTO_ROOT / proto)]) != 0:
                raise RuntimeError(f"protoc failed on {proto}")
        for path in sorted(Path(tmp).rglob("*.py*")):
            files[path.name] = _flatten(path.read_text(), path.name)
    return files


def _flatten(text: str, name: str) -> str:
    """Make the stubs importable from omad.serve._generated (protoc writes `from omad.v1 import ...`)."""
    text = text.replace("from omad.v1 import policy_pb2", "from . import policy_pb2")
    if name == "grpc_service_pb2.py":
        if text.count(_DEFAULT_POOL_LINE) != 1:
            raise RuntimeError("protoc output changed shape; update omad/serve/protogen.py")
        text = text.replace(_DEFAULT_POOL_LINE, _PRIVATE_POOL_LINES)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed stubs")
    args = parser.parse_args(argv)
    fresh = generate()
    stale = sorted(
        n for n, text in fresh.items() if not (GENERATED_DIR / n).is_file() or (GENERATED_DIR / n).read_text() != text
    )
    if args.check:
        for name in stale:
            print(f"stale: omad/serve/_generated/{name}", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (GENERATED_DIR / name).write_text(fresh[name])
        print(f"wrote omad/serve/_generated/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

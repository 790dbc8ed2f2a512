"""Regenerates the Python code (messages, gRPC stubs and type stubs) from protos/.

The output is committed; CI runs this and fails when the result differs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python" / "src"
SERVICES = ("registry", "recorder", "executor")


def main() -> int:
    for service in SERVICES:
        shutil.rmtree(OUT / "relive" / service / "v1", ignore_errors=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "relive").rglob("*.proto"))
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    # The mypy-protobuf plugins live beside this interpreter, which may not be on PATH.
    bindir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{wkt}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for service in SERVICES:
        (OUT / "relive" / service / "v1" / "__init__.py").write_text(
            f'"""Generated code for relive.{service}.v1; do not edit."""\n'
        )
    print(f"generated {len(files)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

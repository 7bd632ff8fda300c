#!/usr/bin/env python3
"""Generate the Python code for protos/securenow/v1 (messages, gRPC stubs, .pyi stubs,
and the py.typed marker that makes type checkers use the stubs).

The generated package `securenow.v1` lives in clients/python/src and is committed, so
the client package installs without build tools. `--check` regenerates into a
temporary directory and fails when the committed copy differs (stale or hand-edited).

usage: python scripts/gen_protos.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("securenow") / "v1"
OUT_ROOT = ROOT / "clients" / "python" / "src"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
EXTRA_FILES = ("__init__.py", "py.typed")


def generate(out_root: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / PACKAGE_DIR / "__init__.py").write_text('"""Generated SecureNow API (securenow.v1). Do not edit."""\n')
    # PEP 561: without this marker type checkers ignore the .pyi stubs of an installed
    # package, and code using securenow.v1 (or the SDK's return types) sees Any.
    (out_root / PACKAGE_DIR / "py.typed").write_text("")


def generated_files(root: Path) -> set[str]:
    pkg = root / PACKAGE_DIR
    if not pkg.exists():
        return set()
    return {p.name for p in pkg.iterdir() if p.name.endswith(GENERATED_SUFFIXES) or p.name in EXTRA_FILES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    opts = parser.parse_args()
    if not opts.check:
        pkg = OUT_ROOT / PACKAGE_DIR
        for name in generated_files(OUT_ROOT):
            (pkg / name).unlink()
        pkg.mkdir(parents=True, exist_ok=True)
        generate(OUT_ROOT)
        print(f"generated {len(generated_files(OUT_ROOT))} files in {pkg.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        (fresh / PACKAGE_DIR).mkdir(parents=True)
        generate(fresh)
        want, have = generated_files(fresh), generated_files(OUT_ROOT)
        stale = sorted(want ^ have)
        stale += sorted(
            n
            for n in want & have
            if not filecmp.cmp(fresh / PACKAGE_DIR / n, OUT_ROOT / PACKAGE_DIR / n, shallow=False)
        )
        if stale:
            print("generated code is stale; run `make gen` and commit:", ", ".join(stale))
            return 1
    shutil.rmtree(ROOT / "clients" / "python" / "src" / "securenow" / "v1" / "__pycache__", ignore_errors=True)
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

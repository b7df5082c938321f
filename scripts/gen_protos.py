"""Generate the Python gRPC code for every proto under protos/ into libs/ (the only way to make it).

    python scripts/gen_protos.py          # (re)write libs/cag/v1/*_pb2*.py[i]
    python scripts/gen_protos.py --check  # exit 1, listing stale files, when they are out of date

protos/cag/v1/x.proto becomes libs/cag/v1/x_pb2.py, x_pb2_grpc.py and their .pyi stubs
(mypy-protobuf). The generated modules import each other as `from cag.v1 import x_pb2`, which
resolves through the `cag` namespace package. Output depends only on the proto files and the
pinned grpcio-tools / mypy-protobuf versions: same inputs, byte-identical files.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "libs"
# Suffixes of every file protoc writes for one proto; files with these suffixes under OUT_DIR/cag
# belong to this script (so a removed proto's outputs are removed too).
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    """Every .proto under PROTO_DIR, relative to it, in a fixed order."""
    return sorted(p.relative_to(PROTO_DIR) for p in PROTO_DIR.rglob("*.proto"))


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: install the dev extras (mypy-protobuf)")
    return found


def generate(out: Path) -> None:
    """Run protoc over all protos, writing the generated tree under `out`."""
    well_known = resources.files("grpc_tools") / "_proto"
    # protoc runs in a child process so its failures surface as a clean exit code and message.
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *(p.as_posix() for p in proto_files()),
    ]
    done = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"protoc failed:\n{done.stderr}")
    if done.stderr:  # warnings (an unused import, ...): show them, they are worth fixing
        print(done.stderr, file=sys.stderr, end="")


def generated_files(root: Path) -> set[Path]:
    """Generated files under `root` (relative to it)."""
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)}


def stale_files(fresh: Path, committed: Path) -> list[Path]:
    """Files (relative) that differ between the two trees, are missing from `committed`, or are extra in it."""
    new, old = generated_files(fresh), generated_files(committed / "cag")
    old = {Path("cag") / p for p in old}
    differ = {p for p in new & old if not filecmp.cmp(fresh / p, committed / p, shallow=False)}
    return sorted(differ | (new ^ old))


def sync(fresh: Path, committed: Path) -> list[Path]:
    """Make `committed` hold exactly the generated files of `fresh`; return the files changed."""
    changed = stale_files(fresh, committed)
    for rel in changed:
        src, dst = fresh / rel, committed / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        else:
            dst.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate Python gRPC code from protos/ into libs/.")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when generated code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cag-protos-") as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            stale = stale_files(fresh, OUT_DIR)
            for rel in stale:
                print(f"stale: {(OUT_DIR / rel).relative_to(ROOT)}", file=sys.stderr)
            if stale:
                print("run: python scripts/gen_protos.py", file=sys.stderr)
            return 1 if stale else 0
        for rel in sync(fresh, OUT_DIR):
            action = "wrote" if (OUT_DIR / rel).exists() else "removed"
            print(f"{action}: {(OUT_DIR / rel).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

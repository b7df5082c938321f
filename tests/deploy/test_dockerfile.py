"""The Dockerfile cannot be built here (no container engine): what can be checked offline is that every path it copies
from the build context exists and is not excluded by .dockerignore, and that each service has its target."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

from tests.deploy.conftest import REPO, SERVICES

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    return joined


def context_sources() -> list[str]:
    """Every build-context path a COPY or ADD copies, or a RUN bind-mounts (not those from another stage)."""
    sources: list[str] = []
    for instruction in instructions():
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() in ("COPY", "ADD"):
            words = json.loads(rest[rest.index("[") :]) if "[" in rest and rest.rstrip().endswith("]") else None
            flags = [w for w in shlex.split(rest) if w.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                continue
            if words is None:
                words = [w for w in shlex.split(rest) if not w.startswith("--")]
            sources += words[:-1]
        for mount in re.findall(r"--mount=(\S+)", instruction):
            options = dict(o.split("=", 1) for o in mount.split(",") if "=" in o)
            if options.get("type") == "bind" and "from" not in options:
                sources.append(options.get("source", "."))
    return sources


def test_dockerfile_copies_something() -> None:
    assert context_sources(), "no COPY from the build context found: the parser no longer reads the Dockerfile"


def test_every_copied_path_exists() -> None:
    for source in context_sources():
        assert not source.startswith(("http://", "https://")), f"{source}: the build fetches from the network"
        matches = list(REPO.glob(source.lstrip("./") or "."))
        assert matches, f"the Dockerfile copies {source}, which does not exist"


def test_no_copied_path_is_dockerignored() -> None:
    if not DOCKERIGNORE.exists():
        return
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.strip().startswith("#")]
    excluded = [p for p in patterns if not p.startswith("!")]
    for source in context_sources():
        path = source.strip("./")
        for pattern in excluded:
            assert not fnmatch.fnmatch(path, pattern.strip("/")), f"{source} is excluded by .dockerignore {pattern}"


def test_one_target_per_service() -> None:
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE | re.IGNORECASE))
    for service in SERVICES:
        assert service in targets or {f"{service}-cpu", f"{service}-gpu"} <= targets, f"no target for {service}"

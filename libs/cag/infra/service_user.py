"""Running a server as an unprivileged system user when we are root (Postgres refuses to run as root)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cag.infra.errors import InfraError


def running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True, kw_only=True)
class ServiceUser:
    """A system account that servers are started as, via `runuser -u NAME --`."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> ServiceUser | None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        groups = frozenset(os.getgrouplist(name, entry.pw_gid))
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)

    @classmethod
    def ensure(cls, name: str) -> ServiceUser:
        """The account `name`, created as a no-login system user if missing (needs root)."""
        found = cls.lookup(name)
        if found is not None:
            return found
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        argv = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"]
        argv += ["--shell", "/usr/sbin/nologin", "--user-group", name]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        created = cls.lookup(name)
        if created is None:
            raise InfraError(f"could not create system user {name!r}: {done.stderr.strip() or done.returncode}")
        return created

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run as this user."""
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self.name, "--", *argv]

    def chown(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def _may(self, path: Path, owner_bit: int, group_bit: int, other_bit: int) -> bool:
        st = path.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & owner_bit)
        if st.st_gid in self.groups:
            return bool(st.st_mode & group_bit)
        return bool(st.st_mode & other_bit)

    def unreachable_ancestor(self, path: Path) -> Path | None:
        """The first directory on the way to `path` that this user cannot enter, if any."""
        for directory in reversed(path.resolve().parents):
            if not self._may(directory, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return directory
        return None

    def require_reachable(self, path: Path, what: str) -> None:
        """Raise `InfraError` unless this user can reach `path` (every parent directory searchable)."""
        blocked = self.unreachable_ancestor(path)
        if blocked is not None:
            mode = stat.filemode(blocked.stat().st_mode)
            owner = grp.getgrgid(blocked.stat().st_gid).gr_name
            raise InfraError(
                f"user {self.name!r} cannot reach the {what} {path}: {blocked} is {mode} (group {owner}); "
                f"use a directory outside it (e.g. --run-dir /var/tmp/cag) or `chmod o+x {blocked}`"
            )

    def require_executable(self, binary: Path) -> None:
        self.require_reachable(binary, "binary")
        if not self._may(binary, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            raise InfraError(f"user {self.name!r} cannot execute {binary}")

"""Where each tenant's knowledge sources may live: URI prefixes, `{tenant}` standing for the tenant a module is
compiled or registered for (`public` for public knowledge).

Without them a writer of one tenant could name another tenant's folder (on a shared sources volume, or in a shared
bucket) as its source and serve that knowledge to its own users. With CAG_SOURCE_ROOTS set, e.g.
`file:///srv/cag/sources/{tenant}/,s3://kb/{tenant}/`, the registry refuses to record and the compiler refuses to
read a source outside the roots of the module's tenant. Unset: sources may be anywhere (one team, one tenant).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from cag.errors import InvalidFieldError

TENANT = "{tenant}"


@dataclass(frozen=True)
class SourceRoots:
    prefixes: tuple[str, ...]  # canonical (see `canonical_uri`), each ending with "/"

    @classmethod
    def parse(cls, text: str | None) -> SourceRoots | None:
        """The roots a comma-separated setting names; None when it names none. ValueError saying what is wrong."""
        items = [item.strip() for item in (text or "").split(",") if item.strip()]
        if not items:
            return None
        return cls(tuple(_checked_prefix(item) for item in items))

    def of_tenant(self, tenant: str) -> tuple[str, ...]:
        return tuple(prefix.replace(TENANT, tenant) for prefix in self.prefixes)

    def check(self, uri: str, tenant: str, field: str = "source_uri") -> str:
        """The root of `tenant` the source `uri` lies under (a folder is under itself); InvalidFieldError naming
        `field` and the tenant's roots when it lies under none."""
        roots = self.of_tenant(tenant)
        where = f"the source roots of tenant {tenant!r} are {', '.join(roots)}"
        try:
            folder = canonical_uri(uri).rstrip("/") + "/"
        except ValueError as e:
            raise InvalidFieldError(field, f"{e}; {where}") from None
        for root in roots:
            if folder.startswith(root):
                return root
        raise InvalidFieldError(field, f"{uri[:200]!r} is not under a source root of tenant {tenant!r}; {where}")


def canonical_uri(uri: str) -> str:
    """One spelling per location: a plain absolute path or file://localhost/... as file:///..., percent-escapes of a
    file path decoded (the reader decodes them too); s3:// URIs as given. ValueError for another scheme."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError(f"{uri[:200]!r}: a local source is an absolute path (file:///...), on no other host")
        return "file://" + unquote(parsed.path)
    if parsed.scheme == "s3":
        return uri
    raise ValueError(f"{uri[:200]!r}: sources are file:// or s3:// URIs")


def _checked_prefix(item: str) -> str:
    """A root as configured, checked: file:// or s3://, a folder ending with '/', `{tenant}` at most once and only
    as a whole path segment (so that acme's root is not a prefix of acme-other's)."""
    prefix = canonical_uri(item)
    path = urlparse(prefix).path
    if not prefix.endswith("/") or not path.startswith("/") or ".." in path.split("/"):
        raise ValueError(f"source root {item!r} must be an absolute folder ending with '/', without '..'")
    if prefix.count(TENANT) > 1 or (TENANT in prefix and f"/{TENANT}/" not in prefix):
        raise ValueError(f"source root {item!r}: {TENANT} stands for one whole folder name, once")
    return prefix

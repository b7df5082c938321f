"""Who may do what on the embedded NATS server: one user per platform identity, each with a password
and an allow-list of subjects (everything not listed is refused; anonymous connections are refused).

Events: each service publishes only its own events (only the registry publishes `cag.module.published`,
`.invalidated` and `.expired`), every service may dead-letter to `cag.dlq.>`, and ops tooling publishes
the `cag.invalidate.>` triggers. Reading is not restricted by subject: any service may consume any
event of the `cag` stream through a durable pull consumer.

JetStream needs, per client (checked with nats-py and FastStream against the real server):

* a JetStream publish is a core publish with a reply inbox: publish the subject, subscribe `_INBOX.>`
  for the stream's ack;
* a durable pull consumer: `$JS.API.CONSUMER.{INFO,CREATE,DURABLE.CREATE,MSG.NEXT}.cag.>` requests,
  messages delivered to an `_INBOX.>` subject, acks/naks published to `$JS.ACK.cag.>`;
* FastStream declares the stream when a subscriber starts: `$JS.API.STREAM.CREATE.cag` (an identical
  configuration is a no-op) and `$JS.API.STREAM.INFO.cag`. Only the registry, the stream's owner, may
  `$JS.API.STREAM.UPDATE.cag`: an update can add subjects or a republish rule, which would let a
  service place messages on subjects it may not publish. No one but admin may delete or purge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

# The platform's one JetStream stream (`cag.events.schemas.STREAM`), spelled here so that `cag infra`
# does not import the event schemas.
STREAM = "cag"

SERVICES = ("registry", "router", "cachepool", "compiler", "fallback")
OPS = "ops"
ADMIN = "admin"
IDENTITIES = (*SERVICES, OPS, ADMIN)

INBOX = "_INBOX.>"
DEAD_LETTERS = "cag.dlq.>"

# The events each identity emits; nobody else may publish them.
EVENTS_PUBLISHED: Mapping[str, tuple[str, ...]] = {
    "registry": ("cag.module.published", "cag.module.invalidated", "cag.module.expired", "cag.routes.updated"),
    "cachepool": ("cag.module.loaded", "cag.module.evicted"),
    "compiler": ("cag.module.compiled", "cag.compile.>"),
    "router": ("cag.route.decided",),
    "fallback": ("cag.fallback.>", "cag.candidate.>"),
    OPS: ("cag.invalidate.>",),
}

CONSUMER_API = (
    f"$JS.API.CONSUMER.INFO.{STREAM}.>",
    f"$JS.API.CONSUMER.CREATE.{STREAM}.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.>",
    f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.>",
    f"$JS.ACK.{STREAM}.>",
)
STREAM_DECLARE_API = (f"$JS.API.STREAM.CREATE.{STREAM}", f"$JS.API.STREAM.INFO.{STREAM}")
STREAM_OWNER_API = (f"$JS.API.STREAM.UPDATE.{STREAM}",)
STREAM_OWNER = "registry"


@dataclass(frozen=True, kw_only=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions_for(identity: str) -> Permissions:
    """The subjects `identity` may publish and subscribe to."""
    if identity == ADMIN:  # tests and tooling: everything, JetStream administration included
        return Permissions(publish=(">",), subscribe=(">",))
    if identity == OPS:  # publishes triggers and waits for JetStream's ack; consumes nothing
        return Permissions(publish=EVENTS_PUBLISHED[OPS], subscribe=(INBOX,))
    if identity not in SERVICES:
        raise ValueError(f"unknown NATS identity {identity!r}: expected one of {', '.join(IDENTITIES)}")
    publish = [*EVENTS_PUBLISHED.get(identity, ()), DEAD_LETTERS, *STREAM_DECLARE_API, *CONSUMER_API]
    if identity == STREAM_OWNER:
        publish += STREAM_OWNER_API
    return Permissions(publish=tuple(publish), subscribe=(INBOX,))


def render_config(passwords: Mapping[str, str]) -> str:
    """The `authorization` block of nats-server.conf: one user per identity in `passwords`.

    Strings are written as JSON strings, which the NATS configuration format reads as quoted strings.
    Passwords are in plain text (the file is 0600, like the credentials beside it): bcrypt would cost
    every connection a hashing round, and tests connect hundreds of times.
    """
    users = []
    for identity, password in passwords.items():
        perms = permissions_for(identity)
        users.append(
            f"    {{ user: {json.dumps(identity)}, password: {json.dumps(password)}, permissions: {{\n"
            f"        publish: {{ allow: {json.dumps(list(perms.publish))} }}\n"
            f"        subscribe: {{ allow: {json.dumps(list(perms.subscribe))} }}\n"
            f"    }} }}"
        )
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"

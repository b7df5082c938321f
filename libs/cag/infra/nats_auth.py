"""Who may do what on the embedded NATS server: one user per platform identity, each with a password
and an allow-list of subjects (everything not listed is refused; anonymous connections are refused).

Events: each service publishes only its own events (only the registry publishes `cag.module.published`,
`.invalidated` and `.expired`), every service may dead-letter to `cag.dlq.>`, and ops tooling publishes
the `cag.invalidate.>` triggers. Reading is not restricted by subject: any service may consume any
event of the `cag` stream through a durable pull consumer. `monitor` (operators' read-only views, `cag top`)
only reads: it may create ephemeral consumers of the stream and watch the replicas' bucket as routers do.

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
MONITOR = "monitor"
ADMIN = "admin"
IDENTITIES = (*SERVICES, OPS, MONITOR, ADMIN)

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
# The legacy ephemeral-create subject, exactly: the server names the consumer and refuses a durable name on it, so
# whoever may only publish here can neither touch the services' durables nor pull from them. The consumer pushes
# to the creator's inbox without acks and goes away once nobody listens.
EPHEMERAL_CONSUMER_API = (f"$JS.API.CONSUMER.CREATE.{STREAM}",)

# The cache-pool replicas' announcements (`cag.events.replicas.BUCKET`), a key-value bucket outside the `cag`
# stream: cache pools create it and put their keys; routers read and watch it (an ordered push consumer, its
# flow-control replies included); no one else may write a key.
REPLICA_BUCKET = "cag_replicas"
REPLICA_STREAM = f"KV_{REPLICA_BUCKET}"
REPLICA_ANNOUNCE_API = (
    "$JS.API.INFO",  # the server's API level: the bucket's expiry markers need 2.11 or later
    f"$JS.API.STREAM.CREATE.{REPLICA_STREAM}",
    f"$JS.API.STREAM.INFO.{REPLICA_STREAM}",
    f"$KV.{REPLICA_BUCKET}.*",
)
REPLICA_WATCH_API = (
    f"$JS.API.STREAM.INFO.{REPLICA_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{REPLICA_STREAM}",
    f"$JS.API.CONSUMER.CREATE.{REPLICA_STREAM}.>",
    f"$JS.API.CONSUMER.INFO.{REPLICA_STREAM}.>",
    f"$JS.API.CONSUMER.DELETE.{REPLICA_STREAM}.>",
    f"$JS.FC.{REPLICA_STREAM}.>",
)
REPLICA_API: Mapping[str, tuple[str, ...]] = {"cachepool": REPLICA_ANNOUNCE_API, "router": REPLICA_WATCH_API}


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
    if identity == MONITOR:  # reads events through ephemeral push consumers, watches the bucket; writes nothing
        return Permissions(publish=(*EPHEMERAL_CONSUMER_API, *REPLICA_WATCH_API), subscribe=(INBOX,))
    if identity not in SERVICES:
        raise ValueError(f"unknown NATS identity {identity!r}: expected one of {', '.join(IDENTITIES)}")
    publish = [*EVENTS_PUBLISHED.get(identity, ()), DEAD_LETTERS, *STREAM_DECLARE_API, *CONSUMER_API]
    publish += REPLICA_API.get(identity, ())
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

"""`cag invalidate source | model | tokenizer | acl | layout`: publish one ops invalidation event.

Each command publishes exactly what an ops pipeline would: an `Envelope` around the subject's
payload (cag.events.schemas), on NATS JetStream with `Nats-Msg-Id` = event id. The registry's
consumer applies it; the command prints the event id. See docs/events.md for the contract.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.errors import Error as NatsError
from pydantic import ValidationError

from cag.errors import CagError, InvalidInputError, Status, validation_problems
from cag.events.bus import make_broker, publish_event
from cag.events.schemas import (
    STREAM,
    AclChangedV1,
    Envelope,
    LayoutChangedV1,
    ModelRevisedV1,
    Payload,
    SourceChangedV1,
    TokenizerRetiredV1,
)
from cag.identifiers import check_event_id
from cag.infra.nats_auth import OPS
from cag.infra.stack import local_service_urls
from cag.settings import CagSettings

DEFAULT_TIMEOUT_S = 10.0


class EventBusUnavailableError(CagError):
    """NATS could not be reached, or JetStream did not acknowledge the event."""

    status = Status.UNAVAILABLE
    reason = "EVENT_BUS_UNAVAILABLE"


def register(sub: Any) -> None:
    p = sub.add_parser("invalidate", help="publish an invalidation event (what an ops pipeline sends)")
    which = p.add_subparsers(dest="invalidate_command", required=True)

    source = _subcommand(which, "source", "a knowledge source changed: its modules become stale")
    source.add_argument("--tenant", required=True, help="tenant owning the source")
    source.add_argument("--uri", required=True, help="the source URI the modules were registered with")
    source.add_argument("--checksum", required=True, help="the source's new canonical checksum")
    source.set_defaults(payload=lambda a: SourceChangedV1(tenant_id=a.tenant, source_uri=a.uri, checksum=a.checksum))

    model = _subcommand(which, "model", "a model moved to a new revision: its other revisions' modules are invalid")
    model.add_argument("--model", required=True, help="catalog name of the model")
    model.add_argument("--revision", required=True, help="the model's new revision")
    model.set_defaults(payload=lambda a: ModelRevisedV1(model_name=a.model, model_revision=a.revision))

    tokenizer = _subcommand(which, "tokenizer", "a tokenizer revision is retired: its modules are invalid")
    tokenizer.add_argument("--revision", required=True, help="the retired tokenizer revision")
    tokenizer.set_defaults(payload=lambda a: TokenizerRetiredV1(tokenizer_revision=a.revision))

    acl = _subcommand(which, "acl", "an ACL policy changed: private modules of that scope are denied at once")
    acl.add_argument("--tenant", required=True)
    acl.add_argument("--scope", required=True, choices=["tenant", "workspace", "user"], help="never public")
    acl.add_argument("--principal", default="", help="workspace or user id (default: the whole scope)")
    acl.set_defaults(
        payload=lambda a: AclChangedV1.model_validate(
            {"tenant_id": a.tenant, "scope": a.scope, "principal": a.principal}
        )
    )

    layout = _subcommand(which, "layout", "a prompt layout changed: modules of its other hashes are invalid")
    layout.add_argument("--layout-id", required=True, help="for example support_agent.v1")
    layout.add_argument("--layout-hash", required=True, help="the layout's new hash")
    layout.set_defaults(payload=lambda a: LayoutChangedV1(layout_id=a.layout_id, layout_hash=a.layout_hash))


def _subcommand(which: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = which.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--nats", help="NATS server URL (default: CAG_NATS_URL, else the ops identity of `cag infra up`)")
    p.add_argument("--event-id", help="event id to use (default: a new UUID); reuse it to retry without duplicates")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for JetStream's ack")
    p.set_defaults(run=run)
    return p


def build_envelope(args: argparse.Namespace) -> Envelope:
    """The event for the parsed command line; a field the schema refuses is INVALID_ARGUMENT, before anything
    is published (a consumer would only dead-letter it)."""
    if args.event_id is not None:
        check_event_id(args.event_id, field="--event-id")
    try:
        payload: Payload = args.payload(args)
        return Envelope.wrap(payload, event_id=args.event_id)
    except ValidationError as e:
        raise InvalidInputError(
            f"invalid {args.invalidate_command} event: {validation_problems(e, root='body')}"
        ) from None


def shown(url: str) -> str:
    """`url` as output may show it: a password it carries is masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def ops_nats_url(args: argparse.Namespace, settings: CagSettings) -> str:
    """--nats, else CAG_NATS_URL, else the ops identity of the servers `cag infra up` started here."""
    return identity_nats_url(args.nats, settings, OPS)


def identity_nats_url(given: str | None, settings: CagSettings, identity: str) -> str:
    """`given` (a --nats option), else CAG_NATS_URL, else `identity`'s URL for the servers `cag infra up` started
    here (cag.infra.nats_auth)."""
    if given:
        return given
    if "nats_url" not in settings.infra_given:
        recorded = local_service_urls(settings.run_dir, identity)
        if recorded is not None and recorded.nats_url:
            return recorded.nats_url
    return settings.nats_url


async def publish(nats_url: str, envelope: Envelope, *, timeout_s: float) -> None:
    """Connect, publish to JetStream and wait for its ack, then disconnect; bounded by `timeout_s` in all."""
    broker = make_broker(nats_url)
    where = shown(nats_url)
    try:
        async with asyncio.timeout(timeout_s):
            await broker.connect()
            await publish_event(broker, envelope)
    except TimeoutError:
        raise EventBusUnavailableError(
            f"no JetStream ack from {where} within {timeout_s:g} s: is NATS up, and does stream {STREAM!r} exist"
            " (the registry declares it when it starts)?"
        ) from None
    except (NatsError, OSError) as e:
        raise EventBusUnavailableError(f"publishing {envelope.subject} to {where} failed: {e!r}") from None
    finally:
        await broker.stop()


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    envelope = build_envelope(args)
    nats_url = ops_nats_url(args, settings)
    asyncio.run(publish(nats_url, envelope, timeout_s=args.timeout))
    print(f"published {envelope.subject} event {envelope.event_id} to {shown(nats_url)}", file=sys.stderr)
    print(envelope.event_id)
    return 0

"""Event limits and the redelivery policy, example by example (the properties are in test_event_fuzz.py)."""

from __future__ import annotations

import json

import pytest

from cag.cli.main import main
from cag.events.bus import header_value
from cag.events.consumer import InvalidEventError, Redelivery, parse_event
from cag.events.schemas import MAX_BODY_BYTES, Envelope, TokenizerRetiredV1

ACCEPTS = (TokenizerRetiredV1,)
SUBJECT = TokenizerRetiredV1.subject


def _body(event_id: str) -> bytes:
    envelope = json.loads(Envelope.wrap(TokenizerRetiredV1(tokenizer_revision="tok-1")).model_dump_json())
    return json.dumps(envelope | {"event_id": event_id}).encode()


def test_an_event_id_of_100_characters_is_accepted_and_one_of_257_is_not() -> None:
    envelope, _ = parse_event(_body("e" * 100), subject=SUBJECT, accepts=ACCEPTS)
    assert envelope.event_id == "e" * 100
    assert parse_event(_body("e" * 256), subject=SUBJECT, accepts=ACCEPTS)[0].event_id == "e" * 256
    with pytest.raises(InvalidEventError, match="event_id"):
        parse_event(_body("e" * 257), subject=SUBJECT, accepts=ACCEPTS)


def test_an_envelope_without_an_event_id_is_refused() -> None:
    """Its default (a fresh UUID per delivery) would apply a redelivered event twice."""
    envelope = json.loads(_body("x"))
    del envelope["event_id"]
    with pytest.raises(InvalidEventError, match="event_id"):
        parse_event(json.dumps(envelope).encode(), subject=SUBJECT, accepts=ACCEPTS)


def test_the_body_limit_is_checked_before_parsing() -> None:
    with pytest.raises(InvalidEventError, match="65,537 bytes"):
        parse_event(b"x" * (MAX_BODY_BYTES + 1), subject=SUBJECT, accepts=ACCEPTS)


@pytest.mark.parametrize("event_id", ["e" * 300, "has space", "ünï", "-leading-dash"])
def test_cag_invalidate_refuses_a_malformed_event_id_at_once(event_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    # An unreachable NATS: had the command tried to publish, it would have failed another way.
    argv = ["invalidate", "tokenizer", "--revision", "x", "--nats", "nats://127.0.0.1:1", f"--event-id={event_id}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--event-id" in err and "e" * 100 not in err


def test_the_policy_never_asks_for_an_immediate_redelivery() -> None:
    policy = Redelivery(max_deliver=4, backoff_s=(1.0, 5.0), ack_wait_s=30.0)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [1.0, 5.0, 5.0]
    assert [policy.is_last(n) for n in (1, 3, 4, 5)] == [False, False, True, True]
    config = policy.consumer_config()
    assert config.max_deliver == 4
    # JetStream wants fewer backoff steps than max_deliver, and a step replaces ack_wait: none is shorter.
    assert config.backoff == [30.0, 30.0]
    with pytest.raises(ValueError, match="max_deliver"):
        Redelivery(max_deliver=0)
    with pytest.raises(ValueError, match="backoff"):
        Redelivery(backoff_s=(0.0,))


def test_a_dead_letter_header_is_one_bounded_line_of_ascii() -> None:
    value = header_value("line one\nline two\r\x00 é " + "x" * 2000)
    assert value.isascii() and value.isprintable() and len(value) <= 512
    assert value.startswith("line one line two")

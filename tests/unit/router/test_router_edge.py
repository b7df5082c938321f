"""The router's edge checks the sampling it forwards: a bad value is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import math

import pytest

from cag.errors import InvalidFieldError
from cag.router.convert import MAX_NEW_TOKENS, sampling_message
from cag.v1 import common_pb2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_new_tokens": -1}, "sampling.max_new_tokens"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "sampling.max_new_tokens"),
        ({"temperature": math.nan}, "sampling.temperature"),
        ({"temperature": -0.5}, "sampling.temperature"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"top_p": math.inf}, "sampling.top_p"),
    ],
)
def test_bad_sampling_is_refused_naming_the_field(fields: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        sampling_message(common_pb2.SamplingParams(**fields))  # type: ignore[arg-type]
    assert caught.value.field == field


def test_good_sampling_is_copied_as_given() -> None:
    given = common_pb2.SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3)
    assert sampling_message(given) == given

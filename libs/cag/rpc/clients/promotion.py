"""A blocking client of the fallback service's promotion calls (Candidates, Review), for the command line."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

import grpc

from cag.auth.credentials import bearer_metadata
from cag.telemetry import traced_channel
from cag.v1 import fallback_pb2, fallback_pb2_grpc

DEFAULT_TIMEOUT_S = 60.0  # an approval starts a compile and updates the route rules before it answers


class PromotionClient:
    """Blocking calls on one insecure channel to `address` (host:port), as `token`; use as a context manager."""

    def __init__(self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = bearer_metadata(token)
        self._channel = traced_channel(grpc.insecure_channel(address))
        self._stub = fallback_pb2_grpc.FallbackServiceStub(self._channel)

    def __enter__(self) -> PromotionClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def candidates(self, request: fallback_pb2.CandidatesRequest) -> Iterator[fallback_pb2.PromotionCandidate]:
        """Every page from `request.page_token` on, most frequent first."""
        page = fallback_pb2.CandidatesRequest()
        page.CopyFrom(request)
        while True:
            response = self._stub.Candidates(page, timeout=self.timeout_s, metadata=self._metadata)
            yield from response.candidates
            if not response.next_page_token:
                return
            page.page_token = response.next_page_token

    def review(self, request: fallback_pb2.ReviewRequest) -> fallback_pb2.ReviewResponse:
        return self._stub.Review(request, timeout=self.timeout_s, metadata=self._metadata)

"""A blocking client of the fallback service's promotion calls (Candidates, Review), for the command line."""

from __future__ import annotations

from collections.abc import Iterator

from cag.rpc.clients.channels import BlockingChannel
from cag.rpc.tls import ClientTls
from cag.v1 import fallback_pb2, fallback_pb2_grpc

DEFAULT_TIMEOUT_S = 60.0  # an approval starts a compile and updates the route rules before it answers


class PromotionClient(BlockingChannel):
    """Blocking calls on one channel to `address` (host:port), as `token`; use as a context manager."""

    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = fallback_pb2_grpc.FallbackServiceStub(self._channel)

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

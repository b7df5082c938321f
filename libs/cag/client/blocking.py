"""CagClient: the blocking SDK (scripts, threads, WSGI product services)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping
from types import TracebackType

import grpc

from cag.client.answer import Answer, AnswerBuilder, Decision, decision_of
from cag.client.errors import CagClientError, from_rpc_error
from cag.client.request import Sampling, generate_request
from cag.client.retry import RetryPolicy
from cag.rpc.clients.router import DEFAULT_TIMEOUT_S, RouterClient
from cag.rpc.tls import ClientTls
from cag.v1 import common_pb2


class AnswerStream:
    """The text of an answer chunk by chunk (iterate it), then `answer`: the whole record.

    Closing it (`close()`, leaving its `with` block, or dropping it after a `break`) cancels the call.
    """

    def __init__(
        self,
        start: Callable[[float], grpc.CallIterator[common_pb2.GenerateResponse]],
        retry: RetryPolicy,
        timeout_s: float,
    ) -> None:
        self._builder = AnswerBuilder()
        self._answer: Answer | None = None
        self._chunks = self._read(start, retry, timeout_s)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._chunks)

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._chunks.close()

    @property
    def decision(self) -> Decision | None:
        """The router's decision, once it arrived (before the first chunk)."""
        return self._builder.decision

    @property
    def answer(self) -> Answer:
        """The whole answer; only once the stream has been read to its end."""
        if self._answer is None:
            raise RuntimeError("the answer is not complete: read the stream to its end first")
        return self._answer

    def _read(
        self,
        start: Callable[[float], grpc.CallIterator[common_pb2.GenerateResponse]],
        retry: RetryPolicy,
        timeout_s: float,
    ) -> Generator[str, None, None]:
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            self._builder = AnswerBuilder()
            call = start(max(deadline - time.monotonic(), 0.0))
            try:
                for event in call:
                    text = self._builder.add(event)
                    if text:
                        yield text
                self._answer = self._builder.answer()
                return
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                remaining = deadline - time.monotonic()
                delay = retry.delay_s(attempt, error, tokens_seen=self._builder.tokens_seen, remaining_s=remaining)
                if delay is None:
                    raise error from e
            finally:
                # A no-op once the call ended; ends it when the reader stopped early. (grpc-stubs leave it untyped.)
                call.cancel()  # type: ignore[no-untyped-call]
            time.sleep(delay)


class CagClient:
    """Asks the platform through its router at `address` (host:port) as `token` (an end user's or a service's).

    timeout_s: the default deadline of each call, retries included; retry: when to try again (RetryPolicy);
    tls: TLS towards the router (ClientTls.from_files(ca_file, ...)), None: plaintext.
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._router = RouterClient(address, token=token, timeout_s=timeout_s, tls=tls)

    def __enter__(self) -> CagClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._router.close()

    def ask(
        self,
        query: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sampling: Sampling | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        """The whole answer to `query` (see `stream` for the arguments). Raises CagClientError subclasses."""
        with self.stream(query, tenant=tenant, route=route, metadata=metadata, sampling=sampling,
                         timeout_s=timeout_s) as chunks:  # fmt: skip
            for _ in chunks:
                pass
            return chunks.answer

    def stream(
        self,
        query: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sampling: Sampling | None = None,
        timeout_s: float | None = None,
    ) -> AnswerStream:
        """The answer to `query` as it is decoded. tenant: None for the token's own; route: the route hint;
        metadata: other hints ("intent", "product_area", "workflow_state"). Errors surface while iterating."""
        request = generate_request(query, tenant=tenant, route=route, metadata=metadata, sampling=sampling)
        return AnswerStream(
            lambda remaining_s: self._router.generate(request, timeout_s=remaining_s),
            self.retry,
            self.timeout_s if timeout_s is None else timeout_s,
        )

    def explain(
        self,
        query: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Decision:
        """The decision the router would make for `query`, without generating anything."""
        request = generate_request(query, tenant=tenant, route=route, metadata=metadata)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return decision_of(self._router.explain(request, timeout_s=max(deadline - time.monotonic(), 0.0)))
            except grpc.RpcError as e:
                error: CagClientError = from_rpc_error(e)
                delay = self.retry.delay_s(attempt, error, remaining_s=deadline - time.monotonic())
                if delay is None:
                    raise error from e
            time.sleep(delay)

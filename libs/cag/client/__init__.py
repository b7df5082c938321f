"""The Python SDK for product services: ask the platform over gRPC (sync and asyncio), typed errors.

    with CagClient("127.0.0.1:50053", token) as cag:
        answer = cag.ask("How do refunds work?", route="billing-policies")
        print(answer.text, answer.summary.path, answer.summary.ttft_ms)
        with cag.stream("And for annual plans?") as chunks:
            for text in chunks:
                print(text, end="")
        print(chunks.answer.decision)

Over TLS: CagClient(address, token, tls=ClientTls.from_files(ca_file, cert_file, key_file, server_name=...)),
the certificate and key only where the router asks for one (mutual TLS).

Errors are CagClientError subclasses (cag.client.errors); transient ones are retried before the first token
(RetryPolicy).
"""

from cag.client.aio import AsyncAnswerStream, AsyncCagClient
from cag.client.answer import Answer, Decision, Evidence, ServedModule, Summary
from cag.client.blocking import AnswerStream, CagClient
from cag.client.errors import (
    CagClientError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FallbackUnavailableError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from cag.client.request import Sampling
from cag.client.retry import NO_RETRY, RetryPolicy
from cag.rpc.tls import ClientTls

__all__ = [
    "NO_RETRY",
    "Answer",
    "AnswerStream",
    "AsyncAnswerStream",
    "AsyncCagClient",
    "CagClient",
    "CagClientError",
    "ClientTls",
    "DataLossError",
    "DeadlineExceededError",
    "Decision",
    "Evidence",
    "FailedPreconditionError",
    "FallbackUnavailableError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Sampling",
    "ServedModule",
    "Summary",
    "UnauthenticatedError",
    "UnavailableError",
]

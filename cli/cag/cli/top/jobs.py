"""The compiler's recent jobs (ListJobs, newest first) for `cag top`; a compiler that does not answer says why."""

from __future__ import annotations

import grpc

from cag.cli.top.model import CompileJob, compile_job
from cag.rpc.auth import authenticated_channel
from cag.rpc.tls import ClientTls
from cag.v1 import compiler_pb2, compiler_pb2_grpc


async def poll_compiles(
    address: str, *, token: str, limit: int, timeout_s: float, tls: ClientTls | None = None
) -> tuple[tuple[CompileJob, ...], str]:
    """(the latest `limit` jobs, "") or ((), why they could not be read)."""
    channel = authenticated_channel(address, token, tls)
    try:
        stub = compiler_pb2_grpc.CompilerServiceStub(channel)
        response = await stub.ListJobs(compiler_pb2.ListJobsRequest(limit=limit), timeout=timeout_s)
    except grpc.aio.AioRpcError as e:
        return (), f"{address}: {e.code().name}: {e.details()}"
    finally:
        await channel.close(grace=None)
    return tuple(compile_job(job) for job in response.jobs), ""

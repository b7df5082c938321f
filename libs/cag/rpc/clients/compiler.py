"""The compiler's asyncio client, for services that start compiles (the fallback's promotions)."""

from __future__ import annotations

from cag.rpc.clients.channels import AsyncChannel
from cag.rpc.tls import ClientTls
from cag.v1 import compiler_pb2, compiler_pb2_grpc

# Starting a job answers with its id at once; only the compile itself takes long, and it is not awaited here.
DEFAULT_TIMEOUT_S = 30.0


class AsyncCompilerClient(AsyncChannel):
    def __init__(
        self, address: str, *, token: str, timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
    ) -> None:
        super().__init__(address, token=token, timeout_s=timeout_s, tls=tls)
        self._stub = compiler_pb2_grpc.CompilerServiceStub(self._channel)

    async def start(self, request: compiler_pb2.CompileRequest) -> str:
        """The id of the job the compile runs as. The job goes on after the stream is left (the compiler runs it
        whoever follows), so only its first message, the job id, is read."""
        call = self._stub.Compile(request, timeout=self.timeout_s)
        try:
            async for progress in call:
                if progress.WhichOneof("event") == "job_id":
                    return progress.job_id
            raise RuntimeError("the compiler's Compile stream ended without a job id")
        finally:
            call.cancel()

    async def get_job(self, job_id: str) -> compiler_pb2.Job:
        return await self._stub.GetJob(compiler_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout_s)

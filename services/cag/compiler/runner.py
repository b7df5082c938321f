"""Running compile jobs: a bounded pool of workers, one engine per model, progress fanned out to followers.

`Compiler.submit` records a job (or finds the live one with the same key) and starts it; a job reads its
source (a file:// folder, or an s3:// prefix copied to a scratch folder), writes its layout to a scratch file,
compiles on its parents' files (their registry records name them: a local file, or an object fetched into the
scratch folder), registers the module and publishes it when asked and its golden questions passed. Every stage,
prefill step, golden answer and the outcome go to the job's log in Postgres and to whoever follows the job's
progress (a Compile stream). A compiler that stopped resumes the jobs it left queued or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc

from cag.canonical import load_source, source_checksum
from cag.canonical.uris import local_path
from cag.compiler.core import Job, JobError, JobSpec, JobState, new_job
from cag.compiler.golden import GoldenResult
from cag.compiler.jobstore import JobStore
from cag.compiler.pipeline import CompileResult, compile_module
from cag.compiler.request import AclSpec, CompileRequest
from cag.engine import Engine, load_engine
from cag.errors import CagError, InvalidFieldError
from cag.layout import parse_layout
from cag.models import resolve_model
from cag.objectstore import ObjectStore, S3Location, is_s3_uri, parse_s3_uri
from cag.objectstore.sources import readable_source
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.modules import module_message
from cag.v1 import common_pb2, compiler_pb2

log = logging.getLogger(__name__)
Finished = Callable[[Job], None]


def source_content_checksum(spec: JobSpec, store: ObjectStore | None) -> str:
    """The canonical checksum of the spec's source as it is now (the job key depends on it)."""
    layout = parse_layout(spec.layout_json)
    with readable_source(spec.source_uri, store) as source:
        return source_checksum(load_source(source, layout.section_order))


@dataclass(frozen=True, kw_only=True)
class CompilerConfig:
    models_dir: Path
    out_dir: Path  # where module files are written; their file:// URI is the registered storage_uri
    engine_kind: str
    workers: int = 1
    # Where module files are uploaded (their s3:// URI is registered); None: registered by their file:// URI.
    upload_to: S3Location | None = None
    # Reads s3:// sources and parents, and takes the uploads; None: only file:// URIs work.
    object_store: ObjectStore | None = None


class Feed:
    """One job's progress messages for any number of followers, from the start (late followers replay)."""

    def __init__(self) -> None:
        self._messages: list[compiler_pb2.CompileProgress | CagError] = []
        self._changed = asyncio.Condition()
        self._closed = False

    async def put(self, message: compiler_pb2.CompileProgress | CagError) -> None:
        async with self._changed:
            self._messages.append(message)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[compiler_pb2.CompileProgress | CagError]:
        seen = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda n=seen: len(self._messages) > n or self._closed)  # type: ignore[misc]
                fresh, done = self._messages[seen:], self._closed
            seen += len(fresh)
            for message in fresh:
                yield message
            if done and seen == len(self._messages):
                return


class JobObserver:
    """The pipeline's observer for one job: progress to its feed (from the compile thread) and its log."""

    def __init__(self, job: Job, feed: Feed, loop: asyncio.AbstractEventLoop) -> None:
        self._job, self._feed, self._loop = job, feed, loop
        self._total = 0
        self._done = 0

    def _emit(self, message: compiler_pb2.CompileProgress) -> None:
        asyncio.run_coroutine_threadsafe(self._feed.put(message), self._loop)

    def stage(self, name: str) -> None:
        self._job.logs.append(name)
        self._emit(compiler_pb2.CompileProgress(stage=name))

    def prefill_started(self, total_tokens: int) -> None:
        self._total, self._done = total_tokens, 0
        self._emit(compiler_pb2.CompileProgress(prefill=compiler_pb2.PrefillProgress(done=0, total=total_tokens)))

    def prefill_advanced(self, tokens: int) -> None:
        self._done += tokens
        progress = compiler_pb2.PrefillProgress(done=self._done, total=self._total)
        self._emit(compiler_pb2.CompileProgress(prefill=progress))

    def golden_result(self, result: GoldenResult) -> None:
        self._job.logs.append(f"golden {'pass' if result.passed else 'FAIL'}: {result.question} -> {result.answer!r}")
        golden = common_pb2.GoldenResult(
            question=result.question, expect=list(result.expect), answer=result.answer, passed=result.passed
        )
        self._emit(compiler_pb2.CompileProgress(golden=golden))


class Compiler:
    def __init__(
        self,
        store: JobStore,
        registry: AsyncRegistryClient,
        config: CompilerConfig,
        *,
        engine: Engine | None = None,
    ) -> None:
        self._store, self._registry, self._config = store, registry, config
        self._given_engine = engine
        self._engines: dict[str, Engine] = {}
        self._engine_lock = threading.Lock()  # one compile on an engine at a time (a compile empties it first)
        self._slots = asyncio.Semaphore(config.workers)
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="compile")
        self._feeds: dict[str, Feed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_finished: list[Finished] = []
        self._running = 0

    def on_finished(self, callback: Finished) -> None:
        """`callback(job)` runs when a job this process ran has finished (in the event loop's thread)."""
        self._on_finished.append(callback)

    async def submit(self, spec: JobSpec, *, trigger: str) -> tuple[Job, bool]:
        """The job for `spec` and whether it is new (False: a live job with the same key answers for it)."""
        checksum = await asyncio.to_thread(source_content_checksum, spec, self._config.object_store)
        job, created = await self._store.add(new_job(spec, source_checksum=checksum, trigger=trigger, now=_now()))
        if created:
            self._start(job)
        return job, created

    async def resume(self) -> int:
        """Start again the jobs a stopped compiler left queued or running; how many."""
        jobs = await self._store.unfinished()
        for job in jobs:
            job.state, job.started_at = JobState.QUEUED, None
            job.logs.append("resumed after a compiler restart")
            self._start(job)
        return len(jobs)

    @property
    def running(self) -> int:
        """Jobs of this process on a worker now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Jobs of this process waiting for a worker."""
        return len(self._feeds) - self._running

    def feed(self, job_id: str) -> Feed | None:
        return self._feeds.get(job_id)

    async def wait(self, job_id: str) -> None:
        """Until the job this process runs is finished (returns at once for any other)."""
        feed = self._feeds.get(job_id)
        if feed is not None:
            async for _ in feed.follow():
                pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        for engine in self._engines.values():
            engine.close()

    def _start(self, job: Job) -> None:
        self._feeds[job.job_id] = Feed()
        task = asyncio.create_task(self._run(job), name=f"compile-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        feed = self._feeds[job.job_id]
        await feed.put(compiler_pb2.CompileProgress(job_id=job.job_id))
        try:
            async with self._slots:
                self._running += 1
                try:
                    await self._run_on_worker(job, feed)
                finally:
                    self._running -= 1
        finally:
            await feed.close()
            self._feeds.pop(job.job_id, None)
        for callback in self._on_finished:
            callback(job)

    async def _run_on_worker(self, job: Job, feed: Feed) -> None:
        job.state, job.started_at = JobState.RUNNING, _now()
        await self._store.save(job)
        module: common_pb2.Module | None = None
        last: compiler_pb2.CompileProgress | CagError
        try:
            module = await self._build(job, feed)
            job.state, job.module_id = JobState.SUCCEEDED, module.module_id
            job.logs.append(f"{'published' if module.version else 'registered'} {module.module_id}")
            last = compiler_pb2.CompileProgress(finished=module)
        except CagError as e:
            self._fail(job, e)
            last = e
        except Exception as e:  # a bug: the job fails with what happened, the service goes on
            log.exception("compile job %s failed", job.job_id)
            last = CagError(f"compile failed unexpectedly: {type(e).__name__}: {e}")
            self._fail(job, last)
        # The record first: a follower told the outcome may look the job up at once.
        job.finished_at = _now()
        await self._store.save(job, module.SerializeToString() if module is not None else None)
        await feed.put(last)

    def _fail(self, job: Job, error: CagError) -> None:
        job.state = JobState.FAILED
        job.error = JobError(code=error.status.value, reason=error.reason, message=str(error))
        job.logs.append(f"failed: {error.reason}: {error}")

    async def _build(self, job: Job, feed: Feed) -> common_pb2.Module:
        spec = job.spec
        parents = tuple([(await self._registry.get(module_id)).storage_uri for module_id in spec.parent_module_ids])
        observer = JobObserver(job, feed, asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self._compile, spec, parents, observer)
        if result.path is None:
            raise CagError("the compile wrote no module")  # keep_failed=False raises before this
        message = module_message(
            result.metadata,
            source_uri=spec.source_uri,
            storage_uri=await self._stored(result.path),
            header_sha256=result.header_sha256,
        )
        with _registry_refusals("register"):
            registered = await self._registry.register(message)
        if registered.state not in REGISTERED_STATES:
            # Same inputs, same bytes, same id: the registry answers with the module it holds. A stale one was
            # marked so by an event whose checksum was not the content's; rebuilding cannot serve it again.
            state = common_pb2.ModuleState.Name(registered.state).removeprefix("MODULE_STATE_").lower()
            raise CagError(
                f"the rebuilt module is identical to {registered.module_id}, which the registry holds as {state}: "
                f"the source's content did not change (checksum {registered.source_checksum}); "
                "`cag sources sync` publishes the checksum of the real content"
            )
        if spec.publish and result.publishable:
            with _registry_refusals("publish"):
                return await self._registry.publish(registered.module_id)
        return registered

    async def _stored(self, path: Path) -> str:
        """The module's storage URI: uploaded to the object store when one is configured."""
        upload_to, store = self._config.upload_to, self._config.object_store
        if upload_to is None or store is None:
            return path.resolve().as_uri()
        location = upload_to.child(path.name)
        await asyncio.to_thread(store.upload, path, location)
        return location.uri

    def _parent_file(self, storage_uri: str, scratch: Path) -> Path:
        """A parent module's file: where it lies (file://), or fetched into `scratch` (s3://). Either way the
        compile verifies its checksums as it restores it."""
        if not is_s3_uri(storage_uri):
            return local_path(storage_uri, "parent_module_ids")
        store = self._config.object_store
        if store is None:
            raise InvalidFieldError("parent_module_ids", f"{storage_uri}: no object store is configured here")
        location = parse_s3_uri(storage_uri, "parent_module_ids")
        path = scratch / location.key.rpartition("/")[2]
        with path.open("wb") as f:
            store.download_into(location, f)
        return path

    def _compile(self, spec: JobSpec, parent_uris: tuple[str, ...], observer: JobObserver) -> CompileResult:
        with (
            tempfile.TemporaryDirectory(prefix="cag-compile-") as scratch,
            readable_source(spec.source_uri, self._config.object_store) as source,
        ):
            layout = Path(scratch) / "layout.json"
            layout.write_text(spec.layout_json)
            request = CompileRequest(
                model=spec.model,
                tokenizer=spec.tokenizer,
                source=source,
                layout=layout,
                acl=AclSpec.parse(spec.acl),
                out=self._config.out_dir,
                parents=tuple(self._parent_file(uri, Path(scratch)) for uri in parent_uris),
                dtype=spec.dtype,
                route=spec.route,
                created_at=spec.created_at,
                ttl_days=spec.ttl_days,
                keep_failed=spec.keep_failed,
                engine=self._config.engine_kind,
            )
            with self._engine_lock:
                engine = self._engine(spec.model, spec.dtype)
                return compile_module(request, models_dir=self._config.models_dir, engine=engine, observer=observer)

    def _engine(self, model_name: str, dtype: str) -> Engine:
        if self._given_engine is not None:
            return self._given_engine
        key = f"{model_name}/{dtype}"
        if key not in self._engines:
            model = resolve_model(model_name, self._config.models_dir)
            self._engines[key] = load_engine(self._config.engine_kind, model, dtype)
        return self._engines[key]


# Where a module the compile registered can go on to be published from.
REGISTERED_STATES = frozenset(
    {common_pb2.MODULE_STATE_BUILDING, common_pb2.MODULE_STATE_VALIDATING, common_pb2.MODULE_STATE_PUBLISHED}
)


@contextlib.contextmanager
def _registry_refusals(call: str) -> Iterator[None]:
    """A registry call's failure as the job's reason (what the registry said), not as a bug of the compiler."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise CagError(f"the registry refused {call}: {e.code().name}: {e.details()}") from None


def _now() -> datetime:
    return datetime.now(UTC)

"""The vLLM engine: continuous batching and paged KV, with module chains restored by the platform's connector.

A request on a chain becomes one vLLM request whose prompt is the chain's tokens followed by the suffix. The
connector (`cag.engine.vllm_connector`) reports the chain's tokens as already computed and writes the modules'
rows into the blocks vLLM allocated; vLLM computes only the suffix. Chain requests carry `cache_salt` = the
leaf's chain hash: module rows come from a compiler, not from this engine's own prefill of those tokens, so a
plain request sharing the tokens must never find them in vLLM's prefix cache. Requests for the same chain do:
its full blocks stay in the prefix cache after the first restore (a chain's last partial block is restored
again by each request). vLLM runs in this process (the connector shares plans with it) and is driven by one
thread that adds, steps and aborts; streams read their tokens from queues, from any thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, TypeVar

from cag.engine.base import FinishReason, GenerateRequest, ModuleRows, ProgressCallback, RequestTimings, TokenEvent
from cag.engine.cache import KVShape
from cag.engine.identity import checked_chain, engine_identity
from cag.engine.llama import LlamaConfig
from cag.engine.sampling import SamplingParams
from cag.engine.vllm_connector import (
    DIRECTORY_KEY,
    PLAN_KEY,
    Outcome,
    Plan,
    close_directory,
    open_directory,
)
from cag.errors import CagError, InvalidFieldError, KVCacheFullError, ModuleCorruptedError
from cag.kvmodule.chain import EngineIdentity, KVSource
from cag.kvmodule.metadata import DTYPES
from cag.models import ModelFiles

# The connector shares plans with the engine in memory: vLLM's engine core must run in this process.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
# vLLM logs to stdout at INFO by default, and warns about every token-id prompt; stdout belongs to the program
# hosting it (tables, --json reports), and restore failures are logged by the connector itself.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import torch
from vllm import EngineArgs, TokensPrompt
from vllm import SamplingParams as VLLMSampling
from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer import kv_transfer_state
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.llm_engine import LLMEngine

VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# vLLM's CPU kernels need block sizes that are multiples of 32; 128 is its CPU default. GPUs use 16.
CPU_BLOCK_SIZE = 128
GPU_BLOCK_SIZE = 16
T = TypeVar("T")
# vLLM engines in one process (tests, benchmarks comparing engines) share process globals: their steps take turns.
_ONE_STEP_AT_A_TIME = threading.Lock()
_live_engines: set[int] = set()


class VLLMEngine:
    def __init__(
        self, model: ModelFiles, dtype: str = "fp32", *, kv_capacity: int | None = None, block_size: int | None = None
    ) -> None:
        if dtype not in VLLM_DTYPES:
            raise InvalidFieldError("dtype", f"{dtype!r} is not one of {', '.join(VLLM_DTYPES)}")
        self.model_files = model
        self.dtype_name = dtype
        self.config = LlamaConfig.from_hf(model.config)
        self.eos_token_id = int(str(model.config.get("eos_token_id", -1)))
        capacity = self.context_window if kv_capacity is None else kv_capacity
        if capacity < 1:
            raise InvalidFieldError("kv_capacity", f"must be at least 1 token, not {capacity}")
        self._capacity = capacity
        self.block_size = block_size or (GPU_BLOCK_SIZE if torch.cuda.is_available() else CPU_BLOCK_SIZE)
        blocks = math.ceil(capacity / self.block_size) + 1  # vLLM keeps one block aside (its null block)
        self._directory_name, self._directory = open_directory()
        args = EngineArgs(
            model=str(model.path),
            dtype=VLLM_DTYPES[dtype],
            seed=0,
            enforce_eager=True,
            skip_tokenizer_init=True,  # the platform tokenizes; vLLM sees token ids only
            max_model_len=min(self.context_window, (blocks - 1) * self.block_size),
            block_size=self.block_size,
            enable_prefix_caching=True,
            num_gpu_blocks_override=blocks,
            kv_cache_memory_bytes=blocks * self.block_size * self.kv_shape.bytes_per_token,
            kv_transfer_config=KVTransferConfig(
                kv_connector="ModuleConnector",
                kv_connector_module_path="cag.engine.vllm_connector",
                kv_role="kv_both",
                kv_load_failure_policy="recompute",
                kv_connector_extra_config={DIRECTORY_KEY: self._directory_name},
            ),
        )
        preload = os.environ.get("LD_PRELOAD")
        with _ONE_STEP_AT_A_TIME:
            # vLLM keeps its worker-side connector in a process global and builds one only when none exists: each
            # engine gets its own, and binds it around each of its steps (see StepLoop).
            kv_transfer_state._KV_CONNECTOR_AGENT = None
            self._llm = LLMEngine.from_engine_args(args)
            worker = kv_transfer_state._KV_CONNECTOR_AGENT
            # vLLM's shutdown tears down process-wide state (its distributed groups) that every other engine of
            # the process still uses: the last engine closed shuts vLLM down (close), never the garbage collector.
            self._llm.engine_core._finalizer.detach()
            _live_engines.add(id(self))
        # vLLM's CPU platform sets LD_PRELOAD (libgomp, tcmalloc) for the worker processes it would spawn; it runs
        # in this process, and the setting would only leak into every program this process starts, whose OpenMP
        # runtime would then load before their own tuning (cag.engine_runtime) could apply.
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload
        self._loop = StepLoop(self._llm, worker)
        self._request_ids = itertools.count()
        # Chains whose full blocks a restore put in vLLM's prefix cache: salt -> (chain, block index -> id, hash).
        self._cached: dict[str, tuple[tuple[KVSource, ...], dict[int, tuple[int, object]]]] = {}
        self._cached_lock = threading.Lock()

    def close(self) -> None:
        """Stop serving; the last vLLM engine of the process closed also shuts vLLM down."""
        self._loop.close()
        close_directory(self._directory_name)
        with _ONE_STEP_AT_A_TIME:
            _live_engines.discard(id(self))
            if not _live_engines:
                self._llm.engine_core.shutdown()

    @cached_property
    def identity(self) -> EngineIdentity:
        return engine_identity(self.model_files, self.config, self.dtype_name, "vllm")

    @cached_property
    def kv_shape(self) -> KVShape:
        c = self.config
        return KVShape(layers=c.layers, kv_heads=c.kv_heads, head_dim=c.head_dim, dtype=DTYPES[self.dtype_name])

    @property
    def context_window(self) -> int:
        return self.config.max_positions

    @property
    def reuse_block_size(self) -> int:
        """vLLM's prefix cache keeps full blocks: a chain's last partial block is restored by every request."""
        return self.block_size

    @property
    def kv_capacity(self) -> int:
        return self._capacity

    @property
    def kv_tokens_free(self) -> int:
        """Tokens of KV memory no running request holds (blocks only the prefix cache holds count as free)."""
        free_blocks = int(self._block_pool().get_num_free_blocks())  # the null block is never free
        return min(self._capacity, free_blocks * self.block_size)

    # ------------------------------------------------------------ requests

    def generate(self, request: GenerateRequest) -> Iterator[TokenEvent]:
        started = time.perf_counter()
        chain = checked_chain(self.identity, self.context_window, request.chain, extra=len(request.suffix))
        chain_tokens = _chain_tokens(chain)
        prompt = [*chain_tokens, *request.suffix]
        room = self._capacity - len(prompt)
        if room < 1:
            raise KVCacheFullError(
                f"{len(prompt)} prompt tokens and one answer token do not fit {self._capacity} tokens of KV memory"
            )
        sampling = request.sampling
        key = self._directory.open(Plan(chain_tokens=tuple(chain_tokens), sources=tuple(chain)))
        request_id = f"cag-{next(self._request_ids)}"
        outputs = self._loop.submit(
            request_id, self._prompt(prompt, chain), self._sampling(sampling, min(sampling.max_new_tokens, room), key)
        )
        submitted = time.perf_counter()
        generated: list[int] = []
        timings: RequestTimings | None = None
        finished = False
        try:
            while not finished:
                output = outputs.get()
                if isinstance(output, BaseException):
                    raise output
                if timings is None:
                    first_at = time.perf_counter()
                    timings = self._first_timings(key, chain, output, started, submitted, first_at)
                completion = output.outputs[0]
                for i, token in enumerate(completion.token_ids):
                    generated.append(token)
                    finish = self._finish_reason(generated, sampling, output.finished, completion.finish_reason)
                    finished = finish is not None
                    yield TokenEvent(
                        token_id=token,
                        index=len(generated) - 1,
                        finish_reason=finish,
                        timings=dataclasses.replace(timings, decode_s=time.perf_counter() - first_at),
                        logprobs=_top_logprobs(completion.logprobs, i, sampling.logprobs),
                    )
                    if finished:
                        break
        finally:
            if not finished:
                self._loop.abort(request_id)
            self._directory.close(key)

    def _first_timings(
        self,
        key: str,
        chain: Sequence[KVSource],
        output: RequestOutput,
        started: float,
        submitted: float,
        first_at: float,
    ) -> RequestTimings:
        """Timings of the first token, once the chain's restore (if any) is known to have succeeded.

        A restore that failed made vLLM recompute the chain's tokens, so the answer is right for the prompt it
        was given; but a prompt built from a module file that then failed its checksum may itself be wrong: that
        request fails (ModuleCorruptedError) rather than answer. A verified host-RAM copy that could not be
        written only costs time.
        """
        outcome = self._directory.outcome(key)
        report = outcome.report
        if report is not None and report.error is not None and not all(m.in_memory for m in chain):
            if isinstance(report.error, CagError):
                raise report.error
            raise ModuleCorruptedError(f"restoring the chain failed: {report.error}") from report.error
        self._remember(chain, outcome)
        restored = report.restored_tokens if report is not None and report.error is None else 0
        chain_tokens = sum(m.token_count for m in chain)
        cached = output.num_cached_tokens or 0
        return RequestTimings(
            restore_s=report.restore_s if report is not None else 0.0,
            prefill_s=first_at - submitted,
            ttft_s=first_at - started,
            decode_s=0.0,
            restored_tokens=restored,
            reused_tokens=max(0, min(chain_tokens, cached) - restored),
        )

    def _finish_reason(
        self, generated: list[int], sampling: SamplingParams, done: bool, reason: str | None
    ) -> FinishReason | None:
        if generated[-1] == self.eos_token_id or sampling.ends_answer(generated):
            return FinishReason.STOP
        if len(generated) >= sampling.max_new_tokens:
            return FinishReason.LENGTH
        if done:  # vLLM stopped for a reason of its own: the end of the KV memory this request may use
            return FinishReason.STOP if reason == "stop" else FinishReason.LENGTH
        return None

    def _remember(self, chain: Sequence[KVSource], outcome: Outcome) -> None:
        """Note what a successful restore left in vLLM's prefix cache (for `resident` and `drop`)."""
        if not chain or outcome.report is None or outcome.report.error is not None or not outcome.cached:
            return
        salt = _salt(chain)
        with self._cached_lock:
            held = self._cached.get(salt, (tuple(chain), {}))[1]
            self._cached[salt] = (tuple(chain), held | outcome.cached)

    def _prompt(self, tokens: list[int], chain: Sequence[KVSource]) -> TokensPrompt:
        prompt = TokensPrompt(prompt_token_ids=tokens)
        if chain:
            prompt["cache_salt"] = _salt(chain)
        return prompt

    def _sampling(self, sampling: SamplingParams, max_tokens: int, key: str) -> VLLMSampling:
        return VLLMSampling(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            max_tokens=max_tokens,
            # vLLM stops on these itself; stop sequences (token runs) are ended here, which aborts the request.
            stop_token_ids=sorted({self.eos_token_id, *sampling.stop_token_ids} - {-1}),
            logprobs=sampling.logprobs or None,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            extra_args={"kv_transfer_params": {PLAN_KEY: key}},
        )

    def prefill_module(
        self,
        chain: Sequence[KVSource],
        tokens: Sequence[int],
        *,
        chunk_size: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ModuleRows:
        """The rows of `tokens` on top of `chain`, computed by vLLM and read back by the connector's save path.

        vLLM chunks long prompts by its own batch budget, so `chunk_size` is not used; progress is reported once.
        """
        ordered = checked_chain(self.identity, self.context_window, chain, extra=len(tokens))
        chain_tokens = _chain_tokens(ordered)
        prompt = [*chain_tokens, *tokens]
        if len(prompt) + 1 > self._capacity:
            raise KVCacheFullError(f"{len(prompt)} tokens do not fit {self._capacity} tokens of KV memory")
        plan = Plan(
            chain_tokens=tuple(chain_tokens), sources=tuple(ordered), save_range=(len(chain_tokens), len(prompt))
        )
        outcome = self._run_to_end(plan, prompt, ordered)
        if outcome.saved is None:
            raise CagError("vLLM finished the compile request without the connector saving its rows")
        if on_progress is not None:
            on_progress(len(tokens))
        return ModuleRows(k=outcome.saved[0], v=outcome.saved[1])

    def load(self, chain: Sequence[KVSource]) -> None:
        """Restore the chain into vLLM's prefix cache: a one-token request on top of it (vLLM computes at least one
        token per request)."""
        ordered = checked_chain(self.identity, self.context_window, chain, extra=1)
        chain_tokens = _chain_tokens(ordered)
        plan = Plan(chain_tokens=tuple(chain_tokens), sources=tuple(ordered))
        self._run_to_end(plan, [*chain_tokens, max(self.eos_token_id, 0)], ordered)

    def _run_to_end(self, plan: Plan, prompt: list[int], chain: Sequence[KVSource]) -> Outcome:
        key = self._directory.open(plan)
        request_id = f"cag-{next(self._request_ids)}"
        sampling = self._sampling(SamplingParams(max_new_tokens=1), 1, key)
        outputs = self._loop.submit(request_id, self._prompt(prompt, chain), sampling)
        done = False
        try:
            while not done:
                output = outputs.get()
                if isinstance(output, BaseException):
                    raise output
                done = output.finished
        finally:
            if not done:
                self._loop.abort(request_id)
            outcome = self._directory.close(key)
        report = outcome.report
        if report is not None and report.error is not None:
            if isinstance(report.error, CagError):
                raise report.error
            raise ModuleCorruptedError(f"restoring the chain failed: {report.error}") from report.error
        self._remember(chain, outcome)
        return outcome

    # ------------------------------------------------------------ residency

    def resident(self) -> dict[str, int]:
        """Modules whose full blocks vLLM's prefix cache still holds as a restore left them."""
        return self._loop.call(self._resident_now)

    def _resident_now(self) -> dict[str, int]:
        blocks = self._block_pool().blocks
        resident: dict[str, int] = {}
        with self._cached_lock:
            for salt, (chain, held) in list(self._cached.items()):
                alive = {i: e for i, e in held.items() if blocks[e[0]].block_hash == e[1]}
                if not alive:
                    del self._cached[salt]
                    continue
                self._cached[salt] = (chain, alive)
                start = 0
                for module in chain:
                    end = start + module.token_count
                    spanned = range(start // self.block_size, end // self.block_size)
                    if spanned and all(i in alive for i in spanned):
                        resident[module.metadata.module_id] = module.token_count
                    start = end
        return resident

    def drop(self, module_id: str) -> bool:
        """Take the module's blocks, and those after it, out of vLLM's prefix cache wherever a chain holds them; the
        blocks before it stay (running requests keep their blocks until they end)."""
        was = module_id in self.resident()

        def evict() -> None:
            doomed: set[int] = set()
            with self._cached_lock:
                for salt, (chain, held) in list(self._cached.items()):
                    start = _start_of(chain, module_id)
                    if start is None:
                        continue
                    first = start // self.block_size
                    doomed |= {block for index, (block, _) in held.items() if index >= first}
                    self._cached[salt] = (chain, {i: e for i, e in held.items() if i < first})
            self._block_pool().evict_blocks(doomed)

        self._loop.call(evict)
        return was

    def evict(self) -> None:
        """Empty vLLM's prefix cache (only the chains restores left there while requests still run)."""

        def evict_all() -> None:
            with self._cached_lock:
                doomed = {e[0] for _, held in self._cached.values() for e in held.values()}
                self._cached.clear()
            pool = self._block_pool()
            if not pool.reset_prefix_cache():
                pool.evict_blocks(doomed)

        self._loop.call(evict_all)

    def _block_pool(self) -> Any:
        return self._llm.engine_core.engine_core.scheduler.kv_cache_manager.block_pool


def _chain_tokens(chain: Sequence[KVSource]) -> list[int]:
    return [t for module in chain for t in module.tokens()]


def _start_of(chain: Sequence[KVSource], module_id: str) -> int | None:
    """The position of the module's first token in the chain, None when the chain does not hold it."""
    start = 0
    for module in chain:
        if module.metadata.module_id == module_id:
            return start
        start += module.token_count
    return None


def _salt(chain: Sequence[KVSource]) -> str:
    return chain[-1].metadata.chain_hash  # covers every parent's content


def _top_logprobs(steps: Any, i: int, n: int) -> tuple[tuple[int, float], ...]:
    """The `n` most likely tokens of step i (vLLM adds the sampled token when it is not among them)."""
    if not n or not steps:
        return ()
    ranked = sorted(steps[i].items(), key=lambda item: item[1].rank)
    return tuple((token, float(lp.logprob)) for token, lp in ranked if lp.rank <= n)[:n]


class StepLoop:
    """One thread owns the vLLM engine: it adds and aborts requests between steps and hands outputs to streams."""

    def __init__(self, llm: LLMEngine, worker_connector: object) -> None:
        self._llm = llm
        self._worker_connector = worker_connector
        self._commands: list[Callable[[], None]] = []
        self._streams: dict[str, queue.SimpleQueue[RequestOutput | BaseException]] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="vllm-steps")
        self._thread.start()

    def submit(
        self, request_id: str, prompt: TokensPrompt, sampling: VLLMSampling
    ) -> queue.SimpleQueue[RequestOutput | BaseException]:
        stream: queue.SimpleQueue[RequestOutput | BaseException] = queue.SimpleQueue()

        def add() -> None:
            self._streams[request_id] = stream
            try:
                self._llm.add_request(request_id, prompt, sampling)
            except Exception as e:
                self._streams.pop(request_id, None)
                stream.put(e)

        self._post(add)
        return stream

    def abort(self, request_id: str) -> None:
        def abort() -> None:
            if self._streams.pop(request_id, None) is not None:
                self._llm.abort_request([request_id])

        self._post(abort)

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the loop's thread between steps and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        done: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

        def run() -> None:
            try:
                done.put((True, fn()))
            except BaseException as e:
                done.put((False, e))

        self._post(run)
        ok, value = done.get()
        if not ok:
            raise value
        result: T = value
        return result

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def _post(self, command: Callable[[], None]) -> None:
        with self._wake:
            self._commands.append(command)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._commands and not self._llm.has_unfinished_requests() and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                commands, self._commands = self._commands, []
            for command in commands:
                command()
            if self._llm.has_unfinished_requests():
                self._step()

    def _step(self) -> None:
        try:
            with _ONE_STEP_AT_A_TIME:
                kv_transfer_state._KV_CONNECTOR_AGENT = self._worker_connector
                outputs = self._llm.step()
        except Exception as e:  # the engine is broken: every waiting stream learns why
            broken, self._streams = self._streams, {}
            for waiting in broken.values():
                waiting.put(e)
            return
        for output in outputs:
            if not isinstance(output, RequestOutput):
                continue
            if (stream := self._streams.get(output.request_id)) is None:
                continue
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]

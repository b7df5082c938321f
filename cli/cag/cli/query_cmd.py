"""`cag query`: stream an answer from a module chain, restored from its files.

A module file's checksums only show that it is self-consistent: whoever can write the file can also
edit its header (another tenant, a later expiry) and re-sign it. With a registry, each file is
checked against its registry record (both checksums, and the record must be published) before
anything is restored; without one the answer comes with a warning that the files are unverified.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cag.cli.registry_client import registry_client, run_with_rpc_errors, state_name
from cag.engine import SamplingParams
from cag.errors import InvalidInputError, ModuleNotServableError
from cag.kvmodule import ModuleFile
from cag.rpc.clients import RegistryClient
from cag.session import Answer, ChainContext, answer_from_modules
from cag.settings import CagSettings
from cag.v1 import common_pb2


def register(sub: Any) -> None:
    p = sub.add_parser("query", help="answer a query from one or more module files (a chain)")
    p.add_argument("--module", action="append", required=True, type=Path, help="module file; repeat for parents")
    p.add_argument("--query", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    registry = p.add_mutually_exclusive_group()
    registry.add_argument(
        "--registry",
        help="registry host:port to verify each file against its published record "
        "(default: CAG_REGISTRY_ADDRESS when it is set)",
    )
    registry.add_argument(
        "--no-registry", action="store_true", help="answer from unverified files even if CAG_REGISTRY_ADDRESS is set"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    query = _query_text(args.query)
    address = _registry_address(args, settings)
    if address is None:
        return _answer(args, settings, query, None)
    check = RegistryCheck(registry_client(settings, address))  # credentials first, like the address
    with contextlib.closing(check.client):
        return run_with_rpc_errors(lambda: _answer(args, settings, query, check))


@dataclass
class RegistryCheck:
    """Checks module files against their registry records, fetching each record once."""

    client: RegistryClient
    records: dict[str, common_pb2.Module] = field(default_factory=dict)

    def __call__(self, modules: Sequence[ModuleFile]) -> None:
        missing = [m.metadata.module_id for m in modules if m.metadata.module_id not in self.records]
        for module_id in missing:
            self.records[module_id] = self.client.get(module_id)
        for m in modules:
            self._check(m, self.records[m.metadata.module_id])

    def _check(self, module: ModuleFile, record: common_pb2.Module) -> None:
        """Refuse a module whose record is not published or does not pin exactly this file."""
        if record.state != common_pb2.MODULE_STATE_PUBLISHED:
            reason = f" ({record.state_reason})" if record.state_reason else ""
            raise ModuleNotServableError(
                f"module {record.module_id} is {state_name(record.state)} in the registry at {self.client.address}"
                f"{reason}: only published modules are served",
                module=record.module_id,
                state=state_name(record.state),
            )
        module.check_record(
            tensor_checksum=record.tensor_checksum,
            header_sha256=record.header_sha256,
            source=f"its record in the registry at {self.client.address}",
        )


def _query_text(text: str) -> str:
    # Undecodable argv bytes arrive as lone surrogates (PEP 383), which no tokenizer can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError("--query is not valid UTF-8 text (check the terminal's encoding)") from None
    return text


def _registry_address(args: argparse.Namespace, settings: CagSettings) -> str | None:
    if args.no_registry:
        return None
    if args.registry:
        return str(args.registry)
    # Only a registry the user named: the settings' built-in default may be no registry at all.
    return settings.registry_address if "registry_address" in settings.model_fields_set else None


def _answer(args: argparse.Namespace, settings: CagSettings, query: str, check: RegistryCheck | None) -> int:
    if check is not None:
        check([ModuleFile.open(p) for p in args.module])  # before the model loads: a refusal comes at once
    ctx = ChainContext.open(args.module, models_dir=settings.models_dir)
    if check is not None:
        # The files actually restored; the restore then checks their bytes against these verified headers.
        check(ctx.modules)
    else:  # once the files opened, so that an error stays the one line printed
        print(
            "warning: module files are not verified against a registry (pass --registry): "
            "an edited and re-signed header would go unnoticed",
            file=sys.stderr,
        )
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    answer = Answer()
    printed = ""
    for _ in answer_from_modules(ctx, ctx.modules, query, sampling, answer):
        # Decode the whole answer each step: a character may span several tokens.
        text = ctx.decode(answer.tokens)
        sys.stdout.write(text[len(printed) :])
        sys.stdout.flush()
        printed = text
    sys.stdout.write("\n")
    tokens = len(answer.tokens)
    rate = tokens / answer.total_s if answer.total_s else 0.0
    print(
        f"[{ctx.module_tokens:,} module tokens restored · TTFT {answer.ttft_s * 1000:.0f} ms · "
        f"{tokens} tokens at {rate:.1f} tok/s]",
        file=sys.stderr,
    )
    return 0

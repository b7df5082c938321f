"""`cag query`: stream an answer from a module chain, restored from its files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cag.engine import SamplingParams
from cag.session import Answer, ChainContext, answer_from_modules
from cag.settings import CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("query", help="answer a query from one or more module files (a chain)")
    p.add_argument("--module", action="append", required=True, type=Path, help="module file; repeat for parents")
    p.add_argument("--query", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: CagSettings) -> int:
    ctx = ChainContext.open(args.module, models_dir=settings.models_dir)
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    answer = Answer()
    printed = ""
    for _ in answer_from_modules(ctx, ctx.modules, args.query, sampling, answer):
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

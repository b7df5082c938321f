"""The torch side of module metadata: dtype names ↔ torch and safetensors dtypes."""

from __future__ import annotations

import torch

from cag.metadata import ModuleMetadata

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def torch_dtype(metadata: ModuleMetadata) -> torch.dtype:
    """The torch dtype of a module's K/V tensors."""
    return DTYPES[metadata.dtype]

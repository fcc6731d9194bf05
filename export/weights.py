"""Reading `.safetensors` weights and loading them strictly into the reference modules.

Only safetensors is ever read: pickle checkpoints (`.ckpt`, `.pt`, `.bin`) can run arbitrary
code when unpickled, so they are refused with a message on how to convert them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from latentrt.errors import CheckpointError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
SHOW = 5  # how many offending keys an error names


def _convert_hint(path: Path) -> str:
    return (
        f"{path} is a pickle checkpoint; latentrt never unpickles files (they can run code). "
        "Convert it once, in an environment you trust, to safetensors: "
        'python -c "import torch, safetensors.torch as st; '
        "sd = torch.load('IN.ckpt', map_location='cpu', weights_only=True); "
        "sd = sd.get('state_dict', sd); "
        "st.save_file({k: v.contiguous() for k, v in sd.items() "
        "if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\""
    )


def _check_header(path: Path) -> None:
    """Recognize pickles/zip archives by their magic bytes and a safetensors header by its shape."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if head[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
            raise CheckpointError(_convert_hint(path))
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: file is truncated ({size} bytes), not a safetensors file"
            )
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(
                f"{path}: truncated or not a safetensors file (header says {n} bytes, "
                f"file has {size - 8} after it)"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if ends and 8 + n + max(ends) > size:
        raise CheckpointError(
            f"{path}: truncated: tensors need {8 + n + max(ends)} bytes, file has {size}"
        )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of one `.safetensors` file; refuse pickles and damaged files clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(_convert_hint(path))
    _check_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None


def read_sharded(index_json: str | Path) -> dict[str, torch.Tensor]:
    """Read a sharded checkpoint through its `*.safetensors.index.json` weight map."""
    index_json = Path(index_json)
    try:
        weight_map = json.loads(index_json.read_text())["weight_map"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index_json}: unreadable shard index ({e})") from None
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        out.update(read_safetensors(index_json.parent / shard))
    return out


def load_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
) -> nn.Module:
    """Copy `state` into `module`, refusing missing keys, unexpected keys and shape mismatches.

    fp16/bf16 tensors are cast to the module's dtype.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} (model expects {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, first: {', '.join(missing[:SHOW])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first: {', '.join(unexpected[:SHOW])}")
    if wrong:
        problems.append(f"{len(wrong)} keys of the wrong shape, first: {'; '.join(wrong[:SHOW])}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: " + " | ".join(problems)
        )
    dtype = next(iter(own.values())).dtype if own else torch.float32
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True)
    return module

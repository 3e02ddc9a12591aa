"""Decoding shared by evaluation and RL rollouts: `generate`.

`generate` runs its own decoding loop on the KV cache: left-padded batches with positions counted over real
tokens, greedy or sampled (temperature, top-p), each row stopping at its first stop id (kept in the
completion; everything after it is padding with mask 0). Sampling draws only from the `torch.Generator` it
is given, so the same prompts, batch size and generator state give the same completions; saving
`generator.get_state()` in a checkpoint makes a resumed rollout exact.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from llms_trainer.data.packing import pad_id
from llms_trainer.ops.models import eval_mode, is_zero3, unwrapped
from llms_trainer.ops.padding import left_padded, pad_right
from llms_trainer.ops.ranks import batches


@dataclass
class GenerationOutput:
    """Completions in prompt order. L = the longest completion (at most max_new_tokens)."""

    completion_ids: torch.Tensor  # [N, L] long: generated ids up to and including the stop id, then pad id
    completion_mask: torch.Tensor  # [N, L] long: 1 on the generated ids up to and including the stop id
    truncated: torch.Tensor  # [N] bool: reached max_new_tokens without generating a stop id
    texts: list[str]  # each completion decoded with special tokens skipped

    def completions(self) -> list[list[int]]:
        """Generated ids per prompt, without padding."""
        lengths = self.completion_mask.sum(-1).tolist()
        return [row[:n] for row, n in zip(self.completion_ids.tolist(), lengths, strict=True)]


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS and the model's generation_config EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {int(i) for i in ids}


@contextmanager
def generation_model(model: torch.nn.Module, accelerator: Any = None) -> Iterator[torch.nn.Module]:
    """The bare model ready to generate: eval mode and no grad inside, train/eval flags restored on exit.

    `model` is what `accelerator.prepare` returned (or a bare model when `accelerator` is None). Under
    DeepSpeed ZeRO-3 this is collective: every rank gathers all parameters once
    (`deepspeed.zero.GatheredParameters` over all of them) and ZeRO-3's forward hooks are removed until exit,
    through DeepSpeed's `deepspeed.runtime.zero.unwrap_model_for_generation` (what TRL does with
    `ds3_gather_for_generation=True`). Each rank then generates alone: ranks may hold different numbers of
    prompts and stop at different steps. The whole model must fit on one device while generating.
    """
    if accelerator is not None and is_zero3(accelerator):
        if not (hasattr(model, "optimizer") and hasattr(model, "module")):
            raise ValueError("under DeepSpeed ZeRO-3 pass the model returned by accelerator.prepare "
                             "(the DeepSpeed engine), not the unwrapped model")
        from deepspeed.runtime.zero import unwrap_model_for_generation

        with unwrap_model_for_generation(model) as engine, eval_mode(engine):
            yield accelerator.unwrap_model(engine)
        return
    bare = accelerator.unwrap_model(model) if accelerator is not None else model
    if any(hasattr(p, "ds_id") for p in bare.parameters()):
        raise ValueError("the model's parameters are ZeRO-3 partitions: pass the prepared model and the "
                         "accelerator to generate(..., accelerator=...)")
    with eval_mode(bare):
        yield bare


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest most-likely set whose probability reaches `top_p` (the most
    likely token always stays). Rows need not be renormalised for `torch.multinomial`."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def token_picker(do_sample: bool, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [B, V] (fp32) → next ids [B]: argmax, or a draw from softmax(logits / temperature), top-p."""
    if not do_sample:
        return lambda logits: logits.argmax(-1)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            probs = top_p_filter(probs, top_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return sample


def cache_keyword(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument (and output field) of the model's forward: `cache` in recent
    transformers 5.x releases, `past_key_values` (deprecated there) in earlier ones."""
    return "cache" if "cache" in inspect.signature(unwrapped(model, peft=True).forward).parameters else "past_key_values"


def decode_batch(model: torch.nn.Module, rows: Sequence[Sequence[int]], fill: int, stops: torch.Tensor,
                 max_new_tokens: int, pick: Callable[[torch.Tensor], torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, n], mask [B, n], truncated [B]) for one left-padded batch; n ≤ max_new_tokens."""
    inputs = left_padded(rows, fill, stops.device)
    attention_mask, positions = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    cache = cache_keyword(model)
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    finished = torch.zeros(len(rows), dtype=torch.bool, device=stops.device)
    ids, mask = [], []
    for step in range(max_new_tokens):
        token = pick(out.logits[:, -1].float()).masked_fill(finished, fill)
        ids.append(token)
        mask.append(~finished)
        finished = finished | torch.isin(token, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        positions = positions + 1
        out = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, **{cache: getattr(out, cache)})
    return torch.stack(ids, 1), torch.stack(mask, 1).long(), ~finished


def generate(model: torch.nn.Module, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *,
             max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             stop_token_ids: Iterable[int] | None = None, batch_size: int = 8,
             generator: torch.Generator | None = None, accelerator: Any = None) -> GenerationOutput:
    """Complete each prompt (token ids, BOS included) with up to `max_new_tokens` new tokens.

    Greedy by default; `do_sample` draws from softmax(logits / temperature) restricted to the top-p mass,
    using only `generator` (on the model's device; the global RNG when None). `stop_token_ids` default to
    the tokenizer's and the model's generation_config EOS ids; an empty list never stops early. `model` and
    `accelerator` are as in `generation_model` (under ZeRO-3 call on every rank). Result tensors are on CPU.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    empty = [i for i, row in enumerate(prompt_ids) if len(row) == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} has no tokens; every prompt needs at least BOS")
    fill = pad_id(tokenizer)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with generation_model(model, accelerator) as bare:
        device = next(bare.parameters()).device
        if generator is not None and generator.device.type != device.type:
            raise ValueError(f"the generator is on {generator.device} but the model on {device}; "
                             f"create it with torch.Generator(device={str(device)!r})")
        stops = stop_ids(bare, tokenizer) if stop_token_ids is None else {int(i) for i in stop_token_ids}
        stops_t = torch.tensor(sorted(stops), dtype=torch.long, device=device)
        pick = token_picker(do_sample, temperature, top_p, generator)
        for rows in batches(prompt_ids, batch_size):
            ids, mask, truncated = decode_batch(bare, rows, fill, stops_t, max_new_tokens, pick)
            parts.append((ids.cpu(), mask.cpu(), truncated.cpu()))
    if not parts:  # no prompts on this rank (it still took part in the ZeRO-3 gather)
        parts.append((torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long),
                      torch.zeros(0, dtype=torch.bool)))
    width = max(ids.shape[1] for ids, _, _ in parts)
    result = GenerationOutput(
        completion_ids=torch.cat([pad_right(ids, width, fill) for ids, _, _ in parts]),
        completion_mask=torch.cat([pad_right(mask, width, 0) for _, mask, _ in parts]),
        truncated=torch.cat([truncated for _, _, truncated in parts]),
        texts=[],
    )
    result.texts = tokenizer.batch_decode(result.completions(), skip_special_tokens=True)
    return result

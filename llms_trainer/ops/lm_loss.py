"""Next-token loss and log-probs of a causal LM without its full [tokens, vocab] fp32 logits (chunked).

The plain path (`chunk_tokens=0`) lets the model compute logits at every position, [batch, length, vocab], and
takes the fp32 cross-entropy of them: with a 32k-50k vocabulary these logits, their fp32 copy, the softmax
saved for backward and their gradient are the largest tensors of a step. The chunked path instead

1. runs the model as usual (through its DDP / DeepSpeed wrapper, so gradients synchronise), asking for its
   final hidden states (`output_hidden_states=-1`) and for the logits of one position only (`logits_to_keep=1`);
2. drops the positions without a target (`IGNORE_INDEX`) before the LM head;
3. applies the LM head (`get_output_embeddings()`: a plain Linear, one tied to the input embeddings, or a
   LoRA-wrapped one) and the fp32 loss to `chunk_tokens` rows at a time.

Training loss (a sum): `_ChunkedCrossEntropy` takes each chunk's gradients (with respect to its hidden rows
and to the head's trainable parameters) during the forward pass; a sum's gradient is linear in the upstream
gradient, so backward only scales them. One chunk of logits exists at a time, its gradient (softmax -
one-hot) is written over it in place, and the head runs once per chunk, as in the plain path. Per-token log-probs (DPO, GRPO, held-out NLL) have one upstream gradient per
token, so their chunks are recomputed in backward (`torch.utils.checkpoint`); the training loss takes that
path too when the head's parameters are partitioned by DeepSpeed ZeRO-3.

Same loss and gradients as the plain path (tested to 1e-5), including under mixed precision: `autocast`
(the accelerator's `autocast`) puts the head under the same autocast as the model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llms_trainer.data.packing import IGNORE_INDEX, model_inputs
from llms_trainer.ops.models import unwrapped

DEFAULT_CHUNK_TOKENS = 1024
Autocast = Callable[[], AbstractContextManager]


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Position t predicts labels[t + 1]; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def plain_loss_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled positions, from the model's full fp32 logits."""
    return plain_token_losses(model, batch).sum()


def plain_token_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """[B, T] fp32 next-token cross-entropy per position (0 where no target), from the full fp32 logits."""
    logits = model(**model_inputs(batch)).logits
    targets = shifted_targets(batch["labels"])
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none")
    return losses.view(targets.shape)


def lm_loss_sum(model: torch.nn.Module, batch: dict, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                autocast: Autocast = nullcontext) -> torch.Tensor:
    """Summed next-token cross-entropy of a batch (input_ids, attention_mask, labels, optional position_ids).

    `chunk_tokens`: labelled positions per LM-head chunk; 0: the plain path (full logits).
    """
    return lm_loss_terms(model, batch, chunk_tokens, autocast)[0]


def lm_loss_terms(model: torch.nn.Module, batch: dict, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                  autocast: Autocast = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy, [B, T] fp32 per-position losses, detached, 0 where no target).

    The per-position losses are the terms the sum is made of (no extra forward pass); position t holds the
    loss of predicting labels[t + 1]. `chunk_tokens` as in `lm_loss_sum`.
    """
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be >= 0, got {chunk_tokens}")
    if chunk_tokens == 0:
        losses = plain_token_losses(model, batch)
        return losses.sum(), losses.detach()
    targets = shifted_targets(batch["labels"])
    hidden = final_hidden_states(model, model_inputs(batch))
    keep = targets != IGNORE_INDEX
    rows, wanted = hidden[keep], targets[keep]
    head = output_head(model)
    params = [p for p in head.parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for p in head.parameters()):  # ZeRO-3: parameters exist inside forward only
        losses = -_chunked_logprobs(head, rows, wanted, chunk_tokens, 1.0, autocast)
        total = losses.sum()
    elif torch.is_grad_enabled() and (rows.requires_grad or params):
        total, losses = _ChunkedCrossEntropy.apply(rows, wanted, head, chunk_tokens, autocast, *params)
    else:
        losses = torch.cat([_chunk_ce(head, rows[start:start + chunk_tokens], wanted[start:start + chunk_tokens],
                                      autocast) for start in range(0, len(rows), chunk_tokens)]
                           or [rows.new_zeros((0,), dtype=torch.float32)])
        total = losses.sum()
    placed = torch.zeros(targets.shape, dtype=torch.float32, device=losses.device)
    return total, placed.masked_scatter(keep, losses.detach())


def target_logprobs(model: torch.nn.Module, inputs: dict, targets: torch.Tensor, *,
                    chunk_tokens: int = DEFAULT_CHUNK_TOKENS, temperature: float = 1.0,
                    autocast: Autocast = nullcontext) -> torch.Tensor:
    """[B, T] fp32: log p(targets[b, t] | inputs up to position t) where targets != IGNORE_INDEX, else 0.

    `inputs` are the model's forward arguments (`model_inputs`); position t's logits score targets[b, t]
    (already aligned: no shift here). Logits are divided by `temperature`. Differentiable; only the targeted
    positions go through the LM head, `chunk_tokens` at a time.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    hidden = final_hidden_states(model, inputs)
    keep = targets != IGNORE_INDEX
    scored = _chunked_logprobs(output_head(model), hidden[keep], targets[keep], chunk_tokens, temperature,
                               autocast)
    result = torch.zeros(targets.shape, dtype=torch.float32, device=scored.device)
    return result.masked_scatter(keep, scored)


def lm_loss(model: torch.nn.Module, batch: dict, sources: tuple[str, ...] = (), chunk_tokens: int = 0,
            autocast: Autocast = nullcontext) -> tuple[torch.Tensor, dict]:
    """(summed next-token loss, statistics): the loss of every causal-LM stage (`chunk_tokens` as in
    `lm_loss_sum`; 0 here: the model's full logits).

    With `sources` (names in data order) and a batch carrying `source_ids`, the statistics split the same
    per-token losses by the source of each target token: `source/<name>/loss` (nats per target token) and
    `source/<name>/token_share` (its share of the step's target tokens); their token-weighted mean is the loss.
    """
    if not sources or "source_ids" not in batch:
        return lm_loss_sum(model, batch, chunk_tokens, autocast), {}
    total, per_token = lm_loss_terms(model, batch, chunk_tokens, autocast)
    return total, source_stats(per_token, batch, sources)


def source_stats(per_token: torch.Tensor, batch: dict, sources: tuple[str, ...]) -> dict:
    """{source/<name>/loss: (Σ loss, targets), source/<name>/token_share: (targets, all targets)} of a batch."""
    targets = shifted_targets(batch["labels"]) != IGNORE_INDEX
    owner = shifted_targets(batch["source_ids"]).masked_fill(~targets, -1)
    losses = torch.zeros(len(sources), dtype=torch.float64, device=per_token.device)
    losses.index_add_(0, owner[targets], per_token[targets].double())
    counts = torch.bincount(owner[targets], minlength=len(sources)).double()
    every = counts.sum()
    stats = {}
    for i, name in enumerate(sources):
        stats[f"source/{name}/loss"] = (losses[i], counts[i])
        stats[f"source/{name}/token_share"] = (counts[i], every)
    return stats


def target_tokens(batch: dict) -> int:
    """Target tokens of a micro-batch: the divisor of its summed LM loss."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The LM head module (called as a module, so LoRA layers and ZeRO-3 parameter gathering apply)."""
    inner = unwrapped(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        raise _unsupported(model, "it has no output embeddings (LM head)")
    config = getattr(inner, "config", None)
    for key in ("final_logit_softcapping", "logit_scale"):  # Gemma 2/3, Cohere: logits changed after the head
        if getattr(config, key, None) not in (None, 1.0):
            raise _unsupported(model, f"its forward changes the logits after the LM head (config.{key})")
    return head


def final_hidden_states(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """[B, T, hidden]: the decoder's output after its final norm (what the LM head reads), from one forward
    through the model's own wrappers; the model computes logits for the last position only."""
    try:
        out = model(**inputs, output_hidden_states=-1, logits_to_keep=1)
    except TypeError as err:
        if "logits_to_keep" not in str(err) and "output_hidden_states" not in str(err):
            raise
        raise _unsupported(model, f"its forward does not take logits_to_keep/output_hidden_states ({err})") from err
    hidden_states = getattr(out, "hidden_states", None)
    if not hidden_states or hidden_states[-1] is None:
        raise _unsupported(model, "it did not return its hidden states")
    return hidden_states[-1]


def _unsupported(model: torch.nn.Module, why: str) -> Exception:
    from llms_trainer.model.load import ModelLoadError

    return ModelLoadError(f"train.loss_chunk_tokens: {type(unwrapped(model)).__name__} cannot run the chunked "
                          f"loss: {why}; set train.loss_chunk_tokens: 0 to use the model's own logits")


def _chunk_ce(head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, autocast: Autocast) -> torch.Tensor:
    with autocast():
        logits = head(rows)
    return F.cross_entropy(logits.float(), targets, reduction="none")


def _chunk_logprobs(head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, temperature: float,
                    autocast: Autocast) -> torch.Tensor:
    with autocast():
        logits = head(rows)
    scaled = logits.float() / temperature
    return scaled.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def _chunked_logprobs(head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                      temperature: float, autocast: Autocast) -> torch.Tensor:
    """[N] fp32 log-probs of `targets` from hidden `rows` [N, hidden]; each chunk's logits recomputed in backward."""
    parts = []
    for start in range(0, len(rows), chunk_tokens):
        args = (head, rows[start:start + chunk_tokens], targets[start:start + chunk_tokens], temperature, autocast)
        parts.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled()
                     else _chunk_logprobs(*args))
    return torch.cat(parts) if parts else rows.new_zeros((0,), dtype=torch.float32)


def _chunk_ce_and_grads(head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, autocast: Autocast,
                        wrt: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(cross-entropy per row of one chunk, the gradients of their sum with respect to `wrt`).

    The logits' gradient, softmax - one-hot, is written over the fp32 logits in place, so a chunk holds one
    [rows, vocab] fp32 tensor (plus logsumexp's temporary) rather than the logits, their log-softmax and two
    gradients; autograd then takes it through the head (LoRA included).
    """
    with torch.enable_grad(), autocast():
        logits = head(rows)
    with torch.no_grad():
        probs = logits.detach().float()  # a new tensor under autocast; else the logits' own storage (not saved)
        lse = torch.logsumexp(probs, dim=-1)
        picked = probs.gather(-1, targets[:, None]).squeeze(-1)
        loss = lse - picked
        probs.sub_(lse[:, None]).exp_()
        probs[torch.arange(len(targets), device=probs.device), targets] -= 1.0
    grads = torch.autograd.grad(logits, wrt, grad_outputs=probs.to(logits.dtype)) if wrt else ()
    return loss, list(grads)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """(Σ cross-entropy(head(rows), targets), the [N] terms), gradients taken chunk by chunk during forward.

    Inputs: rows [N, hidden], targets [N], the head module, the chunk size, the autocast factory, then the
    head's trainable parameters (so autograd hands their gradients on: DDP/ZeRO hooks, tied embeddings).
    The terms are not differentiable (statistics only).
    """

    @staticmethod
    def forward(ctx, rows, targets, head, chunk_tokens, autocast, *params):
        need_rows = ctx.needs_input_grad[0]
        rows_grad = torch.empty_like(rows) if need_rows else None
        params_grad: list[torch.Tensor | None] = [None] * len(params)  # fp32 sums over the chunks
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        terms = torch.zeros(len(rows), dtype=torch.float32, device=rows.device)
        for start in range(0, len(rows), chunk_tokens):
            chunk = rows[start:start + chunk_tokens].detach().requires_grad_(need_rows)
            loss, grads = _chunk_ce_and_grads(head, chunk, targets[start:start + chunk_tokens], autocast,
                                              ([chunk] if need_rows else []) + list(params))
            if need_rows:
                rows_grad[start:start + chunk_tokens] = grads.pop(0)
            for i, grad in enumerate(grads):
                params_grad[i] = grad.float() if params_grad[i] is None else params_grad[i].add_(grad)
            terms[start:start + chunk_tokens] = loss
            total += loss.sum()
        params_grad = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) if g is None else g
                       for g, p in zip(params_grad, params, strict=True)]  # no rows: zero gradients
        ctx.param_dtypes, ctx.need_rows = [p.dtype for p in params], need_rows
        ctx.save_for_backward(*([rows_grad] if need_rows else []), *params_grad)
        ctx.mark_non_differentiable(terms)
        return total, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_terms):
        saved = list(ctx.saved_tensors)  # scaled in place: each is used once
        rows_grad = saved.pop(0).mul_(grad_total) if ctx.need_rows else None
        params_grad = [g.mul_(grad_total).to(dtype) for g, dtype in zip(saved, ctx.param_dtypes, strict=True)]
        return (rows_grad, None, None, None, None, *params_grad)

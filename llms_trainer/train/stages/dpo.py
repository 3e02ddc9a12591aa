"""DPO stage: preference pairs against a frozen reference (the starting checkpoint), and its pure loss.

Data: pairs `{prompt, selected|chosen, rejected}` from `dpo.datasets` (jsonl files, globs or reward shards,
read as the reward stage reads them: `llms_trainer.data.pairs`; a `margin` column is ignored). Each side is
the chat conversation [user: prompt, assistant: response] encoded by `ChatEncoder` (one BOS, role tokens
typed in the text kept as text); the scored tokens are the response and its `<|endofchat|>`. A sequence
longer than data.seq_length is cut there; a pair whose response is cut away entirely on either side, or
whose two sides come out identical, is dropped and counted. Pairs per micro-batch per process:
train.train_batch_size; chosen and rejected rows go through one forward. Items (the loss divisor) = pairs.

Reference: the model of train.ckpt, frozen (`prepare_frozen`); under LoRA the policy itself with its
adapters switched off (no copy). `dpo.precompute_ref_logps` scores every pair with the reference once at
start and frees it. Held-out pairs (`dpo.eval_datasets`) are scored by the reference at start too.

Engine form: the run returns (sum of per-pair losses, stats) and divides nothing: the engine divides the
step's summed losses by the step's pairs (the loss divisor), which is the batch-mean loss.

Notation (TRL DPOTrainer's, `loss_type` names as in TRL): per pair, with log-probs summed over the
completion tokens (`llms_trainer.ops.logprobs.token_logprobs` summed per row),

    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)

    sigmoid (default)  -(1 - eps) log σ(β h) - eps log σ(-β h)      DPO (Rafailov et al. 2023, Eq. 7);
                                                                    eps > 0 is conservative DPO (cDPO,
                                                                    Mitchell 2023), TRL's label_smoothing
    robust             [-(1 - eps) log σ(β h) + eps log σ(-β h)] / (1 - 2 eps)
                                                                    robust DPO (Chowdhury et al. 2024),
                                                                    an unbiased loss under label flips of
                                                                    probability eps < 0.5
    ipo                (h - 1 / (2 β))^2                            IPO (Azar et al. 2023, Eq. 17); as in TRL
                                                                    fed per-token MEAN log-probs (this stage
                                                                    averages over the response for ipo)
    hinge              max(0, 1 - β h)                              SLiC / RSO hinge; 1/β is the margin

Implicit rewards: chosen = β (policy_chosen - ref_chosen), rejected = β (policy_rejected - ref_rejected),
detached (they are statistics, not part of the loss). Logged per step (means over its pairs):
train/rewards/chosen, rewards/rejected, rewards/margins (chosen - rejected), rewards/accuracies (share with
chosen > rejected), logps/chosen, logps/rejected (the policy's response log-probs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from llms_trainer.config import ConfigError, RunConfig
from llms_trainer.data.packing import IGNORE_INDEX, pad_id
from llms_trainer.data.pairs import (
    BadRecordError,
    EncodedPairs,
    Pair,
    PairDataError,
    PairRun,
    PairStream,
    pair_batch,
    read_pairs,
)
from llms_trainer.data.sft import ChatEncoder, ChatTokenizerError
from llms_trainer.data.shards import dataset_files
from llms_trainer.evaluation.methods import build_evaluators
from llms_trainer.evaluation.pair_accuracy import named_files
from llms_trainer.model.load import build_chat_lm
from llms_trainer.ops.logprobs import token_logprobs
from llms_trainer.ops.models import eval_mode
from llms_trainer.ops.ranks import batches, gather_results, merge_results, rank_share
from llms_trainer.ops.reference import build_reference, reference_of
from llms_trainer.train.stages import Stage, StageContext
from llms_trainer.train.stages.sections.dpo import SECTION, DPOConfig

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses [B], chosen_rewards [B], rejected_rewards [B]) per pair, by the formulas of the module doc."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type in ("ipo", "hinge"):
        raise ValueError(f"label_smoothing applies to the sigmoid and robust losses, not {loss_type!r}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


# -- data -----------------------------------------------------------------------------------------------

@dataclass
class DPOPairs:
    """Encoded pairs (rows 2i chosen, 2i+1 rejected) and the [start, stop) of each row's scored tokens."""

    encoded: EncodedPairs
    spans: np.ndarray  # [2N, 2]
    dropped: int = 0  # pairs whose response was cut away or whose sides came out identical
    bad_lines: int = 0  # lines skipped under data.on_bad_record: skip

    def __len__(self) -> int:
        return len(self.encoded)


def encode_dpo_pairs(tokenizer, pairs: list[Pair], seq_length: int) -> DPOPairs:
    """Both sides of every pair as chat conversations; scored tokens = the labels SFT would train."""
    encoder = ChatEncoder(tokenizer, seq_length)
    samples = encoder.encode([[{"role": "user", "content": p.prompt}, {"role": "assistant", "content": reply}]
                              for p in pairs for reply in (p.selected, p.rejected)])
    rows, spans, dropped = [], [], 0
    for chosen, rejected in zip(samples[0::2], samples[1::2], strict=True):
        if chosen is None or rejected is None or chosen.ids == rejected.ids:
            dropped += 1
            continue
        for sample in (chosen, rejected):
            scored = [i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX]
            rows.append(sample.ids)
            spans.append((scored[0], scored[-1] + 1))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    tokens = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    return DPOPairs(EncodedPairs(tokens, offsets, None, dropped), np.asarray(spans, dtype=np.int64).reshape(-1, 2),
                    dropped)


def dpo_batch(pairs: DPOPairs, indices: list[int], fill: int, ref_logps: torch.Tensor | None = None) -> dict:
    """input_ids/attention_mask (chosen rows, then rejected rows), labels_mask on the scored tokens, and
    ref_logps [2B] when precomputed."""
    batch = pair_batch(pairs.encoded, indices, fill)
    mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    rows = [2 * i for i in indices] + [2 * i + 1 for i in indices]
    for k, row in enumerate(rows):
        start, stop = pairs.spans[row]
        mask[k, start:stop] = True
    batch["labels_mask"] = mask
    if ref_logps is not None:
        batch["ref_logps"] = torch.cat([ref_logps[indices, 0], ref_logps[indices, 1]])
    return batch


class DPOStream(PairStream):
    """The reward stage's pair stream (same dealing, epochs and resume) yielding `dpo_batch`es."""

    def __init__(self, pairs: DPOPairs, *args):
        super().__init__(pairs.encoded, *args)
        self.dpo_pairs = pairs
        self.ref_logps: torch.Tensor | None = None  # [N, 2] with dpo.precompute_ref_logps

    def next_batch(self) -> dict | None:
        first = self.batches * self.world_size * self.batch_size + self.rank
        indices = [self._pair_at(first + self.world_size * j) for j in range(self.batch_size)]
        if super().next_batch() is None:
            return None
        return dpo_batch(self.dpo_pairs, indices, self.fill, self.ref_logps)


@dataclass
class DPOData:
    """What build_train_data returns (to build_evals and start): the stream and the held-out pairs; start
    adds the reference log-probs of the held-out pairs (the evaluator reads them)."""

    stream: DPOStream
    eval_sets: dict[str, DPOPairs] = field(default_factory=dict)
    eval_ref_logps: dict[str, torch.Tensor] = field(default_factory=dict)  # [N, 2] per set, set by start


def load_pairs(tokenizer, entries: list[str], seq_length: int, on_bad_record: str, key: str) -> DPOPairs:
    try:
        records, report = read_pairs(entries, on_bad_record)
        pairs = encode_dpo_pairs(tokenizer, records, seq_length)
        pairs.bad_lines = sum(report.bad.values())
    except BadRecordError as err:
        raise ConfigError(f"key {key}: {err}; fix the line or set data.on_bad_record: skip") from None
    except PairDataError as err:
        raise ConfigError(f"key {key}: {err}") from None
    except ChatTokenizerError as err:
        raise ConfigError(f"key data.tokenizer_path: {err}") from None
    if not len(pairs):
        raise ConfigError(f"key {key}: all {pairs.dropped} pairs were dropped (response cut away by "
                          f"data.seq_length={seq_length}, or identical sides); raise data.seq_length")
    return pairs


def build_train_data(cfg: RunConfig, tokenizer, accelerator) -> DPOData:
    d, t = cfg.data, cfg.train
    pairs = load_pairs(tokenizer, dataset_files(cfg.dpo.datasets), d.seq_length, d.on_bad_record, "dpo.datasets")
    stream = DPOStream(pairs, t.train_batch_size, accelerator.process_index, accelerator.num_processes, t.seed,
                       t.num_training_epochs, pad_id(tokenizer))
    per_step = t.train_batch_size * t.gradient_accumulation_steps * accelerator.num_processes
    accelerator.print(f"dpo data: {len(pairs)} pairs, {pairs.bad_lines} bad lines skipped, {pairs.dropped} dropped "
                      f"(response cut away by data.seq_length = {d.seq_length} or identical sides); {per_step} pairs "
                      "per optimizer step")
    eval_sets = {name: load_pairs(tokenizer, [path], d.seq_length, "error", "dpo.eval_datasets")
                 for name, path in named_files(cfg.dpo.eval_datasets or {}).items()}
    return DPOData(stream, eval_sets)


# -- log-probs ------------------------------------------------------------------------------------------

def response_logps(model, batch: dict, mean: bool = False) -> torch.Tensor:
    """[rows] the summed (or, for ipo, mean) log-probs of each row's scored tokens."""
    labels = batch["labels_mask"]
    sums = token_logprobs(model, batch["input_ids"], batch["attention_mask"], labels).sum(-1)
    return sums / labels.sum(-1).clamp(min=1) if mean else sums


def all_pair_logps(model, pairs: DPOPairs, batch_size: int, accelerator, fill: int, mean: bool) -> torch.Tensor:
    """[N, 2] response log-probs (chosen, rejected) of every pair under `model` (no grad; call in eval mode).

    Pairs are split across processes and gathered (every process runs the same number of forwards)."""
    share = rank_share(list(range(len(pairs))), accelerator.process_index, accelerator.num_processes)
    local = []
    with torch.no_grad():
        for group in batches(share, batch_size):
            batch = dpo_batch(pairs, [i for _, i in group], fill)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            chosen, rejected = response_logps(model, batch, mean).float().cpu().chunk(2)
            local += [(index, (c, r)) for (index, _), c, r in zip(group, chosen.tolist(), rejected.tolist(),
                                                                   strict=True)]
    return torch.tensor(merge_results(gather_results(accelerator, local)), dtype=torch.float32)


# -- the run --------------------------------------------------------------------------------------------

class DPORun(PairRun):
    """Micro-batches of pairs; policy and reference log-probs of both sides, the DPO loss and its statistics."""

    def __init__(self, stream: DPOStream, options: DPOConfig, reference, accelerator):
        self.stream, self.options, self.reference, self.accelerator = stream, options, reference, accelerator

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        o, mean = self.options, self.options.loss_type == "ipo"
        ref = batch.get("ref_logps")
        if ref is None:
            with reference_of(model, self.reference, self.accelerator) as reference:
                ref = response_logps(reference, batch, mean)
        policy = response_logps(model, batch, mean)
        policy_chosen, policy_rejected = policy.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        losses, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=o.beta,
                                            loss_type=o.loss_type, label_smoothing=o.label_smoothing)
        pairs = losses.numel()
        stats = {"rewards/chosen": (chosen.sum(), pairs), "rewards/rejected": (rejected.sum(), pairs),
                 "rewards/margins": ((chosen - rejected).sum(), pairs),
                 "rewards/accuracies": ((chosen > rejected).sum(), pairs),
                 "logps/chosen": (policy_chosen.detach().sum(), pairs),
                 "logps/rejected": (policy_rejected.detach().sum(), pairs)}
        return losses.sum(), stats


def start(cfg: RunConfig, ctx: StageContext) -> DPORun:
    """The run; reference log-probs of the held-out pairs (and, with precompute_ref_logps, of every training
    pair) are computed here, before the first step."""
    data: DPOData = ctx.data
    options, accelerator = cfg.dpo, ctx.accelerator
    reference = build_reference(cfg, ctx.tokenizer, ctx.accelerator, ctx.model_config)
    fill, size, mean = pad_id(ctx.tokenizer), cfg.eval.batch_size, options.loss_type == "ipo"
    with reference_of(ctx.model, reference, accelerator) as scorer:
        data.eval_ref_logps = {name: all_pair_logps(scorer, pairs, size, accelerator, fill, mean)
                               for name, pairs in data.eval_sets.items()}
        if options.precompute_ref_logps:
            data.stream.ref_logps = all_pair_logps(scorer, data.stream.dpo_pairs, cfg.train.train_batch_size,
                                                   accelerator, fill, mean)
    if options.precompute_ref_logps:
        reference = None  # every reference log-prob is known: free the model
    return DPORun(data.stream, options, reference, accelerator)


# -- eval -----------------------------------------------------------------------------------------------

class DPOEvaluator:
    """eval/dpo/<name>/{loss, rewards/margins, rewards/accuracies} on held-out pairs, and over all files."""

    def __init__(self, data: DPOData, options: DPOConfig, accelerator, batch_size: int, fill: int):
        self.data, self.options, self.accelerator, self.batch_size, self.fill = data, options, accelerator, batch_size, fill

    def __call__(self, model, step: int) -> dict[str, float]:
        o, metrics, every = self.options, {}, []
        with eval_mode(model):
            for name, pairs in self.data.eval_sets.items():
                policy = all_pair_logps(model, pairs, self.batch_size, self.accelerator, self.fill,
                                        o.loss_type == "ipo")
                ref = self.data.eval_ref_logps[name]
                losses, chosen, rejected = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=o.beta,
                                                    loss_type=o.loss_type, label_smoothing=o.label_smoothing)
                margins = chosen - rejected
                every.append(margins)
                metrics[f"eval/dpo/{name}/loss"] = float(losses.mean())
                metrics[f"eval/dpo/{name}/rewards/margins"] = float(margins.mean())
                metrics[f"eval/dpo/{name}/rewards/accuracies"] = float((margins > 0).float().mean())
        margins = torch.cat(every)
        metrics["eval/dpo/rewards/margins"] = float(margins.mean())
        metrics["eval/dpo/rewards/accuracies"] = float((margins > 0).float().mean())
        return metrics


def build_evals(cfg: RunConfig, tokenizer, accelerator, data: DPOData) -> list:
    """The eval methods of eval.eval_methods, and the held-out pair metrics of dpo.eval_datasets."""
    evals = build_evaluators(cfg, tokenizer, accelerator)
    if data.eval_sets:
        evals.append(DPOEvaluator(data, cfg.dpo, accelerator, cfg.eval.batch_size, pad_id(tokenizer)))
    return evals


STAGE = Stage(name="dpo", build_model=build_chat_lm, build_train_data=build_train_data, build_evals=build_evals,
              start=start, section=SECTION)

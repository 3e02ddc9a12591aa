"""GRPO stage: sampled groups of completions per prompt, rewards, group advantages, the clipped loss.

Rollout (every process, once per `grpo.num_iterations` optimizer steps): train.train_batch_size ×
gradient_accumulation_steps / num_generations prompts (`llms_trainer.data.prompts`), each completed
`num_generations` times by the shared `generate` from this process's `torch.Generator` (state saved in
checkpoints); a completion ends at <|endofchat|> or EOS, the rest is masked. Rewards
(`llms_trainer.ops.completion_rewards`) are gathered from all processes for the group advantages. With
num_iterations > 1 the rollout-time log-probs are the "old" ones of the ratio; with beta > 0 the frozen
starting model's are taken too (the LoRA policy with adapters off under LoRA); all of logits / temperature.
Checkpoints come between rollouts; one written at the end of training inside a rollout stores the rollout,
so resuming from it is exact too. Logged: reward, rewards/<part> (both with _std), frac_reward_zero_std,
completions/mean_length|max_length|clipped_ratio, clip_ratio/low_mean|high_mean|region_mean, kl (beta > 0).

Per completion token t of sequence i, with A_i the sequence's advantage (TRL GRPOTrainer's objective;
`epsilon_high` > `epsilon_low` is DAPO's clip-higher, TRL's `epsilon` / `epsilon_high`):

    r    = exp(logp - old_logp)                    importance ratio (1 on the first pass over a rollout)
    L_it = -min(r A_i, clamp(r, 1 - epsilon_low, 1 + epsilon_high) A_i) + beta * KL_it
    KL   = exp(ref - logp) - (ref - logp) - 1       the k3 estimator of KL(policy || reference), beta > 0

Normalisations (`loss_type`, TRL's names), with m the completion mask, B sequences, and their engine form
(the engine sums `loss_sum` over the micro-batches and ranks of an optimizer step and divides by the summed
`items`, so the whole step gets the whole-batch value):

    grpo     mean_i (sum_t m L / sum_t m)         loss_sum = sum_i of per-sequence means, items = sequences
    dr_grpo  sum m L / (B * max_completion_len)   loss_sum = sum m L / max_completion_len, items = sequences
    dapo     sum m L / sum m                      loss_sum = sum m L, items = completion tokens
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llms_trainer.config import ConfigError, RunConfig
from llms_trainer.data.chat_format import END_TOKEN
from llms_trainer.data.packing import pad_id
from llms_trainer.data.prompts import (
    PromptDataError,
    PromptSet,
    PromptStream,
    encode_prompts,
    read_prompts,
)
from llms_trainer.data.sft import ChatTokenizerError
from llms_trainer.data.shards import dataset_files
from llms_trainer.evaluation.methods import build_evaluators
from llms_trainer.evaluation.rl import CompletionRewardEval
from llms_trainer.model.load import build_chat_lm
from llms_trainer.ops.completion_rewards import (
    Rewarder,
    RewardFunctionError,
    build_rewarder,
    check_signature,
    load_reward_function,
    score_completions,
)
from llms_trainer.ops.generate import generate
from llms_trainer.ops.logprobs import token_logprobs
from llms_trainer.ops.models import eval_mode
from llms_trainer.ops.padding import left_padded
from llms_trainer.ops.reference import build_reference, reference_of
from llms_trainer.train.stages import Stage, StageContext
from llms_trainer.train.stages.sections.grpo import SECTION

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, num_generations: int,
                     scale_rewards: str = "group") -> tuple[torch.Tensor, int]:
    """(advantages [N], number of groups whose rewards are all equal) for rewards [N] of N / G prompts with
    G = `num_generations` consecutive completions each.

    advantage = reward - its group's mean, divided by the group's std (`group`, GRPO), the std of the whole
    batch (`batch`) or nothing (`none`, Dr. GRPO) — TRL's `scale_rewards`, with TRL's 1e-4 added to the
    std. A group whose rewards are all equal carries no signal: its advantages are exactly 0. Rewards of a
    group must all be here (gather them across ranks first).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}; got {scale_rewards!r}")
    if num_generations < 2 or rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must be 1-D with a multiple of num_generations >= 2 entries; got shape "
                         f"{tuple(rewards.shape)} and num_generations={num_generations}")
    grouped = rewards.float().view(-1, num_generations)
    advantages = grouped - grouped.mean(-1, keepdim=True)
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(-1, keepdim=True) + 1e-4)
    elif scale_rewards == "batch":
        advantages = advantages / (grouped.std() + 1e-4)
    flat = grouped.amax(-1) == grouped.amin(-1)
    advantages = advantages.masked_fill(flat[:, None], 0.0)
    return advantages.view(-1), int(flat.sum())


def grpo_token_losses(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
                      advantages: torch.Tensor, *, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                      beta: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-token [B, C] tensors: "loss" (L of the module doc), "kl" (0 when beta == 0), and the clip flags
    "clipped_low" (r < 1 - epsilon_low with A < 0), "clipped_high" (r > 1 + epsilon_high with A > 0) —
    the tokens whose gradient the clip removes, as TRL counts them. `old_logps` None means the first
    pass (old = logps, detached, so r == 1); `ref_logps` is needed when beta > 0."""
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps (the reference model's token log-probs)")
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(loss)
    if beta > 0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return {"loss": loss, "kl": kl, "clipped_low": (ratio < 1 - epsilon_low) & (adv < 0),
            "clipped_high": (ratio > 1 + epsilon_high) & (adv > 0)}


def grpo_loss_sum(token_losses: torch.Tensor, completion_mask: torch.Tensor, loss_type: str = "dapo",
                  max_completion_length: int | None = None) -> tuple[torch.Tensor, int]:
    """(loss_sum, items) of per-token losses [B, C] under `loss_type` (table of the module doc)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    mask = completion_mask.to(token_losses.dtype)
    per_sequence = (token_losses * mask).sum(-1)
    if loss_type == "grpo":
        return (per_sequence / mask.sum(-1).clamp(min=1)).sum(), token_losses.shape[0]
    if loss_type == "dr_grpo":
        if not max_completion_length or max_completion_length < completion_mask.shape[1]:
            raise ValueError("dr_grpo needs max_completion_length >= the completion width (the configured "
                             f"maximum, not the batch's), got {max_completion_length}")
        return per_sequence.sum() / max_completion_length, token_losses.shape[0]
    return per_sequence.sum(), int(completion_mask.sum())


# -- data -----------------------------------------------------------------------------------------------

@dataclass
class GRPOData:
    train: PromptSet
    stream: PromptStream
    rewarder: Rewarder | None = None  # built by start (the reward model is placed after accelerator.prepare)


def load_prompt_set(cfg: RunConfig, tokenizer, entries: list[str], key: str, on_bad_record: str) -> PromptSet:
    """Read, encode and check prompts (ConfigError naming `key`, file:line for a bad record); prompts that
    leave no room for grpo.max_new_tokens in data.seq_length are dropped and counted."""
    limit = cfg.data.seq_length - cfg.grpo.max_new_tokens
    try:
        prompts, report = read_prompts(entries, on_bad_record)
        result = encode_prompts(prompts, tokenizer, limit)
        result.bad_lines = sum(report.bad.values())
    except PromptDataError as err:
        raise ConfigError(f"key {key}: {err}") from None
    except ChatTokenizerError as err:
        raise ConfigError(f"key data.tokenizer_path: {err}") from None
    if not result.prompts:
        raise ConfigError(f"key {key}: every prompt is longer than data.seq_length - grpo.max_new_tokens = {limit} "
                          "tokens; raise data.seq_length or lower grpo.max_new_tokens")
    for index, entry in enumerate(cfg.grpo.reward_funcs):
        try:
            check_signature(load_reward_function(entry.name), entry.name, result.columns)
        except RewardFunctionError as err:
            raise ConfigError(f"key grpo.reward_funcs.{index}.name: {err}") from None
    return result


def build_train_data(cfg: RunConfig, tokenizer, accelerator) -> GRPOData:
    g, t = cfg.grpo, cfg.train
    train = load_prompt_set(cfg, tokenizer, dataset_files(g.prompts), "grpo.prompts", cfg.data.on_bad_record)
    per_draw = t.train_batch_size * t.gradient_accumulation_steps // g.num_generations
    stream = PromptStream(len(train.prompts), per_draw, accelerator.process_index, accelerator.num_processes, t.seed)
    accelerator.print(f"grpo data: {len(train.prompts)} prompts ({train.bad_lines} bad lines skipped, "
                      f"{train.dropped} dropped as too long), columns "
                      f"{train.columns or 'none'}; per rollout {per_draw * accelerator.num_processes} prompts × "
                      f"{g.num_generations} completions, {g.num_iterations} optimizer step(s) each")
    return GRPOData(train, stream)


# -- rollouts -------------------------------------------------------------------------------------------

def _gathered(accelerator, values: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return values
    return accelerator.gather(values.to(accelerator.device)).cpu()


def assemble(prompt_ids: list[list[int]], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
             fill: int) -> dict:
    """Rows = left-padded prompt | right-padded completion; completion_start = the prompt width."""
    prompts = left_padded(prompt_ids, fill, "cpu")
    return {"input_ids": torch.cat([prompts["input_ids"], completion_ids], 1),
            "attention_mask": torch.cat([prompts["attention_mask"], completion_mask], 1),
            "completion_mask": completion_mask, "completion_start": prompts["input_ids"].shape[1]}


def micro_batch(batch: dict, rows: slice) -> dict:
    """Rows of a rollout batch, with the columns that are padding in every one of them dropped."""
    out = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    start, mask = out["completion_start"], out["attention_mask"]
    lead = int(mask[:, :start].sum(-1).neg().add(start).min())  # left padding common to every row
    width = max(1, int(out["completion_mask"].sum(-1).max()))
    for key in ("input_ids", "attention_mask"):
        out[key] = out[key][:, lead:start + width]
    for key in ("completion_mask", "loss_mask"):
        out[key] = out[key][:, :width]
    out["completion_start"] = start - lead
    return out


class GRPORun:
    """Rollouts and the clipped loss (see the module doc)."""

    def __init__(self, cfg: RunConfig, ctx: StageContext, data: GRPOData, reference):
        self.cfg, self.g, self.ctx, self.data, self.reference = cfg, cfg.grpo, ctx, data, reference
        self.accelerator, self.tokenizer = ctx.accelerator, ctx.tokenizer
        self.stops = sorted({int(ctx.tokenizer.eos_token_id), int(ctx.tokenizer.convert_tokens_to_ids(END_TOKEN))})
        self.generator = torch.Generator(device=self.accelerator.device)
        self.generator.manual_seed(cfg.train.seed * 1000 + self.accelerator.process_index)
        self.rollout: list[dict] = []
        self.passes_left, self.max_length = 0, 0
        self.step, self.stepped = 0, False  # optimizer steps done (for messages): a fetch after loss() is the next

    def next_step(self, n: int) -> list[dict]:
        self.step, self.stepped = self.step + self.stepped, False
        if self.passes_left == 0:
            self.rollout, self.passes_left = self._rollout(n), self.g.num_iterations
        self.passes_left -= 1
        return self.rollout

    def _rollout(self, n: int) -> list[dict]:
        g, acc, data = self.g, self.accelerator, self.data
        indices = [i for i in data.stream.next_draw() for _ in range(g.num_generations)]
        ids = [data.train.ids[i] for i in indices]
        out = generate(self.ctx.model, self.tokenizer, ids, max_new_tokens=g.max_new_tokens, do_sample=True,
                       temperature=g.temperature, top_p=g.top_p, stop_token_ids=self.stops,
                       batch_size=g.generation_batch_size, generator=self.generator, accelerator=acc)
        parts = score_completions(data.rewarder, [data.train.prompts[i].text for i in indices], out.texts,
                                  data.train.column_values(indices), acc, self.step + 1)
        rewards, lengths = data.rewarder.total(parts), out.completion_mask.sum(-1)
        everyone = _gathered(acc, torch.stack([rewards, lengths.float()], 1))
        advantages, _ = group_advantages(everyone[:, 0], g.num_generations, g.scale_rewards)
        mine = slice(acc.process_index * len(ids), (acc.process_index + 1) * len(ids))
        grouped = rewards.view(-1, g.num_generations)
        batch = assemble(ids, out.completion_ids, out.completion_mask, pad_id(self.tokenizer))
        keep = ~out.truncated if g.mask_truncated_completions else torch.ones_like(out.truncated)
        batch.update(loss_mask=out.completion_mask * keep[:, None], advantages=advantages[mine], rewards=rewards,
                     reward_parts=parts, truncated=out.truncated,
                     zero_std=(grouped.amax(-1) == grouped.amin(-1)).repeat_interleave(g.num_generations))
        self.max_length = int(everyone[:, 1].max())
        size = len(ids) // n
        micro = [micro_batch(batch, slice(k * size, (k + 1) * size)) for k in range(n)]
        for m in micro:
            self._add_fixed_logps(m)
        return micro

    def _logps(self, model, batch: dict) -> torch.Tensor:
        """[B, C] log-probs of the completion tokens (logits / temperature)."""
        start = batch["completion_start"]
        labels = F.pad(batch["completion_mask"], (start, 0)).bool()
        return token_logprobs(model, batch["input_ids"], batch["attention_mask"], labels,
                              temperature=self.g.temperature)[:, start:]

    def _add_fixed_logps(self, batch: dict) -> None:
        """old_logps (num_iterations > 1) and ref_logps (beta > 0): fixed for the whole rollout."""
        device = self.accelerator.device
        on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if self.g.num_iterations > 1:
            with eval_mode(self.ctx.model):
                batch["old_logps"] = self._logps(self.ctx.model, on_device).cpu()
        if self.g.beta > 0:
            with reference_of(self.ctx.model, self.reference, self.accelerator) as reference:
                batch["ref_logps"] = self._logps(reference, on_device).cpu()

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        g, self.stepped = self.g, True
        parts = grpo_token_losses(self._logps(model, batch), batch.get("old_logps"), batch.get("ref_logps"),
                                  batch["advantages"], epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high,
                                  beta=g.beta)
        loss_sum, _ = grpo_loss_sum(parts["loss"], batch["loss_mask"], g.loss_type, g.max_new_tokens)
        return loss_sum, self._stats(batch, parts)

    def _stats(self, batch: dict, parts: dict) -> dict:
        rows, mask = len(batch["rewards"]), batch["loss_mask"].bool()
        tokens = mask.sum()
        squares = lambda x: (x.sum(), (x * x).sum(), rows)  # noqa: E731
        stats = {"reward": squares(batch["rewards"])}
        for k, name in enumerate(self.data.rewarder.names):
            stats[f"rewards/{name}"] = squares(batch["reward_parts"][:, k])
        low, high = parts["clipped_low"] & mask, parts["clipped_high"] & mask
        stats.update({"frac_reward_zero_std": (batch["zero_std"].sum(), rows),
                      "completions/mean_length": (batch["completion_mask"].sum(), rows),
                      "completions/clipped_ratio": (batch["truncated"].sum(), rows),
                      "clip_ratio/low_mean": (low.sum(), tokens), "clip_ratio/high_mean": (high.sum(), tokens),
                      "clip_ratio/region_mean": ((low | high).sum(), tokens)})
        if self.g.beta > 0:
            stats["kl"] = ((parts["kl"].detach() * mask).sum(), tokens)
        return stats

    def loss_divisor(self, batch: dict) -> int:
        return int(batch["loss_mask"].sum()) if self.g.loss_type == "dapo" else len(batch["rewards"])

    def count_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def state_dict(self) -> dict:
        """The prompt position and generator after the latest rollout, and that rollout while it is in use."""
        state = self.generator.get_state()
        return {"stream": self.data.stream.state_dict(), "passes_left": self.passes_left,
                "step": self.step + self.stepped,
                "generator": base64.b64encode(bytes(state.tolist())).decode("ascii"), "max_length": self.max_length,
                "rollout": [_to_json(m) for m in self.rollout] if self.passes_left else None}

    def load_state_dict(self, state: dict) -> None:
        self.data.stream.load_state_dict(state["stream"])
        raw = base64.b64decode(state["generator"])
        self.generator.set_state(torch.tensor(list(raw), dtype=torch.uint8))
        self.passes_left, self.max_length = int(state["passes_left"]), int(state["max_length"])
        self.step, self.stepped = int(state.get("step", 0)), False
        self.rollout = [_from_json(m) for m in state["rollout"]] if self.passes_left else []

    def can_save(self) -> bool:
        return self.passes_left == 0

    def report(self) -> dict[str, float]:
        return {"train/completions/max_length": float(self.max_length), "data/epochs": self.data.stream.epochs()}


def _to_json(batch: dict) -> dict:
    return {k: {"dtype": str(v.dtype).removeprefix("torch."), "data": v.tolist()} if isinstance(v, torch.Tensor)
            else v for k, v in batch.items()}


def _from_json(batch: dict) -> dict:
    return {k: torch.tensor(v["data"], dtype=getattr(torch, v["dtype"])) if isinstance(v, dict) else v
            for k, v in batch.items()}


def start(cfg: RunConfig, ctx: StageContext) -> GRPORun:
    data: GRPOData = ctx.data
    data.rewarder = build_rewarder(cfg, ctx.accelerator, data.train.columns)
    reference = build_reference(cfg, ctx.tokenizer, ctx.accelerator, ctx.model_config) if cfg.grpo.beta > 0 else None
    return GRPORun(cfg, ctx, data, reference)


# -- eval and config ---------------------------------------------------------------------------------

def build_evals(cfg: RunConfig, tokenizer, accelerator, data: GRPOData) -> list:
    """The eval methods of eval.eval_methods, and the reward of greedy completions on grpo.eval_prompts
    (scored by the run's rewarder, which start adds to `data`)."""
    evals = build_evaluators(cfg, tokenizer, accelerator)
    if cfg.grpo.eval_prompts:
        prompts = load_prompt_set(cfg, tokenizer, dataset_files(cfg.grpo.eval_prompts), "grpo.eval_prompts", "error")
        evals.append(CompletionRewardEval(cfg, prompts, lambda: data.rewarder, tokenizer, accelerator))
    return evals


STAGE = Stage(name="grpo", build_model=build_chat_lm, build_train_data=build_train_data, build_evals=build_evals,
              start=start, section=SECTION)

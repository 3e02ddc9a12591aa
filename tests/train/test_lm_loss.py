"""Chunked cross-entropy: the same loss and gradients as the model's full logits, with only labelled positions
reaching the LM head, one chunk at a time, in forward and in backward (32k vocabulary)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llms_trainer.data.packing import IGNORE_INDEX
from llms_trainer.model.load import ModelLoadError
from llms_trainer.ops.lm_loss import lm_loss_sum, output_head, plain_loss_sum
from llms_trainer.ops.logprobs import token_logprobs

VOCAB = 32000


def tiny_llama(tie: bool = False, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tie, initializer_range=0.1)
    return LlamaForCausalLM(config).float()


def with_lora(model, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=targets))
    for name, param in model.named_parameters():  # LoRA B starts at 0: give the adapters a real effect
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


MODELS = {
    "full": lambda: tiny_llama(),
    "tied_embeddings": lambda: tiny_llama(tie=True, layers=1),
    "lora_q_v": lambda: with_lora(tiny_llama(layers=1), ["q_proj", "v_proj"]),
    "lora_q_v_lm_head": lambda: with_lora(tiny_llama(layers=1), ["q_proj", "v_proj", "lm_head"]),
}


def lm_batch() -> dict:
    """3 rows: a prompt-masked row, a right-padded row (pads unlabelled) and a packed row restarting positions."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 24), generator=gen)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[0, :9] = IGNORE_INDEX
    mask[1, 17:], labels[1, 17:] = 0, IGNORE_INDEX
    positions = torch.arange(24).repeat(3, 1)
    positions[2, 10:] = torch.arange(14)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}


def loss_and_grads(model, batch, chunk_tokens) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean loss over labelled tokens and the gradient of every trainable parameter."""
    model.zero_grad(set_to_none=True)
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss = lm_loss_sum(model, batch, chunk_tokens) / count
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("chunk_tokens", [7, 1024])
def test_chunked_loss_and_gradients_equal_the_full_logits(kind, chunk_tokens):
    model = MODELS[kind]().train()
    batch = lm_batch()
    plain_loss, plain_grads = loss_and_grads(model, batch, 0)
    loss, grads = loss_and_grads(model, batch, chunk_tokens)
    torch.testing.assert_close(loss, plain_loss, atol=1e-5, rtol=0)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=0, msg=name)
    assert all(g.abs().sum() > 0 for g in grads.values())
    if kind.startswith("lora"):
        assert all("lora_" in name for name in grads)
        assert any("lm_head" in name for name in grads) == kind.endswith("lm_head")
    if kind == "tied_embeddings":  # one parameter, gradients from the embedding lookup and from the head
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_only_labelled_positions_reach_the_head_in_chunks():
    model, batch = tiny_llama(layers=1), lm_batch()
    rows_seen = []
    hook = output_head(model).register_forward_hook(lambda mod, args, out: rows_seen.append(args[0].shape[:-1]))
    try:
        lm_loss_sum(model, batch, chunk_tokens=7).backward()
    finally:
        hook.remove()
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model_call, *chunks = rows_seen
    assert model_call == (3, 1)  # the model's own logits: the last position of each row only
    assert [n for (n,) in chunks] == [7] * (labelled // 7) + ([labelled % 7] if labelled % 7 else [])


def saved_for_backward(model, fn) -> list[torch.Size]:
    """Shapes of the tensors (other than parameters) that autograd saves for backward while `fn()` runs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in params:
            shapes.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return shapes


def test_backward_keeps_no_more_than_one_chunk_of_logits():
    model, batch = tiny_llama(layers=1), lm_batch()
    rows = 3 * 24

    def vocab_wide(shapes):
        return [s.numel() // VOCAB for s in shapes if len(s) and s[-1] == VOCAB]

    plain = vocab_wide(saved_for_backward(model, lambda: lm_loss_sum(model, batch, 0)))
    chunked = vocab_wide(saved_for_backward(model, lambda: lm_loss_sum(model, batch, 7)))
    assert max(plain) == rows  # the check bites: the full logits are kept for backward
    assert max(chunked, default=0) <= 7


def test_no_grad_chunked_loss_equals_plain():
    model, batch = tiny_llama(layers=1).eval(), lm_batch()
    with torch.no_grad():
        torch.testing.assert_close(lm_loss_sum(model, batch, 5), plain_loss_sum(model, batch), atol=1e-3, rtol=1e-6)


def test_chunked_token_logprobs_and_their_gradients_equal_the_full_logits():
    """Per-token log-probs (DPO/GRPO) recompute each chunk in backward: gradients of a non-uniform weighting."""
    model = with_lora(tiny_llama(layers=1), ["q_proj", "v_proj", "lm_head"]).train()
    batch = lm_batch()
    labels_mask = batch["labels"] != IGNORE_INDEX
    labels_mask[:, 0] = False
    weights = torch.randn(labels_mask.shape, generator=torch.Generator().manual_seed(2)) / labels_mask.sum()

    def run(logps_fn):
        model.zero_grad(set_to_none=True)
        logps = logps_fn()
        (logps * weights).sum().backward()
        return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    def full_logits():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits.float() / 0.7
        picked = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return F.pad(picked, (1, 0)) * labels_mask

    expected, expected_grads = run(full_logits)
    got, grads = run(lambda: token_logprobs(model, batch["input_ids"], batch["attention_mask"], labels_mask,
                                            temperature=0.7, position_ids=batch["position_ids"], chunk_tokens=5))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=0, msg=name)


def test_head_runs_under_the_accelerators_autocast():
    """Mixed precision: accelerate autocasts the model's forward only; the chunked head gets the same autocast."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = accelerator.prepare(tiny_llama(layers=1))
    batch = lm_batch()
    dtypes = []
    hook = output_head(model).register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    try:
        plain = plain_loss_sum(model, batch)
        chunked = lm_loss_sum(model, batch, 7, autocast=accelerator.autocast)
    finally:
        hook.remove()
    assert set(dtypes) == {torch.bfloat16}
    torch.testing.assert_close(chunked, plain, rtol=2e-3, atol=0)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_a_batch_without_labels_gives_zero_loss_and_zero_gradients():
    model, batch = tiny_llama(layers=1), lm_batch()
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    loss = lm_loss_sum(model, batch, 7)
    loss.backward()
    assert float(loss) == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


class NoHiddenStates(torch.nn.Module):
    """A causal LM whose forward takes only the basic arguments (as some remote-code models do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, use_cache=False, position_ids=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    def get_output_embeddings(self):
        return self.inner.lm_head


def test_a_model_the_chunked_loss_cannot_serve_is_an_error_naming_the_key():
    model, batch = tiny_llama(layers=1), lm_batch()
    with pytest.raises(ModelLoadError, match="train.loss_chunk_tokens: NoHiddenStates cannot .*logits_to_keep"):
        lm_loss_sum(NoHiddenStates(model), batch, 7)
    lm_loss_sum(NoHiddenStates(model), batch, 0)  # the plain path serves it
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ModelLoadError, match="train.loss_chunk_tokens: .*final_logit_softcapping"):
        lm_loss_sum(model, batch, 7)


def test_negative_chunk_size_is_an_error():
    with pytest.raises(ValueError, match="chunk_tokens"):
        lm_loss_sum(tiny_llama(layers=1), lm_batch(), -1)


@pytest.mark.dist
@pytest.mark.slow
def test_zero2_two_processes_chunked_equal_one_process_plain(write_config, deterministic_model_config_file,
                                                             corpus_dir, tmp_path):
    """DeepSpeed ZeRO-2 on 2 processes with 5-position chunks trains step for step like 1 process on the full
    logits (same global batch): the head's gradients reach ZeRO's reduction through the chunked loss."""
    from llms_trainer.train.run import run
    from tests.faults.test_resume_backends import DATA, launch, logged
    from tests.train.conftest import RecordingLogger
    from tests.train.test_distributed import hf_logits

    steps = {"num_training_steps": 4, "gradient_accumulation_steps": 2, "num_warmup_steps": 1}
    sources = {"en": str(corpus_dir / "en")}
    plain = write_config("plain", sources=sources, data=DATA,
                         train={**steps, "train_batch_size": 2, "loss_chunk_tokens": 0})
    reference = run(plain, [], str(deterministic_model_config_file), logger=RecordingLogger()).losses
    chunked = write_config("chunked", sources=sources, data=DATA,
                           train={**steps, "train_batch_size": 1, "loss_chunk_tokens": 5})
    launch("ds_stage2_cpu.yaml", chunked, deterministic_model_config_file)
    losses = logged(tmp_path / "chunked", "train/loss")
    assert sorted(losses) == [1, 2, 3, 4]
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], abs=1e-5)
    assert torch.allclose(hf_logits(tmp_path / "chunked" / "checkpoint-4"),
                          hf_logits(tmp_path / "plain" / "checkpoint-4"), atol=1e-4)

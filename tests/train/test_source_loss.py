"""Per-source training loss: the per-token losses of the step split by the source of each target token.

It equals the loss computed separately per source on the same rows (labels of the other sources masked),
through the chunked and the plain loss path, with document attention and accumulation, in one process and in
a 2-process DeepSpeed ZeRO-2 launch; the token-weighted mean of the per-source losses is the step loss.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llms_trainer.data.packing import IGNORE_INDEX
from llms_trainer.ops.lm_loss import lm_loss, plain_loss_sum
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from llms_trainer.train.stages.pretrain import build_train_data
from tests.train.conftest import RecordingLogger
from tests.train.test_lm_loss import lm_batch, tiny_llama

SOURCES = ("en", "zh", "code")
# lr this small leaves every weight as it was (fp32), so the logged losses can be recomputed from the
# checkpoint on the rows each step trained on
FROZEN = {"lr": 1e-30, "min_lr": 0.0, "num_training_steps": 3, "gradient_accumulation_steps": 2,
          "train_batch_size": 2, "loss_chunk_tokens": 7}


def per_source_by_masking(model, batch: dict, n_sources: int) -> list[tuple[float, int]]:
    """(Σ loss, targets) per source: the plain loss of the batch with every other source's labels masked."""
    out = []
    for s in range(n_sources):
        labels = batch["labels"].masked_fill(batch["source_ids"] != s, IGNORE_INDEX)
        with torch.no_grad():
            total = plain_loss_sum(model, {**batch, "labels": labels})
        out.append((float(total), int((labels[:, 1:] != IGNORE_INDEX).sum())))
    return out


@pytest.mark.parametrize("chunk_tokens", [0, 5])
def test_source_losses_equal_each_source_computed_alone(chunk_tokens):
    model = tiny_llama(layers=1)
    batch = lm_batch()
    batch["source_ids"] = torch.tensor([[0] * 12 + [2] * 12, [1] * 17 + [-1] * 7, [2] * 10 + [0] * 14])
    total, stats = lm_loss(model, batch, sources=SOURCES, chunk_tokens=chunk_tokens)
    expected = per_source_by_masking(model, batch, 3)
    for name, (loss_sum, count) in zip(SOURCES, expected, strict=True):
        got_sum, got_count = stats[f"source/{name}/loss"]
        assert float(got_count) == count > 0
        assert float(got_sum) / count == pytest.approx(loss_sum / count, abs=1e-5)
    weights = [float(stats[f"source/{n}/token_share"][0]) / float(stats[f"source/{n}/token_share"][1])
               for n in SOURCES]
    mean = sum(w * float(stats[f"source/{n}/loss"][0]) / float(stats[f"source/{n}/loss"][1])
               for w, n in zip(weights, SOURCES, strict=True))
    assert sum(weights) == pytest.approx(1.0)
    assert mean == pytest.approx(total.item() / sum(c for _, c in expected), abs=1e-5)


def test_stages_without_sources_keep_no_statistics():
    total, stats = lm_loss(tiny_llama(layers=1), lm_batch(), chunk_tokens=5)
    assert stats == {} and total.requires_grad


def write_sources_config(write_config, corpus_dir: Path, name: str, **data) -> Path:
    return write_config(name, sources={"en": str(corpus_dir / "en"), "zh": str(corpus_dir / "zh")},
                        data={"seq_length": 24, **data}, train=FROZEN)


def recomputed_step_losses(config: Path, checkpoint: Path, world: int) -> dict[int, dict[str, float]]:
    """{step: {source: loss}} recomputed from the rows every rank's loader gives, by masking per source."""
    from transformers import AutoModelForCausalLM

    from llms_trainer.model.load import load_tokenizer

    cfg = load_config(config)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    accumulation, steps = cfg.train.gradient_accumulation_steps, cfg.train.num_training_steps
    sums: dict[int, list[list[float]]] = {}
    for rank in range(world):
        loader = build_train_data(cfg, tokenizer, SimpleNamespace(process_index=rank, num_processes=world))
        names = loader.dataset.source_names
        for i, batch in enumerate(itertools.islice(iter(loader), accumulation * steps)):
            acc = sums.setdefault(i // accumulation + 1, [[0.0, 0] for _ in names])
            for row, (loss_sum, count) in zip(acc, per_source_by_masking(model, batch, len(names)), strict=True):
                row[0] += loss_sum
                row[1] += count
    return {step: {n: s / c for n, (s, c) in zip(names, rows, strict=True) if c}
            for step, rows in sums.items()}


def logged_by_step(rows: list[tuple[int, dict]], names: list[str]) -> dict[int, dict[str, float]]:
    return {step: {n: m[f"train/source/{n}/loss"] for n in names if f"train/source/{n}/loss" in m}
            for step, m in rows if "train/loss" in m}


def assert_mean_is_the_step_loss(rows: list[tuple[int, dict]], names: list[str]) -> None:
    for _, m in (r for r in rows if "train/loss" in r[1]):
        shares = [m.get(f"train/source/{n}/token_share", 0.0) for n in names]
        assert sum(shares) == pytest.approx(1.0)
        mean = sum(s * m[f"train/source/{n}/loss"] for s, n in zip(shares, names, strict=True) if s)
        assert mean == pytest.approx(m["train/loss"], abs=1e-5)


@pytest.mark.parametrize("document_attention", [False, True])
def test_one_process_logs_the_loss_of_each_source_on_its_rows(write_config, deterministic_model_config_file,
                                                              corpus_dir, tmp_path, document_attention):
    config = write_sources_config(write_config, corpus_dir, "single", document_attention=document_attention)
    logger = RecordingLogger()
    run(config, [], str(deterministic_model_config_file), logger=logger)
    expected = recomputed_step_losses(config, tmp_path / "single" / "checkpoint-3", world=1)
    got = logged_by_step(logger.rows, ["en", "zh"])
    assert sorted(got) == [1, 2, 3] and {n for v in got.values() for n in v} == {"en", "zh"}
    for step, losses in expected.items():
        assert got[step] == pytest.approx(losses, abs=1e-5)
    assert_mean_is_the_step_loss(logger.rows, ["en", "zh"])


@pytest.mark.dist
@pytest.mark.slow
def test_zero2_two_processes_log_the_loss_of_each_source_on_their_rows(write_config, deterministic_model_config_file,
                                                                       corpus_dir, tmp_path):
    from tests.faults.test_resume_backends import launch

    config = write_sources_config(write_config, corpus_dir, "zero2", document_attention=True)
    launch("ds_stage2_cpu.yaml", config, deterministic_model_config_file)
    expected = recomputed_step_losses(config, tmp_path / "zero2" / "checkpoint-3", world=2)
    rows = [(r["step"], r) for r in map(json.loads, (tmp_path / "zero2" / "metrics.jsonl").read_text().splitlines())]
    got = logged_by_step(rows, ["en", "zh"])
    assert sorted(got) == [1, 2, 3]
    for step, losses in expected.items():
        assert got[step] == pytest.approx(losses, abs=1e-5)
    assert_mean_is_the_step_loss(rows, ["en", "zh"])

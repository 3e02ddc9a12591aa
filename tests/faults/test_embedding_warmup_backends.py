"""train.embedding_warmup_steps under 2-process DDP and DeepSpeed ZeRO-2/3: during the warm-up only the token
embeddings change (every other weight of the gathered checkpoint bit-identical to the start), and a run resumed
from a checkpoint inside the warm-up crosses the switch exactly as the uninterrupted run did. With
train.embedding_warmup_rows_from only the new rows change (old rows bit-identical too)."""

from __future__ import annotations

import pytest
import torch

from tests.faults.support import logged
from tests.faults.test_resume_backends import launch, write_run_config
from tests.train.test_embedding_warmup import (
    assert_only_embeddings_changed,
    assert_only_new_rows_changed,
    initial_model,
    weights,
)

pytestmark = [pytest.mark.dist, pytest.mark.slow]

WARMUP, STEPS = 4, 8
OVERRIDES = (f"train.embedding_warmup_steps={WARMUP}", "train.embedding_warmup_lr=2e-2",
             f"train.num_training_steps={STEPS}", "train.num_warmup_steps=1")


@pytest.mark.parametrize("acc_config", ["cpu_ddp.yaml", "ds_stage2_cpu.yaml", "ds_stage3_cpu.yaml"])
def test_warmup_freezes_the_rest_and_resumes_across_the_switch(acc_config, corpus_dir, tiny_tokenizer_dir,
                                                               tiny_tokenizer, deterministic_model_config_file,
                                                               tmp_path):
    start = initial_model(tmp_path / "start", len(tiny_tokenizer), tie=False)
    overrides = (*OVERRIDES, f"train.ckpt={start}")
    work = tmp_path / "run"
    config = write_run_config(tmp_path / "run.yaml", work, corpus_dir, tiny_tokenizer_dir, 1)
    launch(acc_config, config, deterministic_model_config_file, *overrides)
    assert_only_embeddings_changed(weights(start), weights(work / f"checkpoint-{WARMUP}"))
    end = weights(work / f"checkpoint-{STEPS}")
    assert not torch.equal(end["model.layers.0.mlp.up_proj.weight"], weights(start)["model.layers.0.mlp.up_proj.weight"])

    resumed = tmp_path / "resumed"
    config = write_run_config(tmp_path / "resumed.yaml", resumed, corpus_dir, tiny_tokenizer_dir, 1)
    launch(acc_config, config, deterministic_model_config_file, *overrides, f"train.resume={work / 'checkpoint-2'}")
    losses, lrs = logged(work, "train/loss"), logged(work, "train/lr")
    again, again_lrs = logged(resumed, "train/loss"), logged(resumed, "train/lr")
    assert sorted(again) == list(range(3, STEPS + 1))
    for step in again:
        assert again[step] == pytest.approx(losses[step], abs=1e-6)
        assert again_lrs[step] == pytest.approx(lrs[step], rel=1e-9)
    again_end = weights(resumed / f"checkpoint-{STEPS}")
    assert all(torch.allclose(end[k], again_end[k], atol=1e-6) for k in end)


@pytest.mark.parametrize("acc_config", ["cpu_ddp.yaml", "ds_stage2_cpu.yaml", "ds_stage3_cpu.yaml"])
def test_new_rows_warmup_keeps_old_rows_bit_identical(acc_config, corpus_dir, tiny_tokenizer_dir, tiny_tokenizer,
                                                      deterministic_model_config_file, tmp_path):
    start = initial_model(tmp_path / "start", len(tiny_tokenizer), tie=False)
    first_row = len(tiny_tokenizer) - 100
    work = tmp_path / "run"
    config = write_run_config(tmp_path / "run.yaml", work, corpus_dir, tiny_tokenizer_dir, 1)
    launch(acc_config, config, deterministic_model_config_file, *OVERRIDES, f"train.ckpt={start}",
           "train.weight_decay=0", f"train.embedding_warmup_rows_from={first_row}", f"save_interval={WARMUP}")
    assert_only_new_rows_changed(weights(start), weights(work / f"checkpoint-{WARMUP}"), first_row)

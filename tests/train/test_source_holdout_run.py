"""A pretraining run with `eval.source_holdout_records`: held-out records never reach a training batch over a
whole epoch, the data report states them, every eval logs eval/source/<name>/… and bad settings are one
error line naming the key."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from llms_trainer.config import ConfigError
from llms_trainer.model.load import load_tokenizer
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from llms_trainer.train.stages.pretrain import build_train_data
from tests.train.conftest import RecordingLogger

HOLDOUT = 50  # en: 120 records in shards of 40; zh: 60 records in one shard


def test_a_whole_epoch_of_batches_holds_no_held_out_record(write_config):
    config = write_config("epoch", data={"concat_multiple_sequence": False, "sequence_sample_mode": "none",
                                         "seq_length": 512}, train={"num_training_epochs": 1},
                          eval={"source_holdout_records": HOLDOUT})
    cfg = load_config(config)
    tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    loader = build_train_data(cfg, tokenizer, SimpleNamespace(process_index=0, num_processes=1))
    seen: dict[str, set[int]] = {}
    for batch in loader:
        for ids, sources in zip(batch["input_ids"], batch["source_ids"], strict=True):
            text = tokenizer.decode(ids[sources >= 0], skip_special_tokens=True)
            name = loader.dataset.source_names[int(sources[0])]
            seen.setdefault(name, set()).update(int(m) for m in re.findall(r"#\s*(\d+)", text))
    assert seen == {"en": set(range(120 - HOLDOUT)), "zh": set(range(60 - HOLDOUT))}
    assert {n: r["holdout_records"] for n, r in loader.report().items()} == {"en": HOLDOUT, "zh": HOLDOUT}


def test_every_eval_logs_each_sources_held_out_loss(write_config, model_config_file):
    config = write_config("evals", train={"train_and_eval": True, "num_training_steps": 4}, eval_interval=2,
                          eval={"source_holdout_records": 5})
    logger = RecordingLogger()
    run(config, [], str(model_config_file), logger=logger)
    evals = {step: m for step, m in logger.rows if any(k.startswith("eval/") for k in m)}
    assert sorted(evals) == [2, 4]
    for metrics in evals.values():
        for name in ("en", "zh"):
            assert metrics[f"eval/source/{name}/nats_per_char"] > 0
            assert metrics[f"eval/source/{name}/loss"] > metrics[f"eval/source/{name}/nats_per_char"]
    reported = [m["data/en/holdout_records"] for _, m in logger.rows if "data/en/holdout_records" in m]
    assert reported and set(reported) == {5}


def test_holding_out_a_whole_source_is_one_error_line(write_config, model_config_file, capsys):
    from llms_trainer.commands.train import main

    config = write_config("too_many", eval={"source_holdout_records": 60})
    assert main(["--train_config", str(config), "--model_config", str(model_config_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "eval.source_holdout_records 60 leaves no training record" in err[-1]


def test_other_stages_reject_the_key(write_config):
    config = write_config("sft", data={"mode": "sft"}, eval={"source_holdout_records": 3})
    with pytest.raises(ConfigError, match="key eval.source_holdout_records: holds out pretraining records"):
        load_config(config)

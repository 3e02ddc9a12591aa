"""train/data_wait_fraction: the share of step time spent waiting for the next micro-batches, every log."""

from __future__ import annotations

import dataclasses
import time

import llms_trainer.train.stages.pretrain as pretrain
from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger


class SlowLoader:
    """The pretrain loader, `delay_s` slower per micro-batch."""

    def __init__(self, loader, delay_s: float):
        self.loader, self.delay_s = loader, delay_s

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay_s)
            yield batch

    def __getattr__(self, name):  # state_dict, load_state_dict, report
        return getattr(self.loader, name)


def wait_fractions(config, model_config, monkeypatch, delay_s: float) -> dict[int, float]:
    build = pretrain.build_train_data
    slow = dataclasses.replace(pretrain.STAGE, build_train_data=lambda *a: SlowLoader(build(*a), delay_s))
    monkeypatch.setattr(pretrain, "STAGE", slow)
    logger = RecordingLogger()
    run(config, ["train.resume=none", "train.overwrite_work_dir=true"], str(model_config), logger=logger)
    return {step: m["train/data_wait_fraction"] for step, m in logger.rows if "train/loss" in m}


def test_data_wait_fraction_is_logged_every_interval_and_sees_a_slow_loader(write_config, model_config_file,
                                                                            monkeypatch):
    config = write_config(train={"num_training_steps": 6}, log_interval=2)
    slow = wait_fractions(config, model_config_file, monkeypatch, delay_s=1.0)
    fast = wait_fractions(config, model_config_file, monkeypatch, delay_s=0.0)
    assert list(slow) == list(fast) == [2, 4, 6]
    assert all(0.0 <= f <= 1.0 for f in [*slow.values(), *fast.values()])
    # after the first interval (start-up): 1 s of waiting per step of well under a second of compute
    assert slow[4] > 0.5 and slow[6] > 0.5
    assert fast[4] < slow[4] and fast[6] < slow[6]

"""The dpo stage's config: the `dpo:` section and its checks (registered with the stage in dpo.py)."""

from __future__ import annotations

import glob
import os
from typing import Literal

from pydantic import Field, model_validator

from llms_trainer.config import Datasets, Fail, RunConfig, Section, StageSection, bundled_files
from llms_trainer.data.shards import dataset_files


class DPOConfig(Section):
    """dpo: section (stage dpo). Pairs per micro-batch per process: train.train_batch_size."""

    datasets: Datasets = Field(None, description="preference-pair jsonl file(s) {prompt, selected|chosen, "
                               "rejected}, globs or shard dirs (compress_data.py --mode reward), as "
                               "data.reward_model_datasets of the reward stage; a path, a list or {name: path}")
    eval_datasets: Datasets = Field(None, description="held-out pair files for eval/dpo/<name>/* (loss, reward "
                                    "margin and accuracy against the reference) with train.train_and_eval")
    beta: float = Field(0.1, gt=0, description="strength of the tie to the reference (the implicit reward is "
                        "beta · log(pi / pi_ref) of the response)")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid: DPO | ipo: squared distance to 1/(2 beta) | hinge: SLiC | robust: "
        "noise-robust DPO (with label_smoothing)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed share of flipped labels (cDPO for "
                                   "sigmoid, robust DPO); 0: off; not with ipo or hinge")
    precompute_ref_logps: bool = Field(False, description="score every pair with the reference once at start, "
                                       "then free it (no reference forward per step, no reference in memory)")

    @model_validator(mode="after")
    def _resolve(self) -> DPOConfig:
        self.datasets, self.eval_datasets = bundled_files(self.datasets), bundled_files(self.eval_datasets)
        return self


def check_config(cfg: RunConfig, fail: Fail) -> None:
    """The dpo stage's keys: pair files exist, label smoothing fits the loss, no pretraining sources."""
    options = cfg.dpo
    if options is None or not dataset_files(options.datasets):
        fail("dpo.datasets", "no preference-pair files; give jsonl files, globs or shard dirs of {prompt, selected, "
             "rejected} records")
    for key, value in (("dpo.datasets", options.datasets), ("dpo.eval_datasets", options.eval_datasets)):
        for entry in dataset_files(value):
            if not (os.path.exists(entry) or glob.glob(entry)):
                fail(key, f"'{entry}' matches nothing")
    if options.label_smoothing and options.loss_type in ("ipo", "hinge"):
        fail("dpo.label_smoothing", f"applies to the sigmoid and robust losses, not {options.loss_type}; set it to 0")
    if cfg.data.data:
        fail("data.data", "the dpo stage reads dpo.datasets; remove data.data")


SECTION = StageSection(model=DPOConfig, check=check_config, chat=True,
                       evaluates=lambda cfg: bool(cfg.dpo.eval_datasets))

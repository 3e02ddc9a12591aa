"""The one shim for the original configs' keys: old spellings are renamed before validation, and keys that
are accepted but have no effect here are listed so a run can say so in one note each.

    eval.genration_eval_save_path   → eval.generation_eval_save_path (the original spelling)
    eval.eval_methods: [nll]        → nll_eval (EvalConfig.methods)
    data.num_sequences, data.split_by_shard, data.dataset_map_num_proc, train.downscale_weight (outside the
    reward stage): accepted, no effect
"""

from __future__ import annotations

from typing import Any

from llms_trainer.config.schema import ConfigError, RunConfig

# (section, old key, new key)
RENAMED = (("eval", "genration_eval_save_path", "generation_eval_save_path"),)
# keys of the original configs that this trainer accepts but does not need: (section, key, stages reading it)
COMPATIBILITY_KEYS = (("data", "num_sequences", ()), ("data", "split_by_shard", ()),
                      ("train", "downscale_weight", ("reward",)), ("data", "dataset_map_num_proc", ()))


def rename_old_keys(raw: dict[str, Any], where: str) -> None:
    """Move each old spelling in `raw` (the YAML mapping) to its current key; both with different values is
    an error."""
    for section, old, new in RENAMED:
        node = raw.get(section)
        if not isinstance(node, dict) or old not in node:
            continue
        value = node.pop(old)
        if node.get(new) not in (None, value):
            raise ConfigError(f"{where}: key {section}.{old}: {old} and {new} differ; keep one")
        node[new] = value


def compatibility_keys_set(cfg: RunConfig) -> list[str]:
    """The compatibility-only keys this config sets that its stage ignores (each gets a one-line note)."""
    return [f"{section}.{key}" for section, key, readers in COMPATIBILITY_KEYS
            if getattr(getattr(cfg, section), key, None) not in (None, False) and cfg.stage_name() not in readers]

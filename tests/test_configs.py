"""Every shipped config validates: training YAMLs, accelerate configs, model configs, sampling policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llms_trainer.data.mixing import load_policy
from llms_trainer.model.load import load_model_config
from llms_trainer.train.stages import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TRAIN_CONFIGS = [p for kind in ("pretrain_configs", "sft_configs", "reward_model_configs")
                 for p in sorted((CONFIGS / kind).glob("*.yaml"))]
STAGE_OF_DIR = {"reward_model_configs": "reward"}  # set by the stage's script (train_reward_model.py)
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate_configs").glob("*.yaml"))
POLICIES = sorted((CONFIGS / "sample_policy").rglob("*.json"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_shipped_configs_exist():
    for kind in ("pretrain_configs", "reward_model_configs"):
        assert {"llama.yaml", "tiny_demo.yaml"} <= {p.name for p in TRAIN_CONFIGS if p.parent.name == kind}
    assert {"cpu.yaml", "cpu_ddp.yaml", "ds_stage1.yaml", "ds_stage2.yaml", "ds_stage3.yaml",
            "ds_stage3_offload.yaml", "ds_stage2_cpu.yaml", "ds_stage3_cpu.yaml"} <= {p.name for p in ACCELERATE_CONFIGS}
    assert POLICIES


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=rel)
def test_training_config_validates(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # paths in configs are relative to the repository root
    # shard globs exist only after data/compress_data.py, and work_dirs/ holds what an earlier step of the
    # pipeline writes (the demo's checkpoints, extended model and chat tokenizer); every other file must exist
    raw = yaml.safe_load(path.read_text())
    overrides = [f"stage={STAGE_OF_DIR[path.parent.name]}"] if path.parent.name in STAGE_OF_DIR else []
    overrides += [f"{section}.{key}=configs/tokenizers/demo_base" for section, key in
                  (("data", "tokenizer_path"), ("train", "ckpt"))
                  if str(raw.get(section, {}).get(key) or "").startswith("work_dirs/")
                  and not (ROOT / raw[section][key]).exists()]
    cfg = load_config(rel(path), overrides, check_data=(ROOT / "data" / "pretrain_data").is_dir())
    assert cfg.train.num_training_steps or cfg.train.num_training_epochs
    assert cfg.train.num_warmup_steps <= (cfg.train.num_training_steps or cfg.train.num_warmup_steps)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=rel)
def test_accelerate_config_validates(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # accelerate's own schema: unknown keys raise
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw["mixed_precision"], str), "quote 'no' in YAML, else it loads as False"
    if raw["distributed_type"] == "DEEPSPEED":
        assert raw["use_cpu"] is False, "use_cpu with DeepSpeed silently falls back to DDP"
        assert config.deepspeed_config["zero_stage"] in (1, 2, 3)
        if config.deepspeed_config["zero_stage"] == 3:
            assert config.deepspeed_config.get("zero3_save_16bit_model") is True
    if path.name.startswith("multi_node"):
        assert raw["num_machines"] > 1


@pytest.mark.parametrize("path", sorted((CONFIGS / "model_configs").glob("*")), ids=rel)
def test_model_config_builds(path):
    from transformers import AutoModelForCausalLM

    config = load_model_config(path)
    model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000  # bundled configs are demo-sized


def _sources_by_policy() -> dict[Path, list[str]]:
    """Policy file → the sources of the training configs that use it."""
    used: dict[Path, list[str]] = {}
    for path in TRAIN_CONFIGS:
        data = yaml.safe_load(path.read_text())["data"]
        if data.get("sample_policy_file"):
            used[(ROOT / data["sample_policy_file"]).resolve()] = list(data["data"])
    return used


@pytest.mark.parametrize("path", POLICIES, ids=rel)
def test_sample_policy_matches_its_sources(path):
    sources = _sources_by_policy().get(path.resolve())
    if sources is None:  # not used by a shipped config: it must fit one of the bundled sample sets
        names = set(json.loads(path.read_text()))
        candidates = [sorted(p.stem for p in (ROOT / "data/shuffled_data" / kind).glob("*.jsonl"))
                      for kind in ("pretrain", "sft")]
        sources = next((c for c in candidates if names <= set(c)), sorted(names))
    weights = load_policy(path, sources)
    assert sum(weights.values()) == pytest.approx(1.0)

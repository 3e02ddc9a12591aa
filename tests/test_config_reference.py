"""The config reference is the schema's, so documentation never drifts from what loads; the Chinese reference
describes exactly the keys the schema has. (README.md and README_zh.md holding the current reference:
tests/test_readme_zh.py.)"""

from __future__ import annotations

import pytest

from llms_trainer.config import SHARED, run_config_model
from llms_trainer.config_descriptions_zh import DESCRIPTIONS_ZH
from llms_trainer.config_reference import all_keys, main, reference_markdown
from llms_trainer.train.stages import config_stages


def _schema_sections():
    """Every section of the schema with its key prefix, taken from the stage registry rather than the
    reference."""
    stages = config_stages()
    model = run_config_model(stages)
    sections = [("", model), *((f"{name}.", model.model_fields[name].annotation) for name in SHARED)]
    for name, stage in stages.items():
        if stage.model is not None:
            sections.append((f"{name}.", stage.model))
    return sections


def test_every_key_is_described_and_listed():
    sections = ("sft", "reward", "dpo", "grpo", "data", "train", "eval")
    reference = reference_markdown()
    for prefix, model in _schema_sections():
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            if prefix == "" and name in sections:
                continue
            assert f"{prefix}{name}" in all_keys(), f"{prefix}{name} is missing from the reference"
            assert f"| `{prefix}{name}` |" in reference
    assert "grpo.reward_funcs" in all_keys()  # a list of models is a key, not a section


def test_every_key_has_one_chinese_description():
    keys = all_keys()
    assert not keys - DESCRIPTIONS_ZH.keys(), (
        f"keys without a Chinese description in llms_trainer/config_descriptions_zh.py: "
        f"{sorted(keys - DESCRIPTIONS_ZH.keys())}")
    assert not DESCRIPTIONS_ZH.keys() - keys, (
        f"Chinese descriptions of keys that do not exist: {sorted(DESCRIPTIONS_ZH.keys() - keys)}")
    assert all(text.strip() for text in DESCRIPTIONS_ZH.values())


def test_the_chinese_reference_has_the_same_rows_with_chinese_descriptions():
    en, zh = reference_markdown("en").splitlines(), reference_markdown("zh").splitlines()
    keys = [line.split("`")[1] for line in en if line.startswith("| `")]
    assert keys == [line.split("`")[1] for line in zh if line.startswith("| `")]
    assert "| 键 | 类型 | 默认值 | 含义 |" in zh and "**顶层**" in zh
    assert f"| {DESCRIPTIONS_ZH['train.lr']} |" in reference_markdown("zh")


def test_a_missing_chinese_description_is_an_error_naming_the_key(monkeypatch, capsys):
    monkeypatch.delitem(DESCRIPTIONS_ZH, "train.lr")
    with pytest.raises(ValueError, match="train.lr"):
        reference_markdown("zh")
    assert main(["--lang", "zh"]) == 2
    assert "error: key train.lr has no Chinese description" in capsys.readouterr().err


def test_write_picks_the_language_by_file_name(tmp_path, capsys):
    block = "intro\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\nend\n"
    en, zh = tmp_path / "README.md", tmp_path / "README_zh.md"
    en.write_text(block, encoding="utf-8")
    zh.write_text(block, encoding="utf-8")
    assert main(["--write", str(en), str(zh)]) == 0
    assert en.read_text(encoding="utf-8") == f"intro\n{reference_markdown('en')}\nend\n"
    assert zh.read_text(encoding="utf-8") == f"intro\n{reference_markdown('zh')}\nend\n"
    missing = tmp_path / "NOTES.md"
    missing.write_text("no markers\n", encoding="utf-8")
    assert main(["--write", str(missing)]) == 2
    assert f"error: {missing}: the file has no" in capsys.readouterr().err

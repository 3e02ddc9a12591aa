"""The README's config reference is the schema's, so documentation never drifts from what loads."""

from __future__ import annotations

from pathlib import Path

from llms_trainer.config import DataConfig, EvalConfig, RunConfig, TrainConfig
from llms_trainer.config_reference import END, START, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_holds_the_current_reference():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == reference_markdown(), "run: python -m llms_trainer.config_reference --write README.md"


def test_every_key_is_described():
    for model in (RunConfig, DataConfig, TrainConfig, EvalConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
    reference = reference_markdown()
    for prefix, model in (("data.", DataConfig), ("train.", TrainConfig), ("eval.", EvalConfig)):
        for name in model.model_fields:
            assert f"| `{prefix}{name}` |" in reference

"""README_zh.md is kept in step with README.md: both name the same commands and the same config keys, and
both hold the current generated config reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llms_trainer.config_reference import END, START, all_keys, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
READMES = {"en": ROOT / "README.md", "zh": ROOT / "README_zh.md"}
COMMAND_PATTERNS = (
    r"\bllms-[a-z][a-z-]*[a-z]",                                  # installed commands
    r"(?:python|sh|bash|streamlit run)\s+((?:[\w.-]+/)*[\w.-]+\.(?:py|sh))",  # scripts and launchers
    r"python -m ([\w.]+)",
    r"\bmake ([a-z][a-z-]*)",
)


def prose(lang: str) -> str:
    """The README without its generated config reference (identical in both by construction)."""
    text = READMES[lang].read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    return head + rest.split(END, 1)[1]


def commands(text: str) -> set[str]:
    found = set()
    for pattern in COMMAND_PATTERNS:
        found |= {m if isinstance(m, str) else m[0] for m in re.findall(pattern, text)}
    return found


def config_keys(text: str) -> set[str]:
    """Config keys the prose names: dotted keys anywhere, top-level keys inside `code` spans."""
    keys = all_keys()
    dotted = {k for k in keys if "." in k}
    found = {k for k in re.findall(r"\b[a-z_]+\.[a-z_0-9]+\b", text) if k in dotted}
    spans = re.findall(r"`([^`\n]+)`", text)
    found |= {word for span in spans for word in re.findall(r"[a-z_]+", span) if word in keys - dotted}
    return found


def test_both_readmes_name_the_same_commands():
    en, zh = commands(prose("en")), commands(prose("zh"))
    assert en, "no command found in README.md: the patterns are wrong"
    assert en == zh, f"only in README.md: {sorted(en - zh)}; only in README_zh.md: {sorted(zh - en)}"


def test_both_readmes_name_the_same_config_keys():
    en, zh = config_keys(prose("en")), config_keys(prose("zh"))
    assert len(en) > 30, "README.md names few config keys: the patterns are wrong"
    assert en == zh, f"only in README.md: {sorted(en - zh)}; only in README_zh.md: {sorted(zh - en)}"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_readme_holds_the_current_config_reference(lang):
    text = READMES[lang].read_text(encoding="utf-8")
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == reference_markdown(lang), (
        "run: python -m llms_trainer.config_reference --write README.md README_zh.md")


def test_the_same_sections_in_the_same_order():
    def numbered(lang: str) -> list[str]:
        return re.findall(r"^## (\d+)\.", READMES[lang].read_text(encoding="utf-8"), flags=re.M)

    assert numbered("en") == numbered("zh") == ["1", "2", "3", "4", "5", "6"]

"""The config reference: every YAML key with its type, default and description, generated from the schema.

`reference_markdown()` renders the pydantic field descriptions of llms_trainer.config as Markdown tables, one
per section, so the documentation never drifts from what the loader accepts. The README holds the output
between two markers; `python -m llms_trainer.config_reference --write README.md` refreshes it, and a test
fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llms_trainer.config import DataConfig, EvalConfig, RunConfig, TrainConfig

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("top level", RunConfig), ("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig))


def _type_name(annotation) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "<class '", "'>", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    return text.replace("Literal", "one of ").replace("|", "or")


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    return "" if isinstance(value, BaseModel) else f"`{value!r}`".replace("|", "\\|")


def section_rows(prefix: str, model: type[BaseModel]) -> list[str]:
    rows = []
    hints = typing.get_type_hints(model)
    for name, field in model.model_fields.items():
        annotation = hints.get(name, field.annotation)
        if _section_of(annotation) is not None:
            continue  # a nested section: its own table
        key = f"{prefix}{name}"
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type_name(annotation).replace('|', 'or')} | {_default(field)} | {description} |")
    return rows


def _section_of(annotation) -> type[BaseModel] | None:
    """The section model a field holds (`X` or `X | None`), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def stage_sections() -> list[tuple[str, type[BaseModel]]]:
    """The per-stage sections (sft:, reward:, dpo:, grpo:) that have keys."""
    hints = typing.get_type_hints(RunConfig)
    found = []
    for name in RunConfig.model_fields:
        section = _section_of(hints[name])
        if section is not None and section.model_fields and name not in ("data", "train", "eval"):
            found.append((name, section))
    return found


def reference_markdown() -> str:
    """Every config key as Markdown tables (between the README markers)."""
    out = [START, ""]
    for title, model in (*SECTIONS, *stage_sections()):
        prefix = "" if model is RunConfig else f"{title}."
        out += [f"**{title}**", "", "| key | type | default | meaning |", "|---|---|---|---|",
                *section_rows(prefix, model), ""]
    out.append(END)
    return "\n".join(out)


def replace_block(text: str, block: str) -> str:
    """`text` with the part between the markers replaced by `block` (which carries the markers)."""
    if START not in text or END not in text:
        raise ValueError(f"the file has no {START} … {END} block")
    head, rest = text.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", nargs="*", default=[], metavar="FILE",
                        help="refresh the block between the markers in these files (default: print it)")
    args = parser.parse_args(argv)
    if not args.write:
        print(reference_markdown())
        return 0
    for path in map(Path, args.write):
        try:
            path.write_text(replace_block(path.read_text(encoding="utf-8"), reference_markdown()), encoding="utf-8")
        except (OSError, ValueError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
        print(f"wrote the config reference into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

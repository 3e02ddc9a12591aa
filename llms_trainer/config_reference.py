"""The config reference: every YAML key with its type, default and description, generated from the schema.

`reference_markdown()` renders the pydantic field descriptions of the config (llms_trainer.config assembled with
every registered stage's section and keys) as Markdown tables, one per section, so the documentation never drifts from what the loader accepts; `reference_markdown("zh")` renders
the same tables in Chinese, with the descriptions of llms_trainer/config_descriptions_zh.py (a test fails when a
key has no Chinese description or a Chinese description names no key). README.md and README_zh.md hold the
output between two markers;

    python -m llms_trainer.config_reference --write README.md README_zh.md

refreshes both (a file named *_zh.md gets the Chinese tables), `--lang zh` prints the Chinese ones, and a test
fails when a README is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from llms_trainer.config import SHARED, RunConfig, StageSection, run_config_model
from llms_trainer.config_descriptions_zh import DESCRIPTIONS_ZH
from llms_trainer.train.stages import config_stages

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
LANGS = ("en", "zh")
# per language: section title of the top-level keys, table header, words of the type and default columns
WORDS = {
    "en": {"top level": "top level", "header": "| key | type | default | meaning |", "or": "or",
           "one of": "one of", "required": "required"},
    "zh": {"top level": "顶层", "header": "| 键 | 类型 | 默认值 | 含义 |", "or": "或",
           "one of": "取值之一", "required": "必填"},
}


def _type_name(annotation, lang: str = "en") -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"llms_trainer\.[\w.]*\.", "", text)  # a section model's module path
    for noise in ("typing.", "<class '", "'>", "NoneType"):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    return text.replace("Literal", f"{WORDS[lang]['one of']} ").replace("|", WORDS[lang]["or"])


def _default(field: FieldInfo, lang: str = "en") -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return WORDS[lang]["required"]
    value = field.default_factory() if field.default_factory is not None else field.default
    return "" if isinstance(value, BaseModel) else f"`{value!r}`".replace("|", "\\|")


def _section_of(annotation) -> type[BaseModel] | None:
    """The section model a field holds (`X` or `X | None`), else None (also for `list[X]`: a list is a key)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for candidate in (annotation, *(typing.get_args(annotation) if union else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def schema() -> type[RunConfig]:
    """The RunConfig of every registered stage this install has."""
    return run_config_model({name: s for name, s in config_stages().items() if isinstance(s, StageSection)})


def sections(model: type[RunConfig]) -> list[tuple[str, type[BaseModel]]]:
    """(title, model) of each table: the top level, the shared sections, then the stages' sections that have
    keys (in registry order)."""
    hints = typing.get_type_hints(model)
    found = [("top level", model)]
    for name in (*SHARED, *(n for n in model.model_fields if n not in SHARED)):
        section = _section_of(hints[name])
        if section is not None and (section.model_fields or name in SHARED):
            found.append((name, section))
    return found


def _keys() -> Iterator[tuple[str, str, object, FieldInfo]]:
    """(section title, key, annotation, field) of every key, in reference order; nested sections are skipped
    (they get their own table)."""
    model = schema()
    for title, section in sections(model):
        prefix = "" if section is model else f"{title}."
        hints = typing.get_type_hints(section)
        for name, field in section.model_fields.items():
            annotation = hints.get(name, field.annotation)
            if _section_of(annotation) is None:
                yield title, f"{prefix}{name}", annotation, field


def all_keys() -> set[str]:
    """Every key the reference lists: top-level names and `section.key` for the others."""
    return {key for _, key, _, _ in _keys()}


def _description(key: str, field: FieldInfo, lang: str) -> str:
    if lang == "en":
        return field.description or ""
    if key not in DESCRIPTIONS_ZH:
        raise ValueError(f"key {key} has no Chinese description: add it to llms_trainer/config_descriptions_zh.py")
    return DESCRIPTIONS_ZH[key]


def reference_markdown(lang: str = "en") -> str:
    """Every config key as Markdown tables (between the README markers), in English or Chinese (`zh`)."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}: use one of {', '.join(LANGS)}")
    words, out, current = WORDS[lang], [START], None
    for title, key, annotation, field in _keys():
        if title != current:
            current = title
            out += ["", f"**{words.get(title, title)}**", "", words["header"], "|---|---|---|---|"]
        description = _description(key, field, lang).replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{key}` | {_type_name(annotation, lang)} | {_default(field, lang)} | {description} |")
    out += ["", END]
    return "\n".join(out)


def replace_block(text: str, block: str) -> str:
    """`text` with the part between the markers replaced by `block` (which carries the markers)."""
    if START not in text or END not in text:
        raise ValueError(f"the file has no {START} … {END} block")
    head, rest = text.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def lang_of(path: Path) -> str:
    """The language of a README by its name: *_zh.md is Chinese, anything else English."""
    return "zh" if path.name.endswith("_zh.md") else "en"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", nargs="*", default=[], metavar="FILE",
                        help="refresh the block between the markers in these files, Chinese in *_zh.md, "
                             "English in the others (default: print it)")
    parser.add_argument("--lang", choices=LANGS, default="en", help="language of the printed tables (default: en)")
    args = parser.parse_args(argv)
    if not args.write:
        try:
            print(reference_markdown(args.lang))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    for path in map(Path, args.write):
        try:
            text = replace_block(path.read_text(encoding="utf-8"), reference_markdown(lang_of(path)))
            path.write_text(text, encoding="utf-8")
        except (OSError, ValueError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
        print(f"wrote the config reference into {path}")
    return 0

if __name__ == "__main__":
    sys.exit(main())

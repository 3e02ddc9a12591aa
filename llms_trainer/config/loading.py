"""Reading a training YAML: `load_config(path, overrides, stages=...)` → a validated RunConfig.

Every key of the original configs loads unchanged (llms_trainer.config.compat); new keys are additions with
defaults. Unknown keys, wrong types, missing files and impossible combinations raise `ConfigError` with one
message of the form `CFG: key a.b.c: problem` before any model is loaded. Input paths are relative to the
working directory, falling back to the repository's bundled files (so the shipped configs run from any
directory); work_dir is relative to the working directory. `stages` is the stage registry's view
{name: StageSection, or why that stage cannot be imported here}, handed in by the training layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llms_trainer.config.checks import check_config
from llms_trainer.config.compat import rename_old_keys
from llms_trainer.config.schema import ConfigError, RunConfig, StageSection, run_config_model
from llms_trainer.evaluation.methods import EVAL_METHODS
from llms_trainer.io import atomic_write
from llms_trainer.paths import bundled, bundled_files

Stages = Mapping[str, StageSection | str]  # name → its section, or why the stage cannot be imported here


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=value` strings → {"a.b": parsed value}; values are YAML (numbers, lists, null...)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{pair}': expected key.sub=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _apply_override(raw: dict, dotted: str, value: Any, where: str) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: key {'.'.join(parts[: i + 1])}: is a value, cannot set {dotted}")
    node[parts[-1]] = value


def _format_validation(err: ValidationError, where: str) -> str:
    problems = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith(("function-", "literal[")))
        msg = "unknown key (check the spelling)" if item["type"] == "extra_forbidden" else item["msg"]
        got = "" if item["type"] in ("missing", "extra_forbidden") else f" (got {item.get('input')!r})"
        problems.append(f"key {loc or '(top level)'}: {msg}{got}")
    return f"{where}: " + "; ".join(problems)


def read_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML mapping of `path` with the `key.sub=value` overrides applied (not validated yet)."""
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: cannot read config ({err.strerror})") from err
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.object[err.start]:#04x} on line {line}); save the "
                          "file as UTF-8") from None
    except yaml.YAMLError as err:  # one line: the position and the problem, not PyYAML's multi-line excerpt
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({getattr(err, 'problem', None) or err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (data, train, eval, ...)")
    for dotted, value in parse_overrides(overrides or []).items():
        _apply_override(raw, dotted, value, where)
    return raw


def validate_config(raw: dict[str, Any], where: str, stages: Stages, check_files: bool = True,
                    check_data: bool = True) -> RunConfig:
    """The RunConfig of a YAML mapping (`read_config`); raises ConfigError naming `where` and the key.

    `check_files=False` validates types and keys only; `check_data=False` skips the shard globs (which
    exist only after data/compress_data.py)."""
    rename_old_keys(raw, where)
    model = run_config_model({name: s for name, s in stages.items() if isinstance(s, StageSection)})
    try:
        cfg = model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, where)) from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    _use_bundled_inputs(cfg)
    if check_files:
        check_config(cfg, where, stages, check_data)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, *, stages: Stages, check_files: bool = True,
                check_data: bool = True) -> RunConfig:
    """Read, override (`key.sub=value`), validate: `validate_config(read_config(path, overrides), ...)`."""
    return validate_config(read_config(path, overrides), str(path), stages, check_files, check_data)


def _use_bundled_inputs(cfg: RunConfig) -> None:
    """Point the shared sections' relative input paths (data, policy, tokenizer, eval files) at bundled files
    when they are not found from the working directory (a stage's own keys resolve in its section).
    Outputs (work_dir) stay relative to it."""
    d, e = cfg.data, cfg.eval
    d.data = {name: bundled(pattern) for name, pattern in d.data.items()}
    d.sample_policy_file, d.tokenizer_path = bundled(d.sample_policy_file), bundled(d.tokenizer_path)
    for method in EVAL_METHODS.values():
        setattr(e, method.dataset_key, bundled_files(getattr(e, method.dataset_key)))


def dump_config(cfg: RunConfig, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cfg.model_dump(mode="json")
    if extra:
        data["_run"] = extra
    return atomic_write(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def require_model_source(cfg: RunConfig, model_config: str | None, where: str) -> None:
    """A run needs train.ckpt or --model_config; a missing --model_config file is an error too."""
    if model_config is None and not cfg.train.ckpt:
        raise ConfigError(f"{where}: key train.ckpt: null and no --model_config given; set one of them")
    if model_config is not None and not os.path.isfile(model_config):
        raise ConfigError(f"--model_config: '{model_config}' does not exist")

"""The command line every training script shares: arguments, `--check`, the run, exit codes.

    python SCRIPT --train_config CFG [--model_config MODEL_CFG] [--check] [key.sub=value ...]

A script gives its help text, its demo config, and the stage it always runs (None: the config's own; a tuple:
the config must name one of those).
Exit codes: 0 done, 2 bad input (one `error:` line), 1 training diverged. The package (and torch) is
imported only after the arguments parse.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llms_trainer.cli import make_parser

if TYPE_CHECKING:
    from llms_trainer.config import RunConfig


def parse_args(argv: list[str] | None, doc: str, demo_config: str, demo_model_config: str | None,
               help_keys: list[str] | None = None, stage: str | tuple[str, ...] | None = None) -> argparse.Namespace:
    """Arguments of a training script; with no --train_config, the demo config (and its model config).

    `--help` lists the defaults and descriptions of the keys of `stage` (its section and the keys it adds, from
    the stage registry), then of `help_keys`.
    """
    argv = sys.argv[1:] if argv is None else argv
    epilog = None
    if (help_keys or stage) and any(a in ("-h", "--help") for a in argv):
        epilog = "config keys of this stage (the others as in train_llms.py):\n" + config_keys_help(
            (stage,) if isinstance(stage, str) else stage or (), help_keys or [])
    parser = make_parser(doc)
    parser.epilog = epilog
    parser.add_argument("--train_config", default=demo_config, help="training YAML")
    parser.add_argument("--model_config", help="config.json or YAML of a model to initialise from scratch "
                        "(used when train.ckpt is null)" + (f"; with the demo config: {demo_model_config}"
                                                            if demo_model_config else ""))
    parser.add_argument("--check", action="store_true",
                        help="only validate the config (keys, types, files) and exit; the .sh launchers do this first")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value", help="config overrides")
    args = parser.parse_args(argv)
    if Path(args.train_config).resolve() == Path(demo_config).resolve() and args.model_config is None:
        args.model_config = demo_model_config
    return args


def load(args: argparse.Namespace, stage: str | tuple[str, ...] | None) -> tuple[RunConfig, list[str]]:
    """The validated config of `args` (read once) and the overrides it was made with (`stage=` added when the
    script runs one stage); a config naming another stage than the script's is a ConfigError.

    A tuple of stages: the config must name one of them with `stage:` (train_rl.py: dpo or grpo)."""
    from llms_trainer.config import ConfigError, read_config, require_model_source, validate_config
    from llms_trainer.train.stages import config_stages

    config, overrides = args.train_config, list(args.overrides)
    raw = read_config(config, overrides)
    named = raw.get("stage")
    if isinstance(stage, tuple) and named not in stage:
        got = "missing" if named is None else f"'{named}'"
        raise ConfigError(f"{config}: key stage: {got}; this script runs one of {', '.join(stage)}: set "
                          f"stage: {stage[0]} (or another of them) in the config")
    if isinstance(stage, str):
        if named not in (None, stage):
            raise ConfigError(f"{config}: key stage: '{named}', but this script runs the {stage} stage; remove "
                              "the key or use the script of that stage")
        raw["stage"], overrides = stage, [*overrides, f"stage={stage}"]
    cfg = validate_config(raw, config, config_stages())
    require_model_source(cfg, args.model_config, config)
    return cfg, overrides


def check(args: argparse.Namespace, stage: str | tuple[str, ...] | None = None) -> int:
    """Validate the config and what the run would find in work_dir; 0 ok, 2 with one error line."""
    from llms_trainer.train.checkpoint import resolve_resume
    from llms_trainer.train.errors import USER_ERRORS
    from llms_trainer.train.workdir import plan_lineage

    try:
        cfg, _ = load(args, stage)
        plan_lineage(cfg.work_dir, resolve_resume(cfg.train.resume, cfg.work_dir), cfg.train.overwrite_work_dir)
    except USER_ERRORS as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)  # one line, as errors.report prints it
        return 2
    t = cfg.train
    steps = (f"{t.num_training_steps} steps" if t.num_training_steps is not None
             else f"{t.num_training_epochs} epoch(s), steps counted from the data at start")
    print(f"{args.train_config}: ok (stage {cfg.stage_name()}, {steps}, work_dir {cfg.work_dir})")
    return 0


def main(argv: list[str] | None, doc: str, demo_config: str, demo_model_config: str | None = None,
         stage: str | tuple[str, ...] | None = None, help_keys: list[str] | None = None) -> int:
    """Parse, then `--check` or run on this process; returns the exit code."""
    args = parse_args(argv, doc, demo_config, demo_model_config, help_keys, stage)
    if args.check:
        return check(args, stage)
    from llms_trainer.train import errors
    from llms_trainer.train.lifeline import die_with_parent

    if "LOCAL_RANK" in os.environ:  # started by a launcher: end with it (torch elastic detaches ranks)
        die_with_parent()
    from llms_trainer.train.run import run

    try:
        cfg, overrides = load(args, stage)
        run(args.train_config, overrides, args.model_config, cfg=cfg)
        code = 0
    except Exception as err:
        code = errors.exit_code(err)
        if code is None:
            raise
        code = errors.report(err, code)
    return _leave(code)


def _leave(code: int) -> int:
    """`code`, or, in a rank of a multi-process launch, exit now with it: the run is over and its files are
    closed, and skipping the interpreter's teardown avoids gloo/DeepSpeed threads occasionally aborting it
    (SIGABRT, "terminate called without an active exception"), which torch elastic reports as a crash."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def config_keys_help(stages: tuple[str, ...], extra_keys: list[str]) -> str:
    """Help lines `section.key (default: value) description` for the keys of `stages` (from the registry;
    `stage` first when there is a choice) and then `extra_keys` (dotted)."""
    import typing

    from llms_trainer.config import run_config_model
    from llms_trainer.train.stages import get_stage

    sections = {name: get_stage(name).section for name in stages}
    keys = ["stage"] if len(stages) > 1 else []
    for name, section in sections.items():
        keys += [f"{name}.{key}" for key in (section.model.model_fields if section.model else ())]
        keys += [f"{shared}.{key}" for shared, added in section.shared_keys.items() for key in added]
    model = run_config_model(sections)
    lines = []
    for dotted in [*keys, *extra_keys]:
        owner, parts = model, dotted.split(".")
        for part in parts[:-1]:
            annotation = typing.get_type_hints(owner)[part]
            owner = next(a for a in (annotation, *typing.get_args(annotation)) if hasattr(a, "model_fields"))
        info = owner.model_fields[parts[-1]]
        default = info.get_default(call_default_factory=True)
        lines.append(f"  {dotted} (default: {default!r})\n      {info.description}")
    return "\n".join(lines)

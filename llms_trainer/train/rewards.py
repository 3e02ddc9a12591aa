"""Rewards for online RL (GRPO): Python reward functions named in the config, and a trained reward model.

A reward function is named `module:function` (imported; the working directory is on the import path) or
`path/to/file.py:function`, and is called once per rollout on all of this process's completions:

    f(prompts: list[str], completions: list[str], **columns) -> list[float]   (one finite number each)

`prompts[i]` is the prompt text of completion i (`llms_trainer.data.prompts.prompt_text`), `completions[i]`
the completion decoded without special tokens, and each column (a key of the prompt records other than
prompt/messages) a list aligned with them (None where a record lacks it).

The reward model is a checkpoint of train_reward_model.py scored through `score_pairs` with ITS tokenizer on
the prompt and completion text, so a reward model whose tokenizer differs from the policy's works as well.
With `normalize`, its score becomes (score - reward_mean) / reward_std, the statistics its last eval stored
in config.json. The total reward is the weighted sum of every part.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from llms_trainer.config import ConfigError

REWARD_MODEL = "reward_model"  # the reward model's name among the reward parts


class RewardFunctionError(ValueError):
    """A reward function that cannot be imported or called as f(prompts, completions, **columns)."""


def load_reward_function(spec: str) -> Callable:
    """The function `spec` names; RewardFunctionError saying what is wrong (import, name, signature)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise RewardFunctionError(f"'{spec}' is not 'module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise RewardFunctionError(f"'{module_name}' does not exist")
            spec_ = importlib.util.spec_from_file_location(f"llms_trainer_rewards_{path.stem}", path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except RewardFunctionError:
        raise
    except Exception as err:  # whatever the module raises while importing
        raise RewardFunctionError(f"cannot import '{module_name}' ({type(err).__name__}: {err})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise RewardFunctionError(f"'{module_name}' has no function '{attr}'")
    check_signature(function, spec, None)
    return function


def check_signature(function: Callable, spec: str, columns: list[str] | None) -> None:
    """RewardFunctionError unless `function(prompts, completions, **{column: ...})` binds; with `columns`
    None (config load: the columns are not known yet) only that it takes the two lists."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin without an inspectable signature: trust it
    try:
        if columns is None:
            signature.bind_partial([], [])
        else:
            signature.bind([], [], **{c: [] for c in columns})
    except TypeError as err:
        extra = f" and the prompt columns {', '.join(columns)}" if columns else ""
        raise RewardFunctionError(f"'{spec}' must accept f(prompts, completions, **columns) (prompts, completions"
                                  f"{extra}); its signature is {signature} ({err})") from None


def reward_names(specs: list[str], with_model: bool) -> list[str]:
    """Unique names of the reward parts: `reward_model`, then each function's name."""
    names = [REWARD_MODEL] if with_model else []
    for spec in specs:
        name = spec.rpartition(":")[2]
        while name in names:
            name += "_"
        names.append(name)
    return names


class RewardModel:
    """A frozen reward checkpoint scoring (prompt text, completion text) with its own tokenizer."""

    def __init__(self, path: str, cfg, accelerator, normalize: bool, batch_size: int):
        from transformers import AutoModelForSequenceClassification

        from llms_trainer.model.frozen import prepare_frozen
        from llms_trainer.model.load import DTYPES, ModelLoadError, load_tokenizer, zero3_init_as_configured

        self.tokenizer = load_tokenizer(path, key="grpo.reward_model")
        try:
            with zero3_init_as_configured(accelerator):
                model = AutoModelForSequenceClassification.from_pretrained(path, dtype=DTYPES[cfg.train.dtype])
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"grpo.reward_model: cannot load a reward model from '{path}' ({err})") from err
        try:
            self.mean, self.std = reward_statistics(path) if normalize else (0.0, 1.0)
        except ValueError as err:
            raise ConfigError(f"key grpo.normalize_reward_model: {err}") from None
        self.model, self.batch_size = prepare_frozen(model, accelerator), batch_size

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        from llms_trainer.evaluation.reward_accuracy import score_pairs

        scores = score_pairs(self.model, self.tokenizer, prompts, completions, batch_size=self.batch_size)
        return [(s - self.mean) / self.std for s in scores]


def reward_statistics(path: str) -> tuple[float, float]:
    """(reward_mean, reward_std) stored in a reward checkpoint's config.json; ValueError when unusable."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}/config.json ({err})") from None
    mean, std = config.get("reward_mean"), config.get("reward_std")
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) or not std > 0:
        raise ValueError(f"{path}/config.json has no usable reward_mean/reward_std (got {mean!r}, {std!r}; a reward "
                         "run stores them at each eval); set grpo.normalize_reward_model: false")
    return float(mean), float(std)


class Rewarder:
    """All reward parts of a run: `(prompts, completions, columns) -> [N, parts]` float32, and their weights."""

    def __init__(self, reward_model: RewardModel | None, model_weight: float, functions: list[tuple[str, Callable]],
                 weights: list[float]):
        self.reward_model, self.functions = reward_model, functions
        self.names = reward_names([spec for spec, _ in functions], reward_model is not None)
        self.weights = torch.tensor(([model_weight] if reward_model is not None else []) + list(weights))

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> torch.Tensor:
        parts = [self.reward_model(prompts, completions)] if self.reward_model is not None else []
        for index, (spec, function) in enumerate(self.functions):
            parts.append(_checked(function(prompts, completions, **columns), len(completions), spec, index))
        return torch.tensor(parts, dtype=torch.float32).T.reshape(len(completions), len(parts))

    def total(self, parts: torch.Tensor) -> torch.Tensor:
        """[N] the weighted sum of the parts."""
        return parts @ self.weights


def _checked(values, count: int, spec: str, index: int) -> list[float]:
    """The values a reward function returned, or ConfigError naming it."""
    key = f"key grpo.reward_funcs.{index}.name: '{spec}'"
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{key} returned {type(values).__name__} {str(values)[:80]}; it must return one number "
                          "per completion") from None
    if len(values) != count:
        raise ConfigError(f"{key} returned {len(values)} values for {count} completions")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{key} returned a non-finite value ({values}); return finite numbers")
    return values


def build_rewarder(cfg, accelerator, columns: list[str]) -> Rewarder:
    """The run's rewarder (the reward model is loaded and placed now; call after accelerator.prepare)."""
    g = cfg.grpo
    functions = []
    for index, entry in enumerate(g.reward_funcs):
        try:
            function = load_reward_function(entry.name)
            check_signature(function, entry.name, columns)
        except RewardFunctionError as err:
            raise ConfigError(f"key grpo.reward_funcs.{index}.name: {err}") from None
        functions.append((entry.name, function))
    reward_model = None
    if g.reward_model:
        reward_model = RewardModel(g.reward_model, cfg, accelerator, g.normalize_reward_model, cfg.eval.batch_size)
    return Rewarder(reward_model, g.reward_model_weight, functions, [e.weight for e in g.reward_funcs])


def rewards_agreed(rewarder: Rewarder, prompts: list[str], completions: list[str], columns: dict,
                   accelerator) -> torch.Tensor:
    """The reward parts [N, F]; a reward function's error on any process is raised on every process (the
    same ConfigError everywhere, so all of them stop together instead of waiting in a collective)."""
    problem, parts = None, None
    try:
        parts = rewarder(prompts, completions, columns)
    except ConfigError as err:
        problem = str(err)
    if accelerator.num_processes > 1:
        from llms_trainer.evaluation import gather_results

        problems = gather_results(accelerator, [problem])
    else:
        problems = [problem]
    first = next((p for p in problems if p), None)
    if first is not None:
        raise ConfigError(first)
    return parts

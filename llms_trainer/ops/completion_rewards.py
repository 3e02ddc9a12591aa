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
import numbers
import os
import sys
import threading
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
        from llms_trainer.model.load import DTYPES, ModelLoadError, check_vocab_fits, zero3_init_as_configured

        self.tokenizer = check_reward_checkpoint(path)
        try:
            with zero3_init_as_configured(accelerator):
                model = AutoModelForSequenceClassification.from_pretrained(path, dtype=DTYPES[cfg.train.dtype],
                                                                           use_safetensors=True)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"grpo.reward_model: cannot load a reward model from '{path}' ({err})") from err
        check_vocab_fits(self.tokenizer, model.get_input_embeddings().num_embeddings, "grpo.reward_model", path)
        try:
            self.mean, self.std = reward_statistics(path) if normalize else (0.0, 1.0)
        except ValueError as err:
            raise ConfigError(f"key grpo.normalize_reward_model: {err}") from None
        self.model, self.batch_size = prepare_frozen(model, accelerator), batch_size

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        from llms_trainer.ops.scores import score_pairs

        scores = score_pairs(self.model, self.tokenizer, prompts, completions, batch_size=self.batch_size)
        return [(s - self.mean) / self.std for s in scores]


def check_rewards(g, fail) -> None:
    """The reward keys of the `grpo` section `g` at config load: at least one part, a reward checkpoint that
    loads (`check_reward_checkpoint`) with its statistics when normalising, importable functions."""
    from llms_trainer.model.load import ModelLoadError

    if not g.reward_model and not g.reward_funcs:
        fail("grpo.reward_funcs", "no reward: set grpo.reward_model (a checkpoint of train_reward_model.py) and/or "
             "grpo.reward_funcs ([{name: module:function, weight: 1.0}])")
    if g.reward_model and not (Path(g.reward_model) / "config.json").is_file():
        fail("grpo.reward_model", f"'{g.reward_model}' is not a checkpoint directory (no config.json)")
    if g.reward_model and g.normalize_reward_model:
        try:
            reward_statistics(g.reward_model)
        except ValueError as err:
            fail("grpo.normalize_reward_model", str(err))
    if g.reward_model:
        try:
            check_reward_checkpoint(g.reward_model)
        except ModelLoadError as err:
            fail("grpo.reward_model", str(err).removeprefix("grpo.reward_model: "))
    for index, entry in enumerate(g.reward_funcs):
        try:
            load_reward_function(entry.name)
        except RewardFunctionError as err:
            fail(f"grpo.reward_funcs.{index}.name", str(err))


def check_reward_checkpoint(path: str, key: str = "grpo.reward_model"):
    """The tokenizer of a reward checkpoint, after checking (without loading weights) that its weights are
    safetensors and that the tokenizer's ids fit the model's token embeddings (config.json vocab_size);
    ModelLoadError naming `key` otherwise."""
    from transformers import AutoConfig

    from llms_trainer.model.load import ModelLoadError, check_vocab_fits, load_tokenizer, require_safetensors

    require_safetensors(path, key, "AutoModelForSequenceClassification")
    tokenizer = load_tokenizer(path, key=key)
    try:
        rows = getattr(AutoConfig.from_pretrained(path), "vocab_size", None)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{key}: cannot read the model config in '{path}' ({err})") from err
    if rows is not None:
        check_vocab_fits(tokenizer, int(rows), key, path)
    return tokenizer


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
    """All reward parts of a run: `(prompts, completions, columns, step) -> [N, parts]` float32, and their weights."""

    def __init__(self, reward_model: RewardModel | None, model_weight: float, functions: list[tuple[str, Callable]],
                 weights: list[float], timeout_s: float | None = None):
        self.reward_model, self.functions, self.timeout_s = reward_model, functions, timeout_s
        self.names = reward_names([spec for spec, _ in functions], reward_model is not None)
        self.weights = torch.tensor(([model_weight] if reward_model is not None else []) + list(weights))

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, list],
                 step: int | str = "?") -> torch.Tensor:
        parts = [self.reward_model(prompts, completions)] if self.reward_model is not None else []
        for index, (spec, function) in enumerate(self.functions):
            where = f"key grpo.reward_funcs.{index}.name: '{spec}' at step {step}"
            values = call_guarded(function, (prompts, completions), columns, self.timeout_s, where)
            parts.append(_checked(values, len(completions), where))
        return torch.tensor(parts, dtype=torch.float32).T.reshape(len(completions), len(parts))

    def total(self, parts: torch.Tensor) -> torch.Tensor:
        """[N] the weighted sum of the parts."""
        return parts @ self.weights


def call_guarded(function: Callable, args: tuple, kwargs: dict, timeout_s: float | None, where: str):
    """`function(*args, **kwargs)`, or ConfigError naming `where` for anything it raises (BaseException
    included: SystemExit, KeyboardInterrupt) or when it has not returned within `timeout_s` seconds.

    With a timeout the call runs in a daemon thread while this thread waits, so every rank stays free to
    agree on the error and stop; a call that never returns is left behind in its thread and ends with the
    process (Python cannot stop a thread). Without one (None) it runs in this thread, unbounded.
    """
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 (user code: anything it raises is reported, never propagated)
            outcome["error"] = err

    if timeout_s is None:
        call()
    else:
        worker = threading.Thread(target=call, name="reward-function", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            raise ConfigError(f"{where} did not return within grpo.reward_timeout_s = {timeout_s:g} s; make it "
                              "faster (or bound its own work) or raise grpo.reward_timeout_s")
    if "error" in outcome:
        err = outcome["error"]
        text = str(err).replace("\n", " ")[:300]
        raise ConfigError(f"{where} raised {type(err).__name__}{': ' + text if text else ''}; fix the function "
                          "and resume (train.resume: auto continues from the last checkpoint)")
    return outcome["value"]


def _checked(values, count: int, where: str) -> list[float]:
    """The values a reward function returned as floats, or ConfigError naming it: one real number (int or
    float, not bool; numpy scalars too) per completion, each finite."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ConfigError(f"{where} returned {type(values).__name__} {str(values)[:80]}; it must return a list "
                          "of one number per completion")
    bad = next((v for v in values if not _is_real(v)), _NONE)
    if bad is not _NONE:
        raise ConfigError(f"{where} returned {type(bad).__name__} {str(bad)[:80]!r} among its values; return "
                          "int or float numbers (not strings, booleans or None)")
    if len(values) != count:
        raise ConfigError(f"{where} returned {len(values)} values for {count} completions")
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{where} returned a non-finite value ({values}); return finite numbers")
    return values


_NONE = object()


def _is_real(value) -> bool:
    """An int or float (numpy's too, or a one-element non-bool tensor); never a bool, a string or None."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


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
    return Rewarder(reward_model, g.reward_model_weight, functions, [e.weight for e in g.reward_funcs],
                    g.reward_timeout_s)


def score_completions(rewarder: Rewarder, prompts: list[str], completions: list[str], columns: dict,
                   accelerator, step: int | str = "?") -> torch.Tensor:
    """The reward parts [N, F]; a reward function's error on any process is raised on every process (the
    same ConfigError everywhere, so all of them stop together instead of waiting in a collective)."""
    problem, parts = None, None
    try:
        parts = rewarder(prompts, completions, columns, step)
    except ConfigError as err:
        problem = str(err)
    if accelerator.num_processes > 1:
        from llms_trainer.ops.ranks import gather_results

        problems = gather_results(accelerator, [problem])
    else:
        problems = [problem]
    first = next((p for p in problems if p), None)
    if first is not None:
        raise ConfigError(first)
    return parts

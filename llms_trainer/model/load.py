"""Tokenizer and model for a training run: from a checkpoint (hub id or local dir) or from a model config.

Also the training-time model changes: vocabulary check/resize, gradient checkpointing, LoRA (peft),
training the token embeddings only, and torch.compile of the decoder layers. Errors raise `ModelLoadError`
naming the config key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from llms_trainer.data.chat_format import END_TOKEN

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded or does not fit the run (message names the key)."""


def load_tokenizer(path: str, key: str = "data.tokenizer_path"):
    """An HF tokenizer from a directory or hub id, following the conventions of llms_trainer.tokenizer.save.

    `tokenizer(text)` adds one BOS as the data path does, and the pad token is distinct from EOS (`<unk>`
    for Llama/Mistral SentencePiece tokenizers; a new `<|pad|>` only when there is no usable token, which
    `build_model` then gives an embedding row). Checkpoints save this tokenizer as it is.
    """
    from transformers import AutoTokenizer

    from llms_trainer.tokenizer.save import conform_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        conform_tokenizer(tokenizer)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{key}: cannot load a tokenizer from '{path}' ({err})") from err
    return tokenizer


def require_safetensors(source: str | Path, key: str, auto_class: str = "AutoModelForCausalLM") -> None:
    """ModelLoadError unless a local checkpoint directory holds safetensors weights: weights are only ever
    loaded from safetensors (a pickle, `pytorch_model.bin`, can run code when it is read). Hub ids are left
    to `from_pretrained(use_safetensors=True)`."""
    path = Path(source).expanduser()
    if not path.is_dir() or any((path / name).is_file() for name in SAFETENSORS_FILES):
        return
    pickled = next((name for name in PICKLE_FILES if (path / name).is_file()), None)
    if pickled is not None:
        raise ModelLoadError(
            f"{key}: '{source}' holds only pickle weights ({pickled}); only safetensors weights are loaded. If "
            f"you trust the file, convert it once: python -c \"from transformers import {auto_class} as M; "
            f"M.from_pretrained('{source}').save_pretrained('{source}')\" (adds model.safetensors beside it)")


def check_vocab_fits(tokenizer, rows: int, key: str, path: str | Path) -> None:
    """ModelLoadError when the tokenizer has ids past the model's `rows` token embeddings (a frozen model
    loaded with the tokenizer saved beside it: it would fail with an IndexError at its first batch)."""
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"{key}: the tokenizer in '{path}' has {len(tokenizer)} tokens but the model has {rows} token "
            f"embeddings (ids from {rows} on would index past them); save the model with the tokenizer it was "
            "trained with, or resize its embeddings to the tokenizer")


def load_model_config(path: str | Path):
    """A transformers config from a config.json or a YAML file holding the same keys (`model_type` required)."""
    from transformers import AutoConfig

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ModelLoadError(f"--model_config: cannot read '{path}' ({err})") from err
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelLoadError(f"--model_config: '{path}' needs a mapping with model_type (e.g. llama)")
    raw = dict(raw)
    try:
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"--model_config: '{path}': {err}") from err


def build_model(train, tokenizer, model_config: str | None = None, weights_dir: str | Path | None = None,
                auto_class: str = "AutoModelForCausalLM", **config_changes):
    """The model of a run: `weights_dir` (a checkpoint to resume), else train.ckpt, else `model_config`.

    `train` is the `train:` config section; `auto_class` names the transformers Auto class (the stage's
    model kind); `config_changes` (e.g. num_labels=1) apply to the model config. The attention kernel is
    train.attn_implementation. The vocabulary is checked against the tokenizer (resized only when
    train.resize_model_vocab_size).
    """
    import transformers

    factory = getattr(transformers, auto_class)
    dtype = DTYPES[train.dtype]
    source, key = (weights_dir, "train.resume") if weights_dir else (train.ckpt, "train.ckpt")
    if source:
        require_safetensors(source, key, auto_class)
        try:
            model = factory.from_pretrained(str(source), dtype=dtype, trust_remote_code=train.trust_remote_code,
                                            attn_implementation=train.attn_implementation, use_safetensors=True,
                                            **config_changes)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{key}: cannot load a model ({auto_class}) from '{source}' ({err})") from err
    else:
        config = load_model_config(model_config)
        if train.initializer_range is not None:
            config.initializer_range = train.initializer_range
        for name, value in config_changes.items():
            setattr(config, name, value)
        torch.manual_seed(train.seed)
        model = factory.from_config(config, dtype=dtype, trust_remote_code=train.trust_remote_code,
                                    attn_implementation=train.attn_implementation)
    add_row_for_new_pad(model, tokenizer)
    match_vocab(model, tokenizer, train.resize_model_vocab_size)
    return model


def build_causal_lm(cfg, tokenizer, model_config: str | None = None, weights_dir: str | Path | None = None):
    """A causal LM for the run `cfg` (pretraining, SFT, DPO/GRPO policies)."""
    return build_model(cfg.train, tokenizer, model_config, weights_dir)


def build_chat_lm(cfg, tokenizer, model_config: str | None = None, weights_dir=None):
    """The causal LM of a chat stage (SFT, DPO, GRPO), told that a reply ends at `<|endofchat|>` (saved with every checkpoint)."""
    model = build_causal_lm(cfg, tokenizer, model_config, weights_dir)
    end = tokenizer.convert_tokens_to_ids(END_TOKEN)
    if end is not None and end != tokenizer.unk_token_id:
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        model.generation_config.eos_token_id = [*dict.fromkeys([*eos, end])]
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_sequence_classifier(cfg, tokenizer, model_config: str | None = None,
                              weights_dir: str | Path | None = None):
    """A 1-label sequence classifier (reward model) whose pad token is the tokenizer's."""
    return build_model(cfg.train, tokenizer, model_config, weights_dir, auto_class="AutoModelForSequenceClassification",
                       num_labels=1, pad_token_id=tokenizer.pad_token_id)


@contextmanager
def zero3_init_as_configured(accelerator) -> Iterator[None]:
    """Build the model under DeepSpeed's zero.Init only when the accelerate config sets zero3_init_flag.

    accelerate registers its DeepSpeed config with transformers even when the flag is false, which makes
    from_pretrained/from_config partition (and initialise) the model differently from a single process.
    With the flag false the model is built whole on every process, exactly as without DeepSpeed.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero3_init_flag or getattr(plugin, "dschf", None) is None:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(plugin.dschf)


def add_row_for_new_pad(model, tokenizer) -> bool:
    """Give the model one embedding row for a `<|pad|>` that load_tokenizer had to add (its id is the first
    id past the model's rows); returns whether it did. Padding is masked, so the row's values never matter."""
    from llms_trainer.tokenizer.save import PAD_TOKEN

    rows = model.get_input_embeddings().num_embeddings
    if tokenizer.pad_token != PAD_TOKEN or tokenizer.pad_token_id != rows or len(tokenizer) != rows + 1:
        return False
    model.resize_token_embeddings(rows + 1)
    print(f"added an embedding row for the new pad token {PAD_TOKEN} (id {rows})")
    return True


def match_vocab(model, tokenizer, resize: bool) -> None:
    """Make the embedding rows fit the tokenizer; never silently train with a mismatch."""
    rows, wanted = model.get_input_embeddings().num_embeddings, len(tokenizer)
    if rows == wanted:
        return
    if not resize:
        raise ModelLoadError(
            f"train.resize_model_vocab_size: the model has {rows} token embeddings but the tokenizer has "
            f"{wanted} tokens; set train.resize_model_vocab_size: true (new rows get the mean embedding) or "
            "use the matching tokenizer")
    model.resize_token_embeddings(wanted)
    print(f"resized model vocabulary {rows} → {wanted} (train.resize_model_vocab_size)")


def prepare_for_training(model, train, adapter_dir: str | Path | None = None):
    """Gradient checkpointing, then embeddings-only freezing or LoRA (adapter weights from `adapter_dir`)."""
    if train.gradient_checkpointing_enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if train.train_token_embeddings_only:
        freeze_all_but(model, train.token_embedding_layer_name)
    if train.use_lora:
        model = add_lora(model, train, adapter_dir)
    return model


def maybe_compile(model, train, accelerator=None):
    """With train.compile: torch.compile every decoder layer in place (`nn.Module.compile`); else `model` as is.

    Layers rather than the whole model: parameter names and checkpoints stay unchanged, DDP/DeepSpeed wrap the
    model as usual, the loss outside the layers (the chunked LM head) stays eager, and identical layers share
    one compiled graph. Call after LoRA/freezing (the adapters are compiled in). The first steps are slow while
    inductor compiles (and recompiles for new row lengths until it marks them dynamic). Refused under DeepSpeed
    ZeRO-3, whose hooks gather parameters inside each layer.
    """
    if not train.compile:
        return model
    from transformers.modeling_layers import GradientCheckpointingLayer

    from llms_trainer.io import zero_stage

    if accelerator is not None and zero_stage(accelerator) == 3:
        raise ModelLoadError("train.compile: not supported under DeepSpeed ZeRO-3 (its hooks gather parameters "
                             "inside every layer); use a ZeRO-1/2 accelerate config or set train.compile: false")
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ModelLoadError(f"train.compile: found no decoder layers to compile in {type(model).__name__}; set "
                             "train.compile: false")
    for layer in layers:
        layer.compile()
    return model


def freeze_all_but(model, layer_names: str | list[str]) -> list[str]:
    """Train only parameters inside modules named `layer_names` (a dotted-name component); returns them."""
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    trained = []
    for name, param in model.named_parameters():
        param.requires_grad = any(n in name.split(".") for n in names)
        if param.requires_grad:
            trained.append(name)
    if not trained:
        modules = sorted({n.split(".")[-2] for n, _ in model.named_parameters() if "." in n})
        raise ModelLoadError(f"train.token_embedding_layer_name: no parameter inside {names}; module names "
                             f"in this model include {', '.join(modules[:12])}")
    return trained


def add_lora(model, train, adapter_dir: str | Path | None = None):
    """Wrap with peft LoRA on train.target_modules; load adapter weights when resuming."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    if train.gradient_checkpointing_enable:
        model.enable_input_require_grads()
    classifier = hasattr(model, "score") and not hasattr(model, "lm_head")
    config = LoraConfig(task_type="SEQ_CLS" if classifier else "CAUSAL_LM", r=train.lora_rank,
                        lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                        target_modules=list(train.target_modules), modules_to_save=["score"] if classifier else None)
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise ModelLoadError(f"train.target_modules: {err}") from err
    if adapter_dir is not None:
        set_peft_model_state_dict(model, load_file(str(Path(adapter_dir) / "adapter_model.safetensors")))
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for param in model.parameters():
        n = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total

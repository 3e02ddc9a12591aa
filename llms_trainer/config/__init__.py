"""The training config: schema (shared sections; stages add theirs), loading (YAML, overrides, bundled inputs,
the resolved config.yaml), the compatibility shim and the cross-key checks. Callers import from here."""

from llms_trainer.config.compat import COMPATIBILITY_KEYS, compatibility_keys_set
from llms_trainer.config.loading import (
    Stages,
    dump_config,
    load_config,
    parse_overrides,
    read_config,
    require_model_source,
    validate_config,
)
from llms_trainer.config.schema import (
    SHARED,
    TRACKERS,
    ConfigError,
    DataConfig,
    Datasets,
    EvalConfig,
    Fail,
    RunConfig,
    Section,
    StageSection,
    TrainConfig,
    run_config_model,
)
from llms_trainer.paths import REPO_ROOT, bundled, bundled_files

__all__ = ["COMPATIBILITY_KEYS", "REPO_ROOT", "SHARED", "TRACKERS", "ConfigError", "DataConfig", "Datasets",
           "EvalConfig", "Fail", "RunConfig", "Section", "StageSection", "Stages", "TrainConfig", "bundled",
           "bundled_files", "compatibility_keys_set", "dump_config", "load_config", "parse_overrides",
           "read_config", "require_model_source", "run_config_model", "validate_config"]

"""The engine fixtures (sharded corpus, tiny Llama configs, config writer) for the fault tests."""

from tests.train.conftest import (  # noqa: F401  (fixtures)
    corpus_dir,
    deterministic_model_config_file,
    fresh_accelerate_state,
    model_config_file,
    write_config,
)

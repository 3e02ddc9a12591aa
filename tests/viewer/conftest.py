"""Fixtures for the sampler viewer: a tiny two-source corpus as raw jsonl and as shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from llms_trainer.data.compress import compress_sources, expand_inputs
from tests.helpers import text_records, write_jsonl

WEB_PY = Path(__file__).resolve().parents[2] / "utils" / "sampler_viewer" / "web.py"


@pytest.fixture
def raw_dir(tmp_path) -> Path:
    """`news.jsonl` (20 title+content records, one blank line) and `wiki.jsonl` (60 text records)."""
    root = tmp_path / "raw"
    news = [{"title": f"News {i}", "content": r["text"]} for i, r in enumerate(text_records(20, seed=2))]
    write_jsonl(root / "news.jsonl", news[:10] + [""] + news[10:])
    write_jsonl(root / "wiki.jsonl", text_records(60, seed=1))
    return root


@pytest.fixture
def shard_dir(tmp_path, raw_dir) -> Path:
    """The same corpus compressed by the project's compressor into `<tmp>/shards/{news,wiki}/`."""
    out = tmp_path / "shards"
    compress_sources(expand_inputs([str(raw_dir / "*.jsonl")], None), out, shard_records=16)
    return out


@pytest.fixture
def viewer_env(monkeypatch, tmp_path, shard_dir) -> dict[str, Path]:
    """Page defaults pointed at the tmp corpus, a tmp policy dir and a tokenizer dir that does not exist."""
    env = {"SAMPLER_VIEWER_DATA_DIR": shard_dir, "SAMPLER_VIEWER_POLICY_DIR": tmp_path / "policies",
           "SAMPLER_VIEWER_TOKENIZER": tmp_path / "no_tokenizer"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return env


@pytest.fixture
def app(viewer_env):
    """The page, run once with the tmp defaults (streamlit's AppTest, in this process)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(WEB_PY), default_timeout=60).run()

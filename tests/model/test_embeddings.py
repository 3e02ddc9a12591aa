"""Extending a tiny Llama to a merged + chat tokenizer: mean-initialised rows, old rows and ties intact."""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llms_trainer.data.chat_format import CHAT_TOKENS
from llms_trainer.model.embeddings import extend_embeddings, extend_model, old_piece_ids
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir
from llms_trainer.tokenizer.merge import merge_tokenizer
from llms_trainer.tokenizer.save import PAD_TOKEN
from llms_trainer.tokenizer.train import train_model
from tests.helpers import ZH_CHARS
from tests.tokenizer.support import load_script, zh_texts


@pytest.fixture(scope="module")
def new_tokenizer_dir(tmp_path_factory, tiny_tokenizer_dir):
    """tiny tokenizer + Chinese pieces + chat tokens (an extension of tiny_tokenizer_dir)."""
    work = tmp_path_factory.mktemp("extend")
    (work / "zh.model").write_bytes(train_model(zh_texts(400), vocab_size=500))
    merge_tokenizer(tiny_tokenizer_dir, work / "zh.model", work / "merged")
    add_chat_tokens_to_dir(work / "merged", work / "chat")
    return work / "chat"


def tiny_model(tie: bool, vocab_size: int = 700) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tie)
    return LlamaForCausalLM(config).float()


def expected_rows(old: torch.Tensor, old_tokenizer, new_tokenizer) -> dict[int, torch.Tensor]:
    """Each new row computed by hand: pieces of the decoded token under the old tokenizer, averaged."""
    rows = {}
    specials = {new_tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    for token_id in range(len(old_tokenizer), len(new_tokenizer)):
        pieces = old_tokenizer.tokenize(new_tokenizer.decode([token_id]))
        if len(pieces) > 1:
            pieces = [p for p in pieces if p != "▁"]
        ids = old_tokenizer.convert_tokens_to_ids(pieces)
        rows[token_id] = old.mean(0) if token_id in specials else old[ids].sum(0) / len(ids)
    return rows


@pytest.mark.parametrize("tie", [True, False])
def test_new_rows_are_means_of_old_pieces_and_old_rows_are_untouched(tie, tiny_tokenizer, new_tokenizer_dir):
    new_tokenizer = AutoTokenizer.from_pretrained(str(new_tokenizer_dir))
    model = tiny_model(tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    counts = extend_embeddings(model, tiny_tokenizer, new_tokenizer)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == model.config.vocab_size == len(new_tokenizer)
    assert torch.equal(new_in[:700], old_in) and torch.equal(new_out[:700], old_out)
    assert counts == {"pieces": len(new_tokenizer) - 700 - 4, "special": 4, "no_pieces": 0}
    assert torch.isfinite(new_in).all() and torch.isfinite(new_out).all()
    for matrix, old in ((new_in, old_in), (new_out, old_out)):
        for token_id, row in expected_rows(old, tiny_tokenizer, new_tokenizer).items():
            torch.testing.assert_close(matrix[token_id], row, rtol=1e-6, atol=1e-7)
    assert (new_in.data_ptr() == new_out.data_ptr()) == tie


@pytest.mark.parametrize(("init", "tie", "untie"), [("mean", True, False), ("mean", False, False),
                                                     ("pieces_in_mean_out", False, False),
                                                     ("pieces_in_mean_out", True, True)])
def test_each_initialisation_gives_its_hand_computed_rows(init, tie, untie, tiny_tokenizer, new_tokenizer_dir):
    new_tokenizer = AutoTokenizer.from_pretrained(str(new_tokenizer_dir))
    model = tiny_model(tie)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    extend_embeddings(model, tiny_tokenizer, new_tokenizer, init=init, untie=untie)
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(new_in[:700], old_in) and torch.equal(new_out[:700], old_out)
    assert (new_in.data_ptr() == new_out.data_ptr()) == (tie and not untie)
    assert model.config.tie_word_embeddings == (tie and not untie)
    for token_id, pieces_row in expected_rows(old_in, tiny_tokenizer, new_tokenizer).items():
        torch.testing.assert_close(new_in[token_id], old_in.mean(0) if init == "mean" else pieces_row,
                                   rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(new_out[token_id], old_out.mean(0), rtol=1e-6, atol=1e-7)


def test_mean_output_rows_leave_old_predictions_nearly_unchanged(tiny_tokenizer, new_tokenizer_dir):
    """Output rows at the mean of the old ones: all new tokens together get at most new/old_vocab of the mass
    (Jensen), so old tokens keep their relative probabilities and lose at most that much."""
    new_tokenizer = AutoTokenizer.from_pretrained(str(new_tokenizer_dir))
    model = tiny_model(tie=False)
    ids = torch.tensor([tiny_tokenizer.encode("the model reads text")])
    with torch.no_grad():
        before = model(ids).logits.log_softmax(-1)
        extend_embeddings(model, tiny_tokenizer, new_tokenizer, init="pieces_in_mean_out")
        after = model(ids).logits.log_softmax(-1)
    new_mass = after[..., 700:].exp().sum(-1)
    assert (new_mass <= (len(new_tokenizer) - 700) / 700 + 1e-6).all()
    torch.testing.assert_close(after[..., :700] - torch.log1p(-new_mass)[..., None], before, rtol=0, atol=1e-5)


def test_a_tied_model_needs_untie_for_pieces_in_mean_out(tiny_tokenizer, new_tokenizer_dir):
    new_tokenizer = AutoTokenizer.from_pretrained(str(new_tokenizer_dir))
    with pytest.raises(TokenizerError, match="ties them to the input embeddings; add --untie"):
        extend_embeddings(tiny_model(tie=True), tiny_tokenizer, new_tokenizer, init="pieces_in_mean_out")


def test_lone_space_piece_only_when_alone_and_specials_give_no_pieces(tiny_tokenizer):
    space = tiny_tokenizer.convert_tokens_to_ids("▁")
    assert tiny_tokenizer.tokenize("模型") == ["▁模", "型"]
    assert old_piece_ids(tiny_tokenizer, "模型") == tiny_tokenizer.convert_tokens_to_ids(["▁模", "型"])
    lone = next(c for c in ZH_CHARS if tiny_tokenizer.tokenize(c) == ["▁", c])
    assert old_piece_ids(tiny_tokenizer, lone) == [tiny_tokenizer.convert_tokens_to_ids(lone)]
    assert old_piece_ids(tiny_tokenizer, " ") == [space]
    assert old_piece_ids(tiny_tokenizer, "</s><s>") == []  # only special tokens: no pieces


def test_a_token_without_old_pieces_gets_the_mean_of_all_old_rows(tiny_tokenizer, tiny_tokenizer_dir):
    new_tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    new_tokenizer.add_tokens(["</s><s>"])  # decodes to text the old tokenizer reads as two special tokens
    model = tiny_model(tie=False)
    old = model.get_input_embeddings().weight.detach().clone()
    assert extend_embeddings(model, tiny_tokenizer, new_tokenizer) == {"pieces": 0, "special": 0, "no_pieces": 1}
    torch.testing.assert_close(model.get_input_embeddings().weight[700], old.mean(0))


def test_saved_model_reloads_tied_with_the_new_tokenizer(tmp_path, tiny_tokenizer_dir, new_tokenizer_dir):
    model = tiny_model(tie=True)
    model.save_pretrained(str(tmp_path / "model"))
    result = extend_model(tmp_path / "model", tiny_tokenizer_dir, new_tokenizer_dir, tmp_path / "out")
    assert result["tied"] and result["old_rows"] == 700
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert reloaded.config.vocab_size == len(tokenizer) == result["new_rows"]
    assert reloaded.config.tie_word_embeddings
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert torch.equal(reloaded.get_input_embeddings().weight[:700], model.get_input_embeddings().weight[:700])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "长江有多长？"}], add_generation_prompt=True,
                                        return_tensors="pt")["input_ids"]
    assert ids[0].tolist().count(tokenizer.bos_token_id) == 1
    with torch.no_grad():
        assert torch.isfinite(reloaded(ids).logits).all()
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model"))
    assert tokenizer("长江 is long")["input_ids"] == [tokenizer.bos_token_id] + sp.encode("长江 is long")
    assert tokenizer.pad_token == "<unk>" != tokenizer.eos_token


def test_a_new_tokenizer_without_a_pad_gets_one_with_a_row(tmp_path, tiny_tokenizer_dir, new_tokenizer_dir):
    no_pad = AutoTokenizer.from_pretrained(str(new_tokenizer_dir))
    no_pad.pad_token = None
    no_pad.unk_token = no_pad.eos_token
    no_pad.save_pretrained(str(tmp_path / "no_pad"))
    tiny_model(tie=False).save_pretrained(str(tmp_path / "model"))
    result = extend_model(tmp_path / "model", tiny_tokenizer_dir, tmp_path / "no_pad", tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == len(no_pad) == result["new_rows"] - 1
    assert result["rules"]["special"] == 5 and len(tokenizer) == result["new_rows"]


def test_a_tokenizer_that_does_not_extend_the_old_one_is_refused(tiny_tokenizer_dir, tiny_tokenizer):
    old, new = (AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)) for _ in range(2))
    old.add_tokens(["<old>"])
    new.add_tokens(["<new>", "<more>"])
    with pytest.raises(TokenizerError, match="does not extend the old one: id 700 is '<new>', was '<old>'"):
        extend_embeddings(tiny_model(tie=True, vocab_size=701), old, new)
    with pytest.raises(TokenizerError, match="fewer than the old one"):
        extend_embeddings(tiny_model(tie=True, vocab_size=702), new, tiny_tokenizer)
    with pytest.raises(TokenizerError, match="fewer than the old tokenizer"):
        extend_embeddings(tiny_model(tie=True, vocab_size=600), tiny_tokenizer, new)


def test_cli_reports_rules_and_fails_cleanly(tmp_path, capsys, tiny_tokenizer_dir, new_tokenizer_dir):
    tiny_model(tie=False).save_pretrained(str(tmp_path / "model"))
    main = load_script("extend_model_token_embeddings").main
    args = ["--model", str(tmp_path / "model"), "--old-tokenizer", str(tiny_tokenizer_dir), "--new-tokenizer"]
    assert main(args + [str(new_tokenizer_dir), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "4 rows: special token" in out and f"wrote {tmp_path / 'out'}" in out
    tiny_model(tie=True).save_pretrained(str(tmp_path / "tied"))
    tied_args = ["--model", str(tmp_path / "tied")] + args[2:] + [str(new_tokenizer_dir)]
    assert main(tied_args + ["--output", str(tmp_path / "out3"), "--init", "pieces_in_mean_out"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: initialisation pieces_in_mean_out")
    assert main(args + [str(tmp_path / "missing"), "--output", str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: no such tokenizer directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out", "tied"]

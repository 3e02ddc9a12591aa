"""Single-choice loading and scoring: offered letters only, per-source accuracy, file:line errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llms_trainer.evaluation import EvalDataError
from llms_trainer.evaluation.single_choice import (
    DEFAULT_CUE,
    Question,
    evaluate_single_choice,
    letter_pieces,
    load_single_choice,
    offered_letters,
    prompt_of,
)
from llms_trainer.ops.padding import left_padded
from tests.helpers import write_jsonl

AB = "Which is a fruit?\nA. apple\nB. brick"
ABCD = "Pick one.\nA. one\nB. two\nC. three\nD. four"


class LetterOracle(torch.nn.Module):
    """A causal LM stand-in whose next tokens spell " <letter>" with chosen probabilities.

    Whatever pieces the tokenizer uses for " A", " B", ... (one piece, or "▁" + letter), the logits at the
    last positions of every row give each letter's piece sequence the probability `probs[letter]`."""

    def __init__(self, tokenizer, probs: dict[str, float], cue: str = DEFAULT_CUE):
        super().__init__()
        self.feed, self.pieces = letter_pieces(tokenizer, tuple(sorted(probs)), cue)
        self.probs = probs
        self.vocab = len(tokenizer)

    def position_logits(self, depth: int) -> torch.Tensor:
        """Log-probabilities of the next piece after prompt + feed[:depth] (a trie walk over the letters)."""
        mass = torch.full((self.vocab,), 1e-9)
        for letter, ids in self.pieces.items():
            if len(ids) > depth and ids[:depth] == self.feed[:depth]:
                mass[ids[depth]] += self.probs[letter]
        return torch.log(mass / mass.sum())

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        depth = len(self.feed)
        for j in range(depth + 1):
            logits[:, input_ids.shape[1] - depth - 1 + j] = self.position_logits(j)
        return SimpleNamespace(logits=logits)


def question(text: str, answer: str, source: str = "s") -> Question:
    return Question(question=text, answer=answer, letters=offered_letters(text), source=source, where="t:1")


def test_prediction_is_restricted_to_offered_letters(tiny_tokenizer, accelerator):
    oracle = LetterOracle(tiny_tokenizer, {"A": 0.1, "B": 0.25, "C": 0.55, "D": 0.1})  # C is the favourite
    metrics = evaluate_single_choice(oracle, tiny_tokenizer, [question(ABCD, "C", "four"), question(AB, "B", "two")],
                                     accelerator, batch_size=2)
    assert metrics["eval/single_choice/four/acc"] == 1.0  # C wins when offered
    assert metrics["eval/single_choice/two/acc"] == 1.0   # an A/B question picks B, never C
    assert metrics["eval/single_choice/acc"] == 1.0


def test_answer_letter_is_what_decides(tiny_tokenizer, accelerator):
    oracle = LetterOracle(tiny_tokenizer, {"A": 0.4, "B": 0.3, "C": 0.2, "D": 0.1})  # always predicts A
    questions = [question(AB, "A", "x"), question(AB, "B", "x"), question(ABCD, "A", "y"),
                 question(ABCD, "D", "y"), question(ABCD, "A", "y")]
    metrics = evaluate_single_choice(oracle, tiny_tokenizer, questions, accelerator, batch_size=3)
    assert metrics == {"eval/single_choice/acc": pytest.approx(3 / 5), "eval/single_choice/x/acc": 0.5,
                       "eval/single_choice/y/acc": pytest.approx(2 / 3)}


def test_left_padding_keeps_the_last_position_real(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    rows = [[1, 50, 60, 70, 80, 90], [1, 33, 44]]
    with torch.no_grad():
        batched = tiny_model(**left_padded(rows, 0, "cpu")).logits[:, -1]
        alone = [tiny_model(input_ids=torch.tensor([row])).logits[0, -1] for row in rows]
    for row_logits, single in zip(batched, alone, strict=True):
        torch.testing.assert_close(row_logits, single, atol=1e-5, rtol=1e-4)


def test_real_model_batch_size_does_not_change_predictions(tiny_model, tiny_tokenizer, accelerator):
    questions = [question(ABCD if i % 2 else AB + " extra words" * i, "A", f"s{i % 3}") for i in range(7)]
    one = evaluate_single_choice(tiny_model, tiny_tokenizer, questions, accelerator, batch_size=1)
    many = evaluate_single_choice(tiny_model, tiny_tokenizer, questions, accelerator, batch_size=4)
    assert one == many
    assert set(one) == {"eval/single_choice/acc"} | {f"eval/single_choice/s{i}/acc" for i in range(3)}
    assert tiny_model.training  # train mode restored


def test_few_shot_prefix_goes_in_front_of_the_prompt(tiny_tokenizer, accelerator):
    seen = []

    class Recorder(LetterOracle):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            seen.append(tiny_tokenizer.decode(input_ids[0], skip_special_tokens=True))
            return super().forward(input_ids, attention_mask, position_ids)

    oracle = Recorder(tiny_tokenizer, {"A": 0.6, "B": 0.4})
    evaluate_single_choice(oracle, tiny_tokenizer, [question(AB, "A")], accelerator, few_shot_prefix="EXAMPLE\n")
    assert seen[0].strip().startswith("EXAMPLE\nWhich is a fruit?")
    assert "B. brick\nAnswer:" in seen[0]


def test_load_handles_literal_backslash_n_and_default_source(tmp_path):
    path = write_jsonl(tmp_path / "knowledge.jsonl", [
        {"question": "Sky colour?\\nA. blue\\nB. green", "answer": "A", "source": "science"},
        {"question": "Two plus two?\nA. 3\nB. 4\nC. 5", "answer": " b "},
    ])
    first, second = load_single_choice(path)
    assert first.question == "Sky colour?\nA. blue\nB. green"
    assert (first.letters, first.answer, first.source) == (("A", "B"), "A", "science")
    assert (second.letters, second.answer, second.source) == (("A", "B", "C"), "B", "knowledge")
    assert second.where == f"{path}:2"


@pytest.mark.parametrize("line, problem", [
    ('{"question": "Q?\\nA. x\\nB. y", "answer": "C"}', "offers A/B"),
    ('{"question": "Q? no options", "answer": "A"}', "option line"),
    ('{"answer": "A"}', "'question'"),
    ('{"question": "Q?\\nA. x\\nB. y", "answer": "A"', "invalid JSON"),
    ('["not", "an", "object"]', "JSON object"),
])
def test_bad_record_names_file_and_line(tmp_path, line, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": AB, "answer": "A"}, "", line])
    with pytest.raises(EvalDataError, match=rf"bad\.jsonl:3: .*{problem}"):
        load_single_choice(path)


def test_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(EvalDataError, match="not found"):
        load_single_choice(tmp_path / "nope.jsonl")
    with pytest.raises(EvalDataError, match="no records"):
        load_single_choice(write_jsonl(tmp_path / "empty.jsonl", []))


def test_letter_pieces_continue_the_prompt_exactly(tiny_tokenizer):
    feed, pieces = letter_pieces(tiny_tokenizer, ("A", "B", "C", "D"))
    cue = tiny_tokenizer.encode("\nAnswer:", add_special_tokens=False)
    for letter, ids in pieces.items():
        assert cue + ids == tiny_tokenizer.encode(f"\nAnswer: {letter}", add_special_tokens=False)
        assert ids[:-1] == feed[:len(ids) - 1]
    assert len({tuple(v) for v in pieces.values()}) == 4


ZH = "天空是什么颜色？\nA. 蓝色\nB. 绿色"


@pytest.mark.parametrize("question, prompt", [
    (AB, AB + "\nAnswer:"),
    (ZH + "\n答案：", ZH + "\n答案："),
    (ZH + "\n答案: ", ZH + "\n答案:"),
    (ZH + "\n答：", ZH + "\n答："),
    (ZH + "\n答案是", ZH + "\n答案是"),
    (AB + "\nAnswer:", AB + "\nAnswer:"),
    (AB + "\nanswer :  ", AB + "\nanswer :"),
    ("答案：以下哪个对？\nA. x\nB. y", "答案：以下哪个对？\nA. x\nB. y\nAnswer:"),  # a cue only counts at the end
])
def test_an_answer_cue_is_added_only_when_the_question_has_none(question, prompt):
    assert prompt_of(question) == prompt
    assert prompt_of(question, "EXAMPLE\n") == "EXAMPLE\n" + prompt


def test_a_question_ending_in_its_own_cue_is_scored_after_it(tiny_tokenizer, accelerator):
    seen = []

    class Recorder(LetterOracle):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            seen.append(tiny_tokenizer.decode(input_ids[0], skip_special_tokens=True))
            return super().forward(input_ids, attention_mask, position_ids)

    oracle = Recorder(tiny_tokenizer, {"A": 0.3, "B": 0.7}, cue="答案：")
    metrics = evaluate_single_choice(oracle, tiny_tokenizer, [question(ZH + "\n答案：", "B")], accelerator)
    assert metrics["eval/single_choice/acc"] == 1.0
    assert seen[0].endswith("B. 绿色\n答案：") and "Answer" not in seen[0]
    feed, pieces = letter_pieces(tiny_tokenizer, ("A", "B"), "答案：")
    cue = tiny_tokenizer.encode("答案：", add_special_tokens=False)
    assert cue + pieces["B"] == tiny_tokenizer.encode("答案：B", add_special_tokens=False)  # no space after "："

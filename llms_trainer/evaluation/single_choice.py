"""Single-choice accuracy (eval_data/knowledge/*.jsonl).

Record: {"question": stem + option lines "A. ...", "B. ...", "answer": "B", "source": "..."}; option lines
are separated by real newlines or by the literal two characters backslash-n. The offered letters are those
that start an option line ("A." "A．" "A、" "A:" "A)"), so a two-option question offers only A and B.

Prompt: few_shot_prefix + question + answer cue, with BOS in front. The cue is "\nAnswer:" unless the
question already ends in one ("Answer:", "答案：", "答案:", "答：", "答案是", ...; see `split_cue`), which is
then used as written, so the original's Chinese questions ending in "答案：" get no second cue. For example
"天空是什么颜色？\nA. 蓝色\nB. 绿色\n答案：" is scored as it is, "Sky colour?\nA. blue\nB. green" becomes
"Sky colour?\nA. blue\nB. green\nAnswer:".

Scoring: one forward pass per question; the prediction is the offered letter the model finds most likely
next — letters not offered are never predicted. A letter is scored as the model would write it after the
cue: " B" after an ASCII colon, "B" after a full-width colon or "答案是" (`letter_text`), tokenized in that
context: the pieces of cue + letter after those of the cue. When the letter is one piece ("▁B", the usual
Llama case) this compares that piece's next-token logit across the offered letters. When some letters take
two pieces ("▁" + "B") while others take one ("▁A"), the forward pass also feeds the shared first piece and a
letter's score is the summed log-probability of its pieces, so both kinds are compared fairly in one pass.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llms_trainer.data.packing import pad_id
from llms_trainer.evaluation import EvalDataError, encode_with_bos, read_jsonl
from llms_trainer.ops.models import eval_mode
from llms_trainer.ops.padding import left_padded
from llms_trainer.ops.ranks import batches, gather_results, merge_results, rank_share

DEFAULT_CUE = "\nAnswer:"
_OPTION_LINE = re.compile(r"^\s*([A-Z])\s*[.．、:：)）]")
_CUE_AT_END = re.compile(r"(?:\b(?:answer|ans)\s*[:：]|答案是?\s*[:：]|答\s*[:：]|答案是)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    question: str              # stem and option lines, real newlines
    answer: str                # one of letters
    letters: tuple[str, ...]   # offered letters, in order of appearance
    source: str
    where: str                 # "file:line", for messages


def offered_letters(question: str) -> tuple[str, ...]:
    """Letters that start an option line, in order, without repeats."""
    letters: list[str] = []
    for line in question.split("\n"):
        match = _OPTION_LINE.match(line)
        if match and match.group(1) not in letters:
            letters.append(match.group(1))
    return tuple(letters)


def parse_question(record: dict, where: str, default_source: str) -> Question:
    """One record → Question; EvalDataError naming `where` when it cannot be scored."""
    text = record.get("question")
    if not isinstance(text, str) or not text.strip():
        raise EvalDataError(f"{where}: 'question' must be a non-empty string")
    text = text.replace("\\n", "\n")
    letters = offered_letters(text)
    if len(letters) < 2:
        raise EvalDataError(f"{where}: found {len(letters)} option line(s) in 'question'; write at least two "
                            "options as lines 'A. ...', 'B. ...'")
    answer = record.get("answer")
    answer = answer.strip().upper() if isinstance(answer, str) else answer
    if answer not in letters:
        raise EvalDataError(f"{where}: 'answer' is {record.get('answer')!r} but the question offers "
                            f"{'/'.join(letters)}; set it to one of those letters")
    source = record.get("source", default_source)
    if not isinstance(source, str) or not source.strip():
        raise EvalDataError(f"{where}: 'source' must be a non-empty string when given")
    return Question(question=text, answer=answer, letters=letters, source=source.strip(), where=where)


def load_single_choice(path: str | Path) -> list[Question]:
    """Questions of a JSONL file; a missing 'source' defaults to the file name without extension."""
    return [parse_question(record, where, Path(path).stem) for where, record in read_jsonl(path)]


def split_cue(question: str) -> tuple[str, str]:
    """(question without its answer cue, the cue): the question's own cue when it ends in one, trailing spaces
    dropped, else DEFAULT_CUE. The prompt is their concatenation."""
    match = _CUE_AT_END.search(question)
    if match is None:
        return question, DEFAULT_CUE
    return question[:match.start()], question[match.start():].rstrip()


def prompt_of(question: str, few_shot_prefix: str = "") -> str:
    """The text scored for a question (BOS is added when it is encoded)."""
    body, cue = split_cue(question)
    return few_shot_prefix + body + cue


def letter_text(cue: str, letter: str) -> str:
    """How an answer letter follows the cue: after a space behind an ASCII colon, directly otherwise."""
    return f" {letter}" if cue.endswith(":") else letter


def letter_pieces(tokenizer: Any, letters: tuple[str, ...],
                  cue: str = DEFAULT_CUE) -> tuple[list[int], dict[str, list[int]]]:
    """(pieces to feed after the prompt, {letter: its pieces after the cue}) for one forward pass.

    The fed pieces are the longest letter's pieces minus its last; every other letter's pieces minus
    its last must be a prefix of them (true for one-piece and "▁" + letter tokenizations)."""
    base = tokenizer.encode(cue, add_special_tokens=False)
    pieces: dict[str, list[int]] = {}
    for letter in letters:
        full = tokenizer.encode(cue + letter_text(cue, letter), add_special_tokens=False)
        if full[:len(base)] != base or len(full) == len(base):
            raise EvalDataError(f"tokenizer merges the answer letter {letter!r} into {cue.strip()!r}; "
                                "single-choice scoring needs the letter to start a new piece")
        pieces[letter] = full[len(base):]
    feed = max((p[:-1] for p in pieces.values()), key=len)
    distinct = len({tuple(p) for p in pieces.values()}) == len(letters)
    on_feed_path = all(feed[:len(p) - 1] == p[:-1] for p in pieces.values())
    if not (distinct and on_feed_path):
        raise EvalDataError(f"tokenizer encodes the answer letters {'/'.join(letters)} as {pieces}, which "
                            "cannot be scored in one pass; use a tokenizer that encodes each letter distinctly")
    return feed, pieces


def letter_scores(logits: torch.Tensor, feed_len: int, pieces: dict[str, list[int]]) -> dict[str, float]:
    """Summed log-probability of each letter's pieces; logits are the row's last feed_len + 1 positions."""
    logprobs = torch.log_softmax(logits[-(feed_len + 1):].float(), dim=-1)
    return {letter: sum(logprobs[j, token].item() for j, token in enumerate(ids))
            for letter, ids in pieces.items()}


def predict_letters(model: Any, tokenizer: Any, questions: list[Question], device: Any,
                    few_shot_prefix: str = "", batch_size: int = 8) -> list[str]:
    """The predicted letter of each question (argmax over its offered letters only)."""
    predictions: list[str] = []
    cache: dict[tuple[str, tuple[str, ...]], tuple[list[int], dict[str, list[int]]]] = {}
    for batch in batches(questions, batch_size):
        keys = [(split_cue(q.question)[1], q.letters) for q in batch]
        for cue, letters in keys:
            if (cue, letters) not in cache:
                cache[(cue, letters)] = letter_pieces(tokenizer, letters, cue)
        plans = [cache[key] for key in keys]
        rows = [encode_with_bos(tokenizer, prompt_of(q.question, few_shot_prefix)) + feed
                for q, (feed, _) in zip(batch, plans, strict=True)]
        logits = model(**left_padded(rows, pad_id(tokenizer), device)).logits
        for row_logits, (feed, pieces) in zip(logits, plans, strict=True):
            scores = letter_scores(row_logits, len(feed), pieces)
            predictions.append(max(scores, key=scores.__getitem__))
    return predictions


def accuracy_metrics(questions: list[Question], predictions: list[str]) -> dict[str, float]:
    """{"eval/single_choice/acc", "eval/single_choice/<source>/acc"} as fractions in [0, 1]."""
    by_source: dict[str, list[bool]] = defaultdict(list)
    for question, predicted in zip(questions, predictions, strict=True):
        by_source[question.source].append(predicted == question.answer)
    hits = [hit for source_hits in by_source.values() for hit in source_hits]
    metrics = {"eval/single_choice/acc": sum(hits) / len(hits)}
    for source in sorted(by_source):
        metrics[f"eval/single_choice/{source}/acc"] = sum(by_source[source]) / len(by_source[source])
    return metrics


def evaluate_single_choice(model: Any, tokenizer: Any, questions: list[Question], accelerator: Any,
                           few_shot_prefix: str = "", batch_size: int = 8) -> dict[str, float]:
    """Accuracy overall and per source; call on all ranks, each scores its share of the questions."""
    share = rank_share(questions, accelerator.process_index, accelerator.num_processes)
    with eval_mode(model):
        predicted = predict_letters(model, tokenizer, [q for _, q in share], accelerator.device,
                                    few_shot_prefix, batch_size)
    gathered = gather_results(accelerator, [(index, p) for (index, _), p in zip(share, predicted, strict=True)])
    return accuracy_metrics(questions, merge_results(gathered))

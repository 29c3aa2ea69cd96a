"""Held out means held out: for each kind of source, no document that `bashgpt eval` and the quickstart call
held out (``load_corpus(source)["validation"]``) is in what training trains on, whatever its seed, streamed or not."""

import json
import re

import datasets
import pytest
from test_training import options

from bashgpt.data.corpus import held_out, load_corpus
from bashgpt.training.train import training_data

DOCUMENTS = 400


def document(i: int) -> str:
    return f"d{i}x " + " ".join(("the cat sat", "a dog ran", "on the mat", "in the sun")[(i * k) % 4] for k in range(5))


def write_source(kind: str, folder):
    docs = [document(i) for i in range(DOCUMENTS)]
    folder.mkdir(parents=True)
    if kind == "txt":  # one document a paragraph
        (folder / "a.txt").write_text("\n\n".join(docs) + "\n")
        return folder
    if kind == "parquet":
        datasets.Dataset.from_dict({"content": docs}).to_parquet(str(folder / "stories.parquet"))
        return folder / "stories.parquet"
    if kind == "collect":  # a `bashgpt collect` folder: its own validation file
        (folder / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[40:]))
        (folder / "validation.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:40]))
        return folder
    (folder / "stories.jsonl").write_text("".join(json.dumps({"story": d}) + "\n" for d in docs))
    return folder / "stories.jsonl"


def markers(text: str) -> set[str]:
    return set(re.findall(r"d\d+x", text))


def trained_on(opts, tokenizer) -> set[str]:
    """The documents training's own data path gives the model (with --streaming, two passes of the stream)."""
    train, _, _ = training_data(opts, tokenizer, progress=False)
    if not opts.streaming:
        return markers(tokenizer.decode(train.tokens))
    stream = iter(train)
    return markers(tokenizer.decode([t for _ in range(400) for t in next(stream)["input_ids"].tolist()]))


@pytest.mark.parametrize("kind,streaming", [("jsonl", False), ("jsonl", True), ("txt", False), ("parquet", False),
                                            ("collect", False), ("collect", True)])
def test_nothing_evaluation_calls_held_out_was_trained_on(tmp_path, small_tokenizer, kind, streaming):
    source = str(write_source(kind, tmp_path / "corpus"))
    evaluated = markers(" ".join(load_corpus(source)["validation"]["text"]))  # what eval and the quickstart read
    assert evaluated
    everything = {f"d{i}x" for i in range(DOCUMENTS)}
    for seed in (1, 42):
        opts = options(tmp_path / f"seed{seed}", dataset=source, seed=seed, streaming=streaming, seq_len=64,
                       eval_blocks=40)
        trained = trained_on(opts, small_tokenizer)
        assert not trained & evaluated
        assert trained | evaluated == everything  # and nothing else is left out


def test_stdlib_is_split_by_each_documents_text():
    dd = load_corpus("stdlib")
    validation, train = list(dd["validation"]["text"]), list(dd["train"]["text"])
    assert len(validation) > 10 and all(held_out(t) for t in validation) and not any(held_out(t) for t in train)
    assert not set(validation) & set(train)
    assert load_corpus("stdlib")["validation"]["text"] == validation  # the same in every command

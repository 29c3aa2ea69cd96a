"""--streaming: blocks read from the corpus as training uses them, a held-out validation, exact resume."""

import json
import re
from pathlib import Path

import pytest
import torch
from test_training import StopAt, options

from bashgpt.cli import main
from bashgpt.data.corpus import CorpusError, held_out, stream_corpus
from bashgpt.data.streaming import StreamedBlocks, streamed_splits
from bashgpt.model_folder import load_model
from bashgpt.training.train import run_training

WORDS = "the cat dog ran sat on a mat in the sun park happy little big red blue".split()


def document(f: int, i: int) -> str:
    """Document ``i`` of file ``f``: it carries a unique marker, ``<file>_<index>x``, so any block tells which
    documents it holds."""
    return f"{f}_{i}x " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(8 + i % 13)) + "."


def write_stream_corpus(folder: Path, files: int = 2, per_file: int = 2500) -> Path:
    folder.mkdir(parents=True)
    for f in range(files):
        with open(folder / f"part{f}.jsonl", "w") as fh:
            for i in range(per_file):
                fh.write(json.dumps({"story": document(f, i)}) + "\n")
    return folder


def markers(tokenizer, blocks) -> list[str]:
    text = "".join(tokenizer.decode(b["input_ids"]) for b in blocks)
    return re.findall(r"(\d+_\d+)x", text)


def test_one_pass_holds_every_training_document_once_and_none_held_out(tmp_path, small_tokenizer):
    corpus = write_stream_corpus(tmp_path / "corpus")
    train, validation = stream_corpus(str(corpus))  # no validation file: the documents held_out picks
    blocks, validation_blocks = streamed_splits(train, validation, small_tokenizer, block_size=64, eval_blocks=8,
                                                seed=3)
    picked = [f"{f}_{i}" for f in range(2) for i in range(2500) if held_out(document(f, i))]
    assert 50 < len(picked) < 150  # about 2% of 5,000
    held = markers(small_tokenizer, [validation_blocks[i] for i in range(len(validation_blocks))])
    assert held and held == picked[:len(held)]  # whole batches of them, in order

    n_train = 5000 - len(picked)
    stream = iter(blocks)
    taken = [next(stream) for _ in range(4000)]  # more than a pass of this corpus (about 3,600 blocks)
    assert all(b["attention_mask"].all() and torch.equal(b["labels"], b["input_ids"]) for b in taken)  # no padding
    first_pass = markers(small_tokenizer, taken)[:n_train]
    assert len(set(first_pass)) == n_train and not set(first_pass) & set(picked)  # each once, none held out
    assert first_pass != sorted(first_pass, key=lambda m: tuple(map(int, m.split("_"))))  # shuffled


def test_the_stream_is_the_same_for_the_same_seed_and_goes_on_past_the_corpus(tmp_path, small_tokenizer):
    train, _ = stream_corpus(str(write_stream_corpus(tmp_path / "corpus", files=1, per_file=300)))

    def take(seed, n):
        stream = iter(StreamedBlocks(train, small_tokenizer, 64, seed=seed, shuffle_buffer=100))
        return [next(stream)["input_ids"] for _ in range(n)]

    a, b, other = take(1, 700), take(1, 700), take(2, 700)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, other, strict=True))
    passes = markers(small_tokenizer, [{"input_ids": x} for x in a])
    assert len(passes) > 600 and passes[:290] != passes[290:580]  # a second pass, in a new order
    trained = sorted(f"0_{i}" for i in range(300) if not held_out(document(0, i)))
    n = len(trained)
    assert sorted(passes[:n]) == sorted(passes[n:2 * n]) == trained


def test_the_corpus_own_validation_split_is_used(tmp_path, small_tokenizer):
    folder = tmp_path / "collected"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"train {i} " * 20}) + "\n" for i in range(50)))
    (folder / "validation.jsonl").write_text("".join(json.dumps({"text": f"valid {i} " * 20}) + "\n" for i in range(5)))
    train, validation = stream_corpus(str(folder))
    _, held_out = streamed_splits(train, validation, small_tokenizer, 32, eval_blocks=4, seed=0)
    text = small_tokenizer.decode(held_out.tokens)
    assert "valid 0" in text and "train" not in text


def test_streamed_training_resumes_on_the_exact_block(tmp_path):
    corpus = str(write_stream_corpus(tmp_path / "corpus", files=2, per_file=1200))
    kw = dict(dataset=corpus, streaming=True, num_epochs=3, eval_steps=3, eval_blocks=2)
    straight = run_training(options(tmp_path, output_dir=str(tmp_path / "a"), **kw))
    run_training(options(tmp_path, output_dir=str(tmp_path / "b"), **kw), extra_callbacks=[StopAt(4)])
    resumed = run_training(options(tmp_path, output_dir=str(tmp_path / "b"), resume=True, **kw))
    assert resumed["step"] == straight["step"] == 9
    a = load_model(Path(straight["output_dir"]) / "checkpoints" / "checkpoint-9")
    b = load_model(Path(resumed["output_dir"]) / "checkpoints" / "checkpoint-9")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert not list(Path(tmp_path / "cache").glob("*.tokens"))  # nothing was tokenised ahead


def test_a_damaged_file_met_while_streaming_is_one_line(tmp_path, capsys):
    corpus = write_stream_corpus(tmp_path / "corpus", files=1, per_file=2500)
    with open(corpus / "part0.jsonl", "a") as fh:
        fh.write('{"story": "cut off in the mid\n')
    code = main(["train", "--stage", "language", "--model-size", "nano", "--dataset", str(corpus), "--streaming",
                 "--output-dir", str(tmp_path / "run"), "--seq-len", "32", "--batch-size", "64", "--eval-blocks", "2",
                 "--steps-per-epoch", "40", "--num-epochs", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read the corpus while streaming" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_an_empty_corpus_cannot_stream(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CorpusError, match="has no documents"):
        stream_corpus(str(tmp_path / "empty.jsonl"))

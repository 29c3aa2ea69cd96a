"""Retrieved examples (--examples K): BM25 finds the pairs closest to the task and writes them above it."""

import json

import pytest

from bashgpt.cli import main
from bashgpt.data.tasks import Task, names_its_command, task_statement
from bashgpt.errors import UserError
from bashgpt.inference.examples import PairIndex, split_pair, with_examples

PAIRS = {
    "Display free disk space of all file systems.": "df -a",
    "Extract an uncompressed tar archive.": "tar -xvf foo.tar",
    "Delete files older than thirty days.": "find . -mtime +30 -delete",
    "Show the processes of a user.": "ps -u tyrion",
}


def corpus(folder, pairs=PAIRS):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"#!/bin/bash\n# {d}\n{c}\n", "source": "pair:cheat"} for d, c in pairs.items()]
    rows += [{"text": "#!/bin/sh\necho a script, not a pair\n", "source": "folder"}, rows[0]]  # a repeat
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_closest_pairs_come_first_and_only_those_sharing_a_word(tmp_path):
    index = PairIndex.from_corpus(corpus(tmp_path / "c"))
    assert len(index.pairs) == 4  # each pair once, scripts left out
    assert index.closest("Show the disk space of each file system", 1) == [("Display free disk space of all file "
                                                                            "systems.", "df -a")]
    assert [d for d, _ in index.closest("extract the archive", 4)] == ["Extract an uncompressed tar archive."]
    assert index.closest("the of a", 2) == []  # stop words only


def test_examples_go_between_the_shebang_and_the_task():
    prompt = "#!/bin/bash\n# Back up the home directory to a dated tar archive.\n"
    written = with_examples(prompt, [("Create a gz archive.", "tar -czf a.tgz dir")])
    assert written == ("#!/bin/bash\n# Create a gz archive.\ntar -czf a.tgz dir\n\n"
                       "# Back up the home directory to a dated tar archive.\n")
    assert task_statement(written) == "Back up the home directory to a dated tar archive."
    assert names_its_command(Task("b", written, ("tar",)))  # the task's own words, not the example's
    assert not names_its_command(Task("b", with_examples("#!/bin/bash\n# Back up home.\n", [("Use tar.", "tar c")]),
                                      ("tar",)))
    assert split_pair("#!/bin/bash\n# Show it.\nls -l\n| sort\n") == ("Show it.", "ls -l\n| sort")


def test_a_corpus_without_pairs_is_one_line(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": "#!/bin/sh\nls\n", "source": "folder"}) + "\n")
    with pytest.raises(UserError, match="holds no description-and-command pairs; collect it with --pairs"):
        PairIndex.from_corpus(folder)
    with pytest.raises(UserError, match="cannot read the pairs in"):
        PairIndex.from_corpus(tmp_path / "missing")


def test_generate_with_examples_shows_them_in_the_script(nano_dir, tmp_path, capsys):
    pairs = corpus(tmp_path / "c")
    assert main(["generate", str(nano_dir), "--prompt", "#!/bin/bash\n# Show free disk space.\n", "--examples", "1",
                 "--pairs", str(pairs), "--max-new-tokens", "4", "--json", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["text"].startswith("#!/bin/bash\n# Display free disk space of all file systems.\ndf -a\n\n"
                                     "# Show free disk space.\n")
    # the model folder does not say what it was fine-tuned on: one line naming the fix
    assert main(["generate", str(nano_dir), "--examples", "2", "--device", "cpu"]) == 2
    assert "pass --pairs a 'bashgpt collect --pairs ...' folder" in capsys.readouterr().err


def test_eval_with_examples_says_so_and_keeps_the_task_verdicts(nano_dir, tmp_path, capsys):
    pairs = corpus(tmp_path / "c", {**PAIRS, **{f"Print the word number {i} of the list.": f"echo {i}"
                                               for i in range(60)}})
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("=== space: df\n#!/bin/bash\n# Show the free disk space.\n"
                     "=== old: find rm\n#!/bin/bash\n# Delete the log files older than a week.\n")
    assert main(["eval", str(nano_dir), "--code-data", str(pairs), "--tasks", str(tasks), "--examples", "2",
                 "--pairs", str(pairs), "--samples-per-prompt", "1", "--max-new-tokens", "4", "--max-blocks", "2",
                 "--out", str(tmp_path / "eval.json"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "each prompt had the 2 closest pairs written above its task" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["data"]["examples_in_prompt"] == 2 and result["relevance"]["guarded"]["samples"] == 2

"""Task relevance: the shipped task set, what counts as using a command, scripts that do nothing, bad task files."""

import json
import re

import datasets
import pytest
from test_syntax_guard import feed, ids_of

from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.cli import main
from bashgpt.data.nl2sh import Nl2shError, Nl2shTask, load_nl2sh, nl2sh_scores, utilities
from bashgpt.data.tasks import (
    Task,
    TaskFileError,
    chance_level,
    has_command,
    load_tasks,
    names_its_command,
    on_task,
    reference_scores,
    relevance_rates,
    wilson_interval,
)
from bashgpt.data.tokenization import default_tokenizer_dir
from bashgpt.inference import evaluate as evaluate_module
from bashgpt.inference.generate import Sample, rank
from bashgpt.inference.syntax_guard import LineChecker, ScriptGuard
from bashgpt.model_folder import load_tokenizer
from bashgpt.sampling import SamplingOptions
from bashgpt.shellcheck import bash_parse


@pytest.fixture(scope="module")
def nano():
    tok = load_tokenizer(default_tokenizer_dir())
    config = BashGPTConfig.from_preset("nano", max_position_embeddings=128, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id)
    return BashGPTForCausalLM(config).eval(), tok


SUBJECTS = {  # a command that only a task on this subject names, so each subject is in the set
    "files": "ln", "text processing": "jq", "archives": "unzip", "processes": "pkill", "networking": "ssh",
    "users and permissions": "chown", "packages": "dpkg", "services": "journalctl", "git": "git",
    "argument parsing": "getopts",
}


def test_the_shipped_set_covers_the_subjects_and_its_scripts_do_their_tasks():
    tasks = load_tasks()
    assert len(tasks) >= 60
    for subject, command in SUBJECTS.items():
        assert any(command in t.commands for t in tasks), subject
    for task in tasks:
        assert task.prompt.startswith("#!/bin/") and "\n# " in task.prompt and task.commands and task.reference
        assert on_task(task.reference, task.commands), task.name
        assert bash_parse(task.prompt + task.reference).ok, task.name
    scores = reference_scores(tasks)
    assert scores["on_task"] == 1.0 and scores["chance"] < 0.1  # the scripts use their own tasks' commands only


def test_the_first_tasks_are_the_prompts_bashgpt_was_evaluated_on():
    prompts = [t.prompt for t in load_tasks()[:2]]
    assert prompts == ["#!/bin/bash\n# Back up the user's home directory to a dated tar archive in /var/backups.\n",
                       "#!/bin/bash\n# Delete log files older than 30 days in the given directory.\n"]


@pytest.mark.parametrize("completion, expected", [
    ("tar -czf backup.tar.gz ~\n", True),
    ("/usr/bin/tar cf x ~\n", True),
    ("ssh host 'tar cf - /etc' > etc.tar\n", True),
    ("# use tar to back it up\necho done\n", False),  # a comment is not code
    ("cp a backup.tar\n", False),  # a file name, not the command
    ("tar=1\necho $tar\n", False),  # a variable
    ("tarball=x\n", False),  # part of a longer word
    ("echo hi  # then tar\n", False),  # a trailing comment
])
def test_a_command_counts_when_a_line_of_code_uses_it(completion, expected):
    assert on_task(completion, ("tar",)) is expected


@pytest.mark.parametrize("completion, expected", [
    ("", False), ("\n\n", False), ("# TODO\n# more\n", False), ("exit 0\n", False), (":\n", False),
    ("true\n", False), ("# nothing\nexit\n", False), ("return 1\n", False),
    ("ls\n", True), ("exit 0\necho unreachable\n", True), ("x=1\n", True),
])
def test_a_script_with_only_comments_exit_or_colon_does_nothing(completion, expected):
    assert has_command(completion) is expected


def test_rates_and_the_chance_level():
    tasks = [Task("a", "#!/bin/sh\n# a\n", ("tar",)), Task("b", "#!/bin/sh\n# b\n", ("df",))]
    rates = relevance_rates(["tar cf x .\n", "exit 0\n"], tasks)
    assert (rates["samples"], rates["on_task"], rates["no_command"]) == (2, 0.5, 0.5)
    assert rates["own_chance"] == 0.0  # 'tar' held against task b (df), 'exit 0' against task a (tar)
    assert rates["not_named_in_task"] == {"share": 0.5, "interval_95": wilson_interval(1, 2), "samples": 2}
    scripts = ["tar cf x .\ndf -h\n", "ls\n"]
    assert chance_level(scripts, tasks) == 0.5  # 2 of the 4 pairs
    assert chance_level(scripts, tasks, own=[0, None]) == round(1 / 3, 3)  # script 0 is not paired with task a


def test_the_guard_does_not_end_a_script_that_does_nothing():
    tok = load_tokenizer(default_tokenizer_dir())
    checker = LineChecker.for_tokenizer(tok)
    ids = ids_of(tok, "#!/bin/bash\n# Delete log files older than 30 days.\n")
    guard = ScriptGuard.for_prompt(checker, ids)
    for line in ("# first, the directory\n", "exit 0\n", ":\n"):
        assert feed(guard, tok, ids, line) is None
        assert not guard.may_end(len(ids)), line
    assert feed(guard, tok, ids, "find . -name '*.log' -mtime +30 -delete\n") is None
    assert guard.may_end(len(ids))


def test_best_of_n_never_ranks_a_script_that_does_nothing_above_one_with_code(nano):
    model, tok = nano
    prompt = "#!/bin/bash\n# List the files.\n"
    nothing, code = Sample(prompt, "exit 0\n", ended=True), Sample(prompt, "ls -l | sort\n", ended=True)
    assert nothing.parses and not nothing.good and code.good
    assert rank(model, tok, [nothing, code])[0] is code


def test_evaluation_reports_relevance_beside_chance_and_the_scripts_for_the_tasks(monkeypatch, nano):
    tasks = load_tasks()[:3]  # tar; find/rm; du/find/sort/ls
    written = iter(["tar czf b.tgz ~\n", "exit 0\n",  # raw, guarded: task 1
                    "echo hi\n", "find . -mtime +30 -delete\n",  # task 2
                    "# nothing\n", "du -a | sort -n | tail\n"])  # task 3

    def fake_generate(model, tokenizer, prompt, sampling, num_samples, seed, guard):
        return [Sample(prompt, next(written), ended=True, guarded=guard)]

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    model, tok = nano
    real = datasets.Dataset.from_dict({"text": ["#!/bin/sh\ntar cf x .\n", "#!/bin/sh\necho hello\n"]})
    result = evaluate_module.evaluate(model, tok, None, real, tasks, samples_per_prompt=1,
                                      sampling=SamplingOptions(max_new_tokens=4), progress=False, real_scripts=2)
    rel = result["relevance"]
    assert [rel["raw"][k] for k in ("samples", "on_task", "no_command")] == [3, round(1 / 3, 3), round(1 / 3, 3)]
    assert [rel["guarded"][k] for k in ("samples", "on_task", "no_command")] == [3, round(2 / 3, 3), round(1 / 3, 3)]
    assert rel["guarded"]["named_in_task"]["samples"] == 1  # "a dated tar archive" names tar
    assert rel["guarded"]["named_in_task"]["share"] == 0.0 and rel["guarded"]["not_named_in_task"]["share"] == 1.0
    assert rel["reference"] == {"scripts": 3, "on_task": 1.0}
    assert rel["chance"]["on_task"] == round(1 / 6, 3)  # the tar script on the tar task, of 2 scripts x 3 tasks
    assert [e["completion"] for e in result["examples"]] == ["find . -mtime +30 -delete\n", "du -a | sort -n | tail\n"]
    assert evaluate_module.task_verdict(result["examples"][0]) == "task: on task (uses one of find, rm)"
    table = evaluate_module.format_table(result)
    assert "uses a command the task needs" in table and "writes no command at all" in table
    assert "95% interval" in table and "same samples, other tasks" in table and "task names the command" in table
    with_share = {"on_task_interval_95": (0.04, 0.11), "on_task": 0.072}
    assert evaluate_module.task_dependence({**with_share, "own_chance": 0.015}).startswith("the line above is 4.8x")
    assert "may not depend on the task" in evaluate_module.task_dependence({**with_share, "own_chance": 0.04})


def test_the_interval_of_a_share_and_what_a_sample_scores_against_other_tasks():
    assert wilson_interval(0, 74) == (0.0, 0.049)  # none of 74 still allows up to 5%
    lo, hi = wilson_interval(9, 144)
    assert lo < 9 / 144 < hi and (lo, hi) == (0.033, 0.115)
    tasks = [Task("a", "#!/bin/sh\n# Archive it.\n", ("tar",)), Task("b", "#!/bin/sh\n# Free space.\n", ("df",)),
             Task("c", "#!/bin/sh\n# Make a tar file.\n", ("tar",))]
    # the same 'tar' whatever the task: on task for a and c, and against the others' tasks it scores a's and c's
    same = ["tar cf x .\n"] * 3
    rates = relevance_rates(same, tasks)
    assert rates["on_task"] == round(2 / 3, 3)
    assert rates["own_chance"] == 0.5  # a vs b: no; b vs a, b vs c: yes; c vs b: no (a vs c: same commands, left out)
    assert [names_its_command(t) for t in tasks] == [False, False, True]


BAD_FILES = {
    "=== backup tar\n#!/bin/bash\n# b\n": "malformed task header",
    "=== backup:\n#!/bin/bash\n# b\n": "names no commands",
    "#!/bin/bash\n=== backup: tar\n#!/bin/bash\n# b\n": "text before the first task header",
    "=== backup: tar\n# Back up.\n": "no prompt starting with a '#!' line",
    "=== backup: tar\n#!/bin/bash\n# b\n--- reference\ntar c .\n--- reference\n": "two '--- reference' lines",
    "=== a: tar\n#!/bin/sh\n# a\n=== a: df\n#!/bin/sh\n# b\n": "must be unique",
    ";; only a note\n": "no tasks",
}


@pytest.mark.parametrize("text, message", BAD_FILES.items(), ids=range(len(BAD_FILES)))
def test_a_bad_task_file_is_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "tasks.txt"
    path.write_text(text)
    with pytest.raises(TaskFileError, match=message) as err:
        load_tasks(path)
    assert "\n" not in str(err.value)


def test_eval_with_a_bad_task_file_exits_2_before_loading_anything(tmp_path, capsys):
    (tmp_path / "tasks.txt").write_text("=== backup:\n#!/bin/bash\n# b\n")
    assert main(["eval", str(tmp_path / "no-model-here"), "--tasks", str(tmp_path / "tasks.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no commands" in err


# --- NL2SH-ALFA ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, expected", [
    ('find testbed -type f -name "*.py" | wc -l', ["find", "wc"]),
    ("sudo timeout 5 ping -c 1 host", ["ping"]),
    ("find . -name x -exec grep -l foo {} \\;", ["find", "grep"]),
    ("LANG=C sort f | uniq -c", ["sort", "uniq"]),
    ("echo $(date +%F) > f", ["date"]),
    ("ls | xargs -n1 basename", ["ls", "xargs", "basename"]),
    ("cat a && (cd b; make)", ["cat", "cd", "make"]),
])
def test_the_utilities_of_a_reference_command(command, expected):
    assert utilities(command) == expected


def test_the_installed_nl2sh_alfa_has_its_300_tasks():
    tasks = load_nl2sh()
    assert len(tasks) == 300
    first = tasks[0]
    assert first.prompt == "#!/bin/bash\n# list files in the current directory\n"
    assert first.utilities == ("ls",) and first.references == ("ls", "ls -l")
    assert sum(bool(t.utilities) for t in tasks) >= 280  # a few references are only echo


def test_nl2sh_scores_any_all_and_chance():
    tasks = [Nl2shTask("q1", ("find . | wc -l",), ("find", "wc")), Nl2shTask("q2", ("df -h",), ("df",))]
    scores = nl2sh_scores(["find . -type f | wc -l\n", "# no idea\n"], tasks)
    assert scores == {"tasks": 2, "any_utility": 0.5, "all_utilities": 0.5, "chance_any": 0.0}
    assert nl2sh_scores(["find .\n", "find / | wc\n"], tasks)["chance_any"] == 0.5  # sample 2 uses task 1's tools


@pytest.mark.parametrize("layout, message", [
    (None, "pip install 'bashgpt[nl2sh]'"),
    ({}, "laid out differently"),
    ({"nl2bash_fs_1.json": "{\"not\": \"a list\"}"}, "stores its tasks differently"),
    ({"nl2bash_fs_1.json": "[{\"question\": \"x\", \"answer\": \"ls\"}]"}, "stores its tasks differently"),
    ({"nl2bash_fs_1.json": "[{\"query\": \"x\", \"gold\": \"ls\"}"}, "cannot read"),
])
def test_an_nl2sh_release_laid_out_otherwise_is_one_line(tmp_path, monkeypatch, layout, message):
    import importlib.machinery
    import importlib.util

    if layout is not None:
        (tmp_path / "icalfa" / "assets" / "datasets").mkdir(parents=True)
        for name, text in layout.items():
            (tmp_path / "icalfa" / "assets" / "datasets" / name).write_text(text)
    spec = None if layout is None else importlib.machinery.ModuleSpec("icalfa", None, is_package=True)
    if spec is not None:
        spec.submodule_search_locations = [str(tmp_path / "icalfa")]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "icalfa" else real(name, *a))
    with pytest.raises(Nl2shError, match=re.escape(message)) as err:
        load_nl2sh()
    assert "\n" not in str(err.value)


def test_eval_scores_nl2sh_alfa_without_running_anything(nano, tmp_path, capsys):
    from bashgpt.model_folder import save_model_folder

    model, tok = nano
    folder = save_model_folder(model, tok, tmp_path / "m")
    (tmp_path / "code.jsonl").write_text('{"text": "#!/bin/sh\\nls -l\\n"}\n{"text": "#!/bin/sh\\ndf -h\\n"}\n')
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("=== list: ls\n#!/bin/sh\n# List the files.\n")
    assert main(["eval", str(folder), "--code-data", str(tmp_path / "code.jsonl"), "--tasks", str(tasks),
                 "--samples-per-prompt", "1", "--max-new-tokens", "8", "--max-blocks", "1", "--nl2sh",
                 "--nl2sh-tasks", "3"]) == 0
    out = capsys.readouterr().out
    assert "NL2SH-ALFA (3 tasks" in out and "Task relevance" in out
    result = json.loads((folder / "eval.json").read_text())
    assert set(result["nl2sh"]) == {"tasks", "any_utility", "all_utilities", "chance_any"}

"""Description-and-code pairs: what is mined from scripts and man pages, and that evaluation stays out of training."""

import gzip
import json

import pytest

from bashgpt.data.collect import collect
from bashgpt.data.pairs import (
    Contamination,
    comment_pairs,
    description,
    man_page_pairs,
    man_pairs,
    name_line,
    whatis_pairs,
)
from bashgpt.data.tasks import load_tasks


@pytest.mark.parametrize("text, expected", [
    ("Check whether we can use getent", "Check whether we can use getent."),
    ("this script rotates the logs of myapp:", "Rotates the logs of myapp."),
    ("Get the hosts of the device, use the -l option", "Get the hosts of the device."),
    ("Copyright 2020 Jane Doe", None),
    ("SPDX-License-Identifier: GPL-2.0", None),
    ("echo $foo > /dev/null", None),  # commented-out code
    ("rm -rf /tmp/x", None),
    ("vim: set ts=4 sw=4:", None),
    ("TODO fix this", None),
    ("Main", None),  # too short
])
def test_a_comment_reads_as_a_task_or_not(text, expected):
    assert description(text) == expected


SCRIPT = """#!/bin/bash
# Rotate the logs of myapp and keep the last seven.
#
# Copyright 2020 Jane Doe

set -eu
logdir=/var/log/myapp

# Compress every log file older than a day
find "$logdir" -name '*.log' -mtime +1 -exec gzip {} \\;

# Print a usage message
usage() {
    echo "usage: $0 [-n]" >&2
    exit 2
}

# Remove archives beyond the last seven
if [ -d "$logdir" ]; then
    ls -t "$logdir"/*.gz | tail -n +8 | xargs -r rm --
fi

# echo "$logdir"
    # an indented comment
    indented=1
"""


def test_pairs_from_a_script_are_its_header_and_its_commented_blocks():
    pairs = {kind_text[1].splitlines()[1]: kind_text for kind_text in comment_pairs(SCRIPT)}
    header = pairs["# Rotate the logs of myapp and keep the last seven."]
    assert header[0] == "header" and header[1].endswith("set -eu\nlogdir=/var/log/myapp\n")
    assert pairs["# Compress every log file older than a day."][1] == (
        "#!/bin/bash\n# Compress every log file older than a day.\nfind \"$logdir\" -name '*.log' -mtime +1 "
        "-exec gzip {} \\;\n")
    usage = pairs["# Print a usage message."][1]
    assert usage.endswith('usage() {\n    echo "usage: $0 [-n]" >&2\n    exit 2\n}\n')
    assert pairs["# Remove archives beyond the last seven."][1].endswith("fi\n")
    assert len(pairs) == 4  # not the commented-out code, not the indented comment
    assert all(kind == "comment" for line, (kind, _, _) in pairs.items() if "Rotate" not in line)


MAN = r""".TH AMIXER 1
.SH NAME
amixer \- command-line mixer
.SH EXAMPLES
.TP
\fBamixer \-c 1 sset Line,0 80%,40% unmute cap\fR
will set the second soundcard's left line input volume to 80% and
right line input to 40%.
.PP
To list the controls of the first card, type:
.nf
$ amixer \-c 0 scontrols
Simple mixer control 'Master',0
.fi
.SH SEE ALSO
\fBalsamixer\fR(1)
"""


def test_pairs_from_a_man_page_are_its_examples_and_their_sentences(tmp_path):
    pairs = man_pairs(MAN, "amixer")
    assert pairs == [
        "#!/bin/bash\n# Set the second soundcard's left line input volume to 80% and right line input to 40%.\n"
        "amixer -c 1 sset Line,0 80%,40% unmute cap\n",
        "#!/bin/bash\n# List the controls of the first card.\namixer -c 0 scontrols\n",  # its output left out
    ]
    page = tmp_path / "usr/share/man/man1/amixer.1.gz"
    page.parent.mkdir(parents=True)
    page.write_bytes(gzip.compress(MAN.encode()))
    examples, names = man_page_pairs(tmp_path)
    assert examples == [(p, "usr/share/man/man1/amixer.1.gz") for p in pairs]
    assert names == {}  # "command-line mixer": too short to read as a task


def test_a_name_line_is_another_wording_of_the_shortest_command_of_its_program():
    names = {"df": ("Report file system disk space usage.", "usr/share/man/man1/df.1.gz")}
    commands = ["df -h --total", "df -a", "du -sh", "df -h\n| sort"]
    assert whatis_pairs(names, commands) == [("#!/bin/bash\n# Report file system disk space usage.\ndf -a\n",
                                              "usr/share/man/man1/df.1.gz")]
    assert name_line(".TH DF 1\n.SH NAME\ndf \\- report file system disk space usage\n.SH SYNOPSIS\n") == \
        "report file system disk space usage"
    assert name_line(".TH X 1\n.SH SYNOPSIS\nx\n") is None


def test_what_evaluation_asks_or_answers_is_found_in_a_text():
    tasks = load_tasks()
    found = Contamination.of_evaluation()
    task = tasks[1]  # "# Delete log files older than 30 days in the given directory."
    assert found.found_in("#!/bin/sh\n#  delete LOG files older than 30 days in the given directory\nls\n")
    assert found.found_in("#!/bin/sh\n" + task.reference)  # its real script
    assert found.found_in("#!/bin/sh\nfind testbed -type f -name \"*.py\" | wc -l\n")  # an NL2SH-ALFA reference
    assert not found.found_in("#!/bin/sh\n# Delete the cache.\nrm -rf ~/.cache/myapp\n")


def write_scripts(folder, tasks):
    folder.mkdir()
    bodies = [f"# Show the disk usage of project {i} in kilobytes\ndu -sk /srv/project{i}\n\n"
              f"# Count the entries of folder {i} by hand\nls /srv/folder{i} | wc -l\n\n"
              f"# Say hello to visitor number {i} politely\necho \"hello {i}\"\n" for i in range(12)]
    for i, body in enumerate(bodies):
        (folder / f"s{i}.sh").write_text(f"#!/bin/bash\n# Tool number {i} of the project suite.\n\n{body}")
    (folder / "leak.sh").write_text(f"#!/bin/bash\n{tasks[1].prompt.splitlines()[1]}\nfind . -mtime +30 -delete\n")
    (folder / "answer.sh").write_text(f"#!/bin/bash\n# Cleans up.\n\n{tasks[0].reference}")
    (folder / "block.sh").write_text(f"#!/bin/bash\n# Tidy the folder.\n\n{tasks[2].prompt.splitlines()[1]}\n"
                                     f"ls -S | head\n\n# Sort the words of a file in reverse\nsort -r words.txt\n")


def test_collect_adds_pairs_with_their_provenance_and_no_evaluation_text(tmp_path):
    tasks = load_tasks()
    write_scripts(tmp_path / "src", tasks)
    manifest = collect([str(tmp_path / "src")], tmp_path / "out", validation_fraction=0.2, progress=False,
                       pairs=("comment", "header"))
    assert manifest["skipped"]["evaluation_overlap"] == 3  # leak.sh, answer.sh, block.sh: evaluation text
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    pairs = [r for r in rows if r["source"].startswith("pair:")]
    assert manifest["pairs"]["comment"]["kept"] == len([r for r in pairs if r["source"] == "pair:comment"]) > 0
    assert manifest["splits"]["train"]["pairs"] == len(pairs)
    for pair in pairs:
        assert pair["text"].startswith("#!/bin/bash\n# ") and pair["bash_n_ok"]
        assert pair["project"] == "src" and pair["licence"] and "#L" in pair["path"]
    validation = [json.loads(line) for line in (tmp_path / "out" / "validation.jsonl").read_text().splitlines()]
    held_out = {r["path"] for r in validation}
    assert not any(r["path"].split("#")[0] in held_out for r in pairs)  # nothing cut from a validation script
    found = Contamination.of_evaluation()
    assert not any(found.found_in(r["text"]) for r in rows + validation)
    texts = [r["text"] for r in pairs]
    assert len(texts) == len(set(texts))


def test_collect_refuses_an_unknown_pair_kind(tmp_path, capsys):
    from bashgpt.cli import main

    (tmp_path / "src").mkdir()
    assert main(["collect", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--pairs", "comment,readme"]) == 2
    assert "unknown pair kind(s) readme" in capsys.readouterr().err

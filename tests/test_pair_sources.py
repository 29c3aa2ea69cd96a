"""Pairs from published example collections: each layout read from a small fixture made here, the PyPI releases
read from archives of their real layout, online sources skipped offline, and bad layouts one line each."""

import io
import json
import tarfile
import zipfile

import datasets
import pytest

from bashgpt.data import pair_sources
from bashgpt.data.collect import collect
from bashgpt.data.pair_sources import (
    PYPI_RELEASES,
    PairSourceError,
    SourceOffline,
    cheat_pairs,
    eg_pairs,
    nl2sh_alfa_rows,
    source_pairs,
    tldr_archive_pairs,
    tldr_pairs,
)

CHEAT_SHEET = """# To extract an uncompressed archive:
tar -xvf /path/to/foo.tar

# To create a .gz archive
# with verbose output:
tar -czvf /path/to/foo.tgz /path/to/foo/

# Just a note without a command

# x
tar -t
"""

EG_PAGE = """# tar

extract .tar file

    tar vfx archive.tar


# Basic Usage

`vf` means verbosely list files (`v`) and use a file (`f`), not `stdin`.

Remove a directory with the recursive (`-r`) flag:

    $ tar -c -f <name-of-tar-file> <directory>
    output it prints
"""

TLDR_PAGE = """# tar

> Archiving utility.
> More information: <https://www.gnu.org/software/tar>.

- [c]reate an archive and write it to a [f]ile:

`tar cf {{path/to/target.tar}} {{path/to/file1 path/to/file2 ...}}`

- Extract a (compressed) archive file into the current directory [v]erbosely:

`tar {{[-x|--extract]}} {{[-v|--verbose]}} {{[-f|--file]}} {{path/to/source.tar[.gz|.bz2|.xz]}}`
"""


def test_a_cheatsheet_gives_each_comment_and_its_command():
    assert cheat_pairs(CHEAT_SHEET) == [
        "#!/bin/bash\n# Extract an uncompressed archive.\ntar -xvf /path/to/foo.tar\n",
        "#!/bin/bash\n# Create a .gz archive with verbose output.\ntar -czvf /path/to/foo.tgz /path/to/foo/\n",
    ]  # the note has no command and 'x' is no description


def test_an_eg_page_gives_each_paragraph_and_the_commands_of_its_block():
    assert eg_pairs(EG_PAGE, "tar") == [
        "#!/bin/bash\n# Extract .tar file.\ntar vfx archive.tar\n",
        # the (`-r`) aside goes, the prompt and the printed output go, <placeholders> lose their brackets
        "#!/bin/bash\n# Remove a directory with the recursive flag.\ntar -c -f name-of-tar-file directory\n",
    ]


def test_a_tldr_page_gives_each_item_with_its_placeholders_filled():
    assert tldr_pairs(TLDR_PAGE) == [
        "#!/bin/bash\n# Create an archive and write it to a file.\n"
        "tar cf path/to/target.tar path/to/file1 path/to/file2 ...\n",
        "#!/bin/bash\n# Extract a (compressed) archive file into the current directory verbosely.\n"
        "tar --extract --verbose --file path/to/source.tar[.gz|.bz2|.xz]\n",
    ]


def sdist(path, release, files: dict[str, str]):
    """A .tar.gz laid out as ``release``'s sdist, holding ``files`` in its examples folder."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(release.folder + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pypi_releases_are_read_from_their_archives_without_installing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pair_sources.subprocess, "run", lambda *a, **k: calls.append(a))
    (tmp_path / "pypi").mkdir()
    sdist(tmp_path / "pypi" / "cheat-2.5.1.tar.gz", PYPI_RELEASES["cheat"], {"tar": CHEAT_SHEET})
    sdist(tmp_path / "pypi" / "eg-1.2.3.tar.gz", PYPI_RELEASES["eg"], {"tar.md": EG_PAGE})
    cheat, eg = source_pairs("cheat", tmp_path), source_pairs("eg", tmp_path)
    assert not calls  # in the cache: pip is not asked again
    assert [p.text for p in cheat] == cheat_pairs(CHEAT_SHEET) and [p.text for p in eg] == eg_pairs(EG_PAGE, "tar")
    assert (cheat[0].package, cheat[0].version, cheat[0].licence) == ("cheat", "2.5.1", "GPL-3.0")
    assert eg[0].licence == "MIT" and eg[0].path.endswith("examples/tar.md")


def test_a_release_laid_out_otherwise_or_without_pairs_is_one_line(tmp_path):
    (tmp_path / "pypi").mkdir()
    sdist(tmp_path / "pypi" / "cheat-2.5.1.tar.gz", PYPI_RELEASES["eg"], {"tar.md": EG_PAGE})  # eg's folder
    with pytest.raises(PairSourceError, match="cheat-2.5.1.tar.gz has no cheat-2.5.1/cheat/cheatsheets/ folder"):
        source_pairs("cheat", tmp_path)
    sdist(tmp_path / "pypi" / "eg-1.2.3.tar.gz", PYPI_RELEASES["eg"], {"tar.md": "# tar\n\nnothing here\n"})
    with pytest.raises(PairSourceError, match="the eg source yielded no description-and-command pair"):
        source_pairs("eg", tmp_path)
    (tmp_path / "pypi" / "eg-1.2.3.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(PairSourceError, match="not a readable sdist"):
        source_pairs("eg", tmp_path)


def test_pip_failing_is_a_skip_not_a_hang(tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: Could not find a version that satisfies the requirement cheat==2.5.1"

    monkeypatch.setattr(pair_sources.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(SourceOffline, match="pip download cheat==2.5.1 failed"):
        source_pairs("cheat", tmp_path)


def tldr_zip(path, pages: dict[str, str]):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in pages.items():
            z.writestr(name, text)


def test_the_tldr_archive_gives_the_linux_and_common_pages(tmp_path):
    tldr_zip(tmp_path / "t.zip", {"common/tar.md": TLDR_PAGE, "osx/tar.md": TLDR_PAGE, "linux/x.md": TLDR_PAGE})
    pairs = tldr_archive_pairs(tmp_path / "t.zip")
    assert sorted({p.path for p in pairs}) == ["common/tar.md", "linux/x.md"] and len(pairs) == 4
    assert "CC-BY-4.0" in pairs[0].licence
    tldr_zip(tmp_path / "other.zip", {"README.md": "# hi\n"})
    with pytest.raises(PairSourceError, match="no common/ or linux/ pages"):
        tldr_archive_pairs(tmp_path / "other.zip")


def test_online_sources_are_skipped_offline_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(pair_sources, "reachable", lambda *a, **k: False)
    monkeypatch.setattr(pair_sources, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(SourceOffline, match="github.com does not answer"):
        source_pairs("tldr", tmp_path)
    with pytest.raises(SourceOffline, match="Hub does not answer"):
        source_pairs("nl2sh-alfa", tmp_path)


def test_nl2sh_alfa_rows_keep_tldr_attribution_and_refuse_other_columns():
    rows = datasets.Dataset.from_dict({"nl": ["list all files in the current folder", "x"],
                                       "bash": ["ls -a", "true"]})
    pairs = nl2sh_alfa_rows(rows, "fixture")
    assert [p.text for p in pairs] == ["#!/bin/bash\n# List all files in the current folder.\nls -a\n"]
    assert "tldr-pages" in pairs[0].licence and "MIT" in pairs[0].licence
    with pytest.raises(PairSourceError, match="columns query, gold, not 'nl' and 'bash'"):
        nl2sh_alfa_rows(datasets.Dataset.from_dict({"query": ["a"], "gold": ["b"]}), "fixture")


def test_collect_takes_published_pairs_with_provenance_and_skips_offline_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pair_sources, "reachable", lambda *a, **k: False)
    (tmp_path / "cache" / "pypi").mkdir(parents=True)
    sdist(tmp_path / "cache" / "pypi" / "cheat-2.5.1.tar.gz", PYPI_RELEASES["cheat"], {"tar": CHEAT_SHEET})
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"s{i}.sh").write_text(f"#!/bin/sh\necho script number {i} of the corpus here\n")
    manifest = collect([str(src)], tmp_path / "out", cache=tmp_path / "cache", progress=False,
                       pairs=("cheat", "tldr"))
    assert "tldr pairs skipped: github.com does not answer" in capsys.readouterr().out
    assert manifest["pairs"]["cheat"] == {"mined": 2, "kept": 2} and manifest["pairs"]["tldr"]["kept"] == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    cheat = [r for r in rows if r["source"] == "pair:cheat"]
    assert {(r["project"], r["licence"]) for r in cheat} == {("cheat", "GPL-3.0")} and len(cheat) == 2

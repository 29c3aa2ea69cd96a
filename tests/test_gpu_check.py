"""bench/gpu_check.py, the check a lent GPU runs in one call, run here on the CPU at tiny dimensions (--smoke), so it
cannot rot between lent GPUs: every part runs and every section of its results is written; a missing wheel, a
missing corpus and a part out of time are one line each while the other parts are still measured."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))


def run_check(*args: str, timeout: int = 240) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.run([sys.executable, str(CHECK), "--smoke", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    results = json.loads((out / "gpu-results.json").read_text())
    return proc, results, (out / "gpu-results.md").read_text()


def test_the_smoke_run_measures_every_part_and_writes_every_section(tmp_path):
    proc, results, md = run_check("--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results["problems"] == []
    assert {name: part["status"] for name, part in results["parts"].items()} == dict.fromkeys(
        ("machine", "train", "decode", "recipe"), "ok")
    machine = results["parts"]["machine"]["rows"][0]
    assert machine["bf16_matmul_tflops"] > 0 and machine["unmet_requirements"] == []
    train = results["parts"]["train"]["rows"]
    measured = {(r["model"], r["compiled"]) for r in train if "tokens_per_s" in r and r.get("kind") != "planned"}
    assert measured == {(m, c) for m in ("bashgpt", "GPT2LMHeadModel") for c in (False, True)}
    assert all(0 < r["mfu"] < 1 for r in train if "mfu" in r)
    planned = [r for r in train if r.get("kind") == "planned"]
    assert len(planned) == 1 and planned[0]["predicted_gb"] <= planned[0]["budget_gb"]
    decode = results["parts"]["decode"]["rows"]
    assert [r["batch"] for r in decode] == [1, 2]
    assert all(all(r["same_tokens_as_generate"].values()) for r in decode)  # engine and static cache: same greedy ids
    recipe = {r["stage"]: r for r in results["parts"]["recipe"]["rows"]}
    assert recipe["language"]["steps"] == recipe["code"]["steps"] == 3
    assert recipe["code"]["best_validation_loss"] is not None
    assert "time budget" in recipe["eval"]["prompts_done"]  # bashgpt eval --time-limit stopped taking prompts
    assert len(results["targets"]) == 6
    for title in ("## Parts", "## Problems", "## Targets", "## Machine", "## Training step", "## Decoding",
                  "## The guide's two-stage tiny recipe"):
        assert title in md
    assert "nothing measured" not in md and "Smoke run" in md


def test_a_missing_corpus_and_a_part_out_of_time_are_one_line_each_and_the_rest_still_runs(tmp_path):
    proc, results, md = run_check("--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--only",
                                  "machine", "train", "recipe", "--limit", "train=2",
                                  "--corpus", str(tmp_path / "nothing"))
    assert proc.returncode == 1
    parts = results["parts"]
    assert parts["machine"]["status"] == "ok" and parts["machine"]["rows"]
    assert parts["train"]["status"] == "stopped at its time limit of 2 s"
    assert parts["recipe"]["status"].startswith("failed (exit 1): no stage-2 corpus at ")
    assert "decode" not in parts
    assert len(results["problems"]) == 2 and all("\n" not in p for p in results["problems"])
    assert "nothing measured: stopped at its time limit of 2 s" in md or "(the part stopped at its time limit" in md
    assert "nothing measured: not run: not asked for (--only)" in md


def test_carried_wheels_install_into_a_folder_of_their_own_and_a_missing_one_is_named(tmp_path):
    from gpu_check import install

    installed, problems = install(tmp_path / "no-wheels", tmp_path / "site")
    assert installed == {} and problems == [f"missing wheels: none in {tmp_path / 'no-wheels'}; run bash "
                                            "bench/gpu_prepare.sh on a CPU machine and carry .gpu (the parts run on "
                                            "the machine's own packages)"]
    wheels = tmp_path / "wheels"
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' staging folder: stale files would ship
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=180)
    installed, problems = install(wheels, tmp_path / "site")
    assert problems == [] and [w.split("-")[0] for w in installed["installed"]] == ["bashgpt"]
    assert {"transformers", "datasets", "torch"} <= set(installed["kept_from_this_machine"])  # in range here: kept
    assert (tmp_path / "site" / "bashgpt" / "data" / "tasks.txt").is_file()  # package data travels in the wheel


def fake_wheel(folder: Path, name: str, version: str, *requires: str) -> Path:
    import zipfile

    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: "
                       f"{version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_a_carried_wheel_is_chosen_only_where_this_machine_lacks_the_package_or_has_it_out_of_range(tmp_path):
    from gpu_wheels import choose_wheels

    wheels = [fake_wheel(tmp_path, "needy", "1.0", "packaging>=999", "tqdm>=1", "absent-a>=1", "absent-b",
                         "colorama; platform_system == 'Windows'"),
              fake_wheel(tmp_path, "packaging", "999.0", "absent-c"),
              fake_wheel(tmp_path, "tqdm", "999.0"),  # this machine's tqdm is in range: kept, this wheel unused
              fake_wheel(tmp_path, "absent_b", "2.0")]
    chosen, kept, problems = choose_wheels(wheels, "needy")
    assert [p.name.split("-")[0] for p in chosen] == ["absent_b", "needy", "packaging"]
    assert set(kept) == {"tqdm"}
    assert problems == ["missing wheel: absent-a>=1 (needy needs it; this machine has none); carry it "
                        "(bench/gpu_prepare.sh)",
                        "missing wheel: absent-c (packaging needs it; this machine has none); carry it "
                        "(bench/gpu_prepare.sh)"]


def test_unmet_requirements_name_each_missing_or_out_of_range_package(tmp_path, monkeypatch):
    from gpu_wheels import to_carry, unmet_requirements

    dist = tmp_path / "needy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: needy\nVersion: 1.0\n"
                                   "Requires-Dist: packaging>=999\nRequires-Dist: no-such-package-here>=1\n"
                                   "Requires-Dist: torch>=1\nRequires-Dist: colorama; platform_system == 'Windows'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = unmet_requirements("needy")
    assert len(problems) == 2
    assert problems[0].startswith("packaging ") and "outside needy's range >=999" in problems[0]
    assert problems[1].startswith("missing wheel: no-such-package-here (needy needs no-such-package-here>=1)")
    carried = to_carry("needy")  # torch stays the GPU image's; a Windows-only need is not carried
    assert carried == [line for line in carried if line.split("==")[0] in ("packaging",)] and carried


def test_a_failing_row_is_one_line_and_the_part_goes_on():
    from gpu_parts import row_error

    row = {"size": "large"}
    with row_error(row):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")
    assert row == {"size": "large", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}

"""Reliability and security: interrupted runs, full disks, exhausted memory, hostile files."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import Poison, assert_same, options, write_corpus

from bashgpt import BashGPTConfig, BashGPTForCausalLM
from bashgpt.cli import main
from bashgpt.data.tokenization import default_tokenizer_dir
from bashgpt.errors import UserError
from bashgpt.model_folder import load_model, load_tokenizer, save_model_folder
from bashgpt.training.run_safety import SEAL
from bashgpt.training.train import run_training

ROOT = Path(__file__).resolve().parent.parent


def recipe_args(tmp_path: Path, out: str, steps: int = 12) -> list[str]:
    corpus = tmp_path / "english"
    if not corpus.exists():
        write_corpus(corpus, "english", n=120)
    return [str(ROOT / "recipes" / "stage1.py"), "--model-size", "nano", "--dataset", str(corpus), "--num-epochs", "1",
            "--steps-per-epoch", str(steps), "--eval-steps", "1", "--learning-rate", "1e-3", "--warmup-steps", "2",
            "--seq-len", "32", "--batch-size", "2", "--eval-blocks", "2", "--device", "cpu", "--seed", "3",
            "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / out), "--no-progress"]


def final_weights(run: Path, step: int) -> dict:
    return load_file(run / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


def writing(checkpoint: Path, since: float) -> bool:
    """Whether this run is writing ``checkpoint`` now: not sealed, and changed since the run started."""
    try:
        return not (checkpoint / SEAL).exists() and checkpoint.stat().st_mtime >= since
    except FileNotFoundError:  # removed as an unsealed leftover
        return False


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_reaches_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 24  # long enough that a fast, quiet machine is still training when the third kill comes
    straight = subprocess.run([sys.executable, *recipe_args(tmp_path, "straight", steps)], env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    rng = random.Random(0)
    run = tmp_path / "killed"
    kills, during_save = 0, 0
    for attempt in range(4):  # two kills while saving, two at random moments, then a resume to the end
        resume = ["--resume"] if any(run.glob(f"checkpoints/checkpoint-*/{SEAL}")) else []
        if not resume and run.exists():
            resume = ["--overwrite"]
        started = time.time()
        proc = subprocess.Popen([sys.executable, *recipe_args(tmp_path, "killed", steps), *resume], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt % 2 == 0:  # kill while a checkpoint is being written (its folder there, not yet sealed)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if any(writing(p, started) for p in run.glob("checkpoints/checkpoint-*")):
                    proc.kill()
                    during_save += 1
                    break
                time.sleep(0.002)
        else:  # kill at a random moment once training runs (start-up alone can take 10 s on a busy machine)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and not list(run.glob(f"checkpoints/*/{SEAL}")):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.kill()
        proc.wait()
        kills += proc.returncode != 0
    final = subprocess.run([sys.executable, *recipe_args(tmp_path, "killed", steps), "--resume"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 3 and during_save >= 1
    a, b = final_weights(tmp_path / "straight", steps), final_weights(run, steps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(run / "best")  # the best model folder survived too


@pytest.mark.slow
def test_kill_9_at_each_moment_a_record_is_written_then_resume_reaches_the_same_run(tmp_path):
    """SIGKILL just before each kind of rename that makes a record of the run visible, one after another in one run
    (tests/crash_worker.py): before the first best/ appears, before a checkpoint's seal, before the old best/ is
    moved aside, and between that and the new best/'s rename. Each time the run is resumed (or started again where
    nothing was sealed); the end is the uninterrupted run's: bit-identical weights, the same best/ and its record."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps, census = 8, tmp_path / "census.jsonl"
    straight = subprocess.run([sys.executable, *recipe_args(tmp_path, "straight", steps)], env=env,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "killed"
    for kill_at in ("best:1", "seal:2", "swap:1", "best:1", "none:0"):
        resume = ["--resume"] if any(run.glob(f"checkpoints/checkpoint-*/{SEAL}")) else ["--overwrite"]
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_worker.py"), str(census), kill_at,
                               *recipe_args(tmp_path, "killed", steps), *resume], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == (0 if kill_at == "none:0" else -signal.SIGKILL), (kill_at, proc.stderr[-2000:])
        if kill_at == "swap:1":
            assert (run / "best").is_dir()  # the last good best/ stays where it was
    renames = [json.loads(line) for line in census.read_text().splitlines()]
    killed = [i for i, r in enumerate(renames) if r["killed"]]
    assert [renames[i]["kind"] for i in killed] == ["best", "seal", "swap", "best"]
    assert renames[killed[-1] - 1]["kind"] == "swap"  # the last kill fell between the old best/'s move and the new
    a, b = final_weights(tmp_path / "straight", steps), final_weights(run, steps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best_a, best_b = (load_file(tmp_path / r / "best" / "model.safetensors") for r in ("straight", "killed"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    records = [json.loads((tmp_path / r / "best" / "bashgpt_best.json").read_text()) for r in ("straight", "killed")]
    assert records[0] == records[1]
    assert not (run / "best.old").exists()


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_within_seconds(tmp_path):
    proc = subprocess.Popen([sys.executable, *recipe_args(tmp_path, "run", steps=400)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20
    assert proc.returncode == 143
    line = [ln for ln in err.splitlines() if ln.startswith("bashgpt: error:")][-1]
    assert "SIGTERM" in line and "--resume" in line and "checkpoint-" in line
    checkpoint = Path(line.split("checkpoint is in ")[1].split(";")[0])
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "model.safetensors").is_file()
    # (resuming from it is what the kill -9 test above does)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_sigterm_to_one_of_two_ddp_processes_stops_both_at_the_same_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    args = [*recipe_args(tmp_path, "run", steps=60), "--eval-steps", "30"]  # the first save is the signal's
    proc = subprocess.Popen([*launch, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.1)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGTERM)  # only one of them: a laptop's OOM killer or a scheduler may do that
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    line = [ln for ln in err.splitlines() if ln.startswith("bashgpt: error:")][-1]
    checkpoint = Path(line.split("checkpoint is in ")[1].split(";")[0])
    assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in checkpoint.iterdir()}
    assert int(checkpoint.name.split("-")[1]) < 30
    resumed = subprocess.run([*launch, *args, "--resume"],
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-60" / "model.safetensors").is_file()


def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from transformers import Trainer

    real = Trainer._save_optimizer_and_scheduler
    calls = {"n": 0}

    def failing(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", failing)
    with pytest.raises(UserError) as err:
        run_training(options(tmp_path, num_epochs=3, eval_steps=2))
    message = str(err.value)
    assert "no space left" in message and "checkpoint-2" in message and "\n" not in message
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert load_model(checkpoints / "checkpoint-2")
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real)
    assert run_training(options(tmp_path, num_epochs=3, eval_steps=2, resume=True))["step"] == 9


def test_unwritable_output_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="writable --output-dir"):
        run_training(options(tmp_path, output_dir=str(blocker / "run")))


def test_out_of_memory_names_the_flags_that_help(tmp_path, monkeypatch):
    def explode(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    from bashgpt.modeling_bashgpt import BashGPTModel

    monkeypatch.setattr(BashGPTModel, "forward", explode)  # the inner stack: Trainer reads the outer signature
    with pytest.raises(UserError) as err:
        run_training(options(tmp_path))
    for flag in ("--batch-size", "--use-gradient-checkpointing", "--seq-len", "--model-size"):
        assert flag in str(err.value)


def test_nan_in_consecutive_accumulation_windows_skips_both(tmp_path):
    poison = Poison(steps=[3, 4], where="loss", micro=1)
    summary = run_training(options(tmp_path, gradient_accumulation_steps=2, max_consecutive_skips=3),
                           extra_callbacks=[poison])
    assert summary["skipped_steps"] == 2 and summary["step"] == 6
    assert_same(poison.before[3], poison.after[3])
    assert_same(poison.before[4], poison.after[4])


def test_interrupted_best_save_is_recovered(tmp_path):
    tok = load_tokenizer(default_tokenizer_dir())
    model = BashGPTForCausalLM(BashGPTConfig.from_preset("nano", max_position_embeddings=64))
    best = save_model_folder(model, tok, tmp_path / "best")
    os.replace(best, tmp_path / "best.old")  # as if killed between the two renames
    assert load_model(tmp_path / "best")


# ----------------------------------------------------------------------------- hostile corpus files

def collect_in_child(src: Path, out: Path) -> tuple[dict, int, str]:
    """Run collect in a fresh process: (manifest, bytes its peak memory grew by during collect, stderr)."""
    code = f"""
import json
from bashgpt.data.collect import collect
from bashgpt.devices import peak_rss_bytes
before = peak_rss_bytes()
m = collect([{str(src)!r}], {str(out)!r})
print(json.dumps({{"manifest": m, "growth": peak_rss_bytes() - before}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["manifest"], result["growth"], proc.stderr


def test_peak_memory_is_this_process_own_not_the_parents():
    ballast = bytearray(1500 * 2**20)
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])  # touch every page: the parent is now 1.5 GB bigger
    code = "from bashgpt.devices import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < 1000 * 2**20 < len(ballast)  # importing bashgpt (torch) is about 400 MB


def test_hundred_megabyte_file_is_skipped_without_reading_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "huge.sh", "wb") as f:
        f.write(b"#!/bin/sh\n" + b"echo filler line\n" * 600)
        f.seek(100 * 2**20)
        f.write(b"\n")
    (src / "ok.sh").write_text("#!/bin/sh\necho fine, a real script here\nexit 0\n")
    manifest, growth, _ = collect_in_child(src, tmp_path / "out")
    assert manifest["skipped"]["too_large"] == 1 and manifest["kept"] == 1
    assert growth < 50 * 2**20  # never read into memory


@pytest.mark.slow
def test_hundred_thousand_files_in_bounded_memory_with_progress(tmp_path):
    src = tmp_path / "many"
    for d in range(100):
        folder = src / f"d{d}"
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"f{i}.txt").write_text("x")
    (src / "d0" / "real.sh").write_text("#!/bin/bash\nfor f in *; do echo \"$f\"; done\n")
    manifest, growth, stderr = collect_in_child(src, tmp_path / "out")
    assert manifest["files_seen"] == 100_001 and manifest["kept"] == 1
    assert growth < 300 * 2**20  # file names are listed, contents are not kept
    assert "scanning" in stderr and "100001/100001" in stderr  # progress bar with a total


# ----------------------------------------------------------------------------- hostile model folders

@pytest.fixture
def model_dir(tmp_path):
    tok = load_tokenizer(default_tokenizer_dir())
    cfg = BashGPTConfig.from_preset("nano", max_position_embeddings=64)
    return save_model_folder(BashGPTForCausalLM(cfg), tok, tmp_path / "m")


def one_line_error(capsys, argv) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("bashgpt: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.pop("model_type"), "no model_type"),
    (lambda c: c.update(model_type="llama"), "'llama'"),
])
def test_config_with_a_wrong_or_missing_model_type(model_dir, capsys, edit, words):
    cfg = json.loads((model_dir / "config.json").read_text())
    edit(cfg)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    assert words in one_line_error(capsys, ["generate", str(model_dir), "--max-new-tokens", "2"])


def test_tokenizer_that_does_not_match_the_model(model_dir, capsys, small_tokenizer):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["vocab_size"] = 100  # smaller than the tokenizer
    (model_dir / "config.json").write_text(json.dumps(cfg))
    err = one_line_error(capsys, ["generate", str(model_dir), "--max-new-tokens", "2"])
    assert "tokenizer" in err and "100" in err


EVIL_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("custom code ran")
from transformers import PreTrainedConfig
class EvilConfig(PreTrainedConfig):
    model_type = "evil"
"""


def test_custom_code_of_another_model_type_is_never_run_without_the_flag(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "configuration_evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                           "AutoModelForCausalLM": "configuration_evil.EvilConfig"}}))
    (folder / "model.safetensors").write_bytes(b"")
    for argv in (["generate", str(folder)], ["eval", str(folder), "--code-data", str(tmp_path)],
                 ["export", str(folder), "--out", str(tmp_path / "x")]):
        err = one_line_error(capsys, argv)
        assert "'evil'" in err and "--trust-remote-code" in err
    assert not marker.exists()


def test_no_pickle_is_loaded_from_untrusted_files():
    """Every torch.load in bashgpt is weights-only, every numpy load refuses pickles."""
    for path in (ROOT / "bashgpt").glob("*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path.name}: {line.strip()}"
            assert "pickle.load" not in line and "import pickle" not in line, f"{path.name}: {line.strip()}"


def test_generated_text_is_never_executed_by_generate_check(model_dir, tmp_path, capsys, monkeypatch):
    """--check hands the sample to `bash -n` and ShellCheck only: a script that would create a file does not."""
    marker = tmp_path / "created-by-script"
    prompt = tmp_path / "prompt.sh"
    prompt.write_text(f"#!/bin/bash\ntouch {marker}\n")
    assert main(["generate", str(model_dir), "--prompt-file", str(prompt), "--max-new-tokens", "2", "--check",
                 "--device", "cpu"]) == 0
    assert "bash -n" in capsys.readouterr().out
    assert not marker.exists()

"""`bashgpt export` held against the runtimes users run models in: llama.cpp (through llama-cpp-python) for the GGUF
file, and Transformers 4.x for the stock GPT-2 folder's tokenizer.

    pip install llama-cpp-python                    # builds llama.cpp from source (about 30 min on 2 cores)
    python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install 'transformers<5'
    python bench/export_runtimes.py --transformers4-python /tmp/tf4/bin/python [--model MODEL_DIR]

Without --model a nano model is trained here for a few minutes on the `stdlib` corpus, so its logits have the margins
of a trained model (a random model's near-ties make top-1 agreement meaningless). Text is real bash (this machine's
scripts) and English. Writes bench/export-runtimes.md with the CPU named.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_description  # noqa: E402

TF4_CHECK = """
import json, sys, transformers
from transformers import AutoTokenizer
folder, texts = sys.argv[1], json.load(open(sys.argv[2]))
tok = AutoTokenizer.from_pretrained(folder)
print(json.dumps({"version": transformers.__version__, "class": type(tok).__name__,
                  "max_length": tok.model_max_length, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
                  "ids": [tok(t).input_ids for t in texts]}))
"""


def real_texts(n: int = 24) -> list[str]:
    from itertools import islice

    from bashgpt.data.collect import read_candidate, system_candidates

    read = (read_candidate(c, 4000)[0] for c in islice(system_candidates(), 4000))
    scripts = [s.text for s in read if s is not None and len(s.text) > 200][:n]
    english = ["Once upon a time, a little cat found a red ball in the park. It was very happy!",
               "The assert statement is a convenient way to insert debugging assertions into a program."]
    return scripts + english


def train_nano(out: Path) -> Path:
    from bashgpt.cli import main

    main(["train", "--stage", "language", "--model-size", "nano", "--dataset", "stdlib", "--output-dir", str(out),
          "--steps-per-epoch", "150", "--num-epochs", "1", "--seq-len", "128", "--eval-blocks", "8", "--device", "cpu",
          "--quiet"])
    return out / "best"


def llama_cpp_rows(model_dir: Path, texts: list[str], work: Path) -> list[dict]:
    import llama_cpp

    from bashgpt.cli import main
    from bashgpt.model_folder import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    rows = []
    for dtype in ("f32", "f16"):
        out = work / f"model-{dtype}.gguf"
        main(["export", str(model_dir), "--format", "gguf", "--dtype", dtype, "--out", str(out)])
        runtime = llama_cpp.Llama(model_path=str(out), n_ctx=model.config.max_position_embeddings, logits_all=True,
                                  verbose=False)
        same_ids = worst = top1 = positions = 0
        for text in texts:
            ours = tokenizer(text).input_ids
            same_ids += runtime.tokenize(text.encode(), add_bos=False, special=True) == ours
            ids = ours[: min(256, model.config.max_position_embeddings)]
            runtime.reset()
            runtime.eval(ids)
            theirs = torch.tensor(runtime.scores[: len(ids)])
            with torch.no_grad():
                expected = model(torch.tensor([ids])).logits[0]
            worst = max(worst, (theirs - expected).abs().max().item())
            top1 += (theirs.argmax(-1) == expected.argmax(-1)).sum().item()
            positions += len(ids)
        rows.append({"dtype": dtype, "texts": len(texts), "same_token_ids": same_ids, "max_abs_logit_diff": worst,
                     "top1_agreement": top1 / positions, "positions": positions,
                     "file_mb": out.stat().st_size / 1e6})
        runtime.close()
    return rows


def transformers4_row(model_dir: Path, python: str, texts: list[str], work: Path) -> dict:
    from bashgpt.cli import main
    from bashgpt.model_folder import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(model_dir)
    folder = work / "gpt2"
    main(["export", str(model_dir), "--format", "gpt2", "--out", str(folder)])
    (work / "texts.json").write_text(json.dumps(texts))
    done = subprocess.run([python, "-c", TF4_CHECK, str(folder), str(work / "texts.json")], capture_output=True,
                          text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    same = sum(ids == tokenizer(t).input_ids for ids, t in zip(got.pop("ids"), texts, strict=True))
    return {**got, "texts": len(texts), "same_token_ids": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a bashgpt model folder (default: train a nano model here)")
    parser.add_argument("--transformers4-python", help="a Python with transformers<5 installed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bashgpt-export-"))
    model_dir = Path(args.model) if args.model else train_nano(work / "nano")
    texts = real_texts()
    lines = ["# `bashgpt export` in other runtimes\n", f"CPU: {cpu_description()}. Model: "
             f"{'`' + args.model + '`' if args.model else 'nano, 150 steps on stdlib (trained by the bench)'}. "
             f"Texts: {len(texts)} ({len(texts) - 2} bash scripts from this machine, 2 English). Command: "
             f"`python bench/export_runtimes.py {' '.join(sys.argv[1:])}`.\n"]
    lines += ["## llama.cpp (llama-cpp-python " + __import__("llama_cpp").__version__ + "), GGUF from "
              "`--format gguf`\n", "| dtype | file | same token ids | max abs logit diff | top-1 agreement |",
              "|---|---|---|---|---|"]
    for row in llama_cpp_rows(model_dir, texts, work):
        lines.append(f"| {row['dtype']} | {row['file_mb']:.1f} MB | {row['same_token_ids']}/{row['texts']} | "
                     f"{row['max_abs_logit_diff']:.2e} | {row['top1_agreement']:.2%} of {row['positions']:,} |")
    if args.transformers4_python:
        row = transformers4_row(model_dir, args.transformers4_python, texts, work)
        lines += ["", f"## Transformers {row['version']}, tokenizer of the `--format gpt2` folder\n",
                  f"`AutoTokenizer` loads `{row['class']}`; model_max_length {row['max_length']}, end of text "
                  f"{row['eos']}, padding {row['pad']}; the same token ids as bashgpt's tokenizer for "
                  f"{row['same_token_ids']}/{row['texts']} texts."]
    text = "\n".join(lines) + "\n"
    (HERE / "export-runtimes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""A normal run of the model (save, load, generate greedy and sampled, pipeline, training forward and
backward, activation checkpointing, bashgpt's own guarded generation) in a fresh process; prints every warning and Transformers log line.

tests/test_model.py runs it and expects silence: warnings of the "once" kind are cached per process,
so only a fresh process shows them all.
"""

import io
import logging
import tempfile
import warnings

from transformers.utils import logging as hf_logging

stream = io.StringIO()
hf_logging.get_logger().addHandler(logging.StreamHandler(stream))  # transformers' own logger tree
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from transformers import AutoModelForCausalLM, pipeline

    from bashgpt import BashGPTConfig, BashGPTForCausalLM
    from bashgpt.data.tokenization import default_tokenizer_dir
    from bashgpt.model_folder import load_tokenizer

    tok = load_tokenizer(default_tokenizer_dir())
    cfg = BashGPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        max_position_embeddings=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.eos_token_id)
    folder = tempfile.mkdtemp()
    BashGPTForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok("#!/bin/bash\n", return_tensors="pt")
    model.generate(**ids, max_new_tokens=8, do_sample=False)
    model.generate(**ids, max_new_tokens=8, do_sample=True, top_p=0.9)
    pipeline("text-generation", model=folder)("#!/bin/bash\n", max_new_tokens=8, do_sample=False)
    model.train()
    model(**ids, labels=ids["input_ids"]).loss.backward()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model(**ids, labels=ids["input_ids"], use_cache=True).loss.backward()
    # bashgpt's own generation, greedy and sampled, from a model that carries bashgpt's sampling defaults
    from bashgpt.inference.generate import generate
    from bashgpt.sampling import SamplingOptions, default_generation_config

    model.eval().generation_config = default_generation_config(tok)
    for options in (SamplingOptions(max_new_tokens=8, greedy=True), SamplingOptions(max_new_tokens=8)):
        generate(model, tok, "#!/bin/bash\n", options, guard=True)
for w in caught:
    print(f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})")
print(stream.getvalue(), end="")

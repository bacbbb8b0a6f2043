#!/usr/bin/env python3
"""The independent reference for the `policy` crate's model: Hugging Face `transformers`.

Everything here runs `transformers` itself (Qwen2ForCausalLM / LlamaForCausalLM) in float32 on the
CPU, so the Rust model is checked against the implementation the checkpoints come from, not
against a second copy of our own reading of it.

Subcommands (from the repository root, after `./dev setup`):

    .venv/bin/python scripts/qwen2_reference.py golden --out DIR
        Small random checkpoints, one subdirectory each, covering grouped-query ratios 1, 2 and 3,
        tied and untied embeddings, with and without q/k/v bias (Qwen2 always has it; the
        no-bias case is a Llama checkpoint), rope_theta 1e4 and 1e6, and one checkpoint saved in
        shards (`model.safetensors.index.json`). Each has a `golden.json`: the config facts, two
        input sequences, the float32 logits at every position, and greedy continuations.

    .venv/bin/python scripts/qwen2_reference.py logits --model DIR --input-ids 1,2,3
        Loads DIR with AutoModelForCausalLM and prints the logits of every position as one JSON
        line `[[...], ...]`. Exits non-zero, naming the keys, if any weight is missing,
        unexpected or of the wrong shape, so a checkpoint the Rust side writes is checked too.

    .venv/bin/python scripts/qwen2_reference.py greedy --model DIR --input-ids 1,2,3 \\
        --max-new-tokens N
        Prints the N new token ids of greedy decoding as a JSON list (end-of-sequence ignored).

    .venv/bin/python scripts/qwen2_reference.py tokenize --model DIR --text TEXT
        Encodes TEXT with AutoTokenizer.from_pretrained(DIR); prints
        `{"ids": [...], "decoded": "...", "class": "..."}`.
"""
import argparse
import copy
import json
import os
import sys

# Checkpoints are always local: never ask the Hugging Face Hub for anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SEQ_LEN = 12  # length of each golden input sequence
NEW_TOKENS = 10  # greedy continuation length
MIN_MARGIN = 1e-3  # smallest top-1 minus top-2 logit gap accepted at a greedy step

# The golden checkpoints. Sizes are tiny on purpose; head_dim = hidden / heads throughout.
GOLDEN = [
    # GQA ratio 1, untied, Qwen2 bias, rope 1e4.
    dict(name="qwen2-mha-untied-theta1e4", arch="qwen2", hidden=32, heads=4, kv_heads=4,
         layers=2, vocab=128, intermediate=64, tied=False, rope_theta=10_000.0, sharded=False),
    # GQA ratio 2, tied, Qwen2 bias, rope 1e6 (the shape of the Qwen2.5 small models).
    dict(name="qwen2-gqa2-tied-theta1e6", arch="qwen2", hidden=32, heads=4, kv_heads=2,
         layers=2, vocab=160, intermediate=96, tied=True, rope_theta=1_000_000.0, sharded=False),
    # GQA ratio 3, untied, Qwen2 bias, rope 1e6, saved in shards.
    dict(name="qwen2-gqa3-untied-theta1e6-sharded", arch="qwen2", hidden=48, heads=6, kv_heads=2,
         layers=2, vocab=200, intermediate=128, tied=False, rope_theta=1_000_000.0, sharded=True),
    # No q/k/v bias: Llama, GQA ratio 2, untied, rope 1e4, a different RMSNorm epsilon.
    dict(name="llama-nobias-gqa2-untied-theta1e4", arch="llama", hidden=64, heads=4, kv_heads=2,
         layers=2, vocab=192, intermediate=128, tied=False, rope_theta=10_000.0, sharded=False,
         rms_norm_eps=1e-5),
    # No q/k/v bias: Llama, GQA ratio 1, tied, rope 1e6.
    dict(name="llama-nobias-mha-tied-theta1e6", arch="llama", hidden=32, heads=4, kv_heads=4,
         layers=2, vocab=128, intermediate=64, tied=True, rope_theta=1_000_000.0, sharded=False),
]


def fail(message):
    print(f"qwen2_reference: {message}", file=sys.stderr)
    sys.exit(1)


def make_config(spec):
    common = dict(
        vocab_size=spec["vocab"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=256,
        rms_norm_eps=spec.get("rms_norm_eps", 1e-6),
        rope_theta=spec["rope_theta"],
        tie_word_embeddings=spec["tied"],
        attention_dropout=0.0,
    )
    if spec["arch"] == "qwen2":
        return Qwen2Config(**common), Qwen2ForCausalLM
    # Llama keeps its default bos 1 / eos 2 in config.json; the greedy goldens ignore
    # end-of-sequence.
    return LlamaConfig(attention_bias=False, mlp_bias=False, **common), LlamaForCausalLM


def randomise(model, generator):
    """Re-initialise every parameter so that logits are large and every weight matters.

    Matrices ~ N(0, 0.2); RMSNorm weights 1 + N(0, 0.1); biases ~ N(0, 0.2) (nonzero). A tied
    output head is the embedding itself and is visited once.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def forward_logits(model, ids):
    """Logits of every position of one unpadded sequence: [len, vocab] float32."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


def greedy(model, ids, max_new_tokens):
    """`generate` with greedy decoding, exactly max_new_tokens new ids, no early stop."""
    gen = copy.deepcopy(model.generation_config)
    # No end-of-sequence at all: nothing can stop generation, and min_new_tokens never has to
    # mask an eos logit (which would change what greedy picks).
    gen.eos_token_id = None
    gen.bos_token_id = None
    gen.pad_token_id = 0
    gen.do_sample = False
    gen.max_new_tokens = max_new_tokens
    gen.min_new_tokens = max_new_tokens
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gen
        )
    new = out[0, len(ids):].tolist()
    if len(new) != max_new_tokens:
        fail(f"generate gave {len(new)} new tokens, expected {max_new_tokens}")
    return new


def greedy_by_hand(model, ids, max_new_tokens):
    """Greedy decoding as full forwards, no cache: checks `generate` and measures the margins."""
    seq, margins = list(ids), []
    for _ in range(max_new_tokens):
        last = forward_logits(model, seq)[-1]
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        seq.append(int(last.argmax()))
    return seq[len(ids):], min(margins)


def golden_one(spec, out_dir, seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config, cls = make_config(spec)
    model = cls(config).to(torch.float32).eval()
    randomise(model, generator)
    if spec["tied"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    # Two sequences of different content; a prompt whose greedy steps have a near tie is redrawn
    # so that the Rust test is not decided by rounding.
    vocab = spec["vocab"]
    sequences, greedy_records = [], []
    attempts = 0
    while len(sequences) < 2:
        attempts += 1
        if attempts > 50:
            fail(f"{spec['name']}: no prompt with greedy margins >= {MIN_MARGIN}")
        ids = torch.randint(1, vocab, (SEQ_LEN,), generator=generator).tolist()
        if ids in sequences:
            continue
        new = greedy(model, ids, NEW_TOKENS)
        by_hand, margin = greedy_by_hand(model, ids, NEW_TOKENS)
        if new != by_hand:
            fail(f"{spec['name']}: generate {new} differs from greedy by hand {by_hand}")
        if margin < MIN_MARGIN:
            continue
        sequences.append(ids)
        greedy_records.append(
            {
                "prompt": ids,
                "max_new_tokens": NEW_TOKENS,
                "tokens": new,
                "ignore_eos": True,
                "min_margin": margin,
            }
        )
    logits = [forward_logits(model, ids).tolist() for ids in sequences]

    path = os.path.join(out_dir, spec["name"])
    os.makedirs(path, exist_ok=True)
    save = dict(safe_serialization=True)
    if spec["sharded"]:
        # A shard limit below one layer's weights: several shards and an index.
        save["max_shard_size"] = "100KB"
    model.save_pretrained(path, **save)
    index = os.path.join(path, "model.safetensors.index.json")
    shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if spec["sharded"] and (not os.path.exists(index) or len(shards) < 2):
        fail(f"{spec['name']}: expected a sharded checkpoint, got {shards}")
    if not spec["sharded"] and shards != ["model.safetensors"]:
        fail(f"{spec['name']}: expected one model.safetensors, got {shards}")

    golden = {
        "name": spec["name"],
        "architecture": cls.__name__,
        "tied": spec["tied"],
        "bias": spec["arch"] == "qwen2",
        "rope_theta": spec["rope_theta"],
        "heads": spec["heads"],
        "kv_heads": spec["kv_heads"],
        "hidden": spec["hidden"],
        "layers": spec["layers"],
        "intermediate": spec["intermediate"],
        "vocab": vocab,
        "rms_norm_eps": config.rms_norm_eps,
        "sharded": spec["sharded"],
        "shards": shards,
        "seed": seed,
        "dtype": "float32",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "input_ids": sequences,
        "logits": logits,
        "greedy": greedy_records,
    }
    with open(os.path.join(path, "golden.json"), "w") as f:
        json.dump(golden, f)
    absmax = max(abs(v) for seq in logits for pos in seq for v in pos)
    print(
        f"{spec['name']}: {cls.__name__} heads={spec['heads']} kv={spec['kv_heads']} "
        f"tied={spec['tied']} bias={golden['bias']} rope_theta={spec['rope_theta']:g} "
        f"shards={len(shards)} params={sum(p.numel() for p in model.parameters())} "
        f"|logits|max={absmax:.2f} greedy[0]={greedy_records[0]['tokens']} "
        f"min_margin={min(g['min_margin'] for g in greedy_records):.3f}"
    )


def cmd_golden(args):
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    for i, spec in enumerate(GOLDEN):
        golden_one(spec, args.out, args.seed + i)


def load(model_dir):
    """AutoModelForCausalLM in float32, refusing missing, unexpected or mis-shaped weights."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        fail(f"cannot load {model_dir}: no config.json there (not a checkpoint directory)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, output_loading_info=True
        )
    except Exception as e:  # noqa: BLE001 - any loading failure is reported the same way
        fail(f"cannot load {model_dir}: {type(e).__name__}: {e}")
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        found = sorted(str(k) for k in (info.get(kind) or []))
        if found:
            problems.append(f"{kind}: {', '.join(found)}")
    if problems:
        fail(f"{model_dir}: weights do not match the model: " + "; ".join(problems))
    return model.eval()


def parse_ids(text):
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        fail(f"--input-ids: expected comma-separated integers, got {text!r}")
    if not ids:
        fail("--input-ids: empty")
    return ids


def check_ids(model, ids):
    vocab = model.config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        fail(f"--input-ids: {bad} outside the vocabulary [0, {vocab})")


def cmd_logits(args):
    model = load(args.model)
    ids = parse_ids(args.input_ids)
    check_ids(model, ids)
    print(json.dumps(forward_logits(model, ids).tolist()))


def cmd_greedy(args):
    model = load(args.model)
    ids = parse_ids(args.input_ids)
    check_ids(model, ids)
    print(json.dumps(greedy(model, ids, args.max_new_tokens)))


def cmd_tokenize(args):
    """Token ids of --text with DIR's tokenizer as users load it (AutoTokenizer, which picks
    the class from config.json's model type), and the decoded text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = tokenizer.encode(args.text, add_special_tokens=False)
    print(json.dumps({"ids": ids, "decoded": tokenizer.decode(ids),
                      "class": type(tokenizer).__name__}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("golden", help="write random checkpoints with golden.json")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_golden)
    p = sub.add_parser("logits", help="logits of every position, as JSON")
    p.add_argument("--model", required=True)
    p.add_argument("--input-ids", required=True)
    p.set_defaults(func=cmd_logits)
    p = sub.add_parser("greedy", help="greedy new token ids, as JSON")
    p.add_argument("--model", required=True)
    p.add_argument("--input-ids", required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.set_defaults(func=cmd_greedy)
    p = sub.add_parser("tokenize", help="token ids of a text under DIR/tokenizer.json, as JSON")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_tokenize)
    args = parser.parse_args()
    # transformers' own warnings (weights it could not place, and so on) go to stderr.
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    args.func(args)


if __name__ == "__main__":
    main()

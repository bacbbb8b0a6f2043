#!/usr/bin/env python3
"""Side-by-side speed benchmark of the `policy` crate's model against Hugging Face transformers.

Same checkpoint, same machine, same run, same thread count. For each config (`tiny`, `small`,
...) and batch size B, with prompt length P and N new tokens:

  generation  transformers: `model.generate` sampling at temperature 1 (no top-k, no top-p),
              exactly N new tokens (no end-of-sequence), under `torch.inference_mode()`; ours:
              `policy bench`. Reported as generated tokens/s = B * N / seconds, the prompt's
              prefill included in the seconds.
  training    the learner's step without the optimizer: a masked log-prob forward + backward
              on a [B, P + N] batch, loss = -mean of the log-probs of the last N tokens (the
              generated part). transformers/PyTorch: `model(input_ids).logits` in float32,
              log_softmax, gather, backward, the batch in one pass; ours: `policy bench`,
              which trains as the learner does, in passes of at most 3,072 tokens whose
              gradients add up to the same gradient (`--max-tokens-per-pass 0`: one pass).
              Reported as train tokens/s = B * (P + N) / seconds.

Each side is timed in a fresh child process (ours: `policy bench`; transformers: this script
with --worker), so neither runs while the other holds its model and buffers in memory.
Every timing is the median of --repeats runs after one warm-up. Ratios are ours/transformers
in tokens/s: above 1 means we are faster. Achieved GFLOP/s (see `flops_generate` and
`flops_train` for the formula) is reported for both sides, and `--matmul-peak` measures this
machine's matmul GFLOP/s to compare it with at the compute-bound point (`small`, batch 64).

Usage (from the repository root, after `./dev setup` and `cargo build --release -p policy`):
    .venv/bin/python bench/policy_vs_transformers.py --matmul-peak
    .venv/bin/python bench/policy_vs_transformers.py --quick
    .venv/bin/python bench/policy_vs_transformers.py --transformers-only --quick --configs tiny
    .venv/bin/python bench/policy_vs_transformers.py --device cuda --dtype bfloat16 \\
        --configs qwen2.5-0.5b --batches 1,8,64 --matmul-peak
Prints a Markdown table for BENCHMARKS.md and writes the raw numbers to bench/results-policy.json
(bench/results-policy-quick.json with --quick; --out overrides).
"""
import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# Checkpoints are always local: never ask the Hugging Face Hub for anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.environ.get("POLICY_CLI", os.path.join(ROOT, "target", "release", "policy"))
OURS_TIMEOUT = 3600  # seconds for one `policy bench` run

# The named configs of policy/src/config.rs (`ModelConfig::named`), used only to build the
# checkpoint with transformers under --transformers-only (otherwise `policy init` writes it):
# (vocab, hidden, intermediate, layers, heads, kv heads, tied, rope theta, max positions).
NAMED = {
    "tiny": (128, 128, 320, 3, 4, 2, True, 10_000.0, 1024),
    "small": (1024, 512, 1408, 8, 8, 4, True, 10_000.0, 2048),
    "qwen2.5-0.5b": (151_936, 896, 4864, 24, 14, 2, True, 1e6, 32_768),
    "qwen2.5-1.5b": (151_936, 1536, 8960, 28, 12, 2, True, 1e6, 32_768),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --- checkpoints ---------------------------------------------------------------------------


def checkpoint_ours(name, out_dir):
    """`policy init`: the checkpoint both sides load."""
    run_cli(["init", "--config", name, "--seed", "0", "--out", out_dir], timeout=600)


def checkpoint_transformers(name, out_dir):
    """The same shape built by transformers itself (for --transformers-only)."""
    if name not in NAMED:
        sys.exit(f"bench: --transformers-only knows the configs {', '.join(NAMED)}, not {name!r}")
    vocab, hidden, inter, layers, heads, kv, tied, theta, max_pos = NAMED[name]
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
        rope_theta=theta, max_position_embeddings=max_pos, rms_norm_eps=1e-6,
        eos_token_id=0, attention_dropout=0.0,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)


def load_model(path, device, dtype):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    # Nothing may stop generation early: exactly N new tokens on both sides.
    model.generation_config.eos_token_id = None
    return model


def shape_only_model(path):
    """The checkpoint's model with no weights in memory (on the meta device): enough to count
    parameters, so that this process holds no model while either side is timed."""
    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameter_counts(model):
    """Unique parameters (a tied head counted once), and the shapes the FLOP formulas need."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    h, i = c.hidden_size, c.intermediate_size
    # Weights of the matmuls in one decoder layer (q, k, v, o; gate, up, down); biases and norms
    # are elementwise and left out.
    layer_matmul = h * q + 2 * h * kv + q * h + 3 * h * i
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "body_matmul_params": c.num_hidden_layers * layer_matmul,
        "head_params": c.vocab_size * h,
        "layers": c.num_hidden_layers,
        "q_dim": q,
    }


# --- FLOP counts ---------------------------------------------------------------------------
# Matmul FLOPs only: 2 per weight per token for the decoder body; 2 * vocab * hidden per token
# that gets logits (the output head is a real matmul even when tied to the embedding, whose
# lookup costs nothing); attention 4 * layers * q_dim * context per token (QK^T and AV, with
# context = the number of keys the token attends to, causal). Norms, RoPE, SiLU, softmax and
# sampling are left out, so these slightly understate the work.


def flops_causal_body(counts, tokens):
    """Decoder-body FLOPs for one sequence whose tokens 1..`tokens` each attend causally."""
    attention = 4 * counts["layers"] * counts["q_dim"] * tokens * (tokens + 1) // 2
    return 2 * counts["body_matmul_params"] * tokens + attention


def flops_generate(counts, batch, prompt, new):
    """generate(): a prefill of P tokens then N - 1 one-token steps over the KV cache, which is
    the body of a causal forward over P + N - 1 tokens, and logits at the N positions sampled."""
    return batch * (flops_causal_body(counts, prompt + new - 1) + 2 * counts["head_params"] * new)


def flops_train(counts, batch, prompt, new):
    """Forward + backward over P + N tokens with logits everywhere; backward = 2 x forward."""
    seq = prompt + new
    forward = flops_causal_body(counts, seq) + 2 * counts["head_params"] * seq
    return 3 * batch * forward


# --- timing --------------------------------------------------------------------------------


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats, device, before=None):
    """One warm-up, then the median of `repeats` timed calls; `before` runs untimed each time."""
    times = []
    for i in range(repeats + 1):
        if before is not None:
            before()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def peak_memory(device, fn):
    """On a GPU, runs fn once more and returns the peak bytes allocated during it; on the CPU,
    runs nothing and returns None."""
    if device != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated()


def random_ids(vocab, batch, length, seed, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g).to(device)


def transformers_generate(model, batch, prompt, new, repeats, device, seed):
    input_ids = random_ids(model.config.vocab_size, batch, prompt, seed, device)
    mask = torch.ones_like(input_ids)
    gen = copy.deepcopy(model.generation_config)
    gen.update(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
        min_new_tokens=new, eos_token_id=None, pad_token_id=0,
    )
    model.eval()

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids, attention_mask=mask, generation_config=gen)
        assert out.shape == (batch, prompt + new), out.shape

    torch.manual_seed(seed)
    seconds, times = median_seconds(run, repeats, device)
    memory = peak_memory(device, run)
    return {"seconds": seconds, "times": times, "tokens_per_s": batch * new / seconds,
            "peak_memory_bytes": memory}


def transformers_train(model, batch, prompt, new, repeats, device, seed):
    seq = prompt + new
    input_ids = random_ids(model.config.vocab_size, batch, seq, seed + 1, device)
    attention_mask = torch.ones_like(input_ids)
    # Target t + 1 is predicted at position t; the generated tokens are targets P .. P + N - 1.
    loss_mask = torch.zeros(batch, seq - 1, device=device)
    loss_mask[:, prompt - 1:] = 1.0
    model.train()  # Qwen2's attention_dropout is 0: train mode changes nothing numerically

    def step():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        taken = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        loss = -(taken * loss_mask).sum() / loss_mask.sum()
        loss.backward()

    def clear():
        model.zero_grad(set_to_none=True)

    seconds, times = median_seconds(step, repeats, device, before=clear)
    clear()
    memory = peak_memory(device, step)
    clear()
    model.eval()
    return {"seconds": seconds, "times": times, "tokens_per_s": batch * seq / seconds,
            "peak_memory_bytes": memory}


def transformers_bench(path, batch, prompt, new, args):
    """transformers' generation and training at one point, timed in a fresh child process
    (this script with --worker), as ours is: each side runs while the other holds no memory.
    On this VM an idle process that merely holds 4 GB slowed a training step of the other
    side by a fifth, so timing transformers in this long-lived process while ours ran beside
    it would not be a like-for-like comparison."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", path, "--batch", str(batch),
           "--prompt-len", str(prompt), "--new-tokens", str(new), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
           "--seed", str(args.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=OURS_TIMEOUT)
    if out.returncode != 0:
        sys.exit(f"bench: the transformers worker failed ({' '.join(cmd)}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker(argv):
    """--worker PATH ...: times transformers at one point and prints one JSON line."""
    parser = argparse.ArgumentParser(prog="policy_vs_transformers.py --worker")
    parser.add_argument("--worker", required=True)
    for flag in ("--batch", "--prompt-len", "--new-tokens", "--repeats", "--threads", "--seed"):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--dtype", choices=list(DTYPES), required=True)
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = load_model(a.worker, a.device, DTYPES[a.dtype])
    generate = transformers_generate(model, a.batch, a.prompt_len, a.new_tokens, a.repeats,
                                     a.device, a.seed)
    train = transformers_train(model, a.batch, a.prompt_len, a.new_tokens, a.repeats, a.device,
                               a.seed)
    train["attn_implementation"] = model.config._attn_implementation
    print(json.dumps({"generate": generate, "train": train}))


# --- ours ----------------------------------------------------------------------------------


def check_cli():
    if not os.access(CLI, os.X_OK):
        sys.exit(
            f"bench: {CLI} not found: build it with `cargo build --release -p policy` "
            "(or set POLICY_CLI), or run with --transformers-only"
        )


def run_cli(args, timeout):
    cmd = [CLI, *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd)}: no answer in {timeout} s") from None
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()[-2000:]}")
    return out.stdout


def ours_bench(path, batch, prompt, new, args):
    """`policy bench ... --json`: one JSON line with at least generate_tokens_per_s and
    train_tokens_per_s; every field it gives is kept."""
    cli_args = [
        "bench", "--model", path, "--batch", str(batch), "--prompt-len", str(prompt),
        "--new-tokens", str(new), "--device", args.device, "--threads", str(args.threads),
        "--repeats", str(args.repeats), "--json",
    ]
    if args.dtype != "float32":
        cli_args += ["--dtype", args.dtype]
    if args.max_tokens_per_pass is not None:
        cli_args += ["--max-tokens-per-pass", str(args.max_tokens_per_pass)]
    stdout = run_cli(cli_args, timeout=OURS_TIMEOUT)
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("policy bench printed nothing on stdout")
    result = json.loads(lines[-1])
    for key in ("generate_tokens_per_s", "train_tokens_per_s"):
        if not isinstance(result.get(key), (int, float)):
            raise RuntimeError(f"policy bench: no number {key!r} in {lines[-1]}")
    return result


# --- the machine ---------------------------------------------------------------------------


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_ticks():
    """(idle, total) clock ticks of all cores since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all
    except (OSError, ValueError, IndexError):
        return None


def own_cpu_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """How much of the machine's CPU time went to processes other than this one and its
    children (our CLI), between start() and share(). Timings are worthless when that is high:
    with every core given to torch, a competing process slows it down several times."""

    def start(self):
        self.ticks, self.own = cpu_ticks(), own_cpu_seconds()

    def share(self):
        now = cpu_ticks()
        if self.ticks is None or now is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        total = (now[1] - self.ticks[1]) / hz
        busy = total - (now[0] - self.ticks[0]) / hz
        others = busy - (own_cpu_seconds() - self.own)
        return max(0.0, others / total) if total > 0 else None


def other_load_warning(share, when):
    if share is not None and share > 0.1:
        print(f"bench: warning: other processes used {100 * share:.0f}% of the CPUs {when}; "
              "the timings are unreliable", file=sys.stderr, flush=True)


def idle_check():
    """The other processes' share of the CPUs over one second before starting."""
    load = OtherLoad()
    load.start()
    time.sleep(1.0)
    share = load.share()
    other_load_warning(share, "before starting")
    return share


def git_commit():
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def matmul_peak(device, dtype, repeats=7):
    """GFLOP/s of one square matmul on this device and thread count: the ceiling to compare the
    achieved GFLOP/s with (2048^3 on the CPU, 8192^3 on a GPU; median of `repeats`)."""
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds, _ = median_seconds(lambda: torch.matmul(a, b), repeats, device)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
            "gflops": 2 * n**3 / seconds / 1e9}


# --- output --------------------------------------------------------------------------------


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def markdown(rows, with_ours):
    head = ["config", "params", "batch", "ours gen tok/s", "transformers gen tok/s", "ratio",
            "ours train tok/s", "PyTorch train tok/s", "ratio",
            "gen GFLOP/s ours / tf", "train GFLOP/s ours / tf"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        o = r.get("ours") or {}
        og, ot = o.get("generate_tokens_per_s"), o.get("train_tokens_per_s")
        tf = r["transformers"]
        tg, tt = tf["generate"]["tokens_per_s"], tf["train"]["tokens_per_s"]
        if with_ours and r.get("ours_error"):
            og_s = ot_s = "error"
        else:
            og_s, ot_s = fmt(og), fmt(ot)
        g = r["gflops"]
        cells = [
            r["config"], f"{r['params'] / 1e6:.2f}M", str(r["batch"]),
            og_s, fmt(tg), fmt(ratio(og, tg), 2),
            ot_s, fmt(tt), fmt(ratio(ot, tt), 2),
            f"{fmt(g['ours_generate'], 1)} / {fmt(g['transformers_generate'], 1)}",
            f"{fmt(g['ours_train'], 1)} / {fmt(g['transformers_train'], 1)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peak_summary(rows, peak):
    """Achieved against the matmul peak at the most compute-bound point measured."""
    if peak is None or not rows:
        return None
    compute_bound = [r for r in rows if r["config"] == "small" and r["batch"] == 64] or [
        max(rows, key=lambda r: (r["params"], r["batch"]))
    ]
    r = compute_bound[0]
    parts = []
    for key, label in [("ours_generate", "ours gen"), ("transformers_generate", "transformers gen"),
                       ("ours_train", "ours train"), ("transformers_train", "PyTorch train")]:
        v = r["gflops"][key]
        if v is not None:
            parts.append(f"{label} {v:.1f} GFLOP/s ({100 * v / peak['gflops']:.0f}% of peak)")
    return (f"matmul peak {peak['gflops']:.1f} GFLOP/s ({peak['n']}^3 {peak['dtype']}); "
            f"at {r['config']} batch {r['batch']}: " + ", ".join(parts))


# --- main ----------------------------------------------------------------------------------


def bench_config(name, args, work):
    path = os.path.join(work, name)
    if args.transformers_only:
        checkpoint_transformers(name, path)
    else:
        checkpoint_ours(name, path)
    counts = parameter_counts(shape_only_model(path))
    rows = []
    for batch in args.batches:
        P, N = args.prompt_len, args.new_tokens
        # This machine's speed drifts over seconds (shared cores), so each point is measured in
        # --rounds alternating rounds (theirs, ours, ours, theirs, ...) and each side reports its
        # median round: a slow spell then hits both sides alike.
        gens, trains, ours_runs, errors = [], [], [], []
        for r in range(args.rounds):
            def theirs():
                result = transformers_bench(path, batch, P, N, args)
                gens.append(result["generate"])
                trains.append(result["train"])

            def ours():
                if args.transformers_only:
                    return
                try:
                    ours_runs.append(ours_bench(path, batch, P, N, args))
                except (RuntimeError, json.JSONDecodeError) as e:
                    errors.append(str(e))
                    print(f"bench: ours failed at {name} batch {batch}: {e}", file=sys.stderr)

            for side in ((theirs, ours) if r % 2 == 0 else (ours, theirs)):
                side()
        gen = median_by(gens, lambda g: g["tokens_per_s"])
        train = median_by(trains, lambda t: t["tokens_per_s"])
        row = {"config": name, "batch": batch, "prompt_len": P, "new_tokens": N,
               "params": counts["params"], "counts": counts,
               "transformers": {"generate": gen, "train": train},
               "rounds": {
                   "transformers_generate": [g["tokens_per_s"] for g in gens],
                   "transformers_train": [t["tokens_per_s"] for t in trains],
                   "ours_generate": [o.get("generate_tokens_per_s") for o in ours_runs],
                   "ours_train": [o.get("train_tokens_per_s") for o in ours_runs],
               },
               "attn_implementation": trains[0]["attn_implementation"]}
        if ours_runs:
            row["ours"] = dict(ours_runs[0])
            row["ours"]["generate_tokens_per_s"] = statistics.median(row["rounds"]["ours_generate"])
            if all(row["rounds"]["ours_train"]):
                row["ours"]["train_tokens_per_s"] = statistics.median(row["rounds"]["ours_train"])
        if errors:
            row["ours_error"] = errors[0]
        o = row.get("ours") or {}
        f_gen, f_train = flops_generate(counts, batch, P, N), flops_train(counts, batch, P, N)

        def achieved(flops, tokens, tok_per_s):
            return None if not tok_per_s else flops / (tokens / tok_per_s) / 1e9

        row["gflops"] = {
            "flops_generate": f_gen,
            "flops_train": f_train,
            "transformers_generate": achieved(f_gen, batch * N, gen["tokens_per_s"]),
            "transformers_train": achieved(f_train, batch * (P + N), train["tokens_per_s"]),
            "ours_generate": achieved(f_gen, batch * N, o.get("generate_tokens_per_s")),
            "ours_train": achieved(f_train, batch * (P + N), o.get("train_tokens_per_s")),
        }
        print(f"{name} B={batch}: transformers gen {gen['tokens_per_s']:,.0f} tok/s, "
              f"train {train['tokens_per_s']:,.0f} tok/s; ours gen "
              f"{fmt(o.get('generate_tokens_per_s'))}, train {fmt(o.get('train_tokens_per_s'))}",
              file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def median_by(runs, key):
    """The run whose key is the median (the upper one for an even count)."""
    ordered = sorted(runs, key=key)
    return ordered[len(ordered) // 2]


def parse_args():
    parser = argparse.ArgumentParser(
        description="policy vs transformers: generation and training tokens/s, side by side")
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--configs", default="tiny,small", help="comma-separated named configs")
    parser.add_argument("--batches", type=ints, default=None, help="default 1,8,64")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=None, help="default 64 (16 with --quick)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per round (median)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per point; each side reports its median round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="batches 1,8 and 16 new tokens")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--matmul-peak", action="store_true",
                        help="also measure this machine's matmul GFLOP/s")
    parser.add_argument("--transformers-only", action="store_true",
                        help="build the checkpoints with transformers; do not run ours")
    parser.add_argument("--max-tokens-per-pass", type=int, default=None,
                        help="ours trains in passes of at most this many tokens, as the learner "
                             "does (default: `policy bench`'s, the learner's default; 0: one pass)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    if args.batches is None:
        args.batches = [1, 8] if args.quick else [1, 8, 64]
    if args.new_tokens is None:
        args.new_tokens = 16 if args.quick else 64
    if args.out is None:
        suffix = "-quick" if args.quick else ""
        suffix += "-transformers-only" if args.transformers_only else ""
        args.out = os.path.join(ROOT, "bench", f"results-policy{suffix}.json")
    if args.prompt_len < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error("--prompt-len, --new-tokens and --repeats must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    return args


def main():
    args = parse_args()
    if not args.transformers_only:
        check_cli()
    torch.set_num_threads(args.threads)
    busy_before = idle_check()
    during = OtherLoad()
    during.start()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    peak = matmul_peak(args.device, DTYPES[args.dtype]) if args.matmul_peak else None
    if peak:
        print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['n']}^3 {peak['dtype']}, "
              f"{args.threads} threads, {args.device})", file=sys.stderr, flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as work:
        for name in args.configs:
            rows += bench_config(name, args, work)

    busy_during = during.share()
    other_load_warning(busy_during, "during the run")
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "ours_cli": None if args.transformers_only else CLI,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        # Share of all cores' time used by other processes: before (1 s) and during the run.
        "other_cpu_share_before": busy_before,
        "other_cpu_share_during": busy_during,
        "dtype": args.dtype,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "seed": args.seed,
        "max_tokens_per_pass": args.max_tokens_per_pass,
        "matmul_peak": peak,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    print(f"policy vs transformers {transformers.__version__} (torch {torch.__version__}), "
          f"{args.device} {args.dtype}, {args.threads} threads, {cpu_model()}, "
          f"P={args.prompt_len}, N={args.new_tokens}, median of {args.repeats} runs in each "
          f"of {args.rounds} alternating rounds, median round; "
          "ratios ours/transformers in tokens/s "
          "(above 1: we are faster)\n")
    print(markdown(rows, not args.transformers_only))
    summary = peak_summary(rows, peak)
    if summary:
        print("\n" + summary)
    print(f"\nraw numbers: {args.out}")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker(sys.argv[1:])
    else:
        main()

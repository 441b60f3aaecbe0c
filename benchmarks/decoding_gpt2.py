"""A real client: a GPT-2 decode loop sampling with gumbelkit.decoding.sample_tokens, against generate().

The model is ``transformers``' GPT-2 built from its config with random weights (nothing is
downloaded): 2 layers, 4 heads, width 128, GPT-2's 50,257-token vocabulary, initializer range 0.2
so that its next-token distributions are peaked like a trained model's (top-50 mass ~0.25 rather
than ~0.002 at the default 0.02).

1. The law. From one fixed 16-token context, N next tokens drawn by ``sample_tokens`` (one seed per
   draw) and N drawn by ``model.generate(do_sample=True, top_k=..., top_p=..., max_new_tokens=1)``
   on a batch of N copies; a chi-square test of homogeneity between the two samples, and a
   chi-square test of each against the exact filtered distribution of the model's logits (float64).
2. Speed. A batch of B prompts decoded for T new tokens with a KV cache: our loop (model forward,
   ``sample_tokens`` with per-request seeds and the step as offset) against ``generate`` with the
   same filters; tokens/s of both, and the time spent in the sampler alone.

    python benchmarks/decoding_gpt2.py [--draws 20000] [--batch 8] [--new-tokens 64] [--out runs/decoding_gpt2.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import time

import numpy as np
import torch
from scipy import stats

from gumbelkit.decoding import sample_tokens


def build_model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=128, n_positions=512, initializer_range=0.2)
    return GPT2LMHeadModel(cfg).eval()


def exact_law(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' TopK then TopP on float64 logits, softmaxed: the law both samplers should follow."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    s = TopPLogitsWarper(top_p)(None, TopKLogitsWarper(top_k)(None, logits.double()[None]))
    return torch.softmax(s, -1)[0]


def _pooled(counts_list, probs=None):
    """Categories with enough expected counts, the rest pooled (for the chi-square tests)."""
    total = sum(counts_list)
    expected = probs * total.sum() / len(counts_list) if probs is not None else total / len(counts_list)
    big = expected >= 5
    if not (~big).any():
        return [c[big] for c in counts_list], expected[big]
    return [np.append(c[big], c[~big].sum()) for c in counts_list], np.append(expected[big], expected[~big].sum())


def law_check(model, top_k: int, top_p: float, draws: int, seed: int = 1) -> dict:
    V = model.config.vocab_size
    ctx = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(ctx).logits[0, -1]
    law = exact_law(logits, top_k, top_p)
    ours = sample_tokens(logits.expand(draws, V).contiguous(), top_k=top_k, top_p=top_p, seeds=torch.arange(draws))
    torch.manual_seed(seed)
    chunks = []
    with torch.no_grad():
        for s in range(0, draws, 2000):
            n = min(2000, draws - s)
            out = model.generate(
                ctx.expand(n, -1),
                attention_mask=torch.ones(n, ctx.shape[1], dtype=torch.long),
                do_sample=True,
                top_k=top_k,
                top_p=top_p,
                max_new_tokens=1,
                pad_token_id=0,
            )
            chunks.append(out[:, -1])
    theirs = torch.cat(chunks)
    c_ours = np.bincount(ours.numpy(), minlength=V).astype(float)
    c_theirs = np.bincount(theirs.numpy(), minlength=V).astype(float)
    support = law.numpy() > 0
    (o1, o2), _ = _pooled([c_ours[support], c_theirs[support]])
    homog = stats.chi2_contingency(np.stack([o1, o2])).pvalue
    res = {
        "draws": draws,
        "support": int(support.sum()),
        "outside_support": {"ours": int(c_ours[~support].sum()), "generate": int(c_theirs[~support].sum())},
        "p_homogeneity": float(homog),
    }
    for name, c in (("ours", c_ours), ("generate", c_theirs)):
        (o,), e = _pooled([c[support]], law.numpy()[support])
        res[f"p_{name}_vs_exact"] = float(stats.chisquare(o, e * o.sum() / e.sum()).pvalue)
    return res


def decode_ours(model, prompt, new_tokens: int, top_k: int, top_p: float, seeds: torch.Tensor):
    """Greedy-free decode loop with a KV cache; returns (tokens (B, T), seconds in the sampler)."""
    # the cache argument is `cache` in transformers 5, `past_key_values` before
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    past = None
    ids = prompt
    out = []
    in_sampler = 0.0
    attn = torch.ones_like(prompt)
    with torch.no_grad():
        for step in range(new_tokens):
            res = model(ids, attention_mask=attn, use_cache=True, **{name: past})
            past = getattr(res, name)
            t0 = time.perf_counter()
            tok = sample_tokens(res.logits[:, -1], top_k=top_k, top_p=top_p, seeds=seeds, offsets=step)
            in_sampler += time.perf_counter() - t0
            out.append(tok)
            ids = tok[:, None]
            attn = torch.cat([attn, torch.ones_like(ids)], 1)
    return torch.stack(out, 1), in_sampler


def speed_check(model, batch: int, new_tokens: int, top_k: int, top_p: float, rounds: int) -> dict:
    V = model.config.vocab_size
    prompt = torch.randint(0, V, (batch, 16), generator=torch.Generator().manual_seed(3))
    seeds = torch.arange(batch)
    times: dict[str, list[float]] = {"ours": [], "generate": [], "sampler": []}
    for r in range(rounds + 1):  # the first round warms up
        t0 = time.perf_counter()
        _, in_sampler = decode_ours(model, prompt, new_tokens, top_k, top_p, seeds)
        t1 = time.perf_counter()
        with torch.no_grad():
            model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                top_k=top_k,
                top_p=top_p,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )
        t2 = time.perf_counter()
        if r:
            times["ours"].append(t1 - t0)
            times["generate"].append(t2 - t1)
            times["sampler"].append(in_sampler)
    med = {k: float(np.median(v)) for k, v in times.items()}
    n = batch * new_tokens
    return {
        "batch": batch,
        "new_tokens": new_tokens,
        "tokens_per_s": {"ours": n / med["ours"], "generate": n / med["generate"]},
        "sampler_ms_per_step": 1e3 * med["sampler"] / new_tokens,
        "seconds": med,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=20_000)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model()
    law = law_check(model, args.top_k, args.top_p, args.draws)
    speed = speed_check(model, args.batch, args.new_tokens, args.top_k, args.top_p, args.rounds)
    result = {"threads": torch.get_num_threads(), "top_k": args.top_k, "top_p": args.top_p, "law": law, "speed": speed}
    print(
        f"GPT-2 (2 layers, width 128, random weights), top_k={args.top_k}, top_p={args.top_p}, {result['threads']} thread(s)"
    )
    print()
    print("| next token from a fixed context | value |")
    print("|---|---:|")
    print(f"| draws per sampler | {law['draws']} |")
    print(f"| tokens in the filtered support | {law['support']} |")
    print(
        f"| draws outside the support (ours / generate) | {law['outside_support']['ours']} / {law['outside_support']['generate']} |"
    )
    print(f"| chi-square p, ours vs generate (homogeneity) | {law['p_homogeneity']:.3f} |")
    print(f"| chi-square p, ours vs the exact law | {law['p_ours_vs_exact']:.3f} |")
    print(f"| chi-square p, generate vs the exact law | {law['p_generate_vs_exact']:.3f} |")
    print()
    tps = speed["tokens_per_s"]
    print(f"| decode, batch {speed['batch']}, {speed['new_tokens']} new tokens | tokens/s |")
    print("|---|---:|")
    print(f"| our loop with sample_tokens | {tps['ours']:.0f} |")
    print(f"| model.generate(do_sample=True) | {tps['generate']:.0f} |")
    print(f"| (sample_tokens alone, per step) | {speed['sampler_ms_per_step']:.2f} ms |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    assert math.isfinite(law["p_homogeneity"])
    return result


if __name__ == "__main__":
    main()

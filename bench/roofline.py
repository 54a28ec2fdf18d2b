"""How close the agent's two phases come to this machine's limits: a roofline line for each.

    python bench/roofline.py [--model models/iter_0] [--batch 16]

First calibrates, in this run, what the machine can do in the model's dtype: matrix products
at the shapes the model multiplies (best of several, FLOP/s) and reading a 512 MiB tensor
(`sum`, GB/s). Then runs the agent of params.yaml (greedy, the `hf` backend, batch `--batch`)
on the first `--batch` dev questions, timing every forward pass of the model:

- prefill (passes of more than one new token): FLOPs = 2 × the layers' weights × tokens fed
  (padding included: it is computed) + attention (4 × heads × head size × attended columns per
  token and layer) + the output layer on the kept positions; reported as FLOP/s and as a
  fraction of the calibrated matrix-product rate;
- decode (one new token per row): bytes read per step = every weight once + the keys/values
  of every row's attended columns; reported as bytes/s and as a fraction of the calibrated
  read bandwidth, with the keys/values' share.

What the forward passes do not account for (the decoding loop in Python, sampling, stops,
retrieval) is printed as the rest of the agent's wall time. Last line:
`agent_roofline_fraction: <the lower of the two fractions>`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exsearch.agent import Decoding, SearchAgent
from exsearch.config import GenerationConfig, load_params
from exsearch.data import read_questions
from exsearch.generation.hf import HFGenerator
from exsearch.retrieval import load_retriever


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_seconds(run, repeat: int = 5) -> float:
    """The fastest of `repeat` timed calls of `run`, after one untimed call."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of (m×k)·(k×n) products in `dtype`."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    return 2 * m * k * n / best_seconds(lambda: torch.matmul(a, b, out=out))


def read_bandwidth(dtype: torch.dtype, mib: int = 512) -> float:
    """Bytes/s of summing a `mib` MiB tensor (reads it once; far larger than the caches)."""
    x = torch.ones(mib * 2**20 // torch.finfo(dtype).bits * 8, dtype=dtype)
    return x.numel() * x.element_size() / best_seconds(lambda: x.sum())


@dataclass
class Shape:
    """What the FLOP and byte counts need from the model."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    layer_weights: int  # parameters in the decoder layers' linear maps and norms
    all_weights_bytes: int  # every parameter a decode step reads (embedding row aside)
    element: int  # bytes per value of the dtype

    @classmethod
    def of(cls, model: torch.nn.Module) -> Shape:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        params = dict(model.named_parameters())
        layer = sum(p.numel() for name, p in params.items() if ".layers." in name)
        element = next(iter(params.values())).element_size()
        # The output layer (tied to the embedding in SmolLM2) is read once per step; the
        # embedding lookup reads one row per token, nothing next to it.
        out_weights = cfg.vocab_size * cfg.hidden_size
        return cls(
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            head_dim,
            cfg.hidden_size,
            cfg.vocab_size,
            layer,
            (layer + out_weights) * element,
            element,
        )

    def prefill_flops(self, rows: int, new: int, attended: int, keep: int) -> float:
        """A pass of `new` tokens per row over `attended` columns, `keep` logits kept."""
        tokens = rows * new
        attention = 4 * self.layers * self.heads * self.head_dim * tokens * attended
        return (
            2 * self.layer_weights * tokens
            + attention
            + 2 * self.hidden * self.vocab * (rows * keep)
        )

    def decode_bytes(self, rows: int, attended: int) -> tuple[float, float]:
        """(weights, keys/values) bytes one decode step reads."""
        kv = 2 * self.layers * self.kv_heads * self.head_dim * rows * attended * self.element
        return float(self.all_weights_bytes), float(kv)


@dataclass
class Phase:
    """Forward passes of one kind: how many, their seconds, and their work."""

    calls: int = 0
    seconds: float = 0.0
    flops: float = 0.0
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    tokens: int = 0
    rows: list[int] = field(default_factory=list)


def instrument(gen: HFGenerator, shape: Shape) -> tuple[Phase, Phase]:
    """Time every forward pass of `gen`, sorted into prefill and decode."""
    prefill, decode = Phase(), Phase()
    forward = gen._logits

    def timed(ids, mask, positions, cache, keep):
        start = time.perf_counter()
        out = forward(ids, mask, positions, cache, keep)
        seconds = time.perf_counter() - start
        rows, new = ids.shape
        attended = mask.shape[1]
        if new > 1:
            phase = prefill
            phase.flops += shape.prefill_flops(rows, new, attended, keep)
        else:
            phase = decode
            weights, kv = shape.decode_bytes(rows, attended)
            phase.weight_bytes += weights
            phase.kv_bytes += kv
        phase.calls += 1
        phase.seconds += seconds
        phase.tokens += rows * new
        phase.rows.append(rows)
        return out

    gen._logits = timed  # the decoding loop looks the method up on the instance
    return prefill, decode


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="model dir (default models/iter_0, else models/base)")
    p.add_argument("--batch", type=int, default=16, help="questions, run as one batch")
    p.add_argument("--params", default="params.yaml", help="agent and model settings")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    params = load_params(args.params)
    model_dir = args.model or next(
        (d for d in ("models/iter_0", "models/base") if Path(d, "config.json").is_file()), None
    )
    if model_dir is None or not Path("data/index").is_dir():
        sys.exit("needs data/index and a model: run `dvc repro warmup` (or init_model) first")
    gen = HFGenerator.from_config(model_dir, params.model, GenerationConfig(batch_size=args.batch))
    dtype = next(gen.model.parameters()).dtype
    shape = Shape.of(gen.model)
    threads = torch.get_num_threads()
    print(f"machine: {cpu_name()}, {threads} torch threads; model {model_dir} in {dtype}")

    rows = args.batch * 64  # a prefill group's tokens, at the model's widths
    shapes = [
        (rows, shape.hidden, shape.hidden),
        (rows, shape.hidden, gen.model.config.intermediate_size),
        (1024, 1024, 1024),
    ]
    peak_flops = max(matmul_flops(m, k, n, dtype) for m, k, n in shapes)
    bandwidth = read_bandwidth(dtype)
    print(
        f"calibrated: matrix products {peak_flops / 1e9:.1f} GFLOP/s (best of {shapes}); "
        f"reading 512 MiB {bandwidth / 1e9:.2f} GB/s"
    )

    questions = read_questions("data/prepared/dev.jsonl")[: args.batch]
    agent = SearchAgent(gen, load_retriever("data/index"), params.agent)
    agent.run(questions[:2], decoding=Decoding(temperature=0.0), progress=False)  # warm-up
    pre, dec = instrument(gen, shape)
    gen.prefix_cache.clear()
    start = time.perf_counter()
    recs = agent.run(questions, decoding=Decoding(temperature=0.0), progress=False)
    wall = time.perf_counter() - start
    generated = sum(r.tokens.generated for r in recs)

    pre_rate = pre.flops / pre.seconds
    dec_bytes = dec.weight_bytes + dec.kv_bytes
    dec_rate = dec_bytes / dec.seconds
    pre_frac, dec_frac = pre_rate / peak_flops, dec_rate / bandwidth
    print(f"agent: {len(recs)} trajectories, {generated} tokens generated in {wall:.1f}s")
    print(
        f"prefill: {pre.calls} passes, {pre.tokens} tokens, {pre.seconds:.1f}s, "
        f"{pre.flops / 1e9:.1f} GFLOP = {pre_rate / 1e9:.1f} GFLOP/s = {pre_frac:.2f} of matmul"
    )
    print(
        f"decode: {dec.calls} steps (mean {sum(dec.rows) / max(1, dec.calls):.1f} rows), "
        f"{dec.seconds:.1f}s, {1e3 * dec.seconds / max(1, dec.calls):.1f} ms/step, "
        f"read {dec_bytes / 1e9:.1f} GB (keys/values {100 * dec.kv_bytes / dec_bytes:.0f}%) = "
        f"{dec_rate / 1e9:.2f} GB/s = {dec_frac:.2f} of bandwidth"
    )
    kv_rate = dec.kv_bytes / dec.seconds
    print(f"  keys/values alone: {kv_rate / 1e9:.2f} GB/s over the decode steps' time")
    rest = wall - pre.seconds - dec.seconds
    print(f"rest of the wall time (loop, sampling, stops, retrieval): {rest:.1f}s")
    print(f"prefill_fraction: {pre_frac:.3f}")
    print(f"decode_fraction: {dec_frac:.3f}")
    print(f"agent_roofline_fraction: {min(pre_frac, dec_frac):.3f}")


if __name__ == "__main__":
    main()

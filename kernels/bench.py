"""Times every kernel against its torch reference: `python -m kernels.bench`. Not a test.

On CUDA it times the Triton kernels, their torch references and dense SDPA, and prints the memory
bandwidth decode attention achieves (headline: 64 sequences x 4k context, Hq 32, Hkv 8, D 128, bf16).
Elsewhere it says CUDA is required for Triton and times only the torch references (the engine's CPU
path), at the SmolLM2-135M attention shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.kv_cache import stores_keys_transposed
from kernels import ops


@dataclass
class AttentionShape:
    name: str
    q_lens: list[int]  # per sequence query tokens this step
    kv_lens: list[int]  # per sequence total KV length
    num_q_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class PagedInputs:
    query: torch.Tensor  # [T, Hq, D]
    key_cache: torch.Tensor  # [num_blocks, Hkv, block_size, D], laid out as the engine's on this device
    value_cache: torch.Tensor  # [num_blocks, Hkv, block_size, D]
    query_start_loc: torch.Tensor  # [S + 1] int32
    seq_lens: torch.Tensor  # [S] int32
    block_tables: torch.Tensor  # [S, max_blocks] int32
    kv_bytes: int  # bytes of K and V the step must read at least once

    def args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The positional arguments of paged_attention_ref / paged_attention_triton."""
        return (self.query, self.key_cache, self.value_cache, self.query_start_loc, self.seq_lens,
                self.block_tables)


def make_inputs(shape: AttentionShape, dtype: torch.dtype, device: torch.device, block_size: int = 16) -> PagedInputs:
    """Random paged KV with each sequence's blocks shuffled through the pool, as after some churn."""
    blocks = [-(-n // block_size) for n in shape.kv_lens]
    pool = torch.randperm(sum(blocks), device=device).to(torch.int32)
    block_tables = torch.zeros(len(blocks), max(blocks), dtype=torch.int32, device=device)
    start = 0
    for i, n in enumerate(blocks):
        block_tables[i, :n] = pool[start: start + n]
        start += n
    cache_shape = (sum(blocks), shape.num_kv_heads, block_size, shape.head_dim)
    key_cache = torch.randn(cache_shape, device=device, dtype=dtype)
    if stores_keys_transposed(device, dtype):
        key_cache = key_cache.transpose(2, 3).contiguous().transpose(2, 3)
    q_start = torch.tensor([0, *shape.q_lens], device=device).cumsum(0).to(torch.int32)
    element = torch.tensor([], dtype=dtype).element_size()
    return PagedInputs(
        query=torch.randn(sum(shape.q_lens), shape.num_q_heads, shape.head_dim, device=device, dtype=dtype),
        key_cache=key_cache,
        value_cache=torch.randn(cache_shape, device=device, dtype=dtype),
        query_start_loc=q_start,
        seq_lens=torch.tensor(shape.kv_lens, dtype=torch.int32, device=device),
        block_tables=block_tables,
        kv_bytes=2 * sum(shape.kv_lens) * shape.num_kv_heads * shape.head_dim * element,
    )


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn))
    fn()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return min(runs)  # best of 5: on a shared CPU the slower runs measure the neighbours


def dense_sdpa(inputs: PagedInputs, shape: AttentionShape) -> Callable[[], object]:
    """Dense causal SDPA over already-contiguous K/V (no paging), for a batch of one shape: the bar a paged
    kernel is held to."""
    n = len(shape.q_lens)
    q = inputs.query.view(n, shape.q_lens[0], shape.num_q_heads, shape.head_dim).transpose(1, 2)
    k = torch.randn(n, shape.num_kv_heads, shape.kv_lens[0], shape.head_dim, device=q.device, dtype=q.dtype)
    v = torch.randn_like(k)
    causal = shape.q_lens[0] == shape.kv_lens[0]
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def bench_attention(shape: AttentionShape, dtype: torch.dtype, device: torch.device) -> None:
    inputs = make_inputs(shape, dtype, device)
    args = inputs.args()
    scale = shape.head_dim**-0.5
    rows = {}
    for backend in ("torch", "triton") if device.type == "cuda" else ("torch",):
        ops.set_backend(backend)
        rows[f"paged {backend}"] = time_ms(lambda: ops.paged_attention(*args, scale=scale), device)
    ops.set_backend("auto")
    if len(set(shape.q_lens)) == 1 and len(set(shape.kv_lens)) == 1:  # dense needs one shape per batch
        rows["dense sdpa"] = time_ms(dense_sdpa(inputs, shape), device)
    for name, ms in rows.items():
        print(f"  {shape.name:<34} {name:<14} {ms:9.3f} ms  {inputs.kv_bytes / ms / 1e6:8.1f} GB/s (K/V read)")


def bench_elementwise(num_tokens: int, hidden: int, heads: tuple[int, int, int], inter: int,
                      dtype: torch.dtype, device: torch.device) -> None:
    num_q_heads, num_kv_heads, head_dim = heads
    x = torch.randn(num_tokens, hidden, device=device, dtype=dtype)
    residual = torch.randn_like(x)
    weight = torch.randn(hidden, device=device, dtype=dtype)
    positions = torch.arange(num_tokens, device=device)
    query = torch.randn(num_tokens, num_q_heads, head_dim, device=device, dtype=dtype)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, device=device, dtype=dtype)
    cos_sin = torch.randn(num_tokens, head_dim, device=device)
    gate_up = torch.randn(num_tokens, 2 * inter, device=device, dtype=dtype)
    key_cache = torch.empty(num_tokens // 16 + 1, num_kv_heads, 16, head_dim, device=device, dtype=dtype)
    value_cache = torch.empty_like(key_cache)
    slots = torch.randperm(num_tokens, device=device)
    cases: dict[str, Callable[[], object]] = {
        "rms_norm + residual": lambda: ops.rms_norm(x, weight, 1e-6, residual),
        "rotary (neox)": lambda: ops.rotary_embedding(positions, query, key, cos_sin, True),
        "silu_and_mul": lambda: ops.silu_and_mul(gate_up),
        "write_kv_cache": lambda: ops.write_kv_cache(key, key, key_cache, value_cache, slots),
    }
    for name, fn in cases.items():
        timings = []
        for backend in ("torch", "triton") if device.type == "cuda" else ("torch",):
            ops.set_backend(backend)
            timings.append(f"{backend} {time_ms(fn, device):8.3f} ms")
        ops.set_backend("auto")
        print(f"  {name:<22} T={num_tokens:<5} " + "   ".join(timings))


def main() -> None:
    if torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
        print(f"device: {torch.cuda.get_device_name()}, {dtype}")
        shapes = [
            AttentionShape("decode 64 x 4k (Hq32 Hkv8 D128)", [1] * 64, [4096] * 64, 32, 8, 128),
            AttentionShape("decode 4 x 16k (Hq32 Hkv8 D128)", [1] * 4, [16384] * 4, 32, 8, 128),
            AttentionShape("prefill 4 x 2k (Hq32 Hkv8 D128)", [2048] * 4, [2048] * 4, 32, 8, 128),
        ]
        elementwise = (4096, 4096, (32, 8, 128), 14336)
    else:
        device, dtype = torch.device("cpu"), torch.float32
        print("CUDA is required for the Triton kernels; timing the torch references (the CPU path) only.")
        print(f"torch threads: {torch.get_num_threads()}, {dtype}")
        shapes = [
            AttentionShape("decode 64 x 512 (Hq9 Hkv3 D64)", [1] * 64, [512] * 64, 9, 3, 64),
            AttentionShape("decode 64 x 64..505 (Hq9 Hkv3 D64)", [1] * 64, list(range(64, 512, 7)), 9, 3, 64),
            AttentionShape("prefill 1 x 1000 (Hq9 Hkv3 D64)", [1000], [1000], 9, 3, 64),
        ]
        elementwise = (512, 576, (9, 3, 64), 1536)
    print("attention:")
    for shape in shapes:
        bench_attention(shape, dtype, device)
    print("elementwise:")
    bench_elementwise(*elementwise, dtype=dtype, device=device)


if __name__ == "__main__":
    main()

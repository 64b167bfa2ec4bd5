"""Shared helpers of the flash_mla tests: FlashMLA-style inputs, a float64 reference, comparison.

The conventions follow DeepSeek FlashMLA's decoding test: q and k ~ randn/10 clamped to [-1, 1],
the block table is a random permutation of the pages, cache tokens past each request's length
are NaN and block-table entries past its last used page are 2147480000, so reading anything a
request does not own shows up in the output.
"""

import dataclasses
import math
import random
from typing import List, Optional, Tuple

import torch

HEAD_DIM = 576
HEAD_DIM_V = 512
BAD_PAGE = 2147480000  # what FlashMLA's test writes into unused block-table entries


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@dataclasses.dataclass
class Case:
    b: int
    s_q: int
    s_k: int  # seqlen, or mean seqlen if varlen
    h_q: int
    h_kv: int
    varlen: bool
    causal: bool
    zero_seqlens: bool = False  # set about half of the requests' lengths to 0
    page_size: int = 64
    seed: int = 0
    seqlens: Optional[List[int]] = None  # explicit lengths (overrides s_k / varlen / zero_seqlens)

    def __str__(self) -> str:
        s = (f"b={self.b} s_q={self.s_q} s_k={self.s_k} h_q={self.h_q} h_kv={self.h_kv} "
             f"varlen={self.varlen} causal={self.causal} page={self.page_size}")
        if self.zero_seqlens:
            s += " zero_seqlens"
        if self.seqlens is not None:
            s += f" seqlens={self.seqlens}"
        return s


@dataclasses.dataclass
class Inputs:
    cache_seqlens: torch.Tensor  # [b] int32
    q: torch.Tensor              # [b, s_q, h_q, 576]
    block_table: torch.Tensor    # [b, max_blocks] int32
    blocked_k: torch.Tensor      # [num_blocks, page_size, h_kv, 576]
    seqlens: List[int]           # the lengths on the host


def make_seqlens(c: Case) -> List[int]:
    if c.seqlens is not None:
        assert len(c.seqlens) == c.b
        return list(c.seqlens)
    rng = random.Random(c.seed)
    lens = [c.s_k] * c.b
    if c.varlen:
        lens = [int(max(rng.normalvariate(c.s_k, c.s_k / 2), c.s_q)) for _ in range(c.b)]
    if c.zero_seqlens:
        zero = torch.randn(c.b, generator=torch.Generator().manual_seed(c.seed)) > 0
        lens = [0 if z else n for n, z in zip(lens, zero.tolist())]
    return lens


def make_inputs(c: Case, dtype: torch.dtype, device) -> Inputs:
    """FlashMLA-style test data on `device` (random numbers drawn there, seeded by c.seed)."""
    device = torch.device(device)
    seqlens = make_seqlens(c)
    gen = torch.Generator(device=device).manual_seed(c.seed)
    max_seqlen_pad = cdiv(max(max(seqlens), 1), 256) * 256
    blocks_per_seq = cdiv(max_seqlen_pad, c.page_size)
    num_blocks = c.b * blocks_per_seq

    q = torch.randn(c.b, c.s_q, c.h_q, HEAD_DIM, generator=gen, device=device) / 10
    q = q.clamp_(-1.0, 1.0).to(dtype)
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    block_table = perm.to(torch.int32).view(c.b, blocks_per_seq)
    blocked_k = torch.randn(num_blocks, c.page_size, c.h_kv, HEAD_DIM, generator=gen, device=device) / 10
    blocked_k = blocked_k.clamp_(-1.0, 1.0).to(dtype)

    # Poison every cache token no request owns, and the block-table entries past each request's
    # last page (vectorized: page p = block_table[i, j] holds tokens j*page_size + t of request i).
    lens = torch.tensor(seqlens, dtype=torch.int64, device=device)
    slot = torch.arange(blocks_per_seq, device=device)
    pos = slot[None, :, None] * c.page_size + torch.arange(c.page_size, device=device)[None, None, :]
    unowned = pos >= lens[:, None, None]  # [b, blocks_per_seq, page_size]
    unowned_by_page = torch.empty(num_blocks, c.page_size, dtype=torch.bool, device=device)
    unowned_by_page[block_table.view(-1).long()] = unowned.view(-1, c.page_size)
    blocked_k[unowned_by_page] = float("nan")
    used_pages = (lens + c.page_size - 1) // c.page_size
    block_table[slot[None, :] >= used_pages[:, None]] = BAD_PAGE

    cache_seqlens = torch.tensor(seqlens, dtype=torch.int32, device=device)
    return Inputs(cache_seqlens, q, block_table, blocked_k, seqlens)


def reference(inp: Inputs, causal: bool, softmax_scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 MLA decoding on inp's device, one request at a time.

    Returns out [b, s_q, h_q, 512] float64 and lse [b, h_q, s_q] float64 (natural log). Query rows
    that see no key (seqlen 0, or causal with seqlen < s_q) get out 0 and lse +inf.
    """
    q, blocked_k = inp.q, inp.blocked_k
    b, s_q, h_q, d = q.shape
    page_size, h_kv = blocked_k.shape[1], blocked_k.shape[2]
    g = h_q // h_kv
    scale = d ** -0.5 if softmax_scale is None else softmax_scale  # any given value is used as is
    dev = q.device
    out = torch.zeros(b, s_q, h_q, HEAD_DIM_V, dtype=torch.float64, device=dev)
    lse = torch.full((b, h_q, s_q), float("inf"), dtype=torch.float64, device=dev)
    tok = torch.arange(s_q, device=dev)
    for i, L in enumerate(inp.seqlens):
        if L == 0:
            continue
        pages = inp.block_table[i, :cdiv(L, page_size)].long()
        kv = blocked_k[pages].reshape(-1, h_kv, d)[:L].double()       # [L, h_kv, 576]
        kv = kv.permute(1, 0, 2)                                       # [h_kv, L, 576]
        # Query head h uses KV head h // g; rows of a KV head are (token, head-in-group).
        qi = q[i].double().view(s_q, h_kv, g, d).permute(1, 0, 2, 3)   # [h_kv, s_q, g, 576]
        s = torch.einsum("ktgd,kld->ktgl", qi, kv) * scale             # [h_kv, s_q, g, L]
        if causal:  # bottom-right aligned: token t sees keys [0, L - s_q + t]
            visible = torch.arange(L, device=dev)[None, :] <= (L - s_q + tok)[:, None]  # [s_q, L]
            s = s.masked_fill(~visible[None, :, None, :], float("-inf"))
        m = torch.logsumexp(s, dim=-1)                                 # [h_kv, s_q, g]
        seen = torch.isfinite(m)
        p = torch.where(seen[..., None], torch.exp(s - m[..., None]), torch.zeros_like(s))
        o = torch.einsum("ktgl,klv->ktgv", p, kv[..., :HEAD_DIM_V])    # [h_kv, s_q, g, 512]
        out[i] = o.permute(1, 0, 2, 3).reshape(s_q, h_q, HEAD_DIM_V)
        lse[i] = torch.where(seen, m, torch.full_like(m, float("inf"))).permute(0, 2, 1).reshape(h_q, s_q)
    return out, lse


def compare(name: str, ans: torch.Tensor, ref: torch.Tensor, abs_tol: float, rel_tol: float,
            cos_diff_tol: Optional[float] = None) -> Optional[str]:
    """FlashMLA's check_is_allclose: None if close, else a description of the mismatch.

    +inf, -inf and NaN must sit at the same positions in both; elsewhere every element must be
    within abs_tol or within rel_tol (relative), and the cosine difference at most cos_diff_tol.
    """
    if ans.shape != ref.shape:
        return f"{name}: shape {tuple(ans.shape)} != {tuple(ref.shape)}"
    ans, ref = ans.double(), ref.double()
    ans_clean, ref_clean = ans.clone(), ref.clone()
    for val, kind in ((float("inf"), "+inf"), (float("-inf"), "-inf"), (None, "NaN")):
        a_mask = torch.isnan(ans) if val is None else ans == val
        r_mask = torch.isnan(ref) if val is None else ref == val
        if not torch.equal(a_mask, r_mask):
            return f"{name}: {kind} at {int(a_mask.sum())} positions in the answer, {int(r_mask.sum())} in the reference"
        ans_clean[a_mask] = 0.0
        ref_clean[r_mask] = 0.0
    abs_err = (ans_clean - ref_clean).abs()
    rel_err = abs_err / (ref_clean.abs() + 1e-6)
    bad = (abs_err >= abs_tol) & (rel_err >= rel_tol)
    if bool(bad.any()):
        k = int(torch.argmax(torch.where(bad, abs_err, torch.zeros_like(abs_err))))
        pos = list(torch.unravel_index(torch.tensor(k), ans.shape))
        return (f"{name}: {int(bad.sum())} of {bad.numel()} elements off; worst at {[int(x) for x in pos]}: "
                f"{ans_clean.view(-1)[k].item()} vs {ref_clean.view(-1)[k].item()}")
    if cos_diff_tol is not None:
        denom = float((ans_clean * ans_clean).sum() + (ref_clean * ref_clean).sum())
        if float((ref_clean * ref_clean).sum()) >= 1e-12:
            cos_diff = 1 - 2 * float((ans_clean * ref_clean).sum()) / denom
            if abs(cos_diff) > cos_diff_tol:
                return f"{name}: cosine diff {cos_diff:.3g} > {cos_diff_tol}"
    return None


def check_outputs(out: torch.Tensor, lse: torch.Tensor, out_ref: torch.Tensor, lse_ref: torch.Tensor) -> Optional[str]:
    """FlashMLA's tolerances; out is compared against the reference rounded to out's dtype."""
    err = compare("out", out, out_ref.to(out.dtype), abs_tol=8e-4, rel_tol=2.01 / 128, cos_diff_tol=5e-6)
    if err is None:
        err = compare("lse", lse, lse_ref.float(), abs_tol=1e-6, rel_tol=8.01 / 65536)
    return err

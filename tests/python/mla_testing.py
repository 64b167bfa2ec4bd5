"""Shared helpers of the flash_mla tests: FlashMLA-style inputs, a float64 reference, comparison.

The conventions follow DeepSeek FlashMLA's decoding test: q and k ~ randn/10 clamped to [-1, 1],
the block table is a random permutation of the pages, cache tokens past each request's length
are NaN and block-table entries past its last used page are 2147480000, so reading anything a
request does not own shows up in the output.
"""

import contextlib
import dataclasses
import math
import os
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


def _reference_setup(inp: "Inputs", softmax_scale: Optional[float]):
    """Shapes, the softmax scale rule (None alone selects 1/sqrt(576); any given value is used as
    is) and the empty outputs (out 0, lse +inf) shared by `reference` and `reference_loop`."""
    q, blocked_k = inp.q, inp.blocked_k
    b, s_q, h_q, d = q.shape
    page_size, h_kv = blocked_k.shape[1], blocked_k.shape[2]
    scale = d ** -0.5 if softmax_scale is None else softmax_scale
    dev = q.device
    out = torch.zeros(b, s_q, h_q, HEAD_DIM_V, dtype=torch.float64, device=dev)
    lse = torch.full((b, h_q, s_q), float("inf"), dtype=torch.float64, device=dev)
    return (q, blocked_k, b, s_q, h_q, d, page_size, h_kv, h_q // h_kv, scale, dev, out, lse,
            torch.arange(s_q, device=dev))


def reference(inp: Inputs, causal: bool, softmax_scale: Optional[float] = None,
              max_elements: int = 1 << 28) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 MLA decoding on inp's device, batched over requests (in chunks of at most about
    `max_elements` float64 intermediates, 2 GiB by default).

    Returns out [b, s_q, h_q, 512] float64 and lse [b, h_q, s_q] float64 (natural log). Query rows
    that see no key (seqlen 0, or causal with seqlen < s_q) get out 0 and lse +inf. Same math as
    reference_loop (one request at a time), without its per-request Python overhead: requests
    are padded to the chunk's longest and the padding is masked (and zeroed, as the cache holds
    NaN there).
    """
    q, blocked_k, b, s_q, h_q, d, page_size, h_kv, g, scale, dev, out, lse, tok = _reference_setup(
        inp, softmax_scale)
    # Longest first, so each chunk pads to about its own length.
    order = sorted((i for i in range(b) if inp.seqlens[i] > 0), key=lambda i: -inp.seqlens[i])
    start = 0
    while start < len(order):
        L = inp.seqlens[order[start]]
        per_request = L * (h_kv * d + 3 * h_q * s_q) + s_q * h_q * (d + HEAD_DIM_V)
        n = max(1, min(len(order) - start, max_elements // per_request))
        idx = order[start:start + n]
        start += n
        rows = torch.tensor(idx, dtype=torch.long, device=dev)
        lens = torch.tensor([inp.seqlens[i] for i in idx], dtype=torch.long, device=dev)
        n_pages = cdiv(L, page_size)
        pages = inp.block_table[rows, :n_pages].long()                              # [n, n_pages]
        used = torch.arange(n_pages, device=dev)[None, :] < cdiv_t(lens, page_size)[:, None]
        pages = torch.where(used, pages, torch.zeros_like(pages))                    # never BAD_PAGE
        kv = blocked_k[pages].reshape(n, n_pages * page_size, h_kv, d)[:, :L]         # [n, L, h_kv, 576]
        pos = torch.arange(L, device=dev)
        owned = pos[None, :] < lens[:, None]                                          # [n, L]
        kv = torch.where(owned[:, :, None, None], kv.double(), torch.zeros((), dtype=torch.float64, device=dev))
        # Query head h uses KV head h // g; rows of a KV head are (token, head-in-group).
        qi = q[rows].double().view(n, s_q, h_kv, g, d)
        s = torch.einsum("ntkgd,nlkd->nktgl", qi, kv) * scale                         # [n, h_kv, s_q, g, L]
        visible = owned[:, None, :].expand(n, s_q, L)                                  # [n, s_q, L]
        if causal:  # bottom-right aligned: token t sees keys [0, L_i - s_q + t]
            visible = visible & (pos[None, None, :] <= (lens[:, None] - s_q + tok[None, :])[:, :, None])
        s = s.masked_fill(~visible[:, None, :, None, :], float("-inf"))
        m = torch.logsumexp(s, dim=-1)                                                 # [n, h_kv, s_q, g]
        seen = torch.isfinite(m)
        p = torch.where(seen[..., None], torch.exp(s - m[..., None]), torch.zeros_like(s))
        del s
        o = torch.einsum("nktgl,nlkv->ntkgv", p, kv[..., :HEAD_DIM_V])                  # [n, s_q, h_kv, g, 512]
        out[rows] = o.reshape(n, s_q, h_q, HEAD_DIM_V)
        lse[rows] = torch.where(seen, m, torch.full_like(m, float("inf"))).permute(0, 1, 3, 2).reshape(n, h_q, s_q)
    return out, lse


def cdiv_t(a: torch.Tensor, b: int) -> torch.Tensor:
    return (a + b - 1) // b


def reference_loop(inp: Inputs, causal: bool,
                   softmax_scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 MLA decoding on inp's device, one request at a time (the plain statement of the
    math; `reference` computes the same, batched, and a CPU test checks that they agree).

    Returns out [b, s_q, h_q, 512] float64 and lse [b, h_q, s_q] float64 (natural log). Query rows
    that see no key (seqlen 0, or causal with seqlen < s_q) get out 0 and lse +inf.
    """
    q, blocked_k, b, s_q, h_q, d, page_size, h_kv, g, scale, dev, out, lse, tok = _reference_setup(
        inp, softmax_scale)
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


def poison_allocator(device, *nbytes) -> None:
    """Leaves 0xFF bytes (NaN in bf16/fp16/fp32) in free blocks of the CUDA caching allocator of
    the sizes the op will allocate (out, lse; a large one for the workspace), so anything the
    kernels fail to write shows up as NaN. Nothing to do for CPU tensors."""
    if torch.device(device).type != "cuda":
        return
    blocks = [torch.empty(n, dtype=torch.uint8, device=device).fill_(0xFF) for n in (*nbytes, 64 << 20)]
    del blocks


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


# ---------------------------------------------------------------------------------------------
# Kernel switch: which split-KV kernel the library runs (read by mla_decode on every call)
# ---------------------------------------------------------------------------------------------

KERNEL_ENV = "FLASHMLA_KERNEL"
TEST_KERNELS_ENV = "FLASHMLA_TEST_KERNELS"


def kernels_under_test() -> List[str]:
    """The FLASHMLA_KERNEL values the GPU tests run under.

    On compute capability 9.0 (H100/H200): "sm90" (the Hopper kernel, forced: a case it cannot
    run is an error, never a silent fallback to the portable kernel) and "portable" (the sm_80
    fallback of every other GPU, kept tested on Hopper). Elsewhere "auto" alone (auto is the
    portable kernel there). FLASHMLA_TEST_KERNELS=a,b overrides, e.g. "auto,portable".
    """
    names = os.environ.get(TEST_KERNELS_ENV)
    if names:
        return [n.strip() for n in names.split(",") if n.strip()]
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        return ["sm90", "portable"]
    return ["auto"]


def kernel_for(kernel: str, page_size: int) -> str:
    """The FLASHMLA_KERNEL value to run `kernel` with at this page size: the Hopper kernel takes
    page sizes that are multiples of 64 only, so "sm90" becomes "auto" (the portable kernel)
    for the others. The dispatch itself is tested separately (test_gpu_hopper.py)."""
    return "auto" if kernel == "sm90" and page_size % 64 != 0 else kernel


@contextlib.contextmanager
def kernel_env(kernel: str, page_size: int = 64):
    """Sets FLASHMLA_KERNEL for the duration of the block, then restores what was there."""
    old = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = kernel_for(kernel, page_size)
    try:
        yield
    finally:
        if old is None:
            del os.environ[KERNEL_ENV]
        else:
            os.environ[KERNEL_ENV] = old


# ---------------------------------------------------------------------------------------------
# Dominant keys: checks that can see a single dropped, doubled or misplaced key
# ---------------------------------------------------------------------------------------------
#
# With randn/10 data every score is within ~0.1 of every other, so the softmax of a row of L
# keys is nearly flat: each key holds ~1/L of the mass, the output is the mean of L small
# random vectors (|out| ~ 0.1/sqrt(L)), and FlashMLA's tolerance (8e-4 absolute) cannot see a
# key more or less in a long row. Here one key j per request is made dominant: for KV head h,
# with a random sign vector s_h in {-1, +1}^576,
#     k[j, h, :] = s_h                  (so V[j] = s_h[:512], every element +-1)
#     q[.., head of h, :] += beta / (scale * 576) * s_h,   beta = ln(max(L - 1, 1))
# so that scale * q.k_j = beta + O(0.1) while the other scores stay O(0.1): key j holds
# e^beta / (e^beta + L - 1) ~ 1/2 of the mass and out ~ s_h[:512] / 2 (|out| ~ 0.5 everywhere).
# Then, with FlashMLA's tolerance (relative 2/128 ~ 1.6% where |out| > 0.05):
#   * key j dropped:   out ~ 0       (off by ~0.5 = 100%)
#   * key j doubled:   out ~ 2/3 s_h (off by ~0.17 = 33%; lse off by ln(1.5) ~ 0.4)
#   * key j read from the wrong page or slot: the dominant row is lost, as when dropped.
# while the honest rounding is far below it: P in bf16 (2^-9 relative on p_j ~ 1/2) moves out by
# ~0.1%, and the other keys' share (1/2 of a mean of L randn/10 rows) is ~0.05/sqrt(L).
# The dominant key is placed, one sub-case after another, at the first and last key of every
# split (from the plan, get_mla_metadata), of every page and of every 64-key block.

SCHED_BLOCK_KEYS = 64  # keys per block of the split plan (kSchedBlockKeys)


def split_pieces(metadata: torch.Tensor, seqlens: List[int]) -> List[List[Tuple[int, int]]]:
    """Per request, the key ranges [begin, end) of its splits, read from the plan's rows
    (begin_req, begin_block, end_req, end_block, begin_split, ...): part p processes request
    begin_req from block begin_block on, every request in between whole, and request end_req
    up to block end_block (exclusive); blocks are 64 keys."""
    pieces: List[List[Tuple[int, int]]] = [[] for _ in seqlens]
    b = len(seqlens)
    for row in metadata.cpu().tolist():
        begin_req, begin_block, end_req, end_block = row[:4]
        for req in range(max(begin_req, 0), min(end_req, b - 1) + 1):
            L = seqlens[req]
            k0 = begin_block * SCHED_BLOCK_KEYS if req == begin_req else 0
            k1 = min(end_block * SCHED_BLOCK_KEYS, L) if req == end_req else L
            if k0 < k1:
                pieces[req].append((k0, k1))
    return [sorted(p) for p in pieces]


def boundary_keys(seqlen: int, page_size: int, pieces: List[Tuple[int, int]]) -> List[int]:
    """First and last key of every split piece, page and 64-key block of a request (sorted)."""
    if seqlen == 0:
        return []
    keys = {0, seqlen - 1}
    for k0, k1 in pieces:
        keys.update((k0, k1 - 1))
    for step in (page_size, SCHED_BLOCK_KEYS):
        for start in range(0, seqlen, step):
            keys.update((start, min(start + step, seqlen) - 1))
    return sorted(keys)


@dataclasses.dataclass
class Dominant:
    """Inputs prepared for dominant-key sub-cases (see the comment above)."""
    inp: Inputs
    signs: torch.Tensor                 # [h_kv, 576], +-1, in the cache's dtype
    keys: List[List[int]]               # per request: the candidate positions of its dominant key
    scale: float
    _bt_host: Optional[torch.Tensor] = None

    def num_subcases(self) -> int:
        return max((len(k) for k in self.keys), default=0)

    def key_of(self, req: int, subcase: int) -> Optional[int]:
        keys = self.keys[req]
        return keys[subcase % len(keys)] if keys else None

    def place(self, subcase: int) -> torch.Tensor:
        """Writes the dominant rows of sub-case `subcase` into the cache; returns the saved rows
        (pass them to restore). Key j of request i lives in page block_table[i, j // page_size]."""
        k = self.inp.blocked_k
        if self._bt_host is None:
            self._bt_host = self.inp.block_table.cpu()
        bt = self._bt_host
        page_size = k.shape[1]
        reqs, pages, slots = [], [], []
        for i in range(len(self.keys)):
            j = self.key_of(i, subcase)
            if j is not None:
                reqs.append(i)
                pages.append(int(bt[i, j // page_size]))
                slots.append(j % page_size)
        self._where = (torch.tensor(pages, device=k.device), torch.tensor(slots, device=k.device))
        saved = k[self._where].clone()
        k[self._where] = self.signs.to(k.dtype)
        return saved

    def restore(self, saved: torch.Tensor) -> None:
        self.inp.blocked_k[self._where] = saved

    def shares(self, out_ref: torch.Tensor, subcase: int, causal: bool) -> List[float]:
        """The dominant key's share of the mass (from the reference: out . s / 512), per query row
        that sees it among at least 3/4 of the request's keys (rows of short causal prefixes
        give it more), to check that the construction does what the comment says."""
        b, s_q, h_q, _ = out_ref.shape
        h_kv = self.signs.shape[0]
        v = self.signs[:, :HEAD_DIM_V].double().repeat_interleave(h_q // h_kv, 0)  # [h_q, 512]
        est = (out_ref * v[None, None]).sum(-1) / HEAD_DIM_V                        # [b, s_q, h_q]
        res = []
        for i, L in enumerate(self.inp.seqlens):
            j = self.key_of(i, subcase)
            if j is None or L < 2:
                continue
            for t in range(s_q):
                visible = L - s_q + t + 1 if causal else L
                if j < visible and visible >= max(2, (3 * L) // 4):
                    res += est[i, t].tolist()
        return res


def make_dominant(c: Case, dtype: torch.dtype, device, metadata: torch.Tensor,
                  softmax_scale: Optional[float] = None, max_subcases: Optional[int] = None) -> Dominant:
    """FlashMLA-style inputs for case c, q tilted towards each KV head's sign vector so that the
    key set by Dominant.place dominates (see the comment above). The candidate keys of each
    request come from the plan in `metadata` (and the page size); with max_subcases, an even
    sample of them (always including the first and the last key)."""
    inp = make_inputs(c, dtype, device)
    scale = softmax_scale if softmax_scale else HEAD_DIM ** -0.5
    gen = torch.Generator(device=inp.q.device).manual_seed(c.seed + 1000)
    signs = torch.randint(0, 2, (c.h_kv, HEAD_DIM), generator=gen, device=inp.q.device) * 2 - 1
    signs = signs.to(dtype)
    g = c.h_q // c.h_kv
    beta = torch.tensor([math.log(max(L - 1, 1)) for L in inp.seqlens], dtype=torch.float32,
                        device=inp.q.device)
    tilt = beta[:, None, None, None] / (scale * HEAD_DIM) * signs.float().repeat_interleave(g, 0)[None, None]
    inp.q = (inp.q.float() + tilt).to(dtype)
    pieces = split_pieces(metadata, inp.seqlens)
    keys = [boundary_keys(L, c.page_size, pieces[i]) for i, L in enumerate(inp.seqlens)]
    if max_subcases is not None:
        keys = [k if len(k) <= max_subcases else
                [k[round(x * (len(k) - 1) / (max_subcases - 1))] for x in range(max_subcases)] for k in keys]
    return Dominant(inp, signs, keys, scale)

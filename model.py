"""The Llama / Qwen2 / Qwen3 forward pass, written out by hand, plus a KV cache and batched generation.

One `Transformer` serves teacher and student alike: a RED student is the same network at a smaller residual
width W (heads, head_dim and FFN width unchanged), so distill.py runs it with the student's weights through
`torch.func.functional_call`. Parameter names mirror Hugging Face checkpoint keys (minus the leading
"model."), so load_weights.py is a strict `load_state_dict`.

Family differences are fields of `ModelArgs` and every line that depends on one is tagged `# [qwen]`, so
`grep -n '\\[qwen\\]' model.py load_weights.py` lists the whole Llama -> Qwen delta (load_weights.py maps
a Hugging Face config.json to `ModelArgs`).

Taps: `forward(tokens, tap=fn)` calls `fn(layer, name, x)` with each activation as it is computed; this is how
distillation (the clone loss), calibration (channel importance) and eRank see inside the model, so there is
one forward pass, not three. The names, in the order they are produced:
    layer 0:   embed        (B, T, D)   the token embeddings, the residual stream entering block 0
    each layer i:
               norm_in      (B, T, D)   input_layernorm output
               q, k, v      (B, T, H*Dh), (B, T, K*Dh) x2: projections before RoPE (and before Qwen3's q/k norm)
               attn_heads   (B, T, H*Dh) all heads' attention output, o_proj's input
               attn_out     (B, T, D)   o_proj output
               norm_post    (B, T, D)   post_attention_layernorm output
               gate, up     (B, T, F)   MLP projections, pre-activation
               mlp_out      (B, T, D)   down_proj output
               resid        (B, T, D)   the block output (residual stream after layer i)
The tap may keep, reduce or ignore what it is given; it must not modify it. (Under activation checkpointing,
student.recomputed, a block runs again in the backward and calls its taps a second time.)

Shape legend: B batch, T tokens (this call), S key positions (cache + T), D model width (W for a student),
H query heads, K kv heads, Dh head dim, F ffn width, V vocab.

Builds on nothing else in red (floor 1): torch only. Run as: imported (scripts/generate.py is a demo CLI).
"""
import math
from typing import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class ContextError(ValueError):
    """More positions than the model was built for (max_position_embeddings)."""


# ---------------------------------------------------------------------------------------------------------
# Architecture config (load_weights.py maps a Hugging Face config.json to it and back)

@dataclass
class ModelArgs:
    family: str               # "llama", "qwen2" or "qwen3" (HF model_type)
    vocab_size: int           # embedding rows; Qwen pads it beyond the tokenizer's vocab
    dim: int                  # residual width D (hidden_size)
    n_layers: int             # transformer blocks
    n_heads: int              # query heads H
    n_kv_heads: int           # key/value heads K (grouped-query attention: H is a multiple of K)
    head_dim: int             # Dh, explicit: a RED student has Dh != D / H
    ffn_dim: int              # F (intermediate_size)
    norm_eps: float           # RMSNorm epsilon
    rope_theta: float         # RoPE base frequency
    rope_scaling: dict | None = None   # llama3 frequency scaling (Llama 3.1 / 3.2), else None
    max_seq_len: int = 4096            # positions the model was built for (max_position_embeddings)
    tie_embeddings: bool = False       # LM head reuses the embedding matrix
    qkv_bias: bool = False             # [qwen] Qwen2 q/k/v projections carry a bias
    qk_norm: bool = False              # [qwen] Qwen3 RMS-normalises each head of q and k before RoPE


# ---------------------------------------------------------------------------------------------------------
# RMSNorm and rotary position embedding

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # the mean of squares in fp32, as every reference implementation does
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.type_as(x)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """(Dh/2,) rotation frequencies theta^(-2i/Dh), with Llama 3's long-context rescaling when configured."""
    exponents = torch.arange(0, args.head_dim, 2, dtype=torch.int64).float() / args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** exponents)
    if args.rope_scaling is None:
        return inv_freq
    # llama3 scaling (Llama 3.1 report): wavelengths longer than the original context / low_freq_factor are
    # slowed by `factor`; shorter than context / high_freq_factor are kept; in between, a linear blend.
    s = args.rope_scaling
    context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    blend = (context / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blend = blend.clamp(0.0, 1.0)  # 0 -> fully scaled (long wavelengths), 1 -> untouched (short ones)
    return (1 - blend) * inv_freq / s["factor"] + blend * inv_freq


def rope_tables(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (B, T, Dh) for integer positions (B, T), in fp32."""
    angles = positions.float()[..., None] * inv_freq  # (B, T, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)       # (B, T, Dh): half-split layout, see apply_rope
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, Dh) by position.

    NOTE: HF checkpoints rotate pairs (i, i + Dh/2) ("half-split"); Meta's and gpt-fast's code rotate adjacent
    pairs (2i, 2i+1) ("interleaved") and permute q/k rows when converting. Mixing the two conventions gives
    fluent-looking garbage (llama.cpp #3364, TinyLlama #24). We load HF weights unpermuted, so half-split.
    """
    x1, x2 = x.chunk(2, dim=-1)                 # (B, heads, T, Dh/2) each
    rotated = torch.cat([-x2, x1], dim=-1)      # (B, heads, T, Dh)
    cos, sin = cos[:, None], sin[:, None]       # (B, 1, T, Dh): broadcast over heads
    return (x.float() * cos + rotated.float() * sin).type_as(x)


# ---------------------------------------------------------------------------------------------------------
# KV cache

class KVCache:
    """Preallocated keys and values of every layer, (n_layers, B, K, max_len, Dh); `pos` = tokens stored."""

    def __init__(self, args: ModelArgs, batch_size: int, max_len: int, *, device=None, dtype=torch.float32):
        shape = (args.n_layers, batch_size, args.n_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's (B, K, T, Dh) keys/values after the cached ones; return all S = pos + T of them."""
        end = self.pos + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache full: {end} positions needed, {self.k.shape[3]} allocated")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def keep_rows(self, rows: torch.Tensor):
        """Drop finished sequences from the batch (rows: indices to keep) so decoding stops paying for them."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


# ---------------------------------------------------------------------------------------------------------
# Attention, MLP, Block, Transformer

Tap = Callable[[int, str, torch.Tensor], None]  # tap(layer, name, activation), see the module docstring


def no_tap(layer: int, name: str, x: torch.Tensor):
    """The tap of a plain forward: ignores everything."""


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)     # [qwen] bias
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)  # [qwen] bias
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)  # [qwen] bias
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        if args.qk_norm:  # [qwen] Qwen3
            self.q_norm = RMSNorm(args.head_dim, args.norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.norm_eps)

    def forward(self, x, cos, sin, mask, cache, tap: Tap):
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, H*Dh), (B, T, K*Dh) x2
        tap(self.layer, "q", q)
        tap(self.layer, "k", k)
        tap(self.layer, "v", v)
        q = q.view(B, T, self.n_heads, self.head_dim)     # (B, T, H, Dh)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, Dh)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, Dh)
        if hasattr(self, "q_norm"):  # [qwen] Qwen3 normalises every head before rotating it
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, Dh)
        # GQA: each group of H/K query heads shares one kv head; enable_gqa reads the shared head in place
        # (copying K and V out to H heads would move the whole cache through memory at every decoding step)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=self.n_kv_heads != self.n_heads)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*Dh)
        tap(self.layer, "attn_heads", y)  # o_proj's input: LRC compares y @ Wo_t^T in teacher space
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.gate_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.down_proj = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x, tap: Tap):
        gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, F) each, pre-activation
        tap(self.layer, "gate", gate)
        tap(self.layer, "up", up)
        return self.down_proj(F.silu(gate) * up)        # SwiGLU, (B, T, D)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, layer)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args, layer)

    def forward(self, x, cos, sin, mask, cache, tap: Tap):
        i = self.layer
        a = self.input_layernorm(x)
        tap(i, "norm_in", a)
        attn_out = self.self_attn(a, cos, sin, mask, cache, tap)
        tap(i, "attn_out", attn_out)
        h = x + attn_out
        b = self.post_attention_layernorm(h)
        tap(i, "norm_post", b)
        mlp_out = self.mlp(b, tap)
        tap(i, "mlp_out", mlp_out)
        out = h + mlp_out
        tap(i, "resid", out)
        return out


def attention_mask(pad: torch.Tensor | None, start: int, T: int, device) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask (True = may attend), or None when plain causal attention is exact.

    `pad[b]` counts left-padding tokens of row b: its keys are hidden from every real query. A padding query
    sees only itself, so its softmax stays finite (its output is never used).
    """
    if pad is None and (start == 0 or T == 1):
        return None  # SDPA's is_causal (T > 1, empty cache) or attend-to-everything (one new token)
    S = start + T
    query_pos = torch.arange(start, S, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(S, device=device)[None, :]           # (1, S)
    mask = (key_pos <= query_pos)[None, None]                   # (1, 1, T, S)
    if pad is not None:
        real_key = key_pos[None] >= pad[:, None, None]          # (B, 1, S)
        mask = mask & (real_key | (key_pos == query_pos))[:, None]  # (B, 1, T, S)
    return mask


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)

    def forward(self, tokens: torch.Tensor, *, cache: KVCache | None = None, tap: Tap | None = None,
                pad: torch.Tensor | None = None, last_only: bool = False, head: bool = True,
                run_block: Callable | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V) (or (B, 1, V) with last_only). `pad` (B,): left-padding counts.
        head=False: the final-normed hidden states (B, T, D) instead, for a loss that applies the LM head itself.
        run_block(block, x, cos, sin, mask, tap) -> x runs each block instead of a plain call (no cache)."""
        B, T = tokens.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.args.max_seq_len:
            raise ContextError(f"{start + T} positions requested, the model has {self.args.max_seq_len} "
                               "(max_position_embeddings) - use shorter sequences")
        positions = torch.arange(start, start + T, device=tokens.device).expand(B, T)  # (B, T)
        if pad is not None:
            positions = (positions - pad[:, None]).clamp(min=0)  # real tokens count from 0 after the padding
        cos, sin = rope_tables(self.inv_freq, positions)        # (B, T, Dh) each
        mask = attention_mask(pad, start, T, tokens.device)
        tap = tap or no_tap
        x = self.embed_tokens(tokens)  # (B, T, D)
        tap(0, "embed", x)
        for block in self.layers:
            x = block(x, cos, sin, mask, cache, tap) if run_block is None else run_block(block, x, cos, sin, mask, tap)
        if cache is not None:
            cache.pos += T
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        if not head:
            return x  # (B, T, D)
        return F.linear(x, self.head_weight())  # (B, T, V)

    def head_weight(self) -> torch.Tensor:
        """The LM head (V, D): the embedding when the model ties them."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight


# ---------------------------------------------------------------------------------------------------------
# Generation

@torch.no_grad()  # not inference_mode: FSDP2 would keep its gather buffers as inference tensors (distill --fsdp)
def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, eos_ids=(), stop=None, pad_id: int = 0,
             generator: torch.Generator | None = None, vocab_size: int | None = None) -> list[list[int]]:
    """Continue every prompt; returns each row's new tokens (a stop/eos token not included).

    Greedy when temperature == 0, else sampling from softmax(logits / temperature) (optionally top-k).
    Prompts of different lengths are left-padded, with positions and the attention mask corrected, so a
    row's tokens do not depend on the rest of the batch. `stop(new_tokens) -> bool` ends a row early (e.g.
    when the text starts a new "Question:"); finished rows leave the batch and the cache. `vocab_size`: only
    ids below it are produced (Qwen pads its embedding past the tokenizer's vocab; those rows are no tokens).
    """
    device = model.embed_tokens.weight.device
    lengths = torch.tensor([len(p) for p in prompts])
    if (lengths == 0).any():
        raise ValueError("generate: empty prompt - every prompt needs at least one token (e.g. the bos token)")
    longest = int(lengths.max())
    if longest + max_new_tokens > model.args.max_seq_len:
        raise ContextError(f"a prompt of {longest} tokens plus {max_new_tokens} new ones exceeds the model's "
                           f"{model.args.max_seq_len} positions - shorten the prompt or lower max_new_tokens")
    tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens[row, longest - len(p):] = torch.tensor(p, dtype=torch.long)
    pad = (longest - lengths).to(device)
    no_pad = bool((pad == 0).all())
    cache = KVCache(model.args, len(prompts), longest + max_new_tokens, device=device,
                    dtype=model.embed_tokens.weight.dtype)
    eos = torch.tensor(sorted(set(eos_ids)) or [-1], device=device)
    outputs: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))  # original row index of each row still in the batch
    logits = model(tokens.to(device), cache=cache, pad=None if no_pad else pad, last_only=True)[:, -1]  # (B, V)
    for _ in range(max_new_tokens):
        logits = logits[:, :vocab_size]  # (B, V') with V' = vocab_size (all of V when None)
        if temperature == 0.0:
            next_tok = logits.argmax(dim=-1)  # (B,)
        else:
            logits = logits.float() / temperature
            if top_k is not None:
                kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_tok = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        finished = torch.isin(next_tok, eos).tolist()
        keep = []
        for row, (tok, done) in enumerate(zip(next_tok.tolist(), finished)):
            if not done:
                outputs[active[row]].append(tok)
                done = stop is not None and stop(outputs[active[row]])
            if not done:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):  # shrink the batch: finished rows cost nothing from here on
            rows = torch.tensor(keep, device=device)
            cache.keep_rows(rows)
            next_tok, pad = next_tok[rows], pad[rows]
            active = [active[r] for r in keep]
        logits = model(next_tok[:, None], cache=cache, pad=None if no_pad else pad)[:, -1]  # (B, V)
    return outputs

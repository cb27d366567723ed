"""Effective rank (eRank) of hidden states, streamed over any number of tokens; the held-out measurement of a model.

RED traces LRC's "reasoning collapse" to eRank collapse: a few directions take over the student's residual
stream and tokens become hard to tell apart (METHOD §3.1, §3.8). This file measures it, by either of two
definitions; every report says which (METHOD §4.1):

  kind="sq"  Diff-eRank (Wei et al., NeurIPS'24, arXiv 2401.17139), the primary one: centre the tokens,
             L2-normalise each token, take the eigenvalues of the covariance Z^T Z / N divided by its trace,
             eRank = exp(entropy). Eigenvalues are squared singular values, so this is Roy-Vetterli applied
             to s^2, and the smaller of the two (0.78 d against 0.93 d for a 3072 x 1536 Gaussian).
  kind="rv"  Roy & Vetterli (EUSIPCO 2007) on the singular values s of the centred matrix, p_k = s_k / sum s.

`erank_definition` computes either as written, from the SVD of all tokens at once. Everything after it gives
the same number without holding all tokens: from a d x d float64 Gram matrix, whose eigenvalues are the squared
singular values, N tokens cost O(N d^2) time and O(d^2) memory, added chunk by chunk (`ERankAccumulator`).

Streaming and the mean: "rv" is exact in one pass, since for any shift c
sum (x-mu)(x-mu)^T = sum (x-c)(x-c)^T - n (mu-c)(mu-c)^T (c = the first chunk's mean, so little cancels).
"sq" divides each token by ||x - mu||, non-linear in the global mean mu, so no fixed-size summary of one pass
gives it exactly. We keep it exact and make the cost explicit: `ERankAccumulator(d, kind="sq", mean=mu)` needs
the mean up front, `erank_streaming` reads its chunks twice, and `measure_model` runs two forward passes (the
first also gives "rv", the means and the perplexity). Token indistinguishability, the mean pairwise cosine of
the tokens, streams in O(d) memory from the sum of the unit token vectors (`TokenCosineAccumulator`).

`measure_model(model, windows)` is red's one measurement of a model on held-out text (METHOD §4.2, §4.3): the
per-layer eRank of the block outputs (position 0 of every window left out: `FIRST_MEASURED`) and the
perplexity, from the same forward passes; validation, reports, the CLIs and the benchmarks all call it.

Builds on model.py (its taps); the CLI also on data.py, load_weights.py, tokenizer.py and cli.py.
Run as: python erank.py --model DIR [--model DIR2 ...] --data SOURCE [--seq-len 512] [--windows 8] [--json]
"""
import cli  # first, and standard library only: Ctrl-C during the imports below is one line

if __name__ == "__main__":
    cli.interrupt_while_starting()

import argparse
import json
import math

import torch
import torch.nn.functional as F

KINDS = ("sq", "rv")
STEP_ELEMENTS = 2**20  # float64 temporaries of 8 MiB: bounded whatever the chunk, and under glibc's mmap
#                       threshold, so they reuse heap pages (38 MiB ones were page-faulted in afresh: ~10x slower)
GRAM_BLOCKS = 4       # column blocks of the Gram update (see add_gram_)


# ---------------------------------------------------------------------------------------------------------
# The definition: all N tokens at once, by SVD

def erank_definition(h: torch.Tensor, kind: str = "sq") -> float:
    """eRank of the tokens h (N, d) as defined, float64: kind "sq" (Diff-eRank) or "rv" (Roy-Vetterli). It holds
    all tokens; erank(), ERankAccumulator and measure_model compute the same number without holding them."""
    x = torch.as_tensor(h, dtype=torch.float64)
    x = x - x.mean(0)  # (N, d) centred tokens
    if kind == "sq":  # every token at unit length (a token equal to the mean stays zero)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)  # (N, d)
    s = torch.linalg.svdvals(x)  # (min(N, d),) singular values
    if s.sum() == 0:
        return math.nan  # all tokens equal: no spread to measure
    # "sq": s_k^2 / N are the eigenvalues of the covariance Z^T Z / N; dividing by their sum (the trace) drops N
    p = s**2 / (s**2).sum() if kind == "sq" else s / s.sum()  # (min(N, d),) a probability vector
    p = p[p > 0]  # 0 log 0 = 0
    return math.exp(-(p * p.log()).sum().item())  # exp(entropy): 1 for one direction, d for d equal ones


# ---------------------------------------------------------------------------------------------------------
# The same number without holding all tokens: a d x d Gram matrix, one pure function per step, two row helpers

def row_steps(h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """h (N, d) split into views of at most STEP_ELEMENTS elements (at least one row each)."""
    return h.split(max(1, STEP_ELEMENTS // h.shape[1]))


def token_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean (d,) float64 of the tokens h (N, d), without a float64 copy of all of h."""
    total = sum(rows.to(torch.float64).sum(0) for rows in row_steps(h))  # (d,)
    return total / h.shape[0]


def center_tokens(h: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Tokens h (N, d) minus the token mean (d,)."""
    # Diff-eRank step (i): R <- R - mean over tokens; eRank should measure the spread, not the offset
    return h - mean  # (N, d)


def normalize_rows(h: torch.Tensor) -> torch.Tensor:
    """Rows of h (N, d) scaled to unit L2 norm; an all-zero row stays zero."""
    # Diff-eRank step (ii): z_i = r_i / ||r_i||, so every token weighs the same whatever its norm
    norms = h.norm(dim=1, keepdim=True)  # (N, 1)
    return h / norms.clamp_min(torch.finfo(h.dtype).tiny)  # (N, d)


def entropy_rank(p: torch.Tensor) -> float:
    """exp of the Shannon entropy of the probability vector p (Q,); zeros contribute nothing."""
    # exp(H(p)) = exp(-sum_k p_k log p_k): 1 for a one-hot p, Q for a uniform one
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def erank_rv(s: torch.Tensor) -> float:
    """Roy-Vetterli eRank from singular values s (Q,); nan when all are zero."""
    # Roy & Vetterli (EUSIPCO 2007): p_k = s_k / sum_j s_j, eRank = exp(-sum_k p_k log p_k), 1 <= eRank <= rank
    total = s.sum()
    return entropy_rank(s / total) if total > 0 else math.nan


def erank_sq(lam: torch.Tensor) -> float:
    """Diff-eRank from covariance eigenvalues lam (Q,) (= squared singular values); nan when all are zero."""
    # Diff-eRank (Wei et al. 2024) steps (iv)-(v): lambda / tr(Sigma), eRank = exp(-sum_k lambda_k log lambda_k)
    total = lam.sum()
    return entropy_rank(lam / total) if total > 0 else math.nan


def add_gram_(gram: torch.Tensor, x: torch.Tensor):
    """In place: gram (d, d) += x^T x for rows x (r, d), filling only the blocks on and above the diagonal."""
    # x^T x is symmetric, so with 4 column blocks only 10 of the 16 blocks are needed: 5/8 of the flops of
    # one full matmul (~1.5x faster here); `symmetric` mirrors the upper triangle back when the value is read
    d = x.shape[1]
    b = -(-d // GRAM_BLOCKS)
    for i in range(0, d, b):
        gram[i:i + b, i:].addmm_(x[:, i:i + b].T, x[:, i:])  # (b, d - i) += (b, r) @ (r, d - i)


def symmetric(gram: torch.Tensor) -> torch.Tensor:
    """The full symmetric (d, d) matrix from the upper triangle (diagonal included) of gram."""
    upper = gram.triu()
    return upper + upper.triu(1).T  # (d, d)


def gram_eigenvalues(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (d,) of a symmetric PSD float64 Gram matrix (d, d), with rounding noise set to exactly 0."""
    lam = torch.linalg.eigvalsh(gram)  # (d,) ascending
    # eigvalsh is accurate to about eps * lambda_max, so anything below d * eps * lambda_max is the noise of a
    # zero direction. Left in, a rank-1 input reads as eRank 1.0000x, and "rv" takes sqrt(), which amplifies it.
    tol = lam[-1].clamp_min(0) * gram.shape[0] * torch.finfo(gram.dtype).eps
    return torch.where(lam > tol, lam, torch.zeros_like(lam))


def mean_pairwise_cosine(zsum: torch.Tensor, n: int) -> float:
    """Mean cosine over the n (n - 1) ordered pairs i != j of n unit vectors whose sum is zsum (d,)."""
    # ||sum_i z_i||^2 = sum_i sum_j z_i . z_j = n + sum_{i != j} cos(z_i, z_j), since each z_i . z_i = 1
    return ((zsum @ zsum).item() - n) / (n * (n - 1)) if n > 1 else math.nan


# ---------------------------------------------------------------------------------------------------------
# Streaming accumulators: O(d^2) memory, whatever the number of tokens

class ERankAccumulator:
    """eRank of all rows given to update(h (n, d)), chunk by chunk; value() at any time. float64 inside.

    kind="rv": exact in one pass; `mean` is optional (it only sets the shift that keeps the subtraction accurate).
    kind="sq": needs the token mean of *all* the data up front (`mean=`, from a first pass; see module doc).
    """

    def __init__(self, d: int, *, kind: str = "sq", mean: torch.Tensor | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown eRank kind {kind!r} - use one of {KINDS}")
        if kind == "sq" and mean is None:
            raise ValueError("kind='sq' normalises centred tokens, so it needs the mean of all tokens up front - "
                             "pass mean= from a first pass, or use erank_streaming()")
        self.d, self.kind, self.n = d, kind, 0
        self.shift = None if mean is None else torch.as_tensor(mean, dtype=torch.float64).reshape(d)  # (d,)
        self.sum = None   # (d,) sum of the shifted rows ("rv" only: it locates the mean)
        self.gram = None  # (d, d) sum of x x^T over the shifted rows ("sq": over z); upper triangle only

    def update(self, h: torch.Tensor) -> "ERankAccumulator":
        """Add the tokens h (n, d) (any float dtype; the Gram lives on h's device)."""
        assert h.ndim == 2 and h.shape[1] == self.d, f"expected tokens (n, {self.d}), got {tuple(h.shape)}"
        if h.shape[0] == 0:
            return self
        if self.gram is None:  # allocated on first use, on the device the activations live on
            if self.shift is None:
                self.shift = token_mean(row_steps(h)[0])  # (d,) any shift is exact; a near-mean one is accurate
            self.shift = self.shift.to(h.device)
            self.sum = torch.zeros(self.d, dtype=torch.float64, device=h.device)  # (d,)
            self.gram = torch.zeros(self.d, self.d, dtype=torch.float64, device=h.device)
        for rows in row_steps(h):
            x = center_tokens(rows, self.shift)  # (r, d) float64: the float64 shift promotes it, in one pass
            if self.kind == "sq":
                x = normalize_rows(x)  # (r, d) the Diff-eRank z rows (the shift is the true mean here)
            else:
                self.sum += x.sum(0)  # (d,)
            add_gram_(self.gram, x)  # (d, d) += x^T x, upper blocks
        self.n += h.shape[0]
        return self

    def mean(self) -> torch.Tensor:
        """Token mean (d,) float64 of everything seen so far (for "sq": the mean it was given)."""
        return self.shift if self.kind == "sq" else self.shift + self.sum / self.n

    def value(self) -> float:
        """eRank of all tokens so far (nan before two distinct tokens)."""
        if self.n == 0:
            return math.nan
        if self.kind == "sq":
            # Diff-eRank step (iii): Sigma = Z^T Z / N; the 1/N cancels in the trace normalisation
            return erank_sq(gram_eigenvalues(symmetric(self.gram)))
        offset = self.sum / self.n  # (d,) mu - c
        centred = symmetric(self.gram) - self.n * torch.outer(offset, offset)  # (d, d) sum (x - mu)(x - mu)^T
        # eigenvalues of the centred Gram are the squared singular values of the centred matrix
        return erank_rv(gram_eigenvalues(centred).sqrt())


class TokenCosineAccumulator:
    """Mean pairwise cosine of all tokens given to update(h (n, d)); subtracts `mean` (d,) first if given."""

    def __init__(self, d: int, *, mean: torch.Tensor | None = None):
        self.d, self.n = d, 0
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64).reshape(d)  # (d,)
        self.zsum = None  # (d,) sum of the unit token vectors

    def update(self, h: torch.Tensor) -> "TokenCosineAccumulator":
        """Add the tokens h (n, d)."""
        assert h.ndim == 2 and h.shape[1] == self.d, f"expected tokens (n, {self.d}), got {tuple(h.shape)}"
        if self.zsum is None:  # on the activations' device, like ERankAccumulator's Gram
            self.zsum = torch.zeros(self.d, dtype=torch.float64, device=h.device)  # (d,)
        for rows in row_steps(h):
            x = rows.to(torch.float64)  # (r, d)
            if self.mean is not None:
                x = center_tokens(x, self.mean.to(h.device))
            norms = x.norm(dim=1)  # (r,)
            self.zsum += (x[norms > 0] / norms[norms > 0, None]).sum(0)
            self.n += int((norms > 0).sum())  # a token equal to the mean has no direction: left out of the pairs
        return self

    def value(self) -> float:
        """Mean cosine over pairs of distinct tokens (nan before two tokens)."""
        return mean_pairwise_cosine(self.zsum, self.n) if self.zsum is not None else math.nan


# ---------------------------------------------------------------------------------------------------------
# One-batch and two-pass entry points

def spectrum_summary(P: torch.Tensor) -> list[float]:
    """[largest, median, smallest singular value, Roy-Vetterli eRank of the singular values] of a matrix, e.g.
    a projection (D_t, W): a selection matrix reads [1, 1, 1, W]; training spreads a random one (METHOD §3.8)."""
    s = torch.linalg.svdvals(P.detach().float())  # (W,) descending
    return [s[0].item(), s.median().item(), s[-1].item(), erank_rv(s)]


def erank(h: torch.Tensor, *, kind: str = "sq") -> float:
    """eRank of the N tokens h (N, d): kind "sq" (Diff-eRank) or "rv" (Roy-Vetterli); float64 inside."""
    h = torch.as_tensor(h)
    assert h.ndim == 2, f"expected tokens (N, d), got {tuple(h.shape)}"
    mean = token_mean(h) if kind == "sq" else None  # "rv" needs no mean pass (see ERankAccumulator)
    return ERankAccumulator(h.shape[1], kind=kind, mean=mean).update(h).value()


def erank_streaming(chunks, *, kind: str = "sq") -> float:
    """eRank of all rows of the (n, d) chunks that `chunks()` yields; calls it twice for "sq" (mean, then Gram)."""
    mean = None
    if kind == "sq":  # pass 1: the exact mean, O(d) memory
        total, n = 0.0, 0
        for h in chunks():
            total, n = total + token_mean(h) * h.shape[0], n + h.shape[0]  # (d,)
        mean = total / n
    acc = None
    for h in chunks():  # pass 2 ("rv": the only pass)
        if acc is None:  # d is known from the first chunk
            acc = ERankAccumulator(h.shape[1], kind=kind, mean=mean)
        acc.update(h)
    return acc.value() if acc is not None else math.nan


def token_cosine(h: torch.Tensor, *, center: bool = True) -> float:
    """Mean pairwise cosine similarity of the tokens h (N, d), after centring unless center=False."""
    h = torch.as_tensor(h)
    return TokenCosineAccumulator(h.shape[1], mean=token_mean(h) if center else None).update(h).value()


# ---------------------------------------------------------------------------------------------------------
# The held-out measurement: per-layer eRank of the residual stream and perplexity, from the same forward passes
#
# This is the one way red measures a model on text (distill.py's validation and summary, init_select.py's
# report, eval_reasoning.py --ppl, the benchmarks): windows packed by data.py, each model in its own dtype
# with no autocast, so a step-0 and a final measurement, on CPU or GPU, are comparable.

def window_nll(logits: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(B,) summed next-token NLL of each window: logits (B, T, V) predict windows (B, T) shifted by one, fp32."""
    V = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), windows[:, 1:].reshape(-1), reduction="none")
    return nll.view(windows.shape[0], -1).sum(1)  # (B,): T - 1 predictions each; position 0 has no context


def resid_tap(update) -> "callable":
    """A tap (model.py) that hands update(layer, h (n, D)) every block output, position 0 of each window left
    out (FIRST_MEASURED), and ignores every other activation."""
    def tap(layer: int, name: str, h: torch.Tensor):
        if name == "resid":
            update(layer, h[:, FIRST_MEASURED:].reshape(-1, h.shape[-1]))  # (B (T - 1), D)
    return tap


# NOTE: position 0 of every window is the attention sink and carries massive activations (one SmolLM2 channel
# reaches ~20,000 there against a median of 170-330), enough to swing a covariance on its own; it is not a
# token the model must tell apart from the others, so eRank leaves it out (METHOD §4.2). Perplexity cannot
# score it anyway: nothing before it predicts it.
FIRST_MEASURED = 1


@torch.no_grad()  # not inference_mode: FSDP2 would keep its gather buffers as inference tensors (distill --fsdp)
def measure_model(model, windows: torch.Tensor, *, layers: bool = True, batch_size: int = 8,
                  per_seq: bool = False) -> dict:
    """Measure `model` on windows (N, T) long: perplexity, and (layers=True) per-layer eRank and token cosine.

    Returns loss (mean NLL per predicted token), ppl, predicted (N (T - 1)), window_nll (N,) float64 and, with
    layers, `layers` = [{layer, erank_sq, erank_rv, token_cos, token_cos_raw}] over the block outputs with the
    means erank_sq / erank_rv. All tokens of all windows are pooled (exact: pass 1 gives perplexity, "rv" and
    the means, pass 2 the centred "sq" and cosine); per_seq=True instead averages each window's own values.
    """
    N, T = windows.shape
    assert N >= 1 and T >= 2, f"expected windows (N >= 1, T >= 2), got {tuple(windows.shape)}"
    device, L, D = model.embed_tokens.weight.device, model.args.n_layers, model.args.dim
    batch_size = max(1, min(batch_size, 2**28 // (T * model.args.vocab_size)))  # fp32 logits near 1 GB at most
    batches = [windows[i:i + batch_size].to(device) for i in range(0, N, batch_size)]
    tap = None
    if layers and per_seq:  # Diff-eRank's protocol: every window on its own, then the mean over windows
        totals = torch.zeros(L, 4, dtype=torch.float64)

        def update(layer, h):
            for seq in h.view(-1, T - FIRST_MEASURED, D):  # (T - 1, D)
                totals[layer] += torch.tensor([erank(seq, kind="sq"), erank(seq, kind="rv"), token_cosine(seq),
                                               token_cosine(seq, center=False)], dtype=torch.float64)
        tap = resid_tap(update)
    elif layers:  # pooled: pass 1 here, pass 2 below
        rv, raw_cos = [ERankAccumulator(D, kind="rv") for _ in range(L)], [TokenCosineAccumulator(D) for _ in range(L)]
        tap = resid_tap(lambda layer, h: (rv[layer].update(h), raw_cos[layer].update(h)))
    nll = torch.cat([window_nll(model(x, tap=tap), x).double().cpu() for x in batches])  # (N,)
    out = {"loss": nll.sum().item() / (N * (T - 1)), "predicted": N * (T - 1), "window_nll": nll}
    out["ppl"] = math.exp(min(out["loss"], 50.0))  # capped: a random student's loss can overflow exp
    if not layers:
        return out
    if per_seq:
        values = (totals / N).tolist()
    else:
        # NOTE: pass 2 must see pass 1's activations; it does on CPU (deterministic), on GPU up to rounding
        sq = [ERankAccumulator(D, kind="sq", mean=acc.mean()) for acc in rv]
        cos = [TokenCosineAccumulator(D, mean=acc.mean()) for acc in rv]
        tap = resid_tap(lambda layer, h: (sq[layer].update(h), cos[layer].update(h)))
        for x in batches:
            model(x, tap=tap, last_only=True)  # the LM head on one position: its logits are not needed here
        values = [(sq[i].value(), rv[i].value(), cos[i].value(), raw_cos[i].value()) for i in range(L)]
    names = ("erank_sq", "erank_rv", "token_cos", "token_cos_raw")
    out["layers"] = [dict(layer=layer, **dict(zip(names, v))) for layer, v in enumerate(values)]
    out["erank_sq"] = sum(r["erank_sq"] for r in out["layers"]) / L
    out["erank_rv"] = sum(r["erank_rv"] for r in out["layers"]) / L
    out["tokens_measured"] = N * (T - FIRST_MEASURED)
    return out


# ---------------------------------------------------------------------------------------------------------

def print_table(results: list[dict], kinds: list[str], header: str):
    """One row per layer, one column per model and measure, then the mean and the mean / d."""
    print(header)
    measures = [f"erank_{kind}" for kind in kinds] + ["token_cos", "token_cos_raw"]
    cols = [(m, k) for m in range(len(results)) for k in measures]
    short = {"erank_sq": "sq", "erank_rv": "rv", "token_cos": "cos", "token_cos_raw": "rawcos"}

    def cell(value, k):  # eRanks with one decimal, cosines with four
        return f"{'':>10}" if value is None else f"{value:>10.1f}" if k.startswith("erank") else f"{value:>10.4f}"
    for m, r in enumerate(results):
        print(f"  model {chr(65 + m)} = {r['model']} (d={r['dim']}, {r['n_layers']} layers, {r['windows']} windows, "
              f"{r['tokens_measured']} tokens measured; perplexity {r['ppl']:.3f})")
    print(f"{'layer':>6}" + "".join(f"{chr(65 + m) + ' ' + short[k]:>10}" for m, k in cols))
    for layer in range(max(r["n_layers"] for r in results)):
        row = [results[m]["layers"][layer][k] if layer < results[m]["n_layers"] else None for m, k in cols]
        print(f"{layer:>6}" + "".join(cell(value, k) for value, (m, k) in zip(row, cols)))
    print(f"{'mean':>6}" + "".join(cell(results[m]["mean"][k], k) for m, k in cols))
    print(f"{'mean/d':>6}" + "".join(f"{results[m]['mean'][k] / results[m]['dim']:>10.4f}" if k.startswith("erank")
                                     else cell(None, k) for m, k in cols).rstrip())


def main(argv=None):
    from data import load_windows
    from sources import DataError, check_source, column_name, parse_spec
    from load_weights import LoadError, load_model, read_config
    from tokenizer import TokenizerError, load_tokenizer
    parser = argparse.ArgumentParser(prog="erank.py", description="Per-layer effective rank of the residual stream "
                                     "of checkpoints, and their perplexity, on the same held-out windows.")
    parser.add_argument("--model", action="append", required=True, help="HF checkpoint directory (repeat to compare)")
    parser.add_argument("--data", required=True, help="a data.py source: .txt, .jsonl, .parquet, .bin, .npy, pydoc, "
                                                      "problems:N")
    parser.add_argument("--text-column", type=column_name, default="text", help="the text's column in .jsonl or "
                                                                                ".parquet rows (default: text)")
    parser.add_argument("--seq-len", type=cli.int_at_least(2), default=512, help="window length in tokens")
    parser.add_argument("--windows", type=cli.int_at_least(1), default=8, help="at most this many windows")
    parser.add_argument("--kind", choices=["sq", "rv", "both"], default="both",
                        help="sq: Diff-eRank (centred, row-normalised, covariance eigenvalues); rv: Roy-Vetterli")
    parser.add_argument("--per-seq", action="store_true",
                        help="eRank of each window, averaged over windows, instead of pooling all tokens")
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=8)
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0, help="seed of problems:N")
    parser.add_argument("--device", type=cli.device, default=cli.default_device())
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = cli.parse_args(parser, argv)
    torch.manual_seed(0)  # nothing here is random; seeded all the same, by house rule
    kinds = list(KINDS) if args.kind == "both" else [args.kind]
    results = []
    with cli.user_errors(DataError, LoadError, TokenizerError):
        check_source(parse_spec(args.data)[0], args.text_column)  # a missing file fails before any model loads
        for path in args.model:  # every model checked before the first is measured
            read_config(path)
            load_tokenizer(path)
        for path in args.model:
            model, tok = load_model(path, device=args.device), load_tokenizer(path)
            if args.seq_len > model.args.max_seq_len:
                cli.fail(f"--seq-len {args.seq_len} exceeds {path}'s {model.args.max_seq_len} positions - lower it")
            windows = load_windows(args.data, tok, args.seq_len, seed=args.seed, limit=args.windows,
                                   text_column=args.text_column)
            m = measure_model(model, windows, per_seq=args.per_seq, batch_size=args.batch_size)
            keep = {"layer", "token_cos", "token_cos_raw"} | {f"erank_{kind}" for kind in kinds}
            layers = [{k: v for k, v in row.items() if k in keep} for row in m["layers"]]  # only the kinds asked for
            mean = {k: sum(row[k] for row in layers) / len(layers) for k in layers[0] if k != "layer"}
            results.append(dict(model=path, dim=model.args.dim, n_layers=model.args.n_layers, windows=len(windows),
                                tokens_measured=m["tokens_measured"], ppl=m["ppl"], loss=m["loss"], layers=layers,
                                mean=mean))
            del model  # one model in memory at a time
    if args.json:
        print(json.dumps(dict(kinds=kinds, per_seq=args.per_seq, seq_len=args.seq_len, data=args.data,
                              first_measured=FIRST_MEASURED, models=results), indent=1))
        return
    pooling = "mean over windows (--per-seq)" if args.per_seq else "all tokens pooled"
    header = (f"eRank of the residual stream after each block; position 0 of each window excluded; {pooling}; "
              f"windows of {args.seq_len} tokens of {args.data}\n"
              "  sq = Diff-eRank (centred, row-normalised tokens, covariance eigenvalues); rv = Roy-Vetterli\n"
              "  (singular values of the centred tokens); cos / rawcos = mean pairwise cosine of the tokens after /\n"
              "  without centring (centring removes the shared direction: rawcos shows tokens crowding together)")
    print_table(results, kinds, header)


if __name__ == "__main__":
    main()

"""erank.py against an independent float64 numpy SVD, exact cases (isotropic -> d, a line -> 1), invariances,
streaming == one batch, the init-spectrum numbers of METHOD §3.8, token cosine against brute force, the
held-out measurement (eRank through taps, perplexity against transformers' loss), and the CLI.

Builds on erank.py, with numpy's float64 linear algebra as the reference.
Run as: pytest tests/test_erank.py            (add -m "not slow" to skip the real-teacher CLI run)
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from erank import (ERankAccumulator, TokenCosineAccumulator, erank, erank_definition, erank_rv, erank_sq,
                   erank_streaming, measure_model, token_cosine)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------------
# References written here, from the definitions in METHOD §4.1, with numpy's SVD instead of a Gram matrix

def reference_erank(h, kind: str) -> float:
    """Diff-eRank ("sq") or Roy-Vetterli ("rv") of tokens h (N, d), by SVD in float64."""
    x = np.asarray(h, dtype=np.float64)
    x = x - x.mean(axis=0)
    if kind == "sq":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    p = s**2 / (s**2).sum() if kind == "sq" else s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def reference_cosine(h, center: bool) -> float:
    """Mean cosine over all pairs i != j, from the full N x N cosine matrix."""
    x = np.asarray(h, dtype=np.float64)
    if center:
        x = x - x.mean(axis=0)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T  # (N, N)
    n = len(x)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


def hidden_like(n: int, d: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Tokens that look like a residual stream: an offset, a decaying spectrum and a few huge entries."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, d)  # (d,) spread the spectrum over two decades
    h = torch.randn(n, d, generator=g) * scales + 3.0 * torch.randn(d, generator=g)  # (n, d)
    h[:3, 0] = 500.0  # massive activations on a few tokens in one channel
    return h.to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Definitions and exact cases

@pytest.mark.parametrize("kind", ["sq", "rv"])
@pytest.mark.parametrize("n,d,dtype", [(500, 64, torch.float32), (50, 80, torch.float64), (3000, 16, torch.float32),
                                     (40, 3, torch.float32)])
def test_matches_numpy_svd_reference(kind, n, d, dtype):
    h = hidden_like(n, d, dtype=dtype)
    assert erank(h, kind=kind) == pytest.approx(reference_erank(h, kind), rel=1e-6)


@pytest.mark.parametrize("kind", ["sq", "rv"])
def test_isotropic_tokens_give_d(kind):
    # +e_i and -e_i for every i: mean 0, unit rows, covariance I/d, all singular values sqrt(2)
    d = 37
    h = torch.cat([torch.eye(d), -torch.eye(d)])  # (2d, d)
    assert erank(h, kind=kind) == pytest.approx(d, abs=1e-9)


@pytest.mark.parametrize("kind", ["sq", "rv"])
def test_points_on_a_line_give_one(kind):
    # a + t b, off the origin: rank 2 before centring, rank 1 after it, so both kinds must say 1
    g = torch.Generator().manual_seed(1)
    a, b, t = torch.randn(24, generator=g), torch.randn(24, generator=g), torch.randn(300, 1, generator=g)
    assert erank(a + t * b, kind=kind) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["sq", "rv"])
def test_invariant_to_rotation_scale_and_shift(kind):
    h = hidden_like(400, 48, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(48, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    base = erank(h, kind=kind)
    assert erank(h @ q, kind=kind) == pytest.approx(base, rel=1e-9)
    assert erank(7.5 * h, kind=kind) == pytest.approx(base, rel=1e-9)
    assert erank(h + 100.0, kind=kind) == pytest.approx(base, rel=1e-9)


def test_degenerate_inputs_are_nan():
    assert np.isnan(erank(torch.ones(5, 8), kind="rv"))  # all tokens equal: nothing left after centring
    assert np.isnan(erank(torch.ones(1, 8), kind="sq"))
    assert np.isnan(token_cosine(torch.randn(1, 8)))


# ---------------------------------------------------------------------------------------------------------
# Streaming

def chunks_of(h: torch.Tensor, sizes=(1, 17, 250, 3, 1000)):
    """h cut into chunks of uneven sizes (repeating `sizes`), the last one whatever remains."""
    out, i, k = [], 0, 0
    while i < len(h):
        out.append(h[i:i + sizes[k % len(sizes)]])
        i, k = i + sizes[k % len(sizes)], k + 1
    return out


@pytest.mark.parametrize("kind", ["sq", "rv"])
def test_streaming_equals_one_batch(kind):
    h = hidden_like(5000, 96)
    batch = erank(h, kind=kind)
    # the two-pass helper (for "sq" it reads the chunks twice: the mean, then the normalised Gram)
    assert erank_streaming(lambda: chunks_of(h), kind=kind) == pytest.approx(batch, rel=1e-9)
    # the accumulator by hand: "rv" needs no mean, "sq" gets it from a first pass
    mean = ERankAccumulator(96, kind="rv").update(h[:10]).update(h[10:]).mean() if kind == "sq" else None
    acc = ERankAccumulator(96, kind=kind, mean=mean)
    for c in chunks_of(h):
        acc.update(c)
    assert acc.n == len(h)
    assert acc.value() == pytest.approx(batch, rel=1e-9)


@pytest.mark.parametrize("kind", ["sq", "rv"])
def test_streaming_erank_equals_the_svd_definition(kind):
    """erank.py's opening definition (an SVD of all tokens) is the number its Gram-matrix streaming computes."""
    g = torch.Generator().manual_seed(3)
    d = 64
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))  # (d, d) a random rotation
    scales = torch.logspace(0, -3, d, dtype=torch.float64)  # (d,) an uneven spectrum: three decades
    h = (torch.randn(3000, d, generator=g, dtype=torch.float64) * scales) @ q + 5.0  # (N, d), off the origin
    definition = erank_definition(h, kind)
    assert definition == pytest.approx(reference_erank(h, kind), rel=1e-12)  # as written in numpy above
    assert 1 < definition < d
    assert erank(h, kind=kind) == pytest.approx(definition, rel=1e-9)
    assert erank_streaming(lambda: chunks_of(h), kind=kind) == pytest.approx(definition, rel=1e-9)
    acc = ERankAccumulator(d, kind=kind, mean=h.mean(0) if kind == "sq" else None)
    for c in chunks_of(h):
        acc.update(c)
    assert acc.value() == pytest.approx(definition, rel=1e-9)

def test_sq_accumulator_refuses_to_guess_the_mean():
    with pytest.raises(ValueError, match="mean"):
        ERankAccumulator(8, kind="sq")
    with pytest.raises(ValueError, match="kind"):
        ERankAccumulator(8, kind="squared")


# ---------------------------------------------------------------------------------------------------------
# METHOD §3.8: the spectrum of LRC's Gaussian init against RED's selection init

def test_gaussian_projection_spectrum():
    # P (3072, 1536) ~ N(0, 0.02^2), LRC's init for Llama-3.2-3B -> 1536. METHOD §3.8's 0.93 / 0.78 are
    # eRank_RV and eRank_sq of P's own singular values, i.e. the spectrum functions on svdvals(P) (0.926 and
    # 0.779 with this seed). erank(P) treats P's 3072 rows as tokens, centres them and (for "sq") normalises
    # them: the column means are ~0.02/sqrt(3072) (a rank-1 change) and the row norms agree to ~2%, so it
    # gives the same to three decimals (0.926 / 0.779). Both readings are pinned.
    width = 1536
    g = torch.Generator().manual_seed(0)
    P = torch.randn(3072, width, generator=g, dtype=torch.float64) * 0.02  # (dT, W)
    s = torch.linalg.svdvals(P)  # (W,)
    assert 0.92 <= erank_rv(s) / width <= 0.94
    assert 0.77 <= erank_sq(s**2) / width <= 0.79
    assert 0.92 <= erank(P, kind="rv") / width <= 0.94
    assert 0.77 <= erank(P, kind="sq") / width <= 0.79


def test_selection_matrix_spectrum_is_exactly_width():
    # RED's init: one 1 per column, P^T P = I, so all W singular values are 1 and both eRanks are W
    width = 1536
    rows = torch.randperm(3072, generator=torch.Generator().manual_seed(0))[:width]
    P = torch.zeros(3072, width, dtype=torch.float64)
    P[rows, torch.arange(width)] = 1.0
    s = torch.linalg.svdvals(P)
    assert erank_rv(s) == pytest.approx(width, abs=1e-9)
    assert erank_sq(s**2) == pytest.approx(width, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Token cosine

@pytest.mark.parametrize("center", [True, False])
def test_token_cosine_matches_brute_force(center):
    h = hidden_like(700, 40)
    ref = reference_cosine(h, center)
    assert token_cosine(h, center=center) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    mean = h.double().mean(0) if center else None
    acc = TokenCosineAccumulator(40, mean=mean)
    for c in chunks_of(h):
        acc.update(c)
    assert acc.value() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_token_cosine_extremes():
    v = torch.randn(16)
    assert token_cosine(v.repeat(10, 1), center=False) == pytest.approx(1.0)  # indistinguishable tokens
    assert token_cosine(torch.cat([torch.eye(8), -torch.eye(8)]), center=False) == pytest.approx(-1 / 15)


# ---------------------------------------------------------------------------------------------------------
# The held-out measurement: eRank through the model's taps against collecting everything and computing
# directly; perplexity against transformers' own loss

def test_measure_model_matches_direct_computation(tiny_model):
    from conftest import recorder
    from load_weights import load_model
    model = load_model(tiny_model("llama"))
    windows = torch.randint(0, model.args.vocab_size, (5, 40), generator=torch.Generator().manual_seed(0))
    taps, tap = recorder()  # holds every layer's output: the way streaming avoids
    with torch.no_grad():
        model(windows, tap=tap)
    m = measure_model(model, windows, batch_size=2)
    assert [r["layer"] for r in m["layers"]] == list(range(model.args.n_layers))
    for layer, row in enumerate(m["layers"]):
        h = taps[f"{layer}.resid"][:, 1:].reshape(-1, model.args.dim)  # position 0 of every window left out
        assert row["erank_sq"] == pytest.approx(reference_erank(h, "sq"), rel=1e-6)
        assert row["erank_rv"] == pytest.approx(reference_erank(h, "rv"), rel=1e-6)
        assert row["token_cos"] == pytest.approx(reference_cosine(h, True), rel=1e-6, abs=1e-9)
        assert row["token_cos_raw"] == pytest.approx(reference_cosine(h, False), rel=1e-6, abs=1e-9)
    assert m["erank_sq"] == pytest.approx(np.mean([r["erank_sq"] for r in m["layers"]]))
    assert m["tokens_measured"] == 5 * 39 and m["predicted"] == 5 * 39
    per_seq = measure_model(model, windows, per_seq=True)
    for layer, row in enumerate(per_seq["layers"]):
        expected = [reference_erank(w[1:], "sq") for w in taps[f"{layer}.resid"]]
        assert row["erank_sq"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert per_seq["ppl"] == m["ppl"] == measure_model(model, windows, layers=False)["ppl"]


def hf_perplexity(hf, windows):
    """exp of transformers' mean token loss over the same windows (one call each: its loss is a mean over the
    T - 1 shifted labels, times T - 1 gives the window's sum back)."""
    nll = 0.0
    for w in windows:
        with torch.no_grad():
            nll += hf(input_ids=w[None], labels=w[None]).loss.item() * (len(w) - 1)
    return math.exp(nll / (windows.numel() - len(windows)))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_perplexity_matches_transformers_tiny(tiny_model, family):
    import transformers
    from load_weights import load_model
    path = tiny_model(family)
    # random ids are fine: the claim is arithmetic (same windows, same loss), not that the text is natural
    windows = torch.randint(0, 256, (5, 48), generator=torch.Generator().manual_seed(0))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    m = measure_model(load_model(path), windows, batch_size=2)  # 2 + 2 + 1 windows per forward
    assert m["ppl"] == pytest.approx(hf_perplexity(hf, windows), rel=1e-4)


@pytest.mark.slow
def test_perplexity_matches_transformers_teacher(example_teacher):
    import transformers
    from data import load_windows
    from load_weights import load_model
    from tokenizer import load_tokenizer
    hf = transformers.AutoModelForCausalLM.from_pretrained(example_teacher, dtype=torch.float32).eval()
    windows = load_windows("problems:12", load_tokenizer(example_teacher), 100)
    m = measure_model(load_model(example_teacher), windows, layers=False, batch_size=4)
    assert m["ppl"] == pytest.approx(hf_perplexity(hf, windows), rel=1e-4)


# ---------------------------------------------------------------------------------------------------------
# CLI

def run_cli(*args):
    """python erank.py ARGS from the repo root -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, "erank.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " - " in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0]


def test_cli_missing_model_dir(tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("Some text to measure.\n")
    assert_one_line_error(run_cli("--model", str(tmp_path / "no-such-model"), "--data", str(data)), "no-such-model")


def test_cli_missing_data_file(tmp_path, tiny_model):
    assert_one_line_error(run_cli("--model", tiny_model("llama"), "--data", str(tmp_path / "missing.txt")),
                          "missing.txt")


@pytest.mark.parametrize("name,content", [("empty.txt", ""), ("blank.txt", "\n \n\t\n"), ("empty.jsonl", "\n"),
                                          ("bad.jsonl", '{"text": "fine"}\n{"prompt": "no text field"}\n')])
def test_cli_empty_or_malformed_data(tmp_path, tiny_teacher, name, content):
    data = tmp_path / name
    data.write_text(content)
    assert_one_line_error(run_cli("--model", tiny_teacher("llama"), "--data", str(data), "--seq-len", "64"), name)


TEXT = """The river town woke slowly. Fishermen pulled their boats onto the gravel, and the baker opened his
shutters before the church bell rang six. Children ran along the embankment, counting the gulls over the market.

In mathematics, a prime number is a natural number greater than one with no divisors other than one and itself.
Euclid proved that there are infinitely many primes: multiply any finite list of them and add one.

Question: A farmer has 12 cows and buys 7 more. Each cow gives 9 litres of milk a day. How much milk a week?
Answer: The farmer has 12 + 7 = 19 cows, giving 19 * 9 = 171 litres a day, so 171 * 7 = 1197 litres a week.

Photosynthesis turns light into chemical energy. Chlorophyll absorbs mostly blue and red light, which is why
leaves look green. The sugars it makes feed the plant and, through food chains, almost every animal on land.
"""


@pytest.mark.slow
def test_cli_on_example_teacher(tmp_path, example_teacher):
    data = tmp_path / "paragraphs.txt"
    data.write_text(TEXT * 3)
    proc = run_cli("--model", example_teacher, "--data", str(data), "--windows", "3", "--seq-len", "128", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["first_measured"] == 1 and report["kinds"] == ["sq", "rv"]
    (m,) = report["models"]
    assert m["dim"] == 576 and len(m["layers"]) == m["n_layers"] == 30
    assert m["windows"] == 3 and m["tokens_measured"] == 3 * 127 and 1 < m["ppl"] < 1000
    for row in m["layers"]:
        for kind in ("sq", "rv"):
            assert 1.0 < row[f"erank_{kind}"] <= m["dim"]
        assert -1.0 <= row["token_cos"] <= 1.0 and -1.0 <= row["token_cos_raw"] <= 1.0

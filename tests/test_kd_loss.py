"""kd_loss.py: each term of the KD loss against an independent formula (torch.distributions' KL, a hand-written
cross-entropy, the clone terms rebuilt from every recorded activation), and the clone-term selection.

Builds on kd_loss.py, student.py and init_select.py, with conftest.py's tiny models.
Run as: pytest tests/test_kd_loss.py -q
"""
import pytest
import torch

from conftest import recorder
from init_select import init_projections
from kd_loss import (CLONE_TERMS, CloneLoss, TeacherTargets, ce_loss, chunked_ce_kl, clone_mse, kl_loss,
                     orthogonality_penalty)
from load_weights import load_model
from student import Student


@pytest.mark.parametrize("reduction", ["seq_sum", "token_mean"])
@pytest.mark.parametrize("T", [1.0, 2.5, 40.0])
def test_kl_matches_torch_distributions(reduction, T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3
    kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=t / T),
                                           torch.distributions.Categorical(logits=s / T))  # (3, 5): KL(t || s)
    expected = kl.sum() / 3 if reduction == "seq_sum" else kl.mean()
    assert torch.allclose(kl_loss(s, t, T, reduction), expected, rtol=1e-5)


def test_ce_is_next_token_cross_entropy():
    logits, tokens = torch.randn(2, 6, 7), torch.randint(0, 7, (2, 6))
    log_p = logits.log_softmax(-1)
    expected = -torch.stack([log_p[b, i, tokens[b, i + 1]] for b in range(2) for i in range(5)]).mean()
    assert torch.allclose(ce_loss(logits, tokens), expected, atol=1e-6)


def clone_run(tiny_model, terms=CLONE_TERMS, kind="mse"):
    """(teacher, student, projections, clone loss, every teacher activation, every student activation)."""
    teacher = load_model(tiny_model("qwen2"))
    proj, norms, _ = init_projections("gaussian", teacher, 32, seed=1)
    student = Student(teacher, 32, proj, norms)
    tokens = torch.randint(0, 256, (2, 9))
    t_all, t_tap = recorder()
    s_all, s_tap = recorder()
    with torch.no_grad():
        targets = TeacherTargets(terms)
        teacher(tokens, tap=targets.tap)
        teacher(tokens, tap=t_tap)
        clone = CloneLoss(targets, teacher, student, terms, kind)
        student(tokens, tap=clone.tap)
        student(tokens, tap=s_tap)
    return teacher, student, proj, clone, t_all, s_all


@pytest.mark.parametrize("kind", ["mse", "skip-first", "relative"])
def test_clone_terms_against_hand_built_activations(tiny_model, kind):
    teacher, _, proj, clone, t_all, s_all = clone_run(tiny_model, kind=kind)
    mse = {"mse": lambda a, b: ((a - b) ** 2).mean(),
           "skip-first": lambda a, b: ((a[:, 1:] - b[:, 1:]) ** 2).mean(),  # positions 1.. of each sequence
           "relative": lambda a, b: ((a - b) ** 2).mean() / (b ** 2).mean()}[kind]
    for name in ("q", "k", "v", "gate", "up"):
        expected = sum(mse(s_all[f"{i}.{name}"], t_all[f"{i}.{name}"]) for i in range(2))
        assert torch.allclose(clone.loss[name], expected, rtol=1e-5), name
    # attn_out in teacher space: student heads through the teacher's o_proj, against the teacher's attn_out
    expected = sum(mse(s_all[f"{i}.attn_heads"] @ teacher.layers[i].self_attn.o_proj.weight.T, t_all[f"{i}.attn_out"])
                   for i in range(2))
    assert torch.allclose(clone.loss["attn_out"], expected, rtol=1e-5)
    # mlp_out in student space: the teacher's MLP output through the student's own down projection
    expected = sum(mse(s_all[f"{i}.mlp_out"], t_all[f"{i}.mlp_out"] @ proj[f"layers.{i}.down"]) for i in range(2))
    assert torch.allclose(clone.loss["mlp_out"], expected, rtol=1e-5)
    assert torch.allclose(clone.total(), sum(clone.loss.values()))


def test_skip_first_leaves_position_0_out_and_relative_is_scale_free():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    sink_s, sink_t = s.clone(), t.clone()
    sink_s[:, 0], sink_t[:, 0] = 1e4, -3e4  # a massive activation at position 0 only
    assert clone_mse(sink_s, sink_t, "skip-first") == clone_mse(s, t, "skip-first")
    assert clone_mse(sink_s, sink_t) > 1e7 * clone_mse(s, t)  # ... which dominates LRC's term
    assert torch.allclose(clone_mse(100 * s, 100 * t, "relative"), clone_mse(s, t, "relative"))
    t.requires_grad_(True)  # the normaliser is a constant: the gradient is that of the MSE, scaled
    clone_mse(s, t, "relative").backward()
    expected = 2 * (t - s).detach() / t.numel() / t.detach().pow(2).mean()
    assert torch.allclose(t.grad, expected, rtol=1e-5)


def test_only_the_chosen_terms_are_recorded_and_summed(tiny_model):
    _, _, _, clone, _, _ = clone_run(tiny_model, terms=["k", "mlp_out"])
    assert set(clone.loss) == {"k", "mlp_out"} and {name for _, name in clone.targets} == {"k", "mlp_out"}
    full = clone_run(tiny_model)[3]
    assert torch.allclose(clone.total(), full.loss["k"] + full.loss["mlp_out"])


def test_orthogonality_penalty_gradient_equals_autograds():
    P = torch.randn(40, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.2
    value, grad = orthogonality_penalty(P)
    Q = P.clone().requires_grad_(True)
    expected = (Q.T @ Q - torch.eye(12, dtype=torch.float64)).pow(2).sum()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad.double(), Q.grad, rtol=1e-5, atol=1e-6)
    S = torch.zeros(40, 12)
    S[torch.arange(12) * 3, torch.arange(12)] = 1.0  # a selection matrix is exactly orthogonal: no penalty
    value, grad = orthogonality_penalty(S)
    assert value.item() == 0.0 and grad.abs().max().item() == 0.0


@pytest.mark.parametrize("reduction", ["seq_sum", "token_mean"])
@pytest.mark.parametrize("temperature", [1.0, 40.0])
def test_chunked_ce_kl_equals_the_full_logits(reduction, temperature):
    g = torch.Generator().manual_seed(5)
    B, T, V, W, D = 2, 13, 50, 8, 12
    h_s = torch.randn(B, T, W, generator=g, dtype=torch.float64)
    head_s = torch.randn(V, W, generator=g, dtype=torch.float64)
    h_t, head_t = 2 * torch.randn(B, T, D, generator=g), torch.randn(V, D, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    full = {}
    for name, chunk in (("full", None), ("chunked", 7)):  # 7 does not divide the 26 tokens
        hs, Ws = h_s.clone().requires_grad_(True), head_s.clone().requires_grad_(True)
        if chunk is None:
            s_logits = hs @ Ws.T
            ce, kl = ce_loss(s_logits, tokens), kl_loss(s_logits, (h_t @ head_t.T).double(), temperature, reduction)
            loss = ce + kl
        else:
            loss, ce, kl = chunked_ce_kl(hs, Ws, h_t, head_t, tokens, temperature, reduction, chunk)
            assert not ce.requires_grad and not kl.requires_grad
        (3 * loss).backward()  # a non-unit upstream gradient reaches both inputs
        full[name] = (loss.item(), ce.item(), kl.item(), hs.grad, Ws.grad)
    for a, b in zip(full["chunked"][:3], full["full"][:3]):
        assert a == pytest.approx(b, rel=1e-6)
    for a, b in zip(full["chunked"][3:], full["full"][3:]):
        assert a.dtype == torch.float64 and (a - b).abs().max() <= 1e-6 * b.abs().max()
    assert full["full"][3].abs().max() > 1e-3  # gradients are not trivially zero


def test_chunked_ce_kl_under_bf16_autocast_agrees_with_the_full_logits():
    """On a GPU distill.py runs in bf16 autocast: the chunks' matmuls run in bf16 as the full logits' do, and
    loss and gradients agree to bf16's precision (the softmaxes stay fp32 in both)."""
    g = torch.Generator().manual_seed(6)
    B, T, V, W, D = 2, 16, 300, 32, 48
    h_s, head_s = torch.randn(B, T, W, generator=g), torch.randn(V, W, generator=g) / 4
    h_t, head_t = torch.randn(B, T, D, generator=g), torch.randn(V, D, generator=g) / 4
    tokens = torch.randint(0, V, (B, T), generator=g)
    results = []
    for chunk in (None, 10):
        hs, Ws = h_s.clone().requires_grad_(True), head_s.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunk is None:
                s_logits = hs @ Ws.T
                loss = ce_loss(s_logits, tokens) + kl_loss(s_logits, h_t @ head_t.T, 1.0, "seq_sum")
            else:
                loss = chunked_ce_kl(hs, Ws, h_t, head_t, tokens, 1.0, "seq_sum", chunk)[0]
        loss.backward()
        results.append((loss.item(), hs.grad, Ws.grad))
    (full, *full_grads), (chunked, *chunked_grads) = results
    assert chunked == pytest.approx(full, rel=1e-3)  # measured: equal; gradients 3e-3 and 2e-3 apart
    for a, b in zip(chunked_grads, full_grads):
        assert a.dtype == torch.float32 and (a - b).abs().max() <= 1e-2 * b.abs().max()

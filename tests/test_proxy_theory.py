"""experiments/proxy_theory.py: the linear autoencoder's gradient is the true gradient of its loss, gradient descent
with a small step keeps Q^T Q - O O^T (the conserved quantity of gradient flow) nearly fixed, and the check
fails, as it must, when the update is made unbalanced on purpose; the selection init starts with every singular
value of Q O equal to 1.

Builds on experiments/proxy_theory.py (and init_select.py's selection matrix).
Run as: pytest tests/test_proxy_theory.py -q
"""
import importlib
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def proxy(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))
    return importlib.import_module("proxy_theory")


def data(n=300, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g, dtype=torch.float64) * torch.logspace(0, -1, D, dtype=torch.float64)
    return X / X.pow(2).mean().sqrt()


def test_loss_and_gradients_are_the_autoencoders(proxy):
    X = data()
    Q, O = proxy.initial("orthogonal", 16, 6, None, seed=1)
    Qg, Og = Q.clone().requires_grad_(True), O.clone().requires_grad_(True)
    loss = (X - X @ Qg @ Og).pow(2).sum() / (2 * len(X))
    loss.backward()
    recs = proxy.train(X, Q, O, lr=0.05, steps=1, log_every=1)
    assert recs[0]["loss"] == pytest.approx(loss.item(), rel=1e-10)
    G = X.T @ X / len(X)
    M = torch.eye(16, dtype=torch.float64) - Q @ O
    torch.testing.assert_close(-G @ M @ O.T, Qg.grad)  # the closed-form gradients train() uses
    torch.testing.assert_close(-Q.T @ G @ M, Og.grad)


def test_conservation_holds_only_for_balanced_updates(proxy):
    X = data()
    G = X.T @ X / len(X)
    lr = 0.01 / torch.linalg.eigvalsh(G)[-1].item()
    for kind in ("gaussian", "orthogonal"):
        Q, O = proxy.initial(kind, 16, 6, None, seed=2)
        drift = lambda records: max(r["drift"] for r in records)
        balanced = proxy.train(X, Q, O, lr=lr, steps=400, log_every=50)
        finer = proxy.train(X, Q, O, lr=lr / 2, steps=800, log_every=100)  # the same time in steps half as long
        unbalanced = proxy.train(X, Q, O, lr=lr, steps=400, log_every=50, balanced=False)
        assert balanced[-1]["loss"] < balanced[0]["loss"]  # it does learn
        assert drift(balanced) < 5e-3 and drift(unbalanced) > 10 * drift(balanced), kind
        assert drift(finer) < 0.6 * drift(balanced), kind  # the drift shrinks with the step: it is the step's


def test_selection_starts_with_an_even_spectrum(proxy):
    X = data()
    channels = torch.tensor([0, 2, 3, 7, 9, 11])
    Q, O = proxy.initial("selection", 16, 6, channels, seed=0)
    first = proxy.train(X, Q, O, lr=0.01, steps=0, log_every=1)[0]
    assert first["sv"] == pytest.approx([1.0] * 6) and first["drift"] == 0.0

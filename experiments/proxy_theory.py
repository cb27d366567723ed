"""RED's proxy theory on real hidden states: a linear autoencoder X -> X Q O trained by gradient descent from
three inits, watching its singular values, its loss, the eRank of what it reconstructs, and its conservation law.

The proxy, as secondary accounts of the RED paper describe it (METHOD §3.8): X (n, D) = hidden states of one
teacher layer, a bottleneck of width W (Q: (D, W) down, O: (W, D) up) and

    L(Q, O) = ||X - X Q O||_F^2 / 2n = tr((I - QO)^T G (I - QO)) / 2,        G = X^T X / n  (D, D)
    dL/dQ = -G (I - QO) O^T,        dL/dO = -Q^T G (I - QO)

trained by plain gradient descent with a small step, the discrete stand-in for gradient flow. Under gradient
flow Q^T Q - O O^T (W, W) does not move (balanced dynamics: d/dt Q^T Q and d/dt O O^T are the same matrix);
with step eta it drifts by O(eta^2) per step, which this script measures (and `balanced=False`, doubling O's
step, breaks on purpose, so the check can fail). Inits:
    gaussian    Q, O iid N(0, 0.02^2)                      (LRC)
    orthogonal  Q random with orthonormal columns, O = Q^T
    selection   Q = H, O = H^T, H the selection matrix of RED's channel score (init_select.channel_importance)
The theory's prediction: from the selection the singular values of QO start equal (all 1) and stay even, the
loss starts low; from random inits they spread winner-take-all and the reconstruction's eRank stays low.
Position 0 of every window is left out of X (its massive activation would make one direction dominate G,
METHOD §4.2). X is divided by its root mean square, so losses compare across layers and teachers; L(0, 0) is
the loss of reconstructing nothing. The paper's numbers (bottleneck 1200, 4,169 rows; loss / eRank): random
1.24 / 67.1, orthogonal 0.50 / 150.0, selection 0.08 / 249.4, on its own scale.

Writes --out/proxy.md (the table), proxy.csv (the trajectories) and proxy.png (singular values of QO over time).

Builds on erank.py (eRank of X Q O), init_select.py (the selection), data.py and load_weights.py.
Run as: python experiments/proxy_theory.py [--teacher DIR] [--layer L] [--data pydoc] [--rows 4169] [--width W]
        [--steps 3000] [--out out/proxy]
"""
import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.figures import pyplot  # noqa: E402
from data import load_windows  # noqa: E402
from erank import erank  # noqa: E402
from init_select import channel_importance, random_orthonormal, select_channels, selection_matrix  # noqa: E402
from load_weights import load_model  # noqa: E402
from scripts.example_teacher import build_example_teacher  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402


def hidden_states(teacher, windows: torch.Tensor, layer: int, rows: int) -> torch.Tensor:
    """(rows, D) float64: block `layer`'s output on the windows, position 0 of each left out, RMS-normalised."""
    taken = []

    def tap(i, name, h):
        if i == layer and name == "resid":
            taken.append(h[:, 1:].reshape(-1, h.shape[-1]))  # (B (T - 1), D)
    with torch.no_grad():
        for batch in windows.split(4):
            teacher(batch, tap=tap, last_only=True)
            if sum(len(t) for t in taken) >= rows:
                break
    X = torch.cat(taken)[:rows].double()
    if len(X) < rows:
        raise SystemExit(f"error: only {len(X)} token rows in the data - pass more text or fewer --rows")
    return X / X.pow(2).mean().sqrt()


def initial(kind: str, D: int, W: int, channels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q (D, W), O (W, D)) float64 for an init kind."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return 0.02 * torch.randn(D, W, generator=g, dtype=torch.float64), \
            0.02 * torch.randn(W, D, generator=g, dtype=torch.float64)
    if kind == "orthogonal":
        Q = random_orthonormal(D, W, g).double()
        return Q, Q.T.clone()
    H = selection_matrix(channels, D).double()
    return H, H.T.clone()


def train(X: torch.Tensor, Q: torch.Tensor, O: torch.Tensor, *, lr: float, steps: int, log_every: int,
          balanced: bool = True) -> list[dict]:
    """Gradient descent on L(Q, O); a record every log_every steps: step, loss, eRank of X Q O, singular values
    of Q O, and the drift of Q^T Q - O O^T relative to ||Q^T Q||."""
    n, D = X.shape
    G = X.T @ X / n                                # (D, D)
    eye = torch.eye(D, dtype=X.dtype)
    C0 = Q.T @ Q - O @ O.T                         # (W, W): conserved by gradient flow
    records = []
    for step in range(steps + 1):
        M = eye - Q @ O                            # (D, D): what the bottleneck loses
        GM = G @ M
        if step % log_every == 0 or step == steps:
            s = torch.linalg.svdvals(Q @ O)[:Q.shape[1]]   # (W,) the rank-W map's singular values
            drift = (Q.T @ Q - O @ O.T - C0).norm() / (Q.T @ Q).norm().clamp_min(1e-30)
            records.append({"step": step, "loss": 0.5 * (M * GM).sum().item(), "erank": erank(X @ Q @ O),
                            "drift": drift.item(), "sv": s.tolist()})
        grad_Q, grad_O = -GM @ O.T, -Q.T @ GM      # (D, W), (W, D)
        Q = Q - lr * grad_Q
        O = O - (lr if balanced else 2 * lr) * grad_O
    return records


def plot(path: str, runs: dict, W: int):
    plt = pyplot()
    if plt is None:
        print("matplotlib not installed: no PNG (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4 * (len(runs) + 1), 3.6))
    for ax, (kind, recs) in zip(axes, runs.items()):
        steps = [r["step"] for r in recs]
        for i in range(0, W, max(1, W // 48)):  # every singular value's path (a subset when W is large)
            ax.plot(steps, [r["sv"][i] for r in recs], lw=0.6, alpha=0.7)
        ax.set(title=f"{kind}: singular values of QO", xlabel="step", yscale="log")
    for i, (kind, recs) in enumerate(runs.items()):
        axes[-1].plot([r["step"] for r in recs], [r["erank"] for r in recs], color=f"C{i}", label=kind)
    axes[-1].set(title="eRank of X Q O", xlabel="step")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", help="teacher HF directory (default: the example teacher)")
    parser.add_argument("--layer", type=int, help="block whose output is X (default: the middle one)")
    parser.add_argument("--data", default="pydoc", help="a data.py source for X and the calibration")
    parser.add_argument("--rows", type=int, default=4169, help="token rows of X (the paper's 4,169)")
    parser.add_argument("--width", type=int, help="bottleneck W (default: half the teacher's width)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr-scale", type=float, default=0.1, help="step = lr_scale / largest eigenvalue of G")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/proxy")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    teacher_dir = args.teacher or build_example_teacher()
    teacher, tok = load_model(teacher_dir), load_tokenizer(teacher_dir)
    D = teacher.args.dim
    layer = teacher.args.n_layers // 2 if args.layer is None else args.layer
    W = args.width or D // 2
    windows = load_windows(args.data, tok, args.seq_len, seed=args.seed)
    calib, held = windows[:16], windows[16:]  # the selection from calibration windows, X from the rest
    channels = select_channels(channel_importance(teacher, calib.split(4), method="red"), W)
    X = hidden_states(teacher, held, layer, args.rows)
    G = X.T @ X / len(X)
    lr = args.lr_scale / torch.linalg.eigvalsh(G)[-1].item()
    print(f"{teacher_dir}: layer {layer}, X {tuple(X.shape)}, bottleneck {W}, {args.steps} steps of {lr:.3g}; "
          f"L(0, 0) = {0.5 * G.trace().item():.3f}, eRank(X) = {erank(X):.1f}")
    runs = {kind: train(X, *initial(kind, D, W, channels, args.seed), lr=lr, steps=args.steps,
                        log_every=max(1, args.steps // 60)) for kind in ("gaussian", "orthogonal", "selection")}
    os.makedirs(args.out, exist_ok=True)
    head = "| init | loss at 0 | loss at end | eRank(XQO) at 0 | eRank(XQO) at end | s_max / s_min of QO at end " \
           "| max drift of Q^TQ - OO^T |"
    lines = [f"{os.path.basename(os.path.normpath(teacher_dir))}, layer {layer}: X {len(X)} x {D} (RMS 1), "
             f"bottleneck {W}, {args.steps} gradient steps of {lr:.3g} (= {args.lr_scale} / lambda_max(G)); "
             f"L(0, 0) = {0.5 * G.trace().item():.3f}", "", head, "|---|---|---|---|---|---|---|"]
    for kind, recs in runs.items():
        first, last = recs[0], recs[-1]
        sv = last["sv"]
        lines.append(f"| {kind} | {first['loss']:.3f} | {last['loss']:.3f} | {first['erank']:.1f} | "
                     f"{last['erank']:.1f} | {sv[0] / max(sv[-1], 1e-30):.3g} | "
                     f"{max(r['drift'] for r in recs):.2e} |")
    with open(os.path.join(args.out, "proxy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "proxy.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["init", "step", "loss", "erank", "drift", "sv_max", "sv_median", "sv_min"])
        for kind, recs in runs.items():
            for r in recs:
                sv = sorted(r["sv"], reverse=True)
                writer.writerow([kind, r["step"], r["loss"], r["erank"], r["drift"], sv[0], sv[len(sv) // 2], sv[-1]])
    plot(os.path.join(args.out, "proxy.png"), runs, W)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

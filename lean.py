"""The training step, lean: distill.train_step's arithmetic in less memory and time, one named piece at a time.

distill.train_step is the method as written: the student's weights materialised in fp32, one backward through
that materialisation, the clone terms as plain autograd expressions. At 3B scale that holds every weight twice
(fp32 leaves and autocast's bf16 copies) and saves for the backward more than the backward needs. `LeanStep`
plugs the same step together from these pieces instead; tests/test_lean.py checks each against the plain one
(fp32: to rounding; bf16 autocast: within a stated tolerance of the fp32 plain step):

  materialize_in(student, dtype)  W_t P in the training precision (bf16 under autocast): leaves made once, in
                                  the dtype the matmuls want, so autocast keeps no second copy and the residual
                                  stream, the norms and the student's LM head run in that precision too.
  backward_direct(student, leaves)  dL/dP as one matmul per weight, straight from the leaf's gradient G:
                                  input side dP = W_t^T G, output side dP = W_t G^T (no graph rebuilt).
  CloneMSE, LeanCloneLoss         a clone term that saves only its difference s - t in the activations'
                                  precision (the plain term saves it in fp32), and the teacher's targets let go
                                  as soon as their term is formed.
  ProjectedCloneMSE               the mlp_out term through P_down with P_down's gradient formed in the forward:
                                  the teacher's MLP output is not kept for it.
  RMSNormFn, LeanRMSNorm          RMSNorm saving its input and the per-token 1/rms only (the plain one also
                                  keeps an fp32 copy of the input and its normalised output).
  NormRecipes, LeanBlock          the norm's output, which the linears after it save, kept as its recipe (the
                                  norm's input, already saved) and made again in the backward.
  SwiGLUDown, LeanMLP             down(silu(gate) * up) saving gate and up only: silu(gate) and the product are
                                  recomputed in the backward (the plain MLP keeps both).

`make_lean(student)` swaps LeanBlocks and a LeanRMSNorm into the student's weightless shell (same parameter
names, same taps), so `student(tokens, weights=...)` runs them; the teacher and every merged model keep model.py's.

Builds on model.py (the modules it replaces), student.py (the projections and their sides) and kd_loss.py
(CloneLoss, clone_mse's kinds).
Run as: imported by distill.py (--step lean, the default on CUDA) and bench/bench_memory.py.
"""
import contextvars

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_loss import CloneLoss
from model import MLP, Block
from student import Student, replaying, unsharded


# ---------------------------------------------------------------------------------------------------------
# Materialise in the training precision; dP straight from the leaves' gradients

@torch.no_grad()
def materialize_in(student: Student, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """student.materialize() with every matmul and result in `dtype` (fp32 masters stay fp32): W_s = W_t P."""
    weights = {}
    for name, W_t in student.teacher.named_parameters():
        W_t = unsharded(W_t).to(dtype)
        side, P = student.source(name)
        if side == "input":
            weights[name] = W_t @ P.to(dtype)      # (out, D_t) @ (D_t, W)
        elif side == "output":
            weights[name] = P.to(dtype).T @ W_t    # (W, D_t) @ (D_t, in)
        else:
            weights[name] = W_t if side == "frozen" else P.detach().to(dtype)  # a gain: a copy, not the master
    return weights


@torch.no_grad()
def backward_direct(student: Student, leaves: dict[str, torch.Tensor]):
    """backward_through's dL/dP, one matmul per weight from the leaf's accumulated gradient G:
    W_s = W_t P gives dP = W_t^T G (D_t, W); W_s = P^T W_t gives dP = W_t G^T (D_t, W); a gain's is G itself.
    Added in fp32 to the masters' .grad (a bf16 G makes a bf16 product, rounded once, then accumulated)."""
    for name, W_t in student.teacher.named_parameters():
        G = leaves[name].grad
        side, P = student.source(name)
        if G is None or side == "frozen":
            continue
        if side == "gain":
            dP = G
        else:
            W_t = unsharded(W_t).to(G.dtype)
            dP = W_t.T @ G if side == "input" else W_t @ G.T  # (D_t, W)
        P.grad = dP.float() if P.grad is None else P.grad.add_(dP.float())


# ---------------------------------------------------------------------------------------------------------
# The clone term, saving its difference in the activations' precision

class CloneMSE(torch.autograd.Function):
    """scale * mean((s - t)^2), in fp32, saving s - t in s's dtype (bf16 under autocast): the gradient
    2 scale (s - t) / n w.r.t. s, and its negative w.r.t. t (the mlp_out target carries P_down's gradient)."""

    @staticmethod
    def forward(ctx, s, t, scale: float):
        diff = s.float() - t.float()                  # (B, T, ...) fp32, for the value only
        ctx.save_for_backward(diff.to(s.dtype))
        ctx.scale, ctx.n, ctx.t_dtype = scale, diff.numel(), t.dtype
        return diff.pow(2).mean() * scale

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        g = diff * (2 * ctx.scale / ctx.n) * grad.to(diff.dtype)  # (B, T, ...) in the activations' dtype
        return g, (-g).to(ctx.t_dtype) if ctx.needs_input_grad[1] else None, None


def clone_mse_lean(student_act, teacher_act, kind: str = "mse") -> torch.Tensor:
    """kd_loss.clone_mse through CloneMSE: the same value and gradients, a half-size saved difference in bf16."""
    if kind == "skip-first":
        student_act, teacher_act = student_act[:, 1:], teacher_act[:, 1:]
    scale = 1.0
    if kind == "relative":
        scale = 1.0 / teacher_act.detach().float().pow(2).mean().clamp_min(1e-20).item()
    return CloneMSE.apply(student_act, teacher_act, scale)


class ProjectedCloneMSE(torch.autograd.Function):
    """The mlp_out term, scale * mean((s - t P)^2): s (B, T, W) the student's MLP output, t (B, T, D_t) the
    teacher's, P = P_down (D_t, W). P's gradient -t^T (the gradient w.r.t. t P) is formed in the forward, so
    neither t nor a copy of P is saved: only the gradient w.r.t. s (B, T, W) and that (D_t, W) matrix."""

    @staticmethod
    def forward(ctx, s, t, P, kind: str):
        tP = t @ P.to(t.dtype)                                      # (B, T, W)
        if kind == "skip-first":
            s, t, tP = s[:, 1:], t[:, 1:], tP[:, 1:]
        scale = 1.0 / tP.detach().float().pow(2).mean().clamp_min(1e-20).item() if kind == "relative" else 1.0
        diff = s.float() - tP.float()
        unit = (diff * (2 * scale / diff.numel())).to(s.dtype)      # d value / d s
        dP = -(t.reshape(-1, t.shape[-1]).T @ unit.reshape(-1, unit.shape[-1]).to(t.dtype))  # (D_t, W)
        ctx.save_for_backward(unit, dP)
        ctx.skip_first, ctx.P_dtype = kind == "skip-first", P.dtype
        return diff.pow(2).mean() * scale

    @staticmethod
    def backward(ctx, grad):
        unit, dP = ctx.saved_tensors
        g_s = unit * grad.to(unit.dtype)
        if ctx.skip_first:  # position 0 took no part
            g_s = torch.cat([torch.zeros_like(g_s[:, :1]), g_s], dim=1)
        return g_s, None, (dP.float() * grad).to(ctx.P_dtype), None


class LeanCloneLoss(CloneLoss):
    """CloneLoss with CloneMSE, dropping each teacher target once its term is formed, so the targets do not
    outlive the forward (unless the blocks are recomputed in the backward, which asks for them again)."""

    def __init__(self, *args, recompute: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.recompute = recompute

    def target(self, layer: int, name: str) -> torch.Tensor:
        return self.targets[layer, name] if self.recompute else self.targets.pop((layer, name))

    def tap(self, layer: int, name: str, x: torch.Tensor):
        if name == "mlp_out" and "mlp_out" in self.loss:  # through P_down, as CloneLoss does, in one Function
            value = ProjectedCloneMSE.apply(x, self.target(layer, "mlp_out"), self.student.layers[layer]["down"],
                                            self.kind)
            if not replaying():
                self.loss["mlp_out"] = self.loss["mlp_out"] + value
        else:
            super().tap(layer, name, x)

    def add(self, term: str, x: torch.Tensor, target: torch.Tensor):
        value = clone_mse_lean(x, target, self.kind)
        if not replaying():
            self.loss[term] = self.loss[term] + value


# ---------------------------------------------------------------------------------------------------------
# RMSNorm and SwiGLU that save only what their backward needs

class RMSNormFn(torch.autograd.Function):
    """model.RMSNorm's forward, bit for bit: w * (x / rms(x)), the rms in fp32. Saves x and 1/rms (per token)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1) fp32
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).type_as(x)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        y = x.float() * rstd                                          # (..., D) normalised, fp32
        g = grad.float() * weight.float()                             # dL/dy
        dx = rstd * (g - y * (g * y).mean(-1, keepdim=True))          # through 1/rms(x)
        dw = (grad.float() * y.type_as(x).float()).reshape(-1, y.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None


class LeanRMSNorm(nn.Module):
    """model.RMSNorm's parameters and output through RMSNormFn; inside a LeanBlock its output is saved by the
    linears after it as a recipe (NormRecipes), not as a tensor."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = RMSNormFn.apply(x, self.weight, self.eps)
        recipes = _recipes.get()
        if recipes is not None:
            recipes.remember(out, x, self.weight, self.eps)
        return out


class NormRecipes:
    """Saved-tensor hooks for one block's forward: when a linear saves a LeanRMSNorm's output a (B, T, W) for its
    weight gradient, keep instead what makes it (the norm's input x, which the norm saves anyway, its gain and
    eps) and make a again in the backward, bit for bit. The block then holds x once, not x and a."""

    def __init__(self):
        self.made: dict[int, tuple] = {}  # storage address of a norm output -> (output, x, gain, eps)

    def remember(self, out, x, weight, eps: float):
        self.made[out.untyped_storage().data_ptr()] = (out, x, weight, eps)

    def pack(self, t: torch.Tensor):
        made = self.made.get(t.untyped_storage().data_ptr())
        if made is None or made[0].dtype != t.dtype:
            return t
        _, x, weight, eps = made
        return x, weight, eps, t.shape, t.stride(), t.storage_offset()

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        x, weight, eps, shape, stride, offset = packed
        x32 = x.float()
        out = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)  # RMSNormFn's
        return out.as_strided(shape, stride, offset)


_recipes: contextvars.ContextVar = contextvars.ContextVar("norm_recipes", default=None)


class SwiGLUDown(torch.autograd.Function):
    """down(silu(gate) * up) = (silu(gate) * up) @ W_down^T, saving gate, up and W_down: silu(gate) and the
    product (B, T, F) are recomputed in the backward instead of kept."""

    @staticmethod
    def forward(ctx, gate, up, w_down):
        ctx.save_for_backward(gate, up, w_down)
        return F.linear(F.silu(gate) * up, w_down.to(gate.dtype))   # (B, T, D)

    @staticmethod
    def backward(ctx, grad):
        gate, up, w_down = ctx.saved_tensors
        g32 = gate.float()
        sig = torch.sigmoid(g32)
        silu = g32 * sig
        product = (silu * up.float()).to(gate.dtype)                  # (B, T, F), recomputed
        grad = grad.to(gate.dtype)
        d_w = (grad.reshape(-1, grad.shape[-1]).T @ product.reshape(-1, product.shape[-1])).to(w_down.dtype)
        d_product = (grad @ w_down.to(gate.dtype)).float()            # (B, T, F)
        d_up = d_product * silu
        d_gate = d_product * up.float() * sig * (1 + g32 * (1 - sig))
        return d_gate.to(gate.dtype), d_up.to(up.dtype), d_w


class LeanMLP(MLP):
    """model.MLP (same parameters, same taps) with its SwiGLU and down projection through SwiGLUDown."""

    def forward(self, x, tap):
        gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, F) each, pre-activation
        tap(self.layer, "gate", gate)
        tap(self.layer, "up", up)
        return SwiGLUDown.apply(gate, up, self.down_proj.weight)


class LeanBlock(Block):
    """model.Block with LeanRMSNorm and LeanMLP, whose forward saves its norms' outputs as NormRecipes."""

    def __init__(self, args, layer: int, recipes: bool = True):
        super().__init__(args, layer)
        self.input_layernorm = LeanRMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = LeanRMSNorm(args.dim, args.norm_eps)
        self.mlp = LeanMLP(args, layer)
        self.recipes = recipes

    def forward(self, *args):
        if not self.recipes:  # under activation checkpointing, whose own hooks must see every saved tensor
            return super().forward(*args)
        recipes = NormRecipes()
        token = _recipes.set(recipes)
        try:
            with torch.autograd.graph.saved_tensors_hooks(recipes.pack, recipes.unpack):
                return super().forward(*args)
        finally:
            _recipes.reset(token)


def make_lean(student: Student, recompute: bool = False) -> Student:
    """Swap LeanBlocks (LeanRMSNorm, LeanMLP, the norms' outputs saved as recipes unless the blocks are recomputed)
    and a LeanRMSNorm into the student's weightless shell, in place: the parameter names do not change."""
    args, shell = student.args, student.shell
    with torch.device("meta"):
        shell.layers = nn.ModuleList(LeanBlock(args, i, recipes=not recompute) for i in range(args.n_layers))
        shell.norm = LeanRMSNorm(args.dim, args.norm_eps)
    return student


# ---------------------------------------------------------------------------------------------------------

class LeanStep:
    """The pieces distill.train_step runs when --step lean: materialize, backward and the clone loss."""

    def __init__(self, dtype: torch.dtype, recompute: bool = False):
        self.dtype, self.recompute = dtype, recompute

    def materialize(self, student: Student) -> dict[str, torch.Tensor]:
        return materialize_in(student, self.dtype)

    def backward(self, student: Student, leaves: dict[str, torch.Tensor]):
        backward_direct(student, leaves)

    def clone_loss(self, *args, **kwargs) -> LeanCloneLoss:
        return LeanCloneLoss(*args, recompute=self.recompute, **kwargs)

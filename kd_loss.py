"""The knowledge-distillation loss of Low-Rank Clone, one function per term (METHOD §2.3):

    loss = CE(student) + KL(teacher || student at temperature T) + alpha * sum_layers sum_terms MSE_term
           [+ lambda * sum_P ||P^T P - I||_F^2, the orthogonal-regularisation baseline, off by default]

The clone terms compare activations as LRC's code does: q, k, v, gate, up as they are (the student's heads
and FFN are the teacher's size); attn_out in teacher space (the student's attention heads through the
TEACHER's o_proj, against the teacher's o_proj output); mlp_out in student space (the teacher's MLP output
through the student's own down projection P_down, LRC's "alignment-free" lemma). The teacher's activations
are recorded by one tap (`TeacherTargets.tap`) and the student's tap (`CloneLoss.tap`) turns each of its
activations into its term the moment the forward computes it, so no activation is held longer than needed.
CE and KL come either from the full logits (`ce_loss`, `kl_loss`) or, distill.py's default, from the final
hidden states and the LM heads a chunk of tokens at a time (`chunked_ce_kl`), which never holds a (tokens,
vocab) tensor of either model and gives the same loss and gradients.

Builds on student.py (the projections P_down, unsharded teacher weights) and model.py's taps.
Run as: imported by distill.py (tests/test_kd_loss.py checks each term against an independent formula).
"""
import torch
import torch.nn.functional as F

from student import Student, replaying, unsharded

CLONE_TERMS = ("q", "k", "v", "attn_out", "gate", "up", "mlp_out")
CLONE_LOSSES = ("mse", "skip-first", "relative")  # --clone-loss; mse is LRC's
KL_REDUCTIONS = ("seq_sum", "token_mean")


def kl_loss(student_logits, teacher_logits, temperature: float, reduction: str) -> torch.Tensor:
    """KL(teacher || student) of softmax(logits / T), fp32. (B, T, V) each -> scalar (METHOD §3.6).

    seq_sum (LRC's code: kl_div(..., reduction="batchmean") on (B, T, V) divides by B only, so the KL is
    summed over the positions of a sequence; no T^2 factor) or token_mean (per-token average)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, T, V)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)                    # (B, T): sum_v p_t log(p_t / p_s)
    return kl.sum() / kl.shape[0] if reduction == "seq_sum" else kl.mean()


def ce_loss(student_logits, tokens) -> torch.Tensor:
    """Next-token cross-entropy of the student, mean over the B*(T-1) predicted tokens (fp32)."""
    V = student_logits.shape[-1]
    return F.cross_entropy(student_logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1))


def next_token_targets(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B * T,): the token each position predicts, -1 at a sequence's last position (nothing to predict)."""
    return torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -1)], dim=1).reshape(-1)


class ChunkedLogitLoss(torch.autograd.Function):
    """CE + KL(T) from the final hidden states and the two LM heads, a chunk of tokens at a time, so that
    neither model's (tokens, vocab) logits ever exist whole. Equal to ce_loss + kl_loss on the full logits.

    Per chunk (n tokens), with the logits s = h_s W_s^T and t = h_t W_t^T (n, V) (the matmuls in the models'
    precision, the softmaxes in fp32), q = softmax(s / T), p = softmax(t / T), q1 = softmax(s):
        dKL/ds = (q - p) / T / kl_norm        dCE/ds = (q1 - onehot(y)) / n_ce  (rows with a target)
    and the gradients of the loss w.r.t. h_s (n, W) and W_s (V, W) are g W_s and g^T h_s, g = dL/ds. They are
    computed in the forward pass (as Liger's fused linear cross-entropy does), so the backward pass only scales
    them: the peak is a few (chunk, V) fp32 tensors plus one (V, W) gradient."""

    @staticmethod
    def forward(ctx, h_s, head_s, h_t, head_t, targets, temperature: float, kl_norm: float, chunk: int):
        h_s, W_s = h_s.to(torch.promote_types(h_s.dtype, head_s.dtype)), head_s.to(h_s.dtype)  # (N, W), (V, W)
        h_t, W_t = h_t.to(torch.promote_types(h_t.dtype, head_t.dtype)), head_t.to(h_t.dtype)  # (N, D), (V, D)
        grad_h = torch.empty(h_s.shape, dtype=torch.float32, device=h_s.device)  # (N, W)
        grad_head = torch.zeros(W_s.shape, dtype=torch.float32, device=W_s.device)  # (V, W)
        n_ce = max(1, int((targets >= 0).sum()))                 # predicted tokens (B * (T - 1))
        ce_sum = kl_sum = torch.zeros((), device=h_s.device)
        for i in range(0, h_s.shape[0], chunk):
            hs, y = h_s[i:i + chunk], targets[i:i + chunk]       # (n, W), (n,)
            s = (hs @ W_s.T).float()                             # (n, V) student logits
            log_p = F.log_softmax((h_t[i:i + chunk] @ W_t.T).float() / temperature, dim=-1)  # (n, V) teacher
            log_q = F.log_softmax(s / temperature, dim=-1)       # (n, V)
            p = log_p.exp()
            kl_sum = kl_sum + (p * (log_p - log_q)).sum()
            g = log_q.exp_().sub_(p).div_(temperature * kl_norm)  # dKL/ds; log_q's memory reused
            del p, log_p
            log_q1 = F.log_softmax(s, dim=-1)                    # (n, V) at T = 1, for the CE
            del s
            valid = (y >= 0).float()[:, None]                    # (n, 1): 0 at a sequence's last position
            y = y.clamp_min(0)[:, None]                          # (n, 1)
            ce_sum = ce_sum - (log_q1.gather(1, y) * valid).sum()
            q1 = log_q1.exp_().scatter_add_(1, y, -valid)        # softmax(s) - onehot(y)
            g.addcmul_(q1, valid, value=1.0 / n_ce)              # + dCE/ds on the rows that predict a token
            del q1, log_q1
            grad_h[i:i + chunk] = g.to(W_s.dtype) @ W_s          # (n, W)
            grad_head += (g.T.to(hs.dtype) @ hs).float()         # (V, W)
        ctx.save_for_backward(grad_h, grad_head)
        ctx.dtypes = h_s.dtype, head_s.dtype
        ce, kl = ce_sum / n_ce, kl_sum / kl_norm
        ctx.mark_non_differentiable(ce, kl)
        return ce + kl, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        grad_h, grad_head = ctx.saved_tensors
        return ((grad_h * grad_loss).to(ctx.dtypes[0]), (grad_head * grad_loss).to(ctx.dtypes[1]),
                None, None, None, None, None, None)


def chunked_ce_kl(h_s, head_s, h_t, head_t, tokens, temperature: float, reduction: str, chunk: int):
    """(CE + KL, CE, KL) as ce_loss and kl_loss give them, without the full logits: h_s (B, T, W) and h_t
    (B, T, D) are the final-normed hidden states, head_s (V, W) and head_t (V, D) the LM heads (cut to the
    tokenizer's vocabulary by the caller), `chunk` tokens at a time. Only CE + KL carries gradients."""
    B, T = tokens.shape
    kl_norm = float(B if reduction == "seq_sum" else B * T)
    return ChunkedLogitLoss.apply(h_s.reshape(B * T, -1), head_s, h_t.reshape(B * T, -1), head_t,
                                  next_token_targets(tokens), temperature, kl_norm, chunk)


def clone_mse(student_act, teacher_act, kind: str = "mse") -> torch.Tensor:
    """Activation-clone term of (B, T, ...) activations, fp32 (METHOD §3.9):
        mse         mean squared error over all elements (nn.MSELoss), LRC's term
        skip-first  the same without position 0 of each sequence, where a teacher's attention sink puts
                    activations orders of magnitude above the rest
        relative    the MSE divided by the teacher activation's mean square (a constant of the step), so each
                    term is a relative error and no term's scale dominates the sum"""
    if kind == "skip-first":
        student_act, teacher_act = student_act[:, 1:], teacher_act[:, 1:]
    mse = (student_act.float() - teacher_act.float()).pow(2).mean()
    if kind == "relative":
        mse = mse / teacher_act.detach().float().pow(2).mean().clamp_min(1e-20)
    return mse


def orthogonality_penalty(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||P^T P - I||_F^2, its gradient 4 P (P^T P - I)) for a projection P (D_t, W), in fp32: the orthogonal
    regularisation baseline of RED's init ablation (METHOD §3.7), added to the loss times --orth-reg lambda."""
    P = P.detach().float()
    E = P.T @ P - torch.eye(P.shape[1], device=P.device)  # (W, W)
    return E.pow(2).sum(), 4 * P @ E                     # scalar, (D_t, W)


class TeacherTargets:
    """The teacher activations that the chosen clone terms compare against; `tap` records them, drops the rest."""

    def __init__(self, terms=CLONE_TERMS):
        self.keep = set(terms)
        self.acts: dict[tuple[int, str], torch.Tensor] = {}

    def tap(self, layer: int, name: str, x: torch.Tensor):
        if name in self.keep:
            self.acts[layer, name] = x


class CloneLoss:
    """The clone MSE terms of one student forward, summed over layers into `loss[term]` as `tap` sees them."""

    def __init__(self, targets: TeacherTargets, teacher, student: Student, terms=CLONE_TERMS, kind: str = "mse"):
        self.targets, self.teacher, self.student, self.kind = targets.acts, teacher, student, kind
        self.loss = {term: 0.0 for term in terms}

    def tap(self, layer: int, name: str, x: torch.Tensor):
        if name == "attn_heads":  # o_proj's input: LRC's code compares attention output in teacher space (D_t)
            if "attn_out" in self.loss:
                Wo = unsharded(self.teacher.layers[layer].self_attn.o_proj.weight)  # (D_t, H*Dh)
                self.add("attn_out", x @ Wo.T.to(x.dtype), self.target(layer, "attn_out"))
        elif name == "mlp_out":  # student space (W): the teacher's MLP output through P_down (LRC Lemma 1)
            if "mlp_out" in self.loss:
                target = self.target(layer, "mlp_out")                              # (B, T, D_t)
                P_down = self.student.layers[layer]["down"]                          # (D_t, W)
                self.add("mlp_out", x, target @ P_down.to(target.dtype))             # (B, T, W)
        elif name in self.loss and name != "attn_out":  # q, k, v, gate, up: the same space for both models
            self.add(name, x, self.target(layer, name))

    def target(self, layer: int, name: str) -> torch.Tensor:
        """The teacher's activation this term compares against (kept until the step ends)."""
        return self.targets[layer, name]

    def add(self, term: str, x: torch.Tensor, target: torch.Tensor):
        value = clone_mse(x, target, self.kind)  # also when replaying: checkpointing matches the saved tensors by order
        if not replaying():           # a block recomputed in the backward: this term is counted already
            self.loss[term] = self.loss[term] + value

    def total(self) -> torch.Tensor | float:
        return sum(self.loss.values())

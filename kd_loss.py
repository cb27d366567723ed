"""The knowledge-distillation loss of Low-Rank Clone, one function per term (METHOD §2.3):

    loss = CE(student) + KL(teacher || student at temperature T) + alpha * sum_layers sum_terms MSE_term
           [+ lambda * sum_P ||P^T P - I||_F^2, the orthogonal-regularisation baseline, off by default]

The clone terms compare activations as LRC's code does: q, k, v, gate, up as they are (the student's heads
and FFN are the teacher's size); attn_out in teacher space (the student's attention heads through the
TEACHER's o_proj, against the teacher's o_proj output); mlp_out in student space (the teacher's MLP output
through the student's own down projection P_down, LRC's "alignment-free" lemma). The teacher's activations
are recorded by one tap (`TeacherTargets.tap`) and the student's tap (`CloneLoss.tap`) turns each of its
activations into its term the moment the forward computes it, so no activation is held longer than needed.

Builds on student.py (the projections P_down, unsharded teacher weights) and model.py's taps.
Run as: imported by distill.py (tests/test_kd_loss.py checks each term against an independent formula).
"""
import torch
import torch.nn.functional as F

from student import Student, unsharded

CLONE_TERMS = ("q", "k", "v", "attn_out", "gate", "up", "mlp_out")
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


def clone_mse(student_act, teacher_act) -> torch.Tensor:
    """Activation-clone term: mean squared error over all elements (nn.MSELoss), fp32."""
    return (student_act.float() - teacher_act.float()).pow(2).mean()


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

    def __init__(self, targets: TeacherTargets, teacher, student: Student, terms=CLONE_TERMS):
        self.targets, self.teacher, self.student = targets.acts, teacher, student
        self.loss = {term: 0.0 for term in terms}

    def tap(self, layer: int, name: str, x: torch.Tensor):
        if name == "attn_heads":  # o_proj's input: LRC's code compares attention output in teacher space (D_t)
            if "attn_out" in self.loss:
                Wo = unsharded(self.teacher.layers[layer].self_attn.o_proj.weight)  # (D_t, H*Dh)
                self.add("attn_out", x @ Wo.T.to(x.dtype), self.targets[layer, "attn_out"])
        elif name == "mlp_out":  # student space (W): the teacher's MLP output through P_down (LRC Lemma 1)
            if "mlp_out" in self.loss:
                target = self.targets[layer, "mlp_out"]                             # (B, T, D_t)
                P_down = self.student.layers[layer]["down"]                          # (D_t, W)
                self.add("mlp_out", x, target @ P_down.to(target.dtype))             # (B, T, W)
        elif name in self.loss and name != "attn_out":  # q, k, v, gate, up: the same space for both models
            self.add(name, x, self.targets[layer, name])

    def add(self, term: str, x: torch.Tensor, target: torch.Tensor):
        self.loss[term] = self.loss[term] + clone_mse(x, target)

    def total(self) -> torch.Tensor | float:
        return sum(self.loss.values())

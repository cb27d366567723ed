"""Initial projections for the student: RED's activation-aware channel selection and the baselines.

RED's fix for LRC's eRank collapse is to start every projection as a channel-selection matrix (RED abstract,
METHOD §3.3). One calibration pass of the teacher ranks its D_t residual channels; the top W form one set S,
shared by every projection because the residual stream is shared:

    s_i = sum_sites sqrt( sum_b ( mean_t |y_{b,t,i}| )^2 )        # Minitron importance (METHOD §3.3 step 2, §4.1)
    S   = top-W channels of s, sorted by index                    # RED (METHOD §3.3 step 3)
    P_S in {0,1}^{D_t x W},  P_S[S_j, j] = 1,  P_S^T P_S = I      # RED (METHOD §3.3 step 4)

y is the output of each RMSNorm that feeds a linear layer (input_layernorm, post_attention_layernorm). With
every P = P_S the step-0 student IS the teacher with its hidden width pruned to S (embedding and LM-head
columns, q/k/v/gate/up input columns, o/down output rows, norm gains g_S); its RMSNorm now averages over the
kept channels only. The option `rms_correction` multiplies each gain by c = median_t rms(x_S) / rms(x) of
that norm's input x (METHOD §3.3 step 5, teacher_sel_rms), giving the kept channels the teacher's scale.

Kinds: `select` (RED), `random_select` (a random S: ablation), `gaussian` (LRC: N(0, 0.02^2), gains 1),
`orthogonal` (random orthonormal columns, gains 1), `pca` (top-W eigenvectors of the residual stream's
second moment, SliceGPT-style, gains 1). The calibration pass reduces every activation as it arrives (a
`taps` dict subclass), so importance and PCA take memory independent of the number of calibration tokens
(the RMS-ratio median keeps one float per token and norm site).

Builds on student.py (and model.py, load_weights.py, tokenizer.py, erank.py for the CLI report).
Run as: python init_select.py --teacher DIR --width W --calib FILE.txt --out init.safetensors [--init select]
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

from data import DataError, read_documents
from erank import erank
from load_weights import LoadError, load_model
from model import Transformer
from student import Student, StudentError, check_width, state_shapes, unsharded
from tokenizer import TokenizerError, load_tokenizer

KINDS = ("select", "random_select", "gaussian", "orthogonal", "pca")
IMPORTANCE = ("minitron", "l2", "mean_abs")
NORM_SITES = {"norm_in": "input_layernorm", "norm_post": "post_attention_layernorm"}  # tap -> student gain


class InitError(ValueError):
    """An init that cannot be made as asked (one line, says what to do)."""


# ---------------------------------------------------------------------------------------------------------
# Calibration: `taps` sinks that reduce each activation as the teacher's forward produces it

class ImportanceTaps(dict):
    """Per-channel activation statistics, (D,) float64 accumulators, one per tap site."""

    def __init__(self, method: str, skip_first: bool):
        super().__init__()
        self.method, self.first = method, int(skip_first)
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens = 0

    def add(self, key: str, value: torch.Tensor):
        self.sums[key] = self.sums.get(key, 0) + value.double().cpu()

    def __setitem__(self, key: str, x: torch.Tensor):
        name = key.rpartition(".")[2]
        x = x[:, self.first:].float()  # (B, T', D)
        if self.method == "minitron" and name in NORM_SITES:
            m = x.abs().mean(dim=1)             # (B, D): sequence = mean (Minitron's best aggregation)
            self.add(key, m.pow(2).sum(dim=0))  # (D,): batch = L2, square root taken in `scores`
        elif self.method in ("l2", "mean_abs") and name == "resid":  # the raw residual stream of every block
            self.add(key, x.pow(2).sum(dim=(0, 1)) if self.method == "l2" else x.abs().sum(dim=(0, 1)))
            self.tokens += x.shape[0] * x.shape[1]

    def scores(self) -> torch.Tensor:
        """(D,) float64 importance, larger = more important."""
        if not self.sums:
            raise InitError("the calibration pass saw no tokens - pass non-empty calibration batches")
        sites = torch.stack(list(self.sums.values()))  # (sites, D)
        if self.method == "minitron":
            return sites.sqrt().sum(dim=0)             # Minitron: L2 over sequences per site, summed over sites
        if self.method == "l2":
            return sites.sum(dim=0).sqrt()             # METHOD resid_l2: ||X_{:,i}||_2 over all tokens, layers
        return sites.sum(dim=0) / self.tokens          # METHOD resid_meanabs: mean |x_i| over tokens, layers


class RmsRatioTaps(dict):
    """Per norm site, every token's rms(x_S) / rms(x), from the norm output: y / g = x / rms(x)."""

    def __init__(self, teacher: Transformer, channels: torch.Tensor, skip_first: bool):
        super().__init__()
        self.channels, self.first, self.last = channels, int(skip_first), teacher.args.n_layers - 1
        self.gains = {f"{i}.{tap}": unsharded(getattr(layer, gain).weight).detach()[channels].float()
                      for i, layer in enumerate(teacher.layers) for tap, gain in NORM_SITES.items()}
        self.eps = teacher.args.norm_eps
        self.ratios: dict[str, list[torch.Tensor]] = {}

    def __setitem__(self, key: str, x: torch.Tensor):
        layer, _, name = key.partition(".")
        if name in NORM_SITES:
            u = x[:, self.first:, self.channels].float() / self.gains[key]  # (B, T', W) = x_S / rms(x)
            site = f"layers.{layer}.{NORM_SITES[name]}"
        elif name == "resid" and int(layer) == self.last:  # the final norm's input (calibration skips the head)
            x = x[:, self.first:].float()                                   # (B, T', D)
            u = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))[..., self.channels]
            site = "norm"
        else:
            return
        self.ratios.setdefault(site, []).append(u.pow(2).mean(-1).sqrt().flatten().cpu())  # (B T',)

    def medians(self) -> dict[str, float]:
        return {site: torch.cat(r).median().item() for site, r in self.ratios.items()}


class SecondMomentTaps(dict):
    """M = sum_t u_t^T u_t over every block output, u = x / rms(x) (each token weighs the same), float64."""

    def __init__(self, skip_first: bool):
        super().__init__()
        self.first, self.moment = int(skip_first), None

    def __setitem__(self, key: str, x: torch.Tensor):
        if key.endswith(".resid"):
            x = x[:, self.first:].reshape(-1, x.shape[-1]).double()   # (B T', D)
            u = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))       # (B T', D): massive tokens tamed
            m = (u.T @ u).cpu()                                         # (D, D)
            self.moment = m if self.moment is None else self.moment + m


@torch.no_grad()  # not inference_mode: FSDP2 would keep its gather buffers as inference tensors (distill --fsdp)
def calibrate(teacher: Transformer, batches, taps: dict) -> dict:
    """One teacher forward per (B, T) token batch, feeding `taps`; the LM head runs on the last token only."""
    device = teacher.embed_tokens.weight.device
    for tokens in batches:
        teacher(tokens.to(device), taps=taps, last_only=True)  # logits are not needed, (B, T, V) is big
    return taps


def channel_importance(teacher: Transformer, batches, *, method: str = "minitron",
                       skip_first: bool = False) -> torch.Tensor:
    """(D,) float64 channel importance from (B, T) calibration batches (method: minitron, l2, mean_abs).

    minitron: RMSNorm outputs, Minitron/ModelOpt aggregation (see the module docstring). l2, mean_abs: the
    raw residual stream after every block (METHOD §3.3 resid_l2 / resid_meanabs). NOTE: position 0 is the
    attention sink, where a few channels carry massive activations (SmolLM2: one reaches ~20,000 against a
    median of a few hundred). l2 is dominated by it; Minitron's normalised, sequence-averaged score barely
    notices it (on SmolLM2 skipping it selects the same 288 channels). `skip_first` drops it; the default
    keeps it, as ModelOpt does, because the student needs its attention sink too.
    """
    if method not in IMPORTANCE:
        raise InitError(f"unknown importance {method!r} - use one of {', '.join(IMPORTANCE)}")
    return calibrate(teacher, batches, ImportanceTaps(method, skip_first)).scores()


# ---------------------------------------------------------------------------------------------------------
# Selection and the projection inits

def select_channels(importance: torch.Tensor, width: int) -> torch.Tensor:
    """(W,) long: the `width` highest-scoring channels (ties: lower index first), sorted by index."""
    order = torch.sort(-importance, stable=True).indices  # stable: equal scores keep index order
    return order[:width].sort().values


def selection_matrix(channels: torch.Tensor, d_teacher: int) -> torch.Tensor:
    """(D_t, W) 0/1 matrix with P[S_j, j] = 1: x P keeps the channels S of x, in order."""
    P = torch.zeros(d_teacher, len(channels))
    P[channels, torch.arange(len(channels))] = 1.0  # RED Eq. (METHOD §3.3 step 4): P_S
    return P


def random_orthonormal(d_teacher: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(D_t, W) with orthonormal columns (Q of a Gaussian's QR, signs fixed: Haar-distributed)."""
    Q, R = torch.linalg.qr(torch.randn(d_teacher, width, generator=generator, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))).float()  # all singular values exactly 1


def pca_basis(moment: torch.Tensor, width: int) -> tuple[torch.Tensor, float]:
    """(D_t, W) top-W eigenvectors of a (D_t, D_t) second moment (largest entry of each > 0), energy kept."""
    eigenvalues, vectors = torch.linalg.eigh(moment)  # ascending
    V = vectors[:, -width:].flip(-1)                  # (D_t, W), largest first
    signs = torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))  # (1, W): a fixed sign, deterministic
    return (V * signs).float(), (eigenvalues[-width:].sum() / eigenvalues.sum()).item()


def init_projections(kind: str, teacher: Transformer, width: int, *, batches=None, importance: str = "minitron",
                     scores: torch.Tensor | None = None, skip_first: bool = False, rms_correction: bool = False,
                     seed: int = 0) -> tuple[dict, dict, dict]:
    """(projections, norm gains, info) for Student(teacher, width, ...); `batches`: (B, T) calibration tokens."""
    if kind not in KINDS:
        raise InitError(f"unknown init {kind!r} - use one of {', '.join(KINDS)}")
    check_width(teacher.args, width)
    if rms_correction and kind not in ("select", "random_select"):
        raise InitError(f"rms_correction rescales the teacher's gains, which init {kind!r} does not use - "
                        "use it with select or random_select")
    needs_calibration = (kind == "select" and scores is None) or kind == "pca" or rms_correction
    if needs_calibration and batches is None:
        raise InitError(f"init {kind!r} needs calibration batches - pass batches=[(B, T) token tensors]")
    batches = list(batches) if batches is not None else None  # read twice with rms_correction
    D, generator = teacher.args.dim, torch.Generator().manual_seed(seed)
    proj_shapes, norm_shapes = state_shapes(teacher.args, width)
    info = {"init": kind, "width": width, "seed": seed}

    if kind in ("select", "random_select"):
        if kind == "select":
            if scores is None:
                scores = channel_importance(teacher, batches, method=importance, skip_first=skip_first)
                info.update(importance=importance, skip_first=skip_first)
            channels = select_channels(scores, width)
            info["scores"] = scores.tolist()
        else:
            channels = torch.randperm(D, generator=generator)[:width].sort().values
        P = selection_matrix(channels, D)
        projections = {name: P.clone() for name in proj_shapes}  # one S, independent copies that train apart
        # student gains = the teacher's gains on the kept channels (what Minitron's pruning does)
        t = dict(teacher.named_parameters())
        norms = {name: unsharded(t[name + ".weight"])[channels].detach().float().clone() for name in norm_shapes}
        if rms_correction:  # METHOD §3.3 step 5 (teacher_sel_rms): c = median rms(x_S) / rms(x), per site
            ratios = calibrate(teacher, batches, RmsRatioTaps(teacher, channels, skip_first)).medians()
            norms = {name: g * ratios[name] for name, g in norms.items()}
            info["rms_ratios"] = ratios
        info["channels"] = channels.tolist()
        return projections, norms, info

    ones = {name: torch.ones(shape) for name, shape in norm_shapes.items()}  # LRC's student norm init
    if kind == "gaussian":  # LRC (METHOD §2.4): every projection iid N(0, 0.02^2), independently
        return {name: 0.02 * torch.randn(shape, generator=generator) for name, shape in proj_shapes.items()}, ones, info
    if kind == "orthogonal":  # the digest's "random orthogonal init": independent, all singular values 1
        return {name: random_orthonormal(D, width, generator) for name in proj_shapes}, ones, info
    # pca: one teacher-aligned orthonormal basis shared by all projections (like S, but rotated)
    moment = calibrate(teacher, batches, SecondMomentTaps(skip_first)).moment
    if moment is None:
        raise InitError("the calibration pass saw no tokens - pass non-empty calibration batches")
    V, info["pca_energy_kept"] = pca_basis(moment, width)
    return {name: V.clone() for name in proj_shapes}, ones, info


# ---------------------------------------------------------------------------------------------------------
# Calibration text and the step-0 report

def token_sequences(texts: list[str], tok, seq_len: int) -> torch.Tensor:
    """(N, seq_len) long: the texts' tokens, each text ending in eos, concatenated and cut (remainder dropped)."""
    stream = [i for text in texts for i in tok.encode(text, eos=tok.eos_id is not None)]
    n = len(stream) // seq_len
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)  # (N, T)


class ResidKeeper(dict):
    """taps that collect each block's output over calls, position 0 dropped (massive activations, see erank.py)."""

    def __setitem__(self, key: str, x: torch.Tensor):
        if key.endswith(".resid"):  # dict.setdefault does not come back through __setitem__
            self.setdefault(key, []).append(x[:, 1:].reshape(-1, x.shape[-1]).float())  # (B (T-1), D)


@torch.inference_mode()
def step0_report(teacher: Transformer, student: Student, sequences: torch.Tensor) -> dict:
    """Perplexity, top-1 agreement and per-layer residual eRank (sq and rv) of teacher and step-0 student."""
    tokens = sequences.to(teacher.embed_tokens.weight.device)  # (N, T)
    out, top1, erank_rows = {}, {}, {}
    for who, model in (("teacher", teacher), ("student", student.merge())):
        taps, nll, top1[who] = ResidKeeper(), [], []
        for row in tokens:  # one sequence at a time: (1, T, V) logits, not (N, T, V)
            logits = model(row[None], taps=taps)[0].float()  # (T, V)
            nll.append(torch.nn.functional.cross_entropy(logits[:-1], row[1:], reduction="none"))  # (T-1,)
            top1[who].append(logits.argmax(-1))              # (T,)
        out[f"perplexity_{who}"] = torch.cat(nll).mean().exp().item()
        L = model.args.n_layers
        erank_rows[who] = {kind: [erank(torch.cat(taps[f"{i}.resid"]), kind=kind) for i in range(L)]
                           for kind in ("sq", "rv")}
    out["top1_agreement"] = (torch.cat(top1["teacher"]) == torch.cat(top1["student"])).float().mean().item()
    out["erank"] = erank_rows  # {who: {kind: [per layer]}}: held-out tokens pooled, position 0 excluded
    out["erank_mean"] = {who: {kind: sum(v) / len(v) for kind, v in rows.items()} for who, rows in erank_rows.items()}
    return out


def print_report(report: dict, d_teacher: int, width: int):
    """The eRank table (per layer, both kinds) and the step-0 summary lines."""
    e, columns = report["erank"], [(who, kind) for kind in ("sq", "rv") for who in ("teacher", "student")]
    print("eRank of the residual stream after each block (held-out tokens pooled, position 0 excluded)")
    print("  sq = Diff-eRank (centred, row-normalised), rv = Roy-Vetterli (singular values of centred tokens)")
    print(f"{'layer':>6}" + "".join(f"{who + ' ' + kind:>12}" for who, kind in columns))
    for i in range(len(e["teacher"]["sq"])):
        print(f"{i:>6}" + "".join(f"{e[who][kind][i]:>12.2f}" for who, kind in columns))
    mean = report["erank_mean"]
    print(f"{'mean':>6}" + "".join(f"{mean[who][kind]:>12.2f}" for who, kind in columns))
    print(f"{'mean/d':>6}" + "".join(f"{mean[who][kind] / (d_teacher if who == 'teacher' else width):>12.3f}"
                                    for who, kind in columns))
    print(f"perplexity: teacher {report['perplexity_teacher']:.2f}, step-0 student "
          f"{report['perplexity_student']:.2f}; top-1 agreement {report['top1_agreement']:.3f}")


# ---------------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description="Initialise a student's projections (RED channel selection or a "
                                                 "baseline) and report the step-0 student.")
    parser.add_argument("--teacher", required=True, help="teacher HF checkpoint directory")
    parser.add_argument("--width", type=int, required=True, help="student residual width W (multiple of heads)")
    parser.add_argument("--calib", required=True, help=".txt or .jsonl (`text` or `question`/`answer`) text")
    parser.add_argument("--out", required=True, help="output .safetensors (the Student's state_dict); the report "
                                                     "goes next to it as .json")
    parser.add_argument("--init", default="select", help=f"one of {', '.join(KINDS)}")
    parser.add_argument("--importance", default="minitron", help=f"one of {', '.join(IMPORTANCE)}")
    parser.add_argument("--n-calib", type=int, default=16, help="calibration sequences (RED used 15 samples)")
    parser.add_argument("--n-eval", type=int, default=4, help="held-out sequences for the report (after them)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rms-correction", action="store_true", help="gains *= median rms(x_S)/rms(x) per site")
    parser.add_argument("--skip-first", action="store_true", help="leave position 0 out of the calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    def fail(message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    if args.init not in KINDS or args.importance not in IMPORTANCE:
        bad, allowed = (args.init, KINDS) if args.init not in KINDS else (args.importance, IMPORTANCE)
        fail(f"unknown choice {bad!r} - use one of {', '.join(allowed)}")
    if min(args.n_calib, args.n_eval, args.batch_size) < 1 or args.seq_len < 2:
        fail("--n-calib, --n-eval and --batch-size must be >= 1 and --seq-len >= 2 - fix the flag")
    try:
        texts = [t for t in read_documents(args.calib) if t.strip()]
        if not texts:
            raise InitError(f"{args.calib}: no text in the file - pass a non-empty .txt or .jsonl file")
        teacher = load_model(args.teacher, device=args.device)
        check_width(teacher.args, args.width)
        sequences = token_sequences(texts, load_tokenizer(args.teacher), args.seq_len)
        if len(sequences) < 2:
            raise InitError(f"{args.calib}: {len(sequences)} sequence(s) of {args.seq_len} tokens - need at least 2 "
                            "(calibration + held-out); pass more text or a smaller --seq-len")
        n_eval = min(args.n_eval, len(sequences) // 2)  # held out from the end; calibration from the start
        calib = sequences[:min(args.n_calib, len(sequences) - n_eval)]
        batches = list(calib.split(args.batch_size))    # (B, T) each
        projections, norms, info = init_projections(args.init, teacher, args.width, batches=batches,
                                                    importance=args.importance, skip_first=args.skip_first,
                                                    rms_correction=args.rms_correction, seed=args.seed)
    except (InitError, StudentError, LoadError, TokenizerError, DataError) as e:
        fail(str(e))
    student = Student(teacher, args.width, projections, norms)
    print(f"init {args.init}: width {args.width} of {teacher.args.dim}; calibration {len(calib)} x {args.seq_len} "
          f"tokens, {n_eval} held out")
    report = step0_report(teacher, student, sequences[-n_eval:])
    print_report(report, teacher.args.dim, args.width)

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}
    save_file(state, out, metadata={"init": args.init, "width": str(args.width), "teacher": args.teacher})
    config = {k: v for k, v in vars(args).items()}
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"config": config, "calib_sequences": len(calib), "eval_sequences": n_eval, **info, **report},
                  f, indent=1)
    print(f"wrote {out} and {os.path.splitext(out)[0]}.json")


if __name__ == "__main__":
    main()

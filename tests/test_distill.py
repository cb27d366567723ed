"""distill.py: each loss term against an independent formula, one materialisation per step, training really
learns, exact resume after a kill, 2-rank gloo DDP, the final student in transformers, and bad input.

Builds on distill.py, student.py and init_select.py, with conftest.py's tiny teachers.
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

import distill
import eval_reasoning as er
from init_select import init_projections
from load_weights import load_model
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
            "--calib", 4, "--eval-every", 1000, "--eval-problems", 0, "--out", out, *extra]


# ---------------------------------------------------------------------------------------------------------
# loss terms against independent formulas

@pytest.mark.parametrize("reduction", ["seq_sum", "token_mean"])
def test_kl_matches_torch_distributions(reduction):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3
    T = 2.5
    kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=t / T),
                                           torch.distributions.Categorical(logits=s / T))  # (3, 5): KL(t || s)
    expected = kl.sum() / 3 if reduction == "seq_sum" else kl.mean()
    assert torch.allclose(distill.kl_loss(s, t, T, reduction), expected, rtol=1e-5)


def test_ce_is_next_token_cross_entropy():
    logits, tokens = torch.randn(2, 6, 7), torch.randint(0, 7, (2, 6))
    log_p = logits.log_softmax(-1)
    expected = -torch.stack([log_p[b, i, tokens[b, i + 1]] for b in range(2) for i in range(5)]).mean()
    assert torch.allclose(distill.ce_loss(logits, tokens), expected, atol=1e-6)


def test_clone_terms_against_hand_built_activations(tiny_model):
    teacher = load_model(tiny_model("qwen2"))
    proj, norms, _ = init_projections("gaussian", teacher, 32, seed=1)
    student = Student(teacher, 32, proj, norms)
    tokens = torch.randint(0, 256, (2, 9))
    t_all, s_all = {}, {}
    with torch.no_grad():
        t_taps = distill.TeacherTaps()
        teacher(tokens, taps=t_taps)
        teacher(tokens, taps=t_all)
        clone = distill.CloneTaps(t_taps, teacher, student)
        student(tokens, taps=clone)
        student(tokens, taps=s_all)
    mse = lambda a, b: ((a - b) ** 2).mean()
    for name in ("q", "k", "v", "gate", "up"):
        expected = sum(mse(s_all[f"{i}.{name}"], t_all[f"{i}.{name}"]) for i in range(2))
        assert torch.allclose(clone.loss[name], expected, rtol=1e-5), name
    # attn_out in teacher space: student heads through the teacher's o_proj, against the teacher's attn_out
    expected = sum(mse(s_all[f"{i}.attn_heads"] @ teacher.layers[i].self_attn.o_proj.weight.T, t_all[f"{i}.attn_out"])
                   for i in range(2))
    assert torch.allclose(clone.loss["attn_out"], expected, rtol=1e-5)
    # mlp_out in student space: the teacher's MLP output through the student's own down projection
    expected = sum(mse(s_all[f"{i}.mlp_out"], t_all[f"{i}.mlp_out"] @ proj[f"layers.{i}.down"]) for i in range(2))
    assert torch.allclose(clone.loss["mlp_out"], expected, rtol=1e-5)


def test_lr_schedule():
    lrs = [distill.get_lr(s, lr=1.0, warmup=4, steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[-1] == pytest.approx(1 / 16)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


# ---------------------------------------------------------------------------------------------------------
# one materialisation per step

def test_materialise_once_equals_per_micro_batch(tiny_model):
    teacher = load_model(tiny_model("llama"))
    cfg = type("Cfg", (), dict(clone_terms=distill.CLONE_TERMS, kl_temperature=2.0, kl_reduction="seq_sum",
                               alpha=0.2, vocab_size=256))
    micro = [torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    proj, norms, _ = init_projections("orthogonal", teacher, 32, seed=0)
    once = Student(teacher, 32, proj, norms)
    distill.train_step(once, teacher, micro, cfg, torch.autocast("cpu", enabled=False))
    # reference: materialise inside every micro-batch and back-propagate straight into the projections
    ref = Student(teacher, 32, proj, norms)
    for tokens in micro:
        t_taps = distill.TeacherTaps()
        with torch.no_grad():
            t_logits = teacher(tokens, taps=t_taps)
        s_taps = distill.CloneTaps(t_taps, teacher, ref)
        s_logits = ref(tokens, taps=s_taps)
        loss = (distill.ce_loss(s_logits, tokens) + distill.kl_loss(s_logits, t_logits, 2.0, "seq_sum")
                + 0.2 * sum(s_taps.loss.values()))
        (loss / len(micro)).backward()
    for (name, a), b in zip(once.named_parameters(), ref.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-6, name
    assert max(p.grad.abs().max() for p in ref.parameters()) > 1e-3  # gradients are not trivially zero


# ---------------------------------------------------------------------------------------------------------
# the CLI end to end

def test_steps_0_writes_the_pruned_teacher(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    out = tmp_path / "s0"
    result = run_distill(*small_run(teacher_dir, corpus, out, "--steps", 0, "--eval-problems", 6))
    cfg = json.load(open(str(out) + ".run/config.json"))
    channels = torch.tensor(cfg["init_info"]["channels"])
    teacher, student = load_model(teacher_dir), load_model(str(out))
    assert student.args.dim == 32
    assert torch.equal(student.embed_tokens.weight, teacher.embed_tokens.weight[:, channels])
    assert torch.equal(student.layers[1].mlp.down_proj.weight, teacher.layers[1].mlp.down_proj.weight[channels])
    # the summary's accuracy column is eval_reasoning's verdict on the written student (no chat format: plain)
    items = er.make_synthetic(6, 2, seed=0 + 12345)
    res = er.evaluate(student, load_tokenizer(teacher_dir), items, max_new_tokens=256)
    row = next(line for line in result.stdout.splitlines() if line.startswith("student "))
    assert row.endswith(f"{res['accuracy']:.2f} [{res['lo']:.2f}, {res['hi']:.2f}]"), row
    assert "2-step accuracy" in result.stdout and "plain Question/Answer prompt" in result.stdout


@pytest.mark.parametrize("preset", ["red", "lrc"])
def test_training_reduces_the_loss(tiny_teacher, corpus, tmp_path, preset):
    out = tmp_path / preset
    run_distill(*small_run(tiny_teacher("llama"), corpus, out, "--steps", 30, "--preset", preset, "--lr", 1e-2))
    losses = [json.loads(line)["loss"] for line in open(str(out) + ".run/metrics.jsonl")]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last <= 0.7 * first, (preset, first, last)


def test_final_student_loads_in_transformers(tiny_teacher, corpus, tmp_path):
    out = tmp_path / "final"
    run_distill(*small_run(tiny_teacher("qwen3"), corpus, out, "--steps", 5, "--preset", "lrc"))
    teacher = load_model(json.load(open(str(out) + ".run/config.json"))["teacher"])
    student = Student.from_state_dict(teacher, load_file(str(out) + ".run/checkpoint/student.safetensors"))
    tokens = torch.randint(0, 300, (2, 10))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        assert (ref(tokens).logits - student(tokens)).abs().max() <= 1e-4


def test_resume_after_kill_equals_uninterrupted_run(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    args = lambda out: small_run(teacher_dir, corpus, out, "--steps", 30, "--ckpt-every", 3)
    run_distill(*args(tmp_path / "straight"))
    # the same run, killed with SIGKILL as soon as a checkpoint past step 6 exists, then resumed
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "distill.py", *map(str, args(killed))], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = str(killed) + ".run/checkpoint/state.json"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.load(open(state))["step"] >= 6:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.load(open(state))["step"]
    assert step < 30, "the run finished before it could be killed"
    run_distill(*args(killed), "--resume")
    a = load_file(str(tmp_path / "straight") + ".run/checkpoint/student.safetensors")
    b = load_file(str(killed) + ".run/checkpoint/student.safetensors")
    assert max((a[k] - b[k]).abs().max() for k in a) <= 1e-6


def test_interrupted_checkpoint_write_keeps_the_previous_one(tiny_model, tmp_path, monkeypatch):
    teacher = load_model(tiny_model("llama"))
    proj, norms, _ = init_projections("gaussian", teacher, 32)
    student = Student(teacher, 32, proj, norms)
    opt = torch.optim.AdamW(student.parameters())
    path = str(tmp_path / "ckpt")
    distill.save_checkpoint(path, student, opt, {"step": 1})

    def dies(*a, **k):
        raise KeyboardInterrupt  # the process "dies" half way through writing the next checkpoint
    monkeypatch.setattr(distill, "save_file", lambda tensors, file: dies() if "optimizer" in file else None)
    with pytest.raises(KeyboardInterrupt):
        distill.save_checkpoint(path, student, opt, {"step": 2})
    assert json.load(open(os.path.join(path, "state.json")))["step"] == 1
    assert set(load_file(os.path.join(path, "student.safetensors"))) == set(student.state_dict())


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_rank_gloo_matches_single_process(tiny_teacher, corpus, tmp_path, mode):
    """DDP (teacher copied) and --fsdp (teacher sharded by FSDP2; here on self:N data, which the ranks then
    sample in lockstep) both train exactly like one process with the same global batch."""
    teacher_dir = tiny_teacher("llama")
    data = ["--data", corpus] if mode == "ddp" else ["--data", "self:12"]
    args = lambda out: small_run(teacher_dir, corpus, out, "--steps", 4, "--grad-accum", 2, *data)
    run_distill(*args(tmp_path / "single"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    flags = ["--fsdp"] if mode == "fsdp" else []
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", "distill.py", *map(str, args(tmp_path / mode)), *flags],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(str(tmp_path / "single") + ".run/checkpoint/student.safetensors")
    b = load_file(str(tmp_path / mode) + ".run/checkpoint/student.safetensors")
    assert max((a[k] - b[k]).abs().max() for k in a) <= 1e-5
    if mode == "fsdp":  # the ranks sampled the same sequences as the single process
        name = "self-12-seq32-seed0.bin"
        assert (tmp_path / ("single.run/" + name)).read_bytes() == (tmp_path / ("fsdp.run/" + name)).read_bytes()


# ---------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing overwritten

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
        "unknown preset": (base(**{"--preset": "fast"}), "unknown preset 'fast'"),
        "data missing": (base(**{"--data": tmp_path / "nope.txt"}), "nope.txt"),
        "data empty": (base(**{"--data": empty}), "empty"),
        "data too short": (base(**{"--data": short}), "short.txt"),
        "not utf-8": (base(**{"--data": latin1}), "UTF-8"),
        "resume without checkpoint": (base() + ["--resume"], "no checkpoint to resume"),
        "seq-len too long": (base(**{"--seq-len": 100000}), "exceeds the teacher's"),
        "unwritable out": (base(**{"--out": "/proc/red-out"}), "not writable"),
        "unknown init": (base() + ["--init", "svd"], "unknown init 'svd'"),
        "fsdp in one process": (base() + ["--fsdp"], "torchrun --nproc_per_node"),
    }


def test_bad_inputs_one_line_exit_2(tiny_teacher, corpus, tmp_path, capsys):
    teacher_dir = tiny_teacher("llama")
    capsys.readouterr()  # drop what building the fixture printed
    for name, (argv, fragment) in bad_cases(teacher_dir, corpus, tmp_path).items():
        with pytest.raises(SystemExit) as exit_:  # in-process for speed; any other exception fails the test
            distill.main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2, (name, lines)
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], (name, lines)
        assert not (tmp_path / "o").exists() and not (tmp_path / "o.run").exists(), name  # nothing written
    # and as a user sees it: a real process, no traceback
    argv, fragment = bad_cases(teacher_dir, corpus, tmp_path)["width not multiple"]
    result = run_distill(*argv, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and fragment in result.stderr


def test_resume_for_another_width_is_refused(tiny_teacher, corpus, tmp_path):
    teacher_dir = tiny_teacher("llama")
    out = tmp_path / "w32"
    run_distill(*small_run(teacher_dir, corpus, out, "--steps", 2))
    before = open(str(out) + ".run/checkpoint/state.json").read()
    argv = small_run(teacher_dir, corpus, out, "--steps", 4, "--resume")
    argv[argv.index("--width") + 1] = 48
    result = run_distill(*argv, check=False)
    assert result.returncode == 2 and "another teacher or width" in result.stderr
    assert open(str(out) + ".run/checkpoint/state.json").read() == before

"""init_select.py: RED's channel-selection init makes the step-0 student the width-pruned teacher (checked
against a pruned model built here from the raw checkpoint and run by `transformers`), every importance score
finds planted channels and RED's equals a hand computation, the baseline inits have their defining properties,
and the CLI writes an init file (read back by distill.py's reader) plus its report.

Builds on init_select.py, student.py and erank.py, with conftest.py's tiny models and teachers.
Run as: OMP_NUM_THREADS=1 pytest tests/test_init_select.py -q      (the real-teacher test is marked slow)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from init_select import (InitError, channel_importance, init_info, init_projections, read_init, select_channels,
                         selection_matrix)
from load_weights import fingerprint, load_model
from student import Student

FAMILIES = ("llama", "qwen2", "qwen3")
REPO = Path(__file__).resolve().parents[1]  # the CLIs run from the repository root
INPUT_SIDE = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")
OUTPUT_SIDE = ("o_proj.weight", "down_proj.weight")


def random_batches(n=4, seed=0, vocab=256, T=24):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, T), generator=g) for _ in range(n)]


def pruned_in_transformers(teacher_dir, channels, out_dir):
    """The teacher physically pruned to `channels` from its raw HF tensors, loaded by transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM
    S = torch.as_tensor(channels)
    pruned = {}
    for name, t in load_file(os.path.join(teacher_dir, "model.safetensors")).items():
        if name in ("model.embed_tokens.weight", "lm_head.weight") or name.endswith(INPUT_SIDE):
            t = t[:, S]  # reads the residual stream: keep its input columns S
        elif name.endswith(OUTPUT_SIDE):
            t = t[S, :]  # writes the residual stream: keep its output rows S
        elif name.endswith("layernorm.weight") or name == "model.norm.weight":
            t = t[S]     # width-W gains; biases and Qwen3's per-head q/k norms stay as they are
        pruned[name] = t.contiguous()
    config = AutoConfig.from_pretrained(teacher_dir)
    config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    config.hidden_size = len(S)
    config.save_pretrained(out_dir)
    save_file(pruned, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()


# ---------------------------------------------------------------------------------------------------------
# The central claim: step-0 RED student == the width-pruned teacher

@pytest.mark.parametrize("family,width", [("llama", 32), ("qwen2", 48), ("qwen3", 32)])
def test_select_student_is_the_pruned_teacher(tiny_model, tmp_path, family, width):
    teacher_dir = tiny_model(family)
    teacher = load_model(teacher_dir)
    projections, norms, info = init_projections("select", teacher, width, batches=random_batches())
    student = Student(teacher, width, projections, norms)
    reference = pruned_in_transformers(teacher_dir, info["channels"], tmp_path / "pruned")
    tokens = random_batches(1, seed=9, T=40)[0]
    with torch.no_grad():
        torch.testing.assert_close(student(tokens), reference(tokens).logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Importance and selection

def test_select_channels_is_top_w_by_score_then_index():
    scores = torch.tensor([0.5, 3.0, 1.0, 3.0, 0.1, 2.0, 1.0], dtype=torch.float64)
    assert select_channels(scores, 3).tolist() == [1, 3, 5]
    assert select_channels(scores, 5).tolist() == [1, 2, 3, 5, 6]  # tie 1.0 at 2 and 6: both fit
    assert select_channels(scores, 4).tolist() == [1, 2, 3, 5]     # tie broken toward the lower index
    brute = sorted(sorted(range(7), key=lambda i: (-scores[i].item(), i))[:4])
    assert select_channels(scores, 4).tolist() == brute
    P = selection_matrix(torch.tensor([1, 3, 5]), 7)
    assert P.shape == (7, 3) and P.sum() == 3 and P[1, 0] == P[3, 1] == P[5, 2] == 1
    x = torch.arange(7.0)[None]  # (1, D): x P keeps the selected channels in order
    assert (x @ P).tolist() == [[1.0, 3.0, 5.0]]
    torch.testing.assert_close(P.T @ P, torch.eye(3))


@pytest.mark.parametrize("method", ["red", "minitron", "l2", "mean_abs"])
def test_importance_finds_planted_channels_and_is_stable(tiny_model, method):
    teacher = load_model(tiny_model("llama"))
    planted = [3, 17, 40]
    with torch.no_grad():  # a few loud residual channels, as real LLMs have
        teacher.embed_tokens.weight[:, planted] *= 6.0
        for layer in teacher.layers:
            layer.input_layernorm.weight[planted] = layer.input_layernorm.weight[planted].abs() * 3.0
            layer.post_attention_layernorm.weight[planted] = layer.post_attention_layernorm.weight[planted].abs() * 3.0
    a = channel_importance(teacher, random_batches(seed=1), method=method)
    again = channel_importance(teacher, random_batches(seed=1), method=method)
    b = channel_importance(teacher, random_batches(seed=2), method=method)  # a different calibration set
    assert a.dtype == torch.float64 and a.shape == (64,)
    assert torch.equal(a, again)  # deterministic
    S_a, S_b = select_channels(a, 32), select_channels(b, 32)
    assert set(planted) <= set(S_a.tolist()) and set(planted) <= set(S_b.tolist())
    overlap = len(set(S_a.tolist()) & set(S_b.tolist())) / 32
    print(f"{method}: overlap of the selected channels across two calibration sets = {overlap:.2f}")
    assert overlap >= 0.75  # the RED paper is described as reporting > 78 % across calibration sources


@pytest.mark.parametrize("skip_first", [False, True])
def test_red_score_equals_a_hand_computation(tiny_model, skip_first):
    """RED's score as described: per hidden state h^l (the embedding output, then every block output), the mean
    |h| over each sequence's tokens, an L2 norm over sequences, the mean over layers."""
    from conftest import recorder
    teacher = load_model(tiny_model("qwen2"))
    batches = random_batches(n=3, seed=4)
    states = {}  # (layer index in 0..L, batch) -> (B, T, D): layer 0 = embedding output
    for b, tokens in enumerate(batches):
        taps, tap = recorder()
        with torch.no_grad():
            teacher(tokens, tap=tap)
        states[0, b] = taps["0.embed"]
        for i in range(teacher.args.n_layers):
            states[i + 1, b] = taps[f"{i}.resid"]
    first = int(skip_first)
    per_layer = []
    for layer in range(teacher.args.n_layers + 1):
        seq_means = torch.cat([states[layer, b][:, first:].abs().mean(1) for b in range(len(batches))])  # (N, D)
        per_layer.append(seq_means.double().pow(2).sum(0).sqrt())  # (D,): L2 over the N sequences
    expected = torch.stack(per_layer).mean(0)
    got = channel_importance(teacher, batches, method="red", skip_first=skip_first)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_rms_correction_is_the_median_rms_ratio_of_each_norm_input(tiny_model):
    teacher = load_model(tiny_model("llama"))
    batches = random_batches()
    _, plain, info = init_projections("select", teacher, 32, batches=batches)
    _, corrected, info_c = init_projections("select", teacher, 32, batches=batches, rms_correction=True)
    S = torch.tensor(info["channels"])
    # layer 0's input_layernorm reads the embedding output: compute its ratio straight from the definition
    x = torch.cat([teacher.embed_tokens(t).detach().reshape(-1, 64) for t in batches])  # (N, D)
    rms = lambda v: v.pow(2).mean(-1).sqrt()
    expected = (rms(x[:, S]) / rms(x)).median()
    assert info_c["rms_ratios"]["layers.0.input_layernorm"] == pytest.approx(expected.item(), rel=1e-4)
    assert set(info_c["rms_ratios"]) == set(plain)  # every norm site, the final norm included
    for name, g in corrected.items():
        torch.testing.assert_close(g, plain[name] * info_c["rms_ratios"][name])


# ---------------------------------------------------------------------------------------------------------
# The baselines' defining properties

def test_baseline_inits(tiny_model):
    teacher = load_model(tiny_model("qwen2"))
    D, W = 64, 32
    gauss, g_norms, _ = init_projections("gaussian", teacher, W, seed=0)
    all_p = torch.cat([p.flatten() for p in gauss.values()])
    assert abs(all_p.std().item() - 0.02) < 0.001 and abs(all_p.mean().item()) < 0.001
    assert all(torch.equal(g, torch.ones(W)) for g in g_norms.values())
    assert not torch.equal(gauss["layers.0.q"], gauss["layers.0.k"])  # independent draws
    orth, _, _ = init_projections("orthogonal", teacher, W, seed=0)
    for P in orth.values():
        torch.testing.assert_close(P.T @ P, torch.eye(W), atol=1e-5, rtol=0)
    pca, _, info = init_projections("pca", teacher, W, batches=random_batches())
    V = pca["embed"]
    torch.testing.assert_close(V.T @ V, torch.eye(W), atol=1e-5, rtol=0)
    assert all(torch.equal(P, V) and P.data_ptr() != V.data_ptr() for k, P in pca.items() if k != "embed")
    assert 0.5 < info["pca_energy_kept"] < 1.0
    rand, r_norms, info = init_projections("random_select", teacher, W, seed=3)
    S = torch.tensor(info["channels"])
    assert torch.equal(rand["layers.1.down"], selection_matrix(S, D)) and len(set(S.tolist())) == W
    torch.testing.assert_close(r_norms["norm"], teacher.norm.weight[S].detach())
    assert init_projections("random_select", teacher, W, seed=3)[2]["channels"] == info["channels"]


def test_init_errors(tiny_model):
    teacher = load_model(tiny_model("llama"))
    with pytest.raises(InitError, match="unknown init 'svd'"):
        init_projections("svd", teacher, 32)
    with pytest.raises(InitError, match="needs calibration batches"):
        init_projections("select", teacher, 32)
    with pytest.raises(InitError, match="rms_correction"):
        init_projections("gaussian", teacher, 32, rms_correction=True)
    with pytest.raises(InitError, match="unknown importance"):
        init_projections("select", teacher, 32, batches=random_batches(), importance="wanda")
    with pytest.raises(InitError, match="saw no tokens"):
        init_projections("select", teacher, 32, batches=[])


# ---------------------------------------------------------------------------------------------------------
# The CLI

TEXT = ("The river rose slowly through the night, and by morning the lower fields were under water. "
        "Farmers moved their animals to the hills, while the children watched the brown current carry "
        "branches, fences and the occasional chair past the old stone bridge. ") * 12


def test_cli_writes_init_and_report(tiny_teacher, tmp_path):
    teacher_dir = tiny_teacher("llama")
    (tmp_path / "calib.txt").write_text(TEXT)
    out = tmp_path / "init" / "select.safetensors"
    done = subprocess.run([sys.executable, "init_select.py", "--teacher", teacher_dir, "--width", "32", "--calib",
                           str(tmp_path / "calib.txt"), "--out", str(out), "--seq-len", "32", "--n-calib", "8",
                           "--rms-correction"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "eRank" in done.stdout and "perplexity" in done.stdout
    report = json.loads((tmp_path / "init" / "select.json").read_text())
    assert len(report["channels"]) == 32 and len(report["scores"]) == 64 and report["calib_windows"] == 8
    assert report["importance"] == "red" and report["init_file"] == "select.safetensors"
    assert len(report["student"]["layers"]) == 2 and report["teacher"]["ppl"] > 1.0
    info = init_info(str(out))  # the file carries what made it, the scores aside
    assert info["channels"] == report["channels"] and info["calib"] == str(tmp_path / "calib.txt")
    assert info["teacher_fingerprint"] == fingerprint(teacher_dir) and "scores" not in info
    teacher = load_model(teacher_dir)
    student, _ = read_init(str(out), teacher, fingerprint(teacher_dir))
    assert student.args.dim == 32 and student.norm.shape == (32,)
    assert torch.equal(student.embed, selection_matrix(torch.tensor(info["channels"]), 64))
    with pytest.raises(InitError, match="made for another teacher"):
        read_init(str(out), teacher, "0" * 64)


def test_cli_bad_inputs_fail_in_one_line(tiny_teacher, tmp_path):
    teacher_dir = tiny_teacher("llama")
    (tmp_path / "ok.txt").write_text(TEXT)
    (tmp_path / "short.txt").write_text("A short note.")
    (tmp_path / "empty.jsonl").write_text('{"text": "   "}\n{"text": ""}\n')
    cases = {  # flags -> what the one-line error must mention
        ("--width", "0"): "must be at least 1",
        ("--width", "96"): "outside 1..64",
        ("--width", "30"): "use 28 or 32",
        ("--init", "svd"): "invalid choice: 'svd'",
        ("--calib", str(tmp_path / "missing.txt")): "no such file",
        ("--calib", str(tmp_path / "empty.jsonl")): "no documents",
        ("--calib", str(tmp_path / "short.txt")): "needs at least 32 tokens",
        ("--out", str(tmp_path / "ok.txt")): "not a .safetensors name",
        ("--out", os.path.join(teacher_dir, "model.safetensors")): "lies inside the --teacher input",
    }
    procs = {}
    for flags, _ in cases.items():  # run them side by side: each one pays for importing torch
        argv = {"--width": "32", "--calib": str(tmp_path / "ok.txt"), "--seq-len": "32",
                "--out": str(tmp_path / "x.safetensors")} | dict([flags])
        procs[flags] = subprocess.Popen([sys.executable, "init_select.py", "--teacher", teacher_dir,
                                         *sum(argv.items(), ())],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    for flags, expected in cases.items():
        _, err = procs[flags].communicate()
        assert procs[flags].returncode == 2, (flags, err)
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert expected in err, (flags, err)
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# The real example teacher

ENGLISH = """\
The history of the bicycle is a story of many small improvements. Early machines had no pedals at all; riders
pushed themselves along with their feet. Later designs placed the pedals on a huge front wheel, which made the
bicycle fast but dangerous, since a rider sat high above the ground. The safety bicycle, with two wheels of
equal size and a chain driving the rear wheel, solved that problem and quickly became popular across Europe.

Bread is one of the oldest prepared foods. To make a simple loaf, you mix flour, water, salt and yeast, then
knead the dough until it becomes smooth and elastic. The yeast feeds on sugars in the flour and releases gas,
which is trapped by the gluten network and makes the dough rise. After shaping, the loaf is baked in a hot
oven until the crust is brown and the inside sounds hollow when tapped.

Volcanoes form where molten rock from deep inside the Earth reaches the surface. Some erupt violently,
throwing ash high into the atmosphere, while others release slow rivers of lava that can flow for weeks.
Scientists watch for small earthquakes, changes in the shape of the ground and the gases escaping from
vents, because these signs often appear before an eruption and can give people time to leave.

A good night of sleep helps the brain store what it learned during the day. Researchers have found that
students who sleep well after studying remember more the next morning than those who stay awake. Regular
hours, a dark and quiet room, and avoiding bright screens late in the evening are simple habits that make
restful sleep more likely for most people.

The library in our town opened more than a hundred years ago. At first it held only a few shelves of donated
books, but over time it grew into a large building with reading rooms, a children's corner and a small
museum of local history. Today people come not only to borrow books but also to use the computers, attend
lectures and meet their neighbours.

Honey bees live in colonies that can hold tens of thousands of workers. Each bee has a job that changes as
it grows older: young bees clean the cells and feed the larvae, while older ones guard the entrance or fly
out to collect nectar and pollen. When a forager finds a rich patch of flowers, it returns to the hive and
performs a dance that tells the others the direction and distance of the food.

The first trains ran on wooden rails and were pulled by horses. Steam engines changed everything: within a
few decades, railways connected cities that had been days apart, and goods could travel quickly and
cheaply across whole countries. Towns grew up around stations, clocks were set to a common time so that
timetables made sense, and ordinary families could visit the sea for the first time.

Learning a new language takes patience. At the beginning, even simple sentences feel difficult, and it is
easy to become discouraged. Teachers often recommend a little practice every day rather than long sessions
once a week. Listening to songs, reading short stories and speaking with native speakers, even when you make
mistakes, all help the new words and patterns to settle in memory.

Water covers most of the surface of our planet, yet only a small part of it is fresh water that people can
drink. Much of that is frozen in glaciers and ice caps. Rivers, lakes and underground aquifers supply cities
and farms, and in many regions the demand for water is growing faster than the supply. Saving water at home
and repairing leaking pipes are small steps that make a real difference.

Chess is played on a board of sixty-four squares. Each player begins with sixteen pieces, and the aim is to
trap the opposing king so that it cannot escape. Beginners usually learn how each piece moves, then study
simple patterns such as forks and pins. Strong players plan many moves ahead, but they also rely on a feeling
for which positions are good, built up over years of practice.
"""


@pytest.mark.slow
def test_real_teacher_select_beats_gaussian(example_teacher):
    from data import cut_windows, tokenize_documents
    from erank import measure_model
    from tokenizer import load_tokenizer
    teacher = load_model(example_teacher)
    stream = tokenize_documents(ENGLISH.split("\n\n"), load_tokenizer(example_teacher))
    windows = torch.from_numpy(cut_windows(stream, 96).astype("int64"))  # (N, 96), packed as training packs
    calib, held_out = windows[:-3], windows[-3:]
    ppl = {"teacher": measure_model(teacher, held_out, layers=False)["ppl"]}
    for kind, importance in (("select", "red"), ("select", "minitron"), ("gaussian", "red")):
        projections, norms, _ = init_projections(kind, teacher, 288, batches=calib.split(4), importance=importance)
        ppl[kind, importance] = measure_model(Student(teacher, 288, projections, norms).merge(), held_out,
                                              layers=False)["ppl"]
    print(f"\nwidth 288 of 576, {len(calib)} x 96 calibration tokens: perplexity {ppl}")
    # NOTE: half the width without training is a big cut (thousands of perplexity); gaussian is near uniform.
    # Measured here: teacher 50.6, red 40,303, minitron 11,120, gaussian 81,978
    assert ppl["teacher"] * 10 < ppl["select", "minitron"] < ppl["select", "red"] < ppl["gaussian", "red"]
    assert ppl["select", "minitron"] * 5 < ppl["gaussian", "red"]

"""Shared fixtures: tiny random Hugging Face checkpoints built by `transformers` (the reference we did not
write) and the real example teacher, converted once and cached.

Builds on transformers and tokenizers (the references) and scripts/example_teacher.py.
Run as: pytest tests/ -n 2      (two workers, one per core; add -m "not slow" to skip the real-teacher tests)
"""
import os

import pytest
import torch

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # set by pytest -n N (pytest-xdist)
if WORKERS > 1:  # one thread per worker (run as many workers as cores): N thread pools each as wide as the
    torch.set_num_threads(1)  # machine would fight over the cores, and spinning threads wait for each other
    os.environ["OMP_NUM_THREADS"] = "1"  # the same for the command-line tools the tests start


def recorder() -> tuple[dict, callable]:
    """(acts, tap): a model.py tap that keeps every activation under "{layer}.{name}" (tests only: it holds all)."""
    acts = {}
    return acts, lambda layer, name, x: acts.__setitem__(f"{layer}.{name}", x)


TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)


def make_tiny_model(path, family: str = "llama", seed: int = 0, **overrides) -> str:
    """Write a seeded, randomly initialised HF checkpoint of `family` (llama, qwen2, qwen3) to `path`."""
    import transformers
    cfg_kwargs = dict(TINY)
    if family == "llama":  # GQA + llama3 rope scaling, as in Llama 3.2
        cfg_kwargs.update(rope_theta=500000.0, tie_word_embeddings=False,
                          rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                            high_freq_factor=4.0, original_max_position_embeddings=64))
        config_cls, model_cls = transformers.LlamaConfig, transformers.LlamaForCausalLM
    elif family == "qwen2":  # q/k/v bias, tied embeddings, padded vocab
        cfg_kwargs.update(rope_theta=1000000.0, tie_word_embeddings=True)
        config_cls, model_cls = transformers.Qwen2Config, transformers.Qwen2ForCausalLM
    elif family == "qwen3":  # per-head q/k RMSNorm, head_dim not hidden/heads
        cfg_kwargs.update(rope_theta=1000000.0, tie_word_embeddings=True, head_dim=32)
        config_cls, model_cls = transformers.Qwen3Config, transformers.Qwen3ForCausalLM
    else:
        raise ValueError(family)
    cfg_kwargs.update(overrides)
    rope_scaling = cfg_kwargs.pop("rope_scaling", None)
    config = config_cls(**cfg_kwargs)
    if rope_scaling is not None:  # transformers 5 reads `rope_parameters`, 4.x reads `rope_scaling`
        if hasattr(config, "rope_parameters"):
            config.rope_parameters = dict(rope_scaling, rope_theta=cfg_kwargs["rope_theta"])
        else:
            config.rope_scaling = rope_scaling
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # HF's init is tiny (std 0.02): make activations and norms non-trivial
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(p / 0.02 * (1.0 / p.shape[-1] ** 0.5) * 1.5)
    model.save_pretrained(str(path), safe_serialization=True)
    return str(path)


@pytest.fixture
def tiny_model(tmp_path):
    """Factory: tiny_model(family, **overrides) -> checkpoint dir."""
    def build(family="llama", seed=0, **overrides):
        return make_tiny_model(tmp_path / f"{family}-{seed}", family, seed, **overrides)
    return build


@pytest.fixture(scope="session")
def example_teacher():
    """The real SmolLM2-135M-Instruct as an HF directory (built on first use into ~/.cache/red)."""
    from scripts.example_teacher import DEFAULT_DIR, build_example_teacher
    try:
        return build_example_teacher(DEFAULT_DIR)
    except (FileNotFoundError, ImportError) as e:
        pytest.skip(f"example teacher unavailable: {e}")


TINY_CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: 3 + 4 = 7. #### 7",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Distillation trains a small student to imitate a large teacher, one token at a time.",
    "def add(a, b):\n    return a + b  # numbers 0123456789",
]


def make_tiny_teacher(path, family: str = "llama", seed: int = 0) -> str:
    """A tiny random checkpoint *with* a byte-level BPE tokenizer (trained here), so CLIs that tokenise text
    (distill.py, eval_reasoning.py, erank.py) can run on it. Its embedding (320 rows) is padded beyond the
    tokenizer's ~300 ids, as Qwen's is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    make_tiny_model(path, family, seed, vocab_size=320, max_position_embeddings=1024)  # room for worked problems
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_CORPUS * 20, trainer)
    tok.save(os.path.join(str(path), "tokenizer.json"))
    with open(os.path.join(str(path), "tokenizer_config.json"), "w") as f:
        f.write('{"eos_token": "<|endoftext|>", "bos_token": null}')
    return str(path)


@pytest.fixture
def tiny_teacher(tmp_path):
    """Factory: tiny_teacher(family="llama") -> checkpoint dir with tokenizer.json (vocab ~300, embedding 320)."""
    def build(family="llama", seed=0):
        return make_tiny_teacher(tmp_path / f"teacher-{family}-{seed}", family, seed)
    return build


def general_texts(tmp_path) -> dict:
    """Two small .jsonl files of general text, {"train": path, "heldout": path}, for the experiments' harnesses."""
    import json
    texts = {name: tmp_path / f"{name}.jsonl" for name in ("train", "heldout")}
    for i, (name, path) in enumerate(texts.items()):
        path.write_text("".join(json.dumps({"text": f"Document {j} of the {name} text: the quick brown fox, part "
                                                    f"{i}. " * 4}) + "\n" for j in range(40)))
    return texts


def read_csv(path) -> list[dict]:
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))

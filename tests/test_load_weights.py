"""load_weights.py: strict loading (single and sharded), save_model read back by transformers, bad input.

Builds on load_weights.py and model.py, with transformers as the reference.
Run as: pytest tests/test_load_weights.py -q
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from load_weights import LoadError, load_model, save_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_logits(path, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_save_then_transformers_load_gives_identical_logits(tiny_model, tmp_path, family):
    src = tiny_model(family)
    model = load_model(src)
    with torch.no_grad():  # make it differ from the source so a stale copy would be caught
        model.norm.weight.mul_(1.5)
    out = tmp_path / "saved"
    save_model(model, str(out), like=src)
    cfg = json.load(open(out / "config.json"))
    assert cfg["head_dim"] == model.args.head_dim and cfg["architectures"] and cfg["model_type"] == family
    tokens = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        ours = model(tokens)
    assert (hf_logits(str(out), tokens) - ours).abs().max() <= 1e-5
    assert (load_model(str(out))(tokens) - ours).abs().max() == 0


def test_sharded_checkpoint_loads(tiny_model, tmp_path):
    src = tiny_model("llama")
    sharded = tmp_path / "sharded"
    transformers.AutoModelForCausalLM.from_pretrained(src).save_pretrained(sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").exists() and not (sharded / "model.safetensors").exists()
    tokens = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert (load_model(str(sharded))(tokens) - load_model(src)(tokens)).abs().max() == 0


def test_padded_vocab_loads_and_saves_unchanged(tiny_model, tmp_path):
    """Qwen pads its embedding beyond the tokenizer's vocab; the extra rows must survive a round trip."""
    src = tiny_model("qwen2", vocab_size=320)
    model = load_model(src)
    assert model.embed_tokens.weight.shape == (320, 64)
    save_model(model, str(tmp_path / "out"), like=src)
    saved = load_file(tmp_path / "out" / "model.safetensors")
    original = load_file(os.path.join(src, "model.safetensors"))
    assert torch.equal(saved["model.embed_tokens.weight"], original["model.embed_tokens.weight"])


def test_save_replaces_an_existing_directory(tiny_model, tmp_path):
    src = tiny_model("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_model(load_model(src), str(out), like=src)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dirs left behind


def test_bfloat16_dtype(tiny_model):
    model = load_model(tiny_model("qwen3"), dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16 and model.inv_freq.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# bad input: one LoadError line naming the file

def broken_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_config(path, **changes):
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg.update(changes)
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))


def edit_weights(path, fn):
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    fn(tensors)
    save_file(tensors, file)


def make_bad(kind, src, dst):
    """Build one broken checkpoint; return (path, expected message fragment)."""
    if kind == "missing_dir":
        return str(dst / "nope"), "no such directory"
    path = broken_copy(src, dst / kind)
    if kind == "no_config":
        os.remove(path / "config.json")
        return path, "config.json: missing"
    if kind == "bad_json":
        (path / "config.json").write_text("{not json")
        return path, "not valid JSON"
    if kind == "model_type":
        edit_config(path, model_type="mistral")
        return path, "unsupported model_type 'mistral'"
    if kind == "rope":
        edit_config(path, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
        return path, "unsupported rope_scaling type 'dynamic'"
    if kind == "missing_tensor":
        edit_weights(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
        return path, "missing tensors: layers.1.mlp.up_proj.weight"
    if kind == "extra_tensor":
        edit_weights(path, lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
        return path, "unexpected tensors: extra.weight"
    if kind == "wrong_shape":
        edit_weights(path, lambda t: t.update({"model.norm.weight": torch.ones(65)}))
        return path, "norm.weight (65,) != config's (64,)"
    if kind == "truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
        return path, "truncated or corrupt"
    if kind == "corrupt":
        (path / "model.safetensors").write_bytes(b"\xff" * 64)
        return path, "truncated or corrupt"
    if kind == "no_weights":
        os.remove(path / "model.safetensors")
        return path, "no model.safetensors"
    raise ValueError(kind)


BAD = ["missing_dir", "no_config", "bad_json", "model_type", "rope", "missing_tensor", "extra_tensor",
       "wrong_shape", "truncated", "corrupt", "no_weights"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_checkpoint_is_one_clear_error(tiny_model, tmp_path, kind):
    path, fragment = make_bad(kind, tiny_model("llama"), tmp_path)
    with pytest.raises(LoadError) as err:
        load_model(str(path))
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert str(path) in message  # names the file or directory at fault


@pytest.mark.parametrize("kind", ["missing_dir", "missing_tensor", "truncated"])
def test_cli_exits_2_without_traceback(tiny_model, tmp_path, kind):
    path, fragment = make_bad(kind, tiny_model("llama"), tmp_path)
    result = subprocess.run([sys.executable, "load_weights.py", "--model", str(path)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and fragment in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

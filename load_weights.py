"""Hugging Face checkpoint directory <-> `model.Transformer`, strict and shape-checked, safetensors only.

A checkpoint directory holds config.json and either model.safetensors or a sharded
model.safetensors.index.json. Our parameter names are HF's minus the leading "model.", so loading is a
rename plus a strict `load_state_dict`; every missing, unexpected or mis-shaped tensor is named in one error.
`save_model` writes the reverse, with an explicit head_dim (a RED student has head_dim != width / heads), and
copies tokenizer and generation files from the teacher so `transformers` and tokenizer.py load the result.
The architecture comes from config.json: `args_from_hf_config` maps its keys to `model.ModelArgs` (a model we
would run unfaithfully is a ConfigError, named with the key), `hf_config` writes them back.

`fingerprint` names a checkpoint's exact contents, so a resumed run can check it has the same teacher.

Builds on model.py and cli.py. Run as: python load_weights.py --model DIR   (loads, checks, summarises it)
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import cli
from model import ModelArgs, Transformer, rope_inv_freq

# the families red runs: HF model_type -> the architectures entry of config.json
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# files that describe the tokenizer and decoding, copied verbatim from the teacher into a saved student
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


class LoadError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what to do."""


class ConfigError(ValueError):
    """A config.json this code cannot run faithfully (one line, says what to do)."""


# ---------------------------------------------------------------------------------------------------------
# config.json <-> ModelArgs

def args_from_hf_config(cfg: dict) -> ModelArgs:
    """Map an HF config.json dict to ModelArgs; anything we would run unfaithfully is a ConfigError."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"holds a JSON {type(cfg).__name__}, not an object - is this a model's config.json?")
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"unsupported model_type {family!r} - red runs {', '.join(FAMILIES)}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"unsupported hidden_act {cfg['hidden_act']!r} - only SwiGLU (silu) models run")
    if cfg.get("mlp_bias") or (family != "qwen2" and cfg.get("attention_bias")):
        raise ConfigError("linear biases other than Qwen2's q/k/v bias are not supported")
    if cfg.get("use_sliding_window"):
        raise ConfigError("sliding-window attention is not supported - set use_sliding_window false")
    # transformers 5 writes `rope_parameters`; older checkpoints `rope_theta` + `rope_scaling`: read both
    rope = dict(cfg.get("rope_parameters") or {})
    rope.update(cfg.get("rope_scaling") or {})
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        scaling = None
    elif rope_type == "llama3":
        scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}
    else:
        raise ConfigError(f"unsupported rope_scaling type {rope_type!r} - only 'llama3' (or none) is implemented")
    n_heads = cfg["num_attention_heads"]
    args = ModelArgs(
        family=family, vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
        ffn_dim=cfg["intermediate_size"], norm_eps=cfg["rms_norm_eps"], rope_theta=float(theta),
        rope_scaling=scaling, max_seq_len=cfg.get("max_position_embeddings", 4096),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2",  # [qwen] Qwen2 hard-codes bias=True on q/k/v
        qk_norm=family == "qwen3",   # [qwen]
    )
    check_args(args)
    return args


def check_args(args: ModelArgs):
    """ConfigError unless every size is a positive integer and eps, theta and the scaling are in range (the
    messages name the config.json keys)."""
    sizes = {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
             "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
             "ffn_dim": "intermediate_size", "max_seq_len": "max_position_embeddings"}  # ours -> config.json
    for field_name, key in sizes.items():
        value = getattr(args, field_name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} is {value!r} - every size must be a positive integer")
    if args.n_heads % args.n_kv_heads:
        raise ConfigError(f"{args.n_heads} attention heads do not split into {args.n_kv_heads} kv-head groups")
    numbers = {"rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, **(args.rope_scaling or {})}
    for name, value in numbers.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"{name} is {value!r} - it must be a finite number")
    if args.norm_eps < 0 or args.rope_theta <= 0:
        raise ConfigError(f"rms_norm_eps {args.norm_eps} / rope_theta {args.rope_theta} out of range - "
                          "eps must be >= 0 and theta > 0")
    if args.rope_scaling and (args.rope_scaling["factor"] <= 0 or
                              args.rope_scaling["high_freq_factor"] <= args.rope_scaling["low_freq_factor"]):
        raise ConfigError("llama3 rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor")


def hf_config(args: ModelArgs) -> dict:
    """The config.json keys transformers needs to rebuild this architecture (head_dim always explicit)."""
    cfg = {
        "architectures": [FAMILIES[args.family]], "model_type": args.family,
        "vocab_size": args.vocab_size, "hidden_size": args.dim, "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim, "intermediate_size": args.ffn_dim, "rms_norm_eps": args.norm_eps,
        "hidden_act": "silu", "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings, "rope_theta": args.rope_theta,
        "rope_scaling": dict(args.rope_scaling, rope_type="llama3") if args.rope_scaling else None,
    }
    if args.family == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    if args.family == "qwen2":
        cfg.update(use_sliding_window=False)  # [qwen]
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Reading

def read_config(path: str) -> tuple[dict, ModelArgs]:
    """config.json of checkpoint directory `path` as (raw dict, ModelArgs)."""
    if not os.path.isdir(path):
        raise LoadError(f"{path}: no such directory - pass a Hugging Face checkpoint directory")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise LoadError(f"{config_path}: missing - a checkpoint directory needs config.json next to its weights")
    try:
        with open(config_path) as f:
            cfg = json.load(f)
        return cfg, args_from_hf_config(cfg)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{config_path}: not valid JSON ({e}) - restore the file from the original checkpoint")
    except ConfigError as e:
        raise LoadError(f"{config_path}: {e}")
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{config_path}: missing or malformed field ({e}) - is this a causal LM config.json?")


def weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint: one model.safetensors, or every shard its index names."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise LoadError(f"{index}: malformed ({e}) - it needs a weight_map of tensor name -> shard file")
        return [os.path.join(path, s) for s in shards]
    if any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(path)):
        raise LoadError(f"{path}: only pickle weights (.bin/.pt) found - red reads safetensors only; convert "
                        "with transformers: AutoModelForCausalLM.from_pretrained(d).save_pretrained(d)")
    raise LoadError(f"{path}: no model.safetensors or model.safetensors.index.json - is the download complete?")


def read_safetensors(files: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the given safetensors files, keyed by checkpoint name."""
    tensors = {}
    for file in files:
        if not os.path.isfile(file):
            raise LoadError(f"{file}: shard named in the index is missing - re-download the checkpoint")
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    tensors[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
            raise LoadError(f"{file}: unreadable safetensors ({type(e).__name__}: {str(e)[:120]}) - "
                            "the file is truncated or corrupt; re-download or re-save it")
    for name, t in tensors.items():  # a NaN weight would surface much later, as a NaN loss or an SVD failure
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise LoadError(f"tensor {name} holds NaN or Inf values - the checkpoint is corrupt; re-download it")
    return tensors


def checkpoint_to_ours(tensors: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF names -> our names ("model." dropped); rotary caches and a tied model's duplicate head dropped."""
    ours = {}
    for name, t in tensors.items():
        if name.endswith("rotary_emb.inv_freq") or (args.tie_embeddings and name == "lm_head.weight"):
            continue  # derived from config / the same matrix as the embedding
        ours[name.removeprefix("model.")] = t
    return ours


def check_state(expected: dict[str, torch.Size], found: dict[str, torch.Tensor], where: str):
    """Raise one LoadError naming every missing, unexpected and mis-shaped tensor."""
    def names(xs):
        xs = sorted(xs)
        return ", ".join(xs[:6]) + (f" (+{len(xs) - 6} more)" if len(xs) > 6 else "")
    problems = []
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    shapes = [f"{k} {tuple(found[k].shape)} != config's {tuple(expected[k])}"
              for k in sorted(expected.keys() & found.keys()) if found[k].shape != expected[k]]
    if missing:
        problems.append(f"missing tensors: {names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {names(unexpected)}")
    if shapes:
        more = f" (+{len(shapes) - 4} more)" if len(shapes) > 4 else ""
        problems.append(f"wrong shapes: {'; '.join(shapes[:4])}{more}")
    if problems:
        raise LoadError(f"{where}: " + "; ".join(problems) + " - the weights do not match config.json")


def load_model(path: str, *, dtype: torch.dtype = torch.float32, device="cpu") -> Transformer:
    """Build a Transformer from an HF checkpoint directory (strict: every tensor present and shaped right)."""
    _, args = read_config(path)
    tensors = checkpoint_to_ours(read_safetensors(weight_files(path), dtype), args)
    with torch.device("meta"):  # no time spent initialising weights we are about to overwrite
        model = Transformer(args)
    check_state({k: v.shape for k, v in model.state_dict().items()}, tensors, path)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.inv_freq = rope_inv_freq(args)  # a non-persistent buffer: recompute it off the meta device
    return model.to(device).eval()


def fingerprint(path: str) -> str:
    """sha256 of a checkpoint's config.json and every byte of its weight files (a few seconds per GB; read
    once more right after loading, the files come from the page cache)."""
    digest = hashlib.sha256()
    for file in [os.path.join(path, "config.json"), *weight_files(path)]:
        digest.update(os.path.basename(file).encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Writing

def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our state dict under HF names (the reverse of checkpoint_to_ours), contiguous for safetensors."""
    out = {}
    for name, t in model.state_dict().items():
        key = name if name.startswith("lm_head.") else "model." + name
        out[key] = t.detach().contiguous().cpu()
    return out


def save_model(model: Transformer, path: str, *, like: str | None = None, dtype: torch.dtype | None = None):
    """Write `model` as an HF checkpoint directory (atomically). `like`: a checkpoint whose config extras
    (token ids, ...), tokenizer and generation files are carried over, normally the teacher."""
    base = {}
    if like is not None:
        base, _ = read_config(like)
        # our config keys below replace the RoPE and size fields; stale transformers-5 RoPE keys must go
        for key in ("rope_parameters", "rope_scaling", "rope_theta", "torch_dtype", "dtype", "transformers_version"):
            base.pop(key, None)
    cfg = {**base, **hf_config(model.args)}
    state = hf_state_dict(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    cfg["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):  # what a kill during an earlier save of this same path left behind
        if stale.startswith(f".{name}.tmp-"):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the checkpoint gets the usual permissions
    try:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        for name in SIDE_FILES if like is not None else ():
            if os.path.isfile(os.path.join(like, name)):
                shutil.copy2(os.path.join(like, name), os.path.join(tmp, name))
        cli.replace_dir(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="load_weights.py", description="Load a checkpoint strictly and summarise it.")
    parser.add_argument("--model", required=True, help="HF checkpoint directory")
    args = cli.parse_args(parser, argv)
    with cli.user_errors(LoadError):
        model = load_model(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {model.args.family}, {n_params / 1e6:.1f}M parameters")
    for key, value in vars(model.args).items():
        print(f"  {key:15s} {value}")


if __name__ == "__main__":
    main()

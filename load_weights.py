"""Hugging Face checkpoint directory <-> `model.Transformer`, strict and shape-checked, safetensors only.

A checkpoint directory holds config.json and either model.safetensors or a sharded
model.safetensors.index.json. Our parameter names are HF's minus the leading "model.", so loading is a
rename plus a strict `load_state_dict`; every missing, unexpected or mis-shaped tensor is named in one error.
`save_model` writes the reverse, with an explicit head_dim (a RED student has head_dim != width / heads), and
copies tokenizer and generation files from the teacher so `transformers` and tokenizer.py load the result.
The architecture comes from config.json: `args_from_hf_config` maps its keys to `model.ModelArgs` (a model we
would run unfaithfully is a ConfigError, named with the key), `hf_config` writes them back.

`fingerprint` names a checkpoint's exact contents, so a resumed run can check it has the same teacher.

Nothing read is trusted: sizes are checked against the headers before anything is allocated (`check_weights`),
files read or copied must lie inside the checkpoint (`checked_file`), states must be finite (`read_tensors`).

Builds on model.py and cli.py. Run as: python load_weights.py --model DIR   (loads, checks, summarises it)
"""
import argparse
import hashlib
import json
import os
import shutil
import stat
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cli
from model import ModelArgs, Transformer, rope_inv_freq

# the families red runs: HF model_type -> the architectures entry of config.json
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# files that describe the tokenizer and decoding, copied verbatim from the teacher into a saved student
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # the safetensors dtypes a weight may have
MAX_POSITIONS = 1 << 24  # positions reach RoPE as float32, which holds every integer only up to 2**24


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
    if not isinstance(family, str) or family not in FAMILIES:
        raise ConfigError(f"unsupported model_type {family!r} - red runs {', '.join(FAMILIES)}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"unsupported hidden_act {cfg['hidden_act']!r} - only SwiGLU (silu) models run")
    if cfg.get("mlp_bias") or (family != "qwen2" and cfg.get("attention_bias")):
        raise ConfigError("linear biases other than Qwen2's q/k/v bias are not supported")
    if cfg.get("use_sliding_window"):
        raise ConfigError("sliding-window attention is not supported - set use_sliding_window false")
    # transformers 5 writes `rope_parameters`; older checkpoints `rope_theta` + `rope_scaling`: read both
    rope = {}
    for key in ("rope_parameters", "rope_scaling"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise ConfigError(f"{key} is {cfg[key]!r}, not an object - restore it from the original checkpoint")
        rope.update(cfg.get(key) or {})
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        scaling = None
    elif rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if missing := [k for k in keys if k not in rope]:
            raise ConfigError(f"llama3 rope_scaling lacks {', '.join(missing)} - restore config.json")
        scaling = {k: rope[k] for k in keys}
    else:
        raise ConfigError(f"unsupported rope_scaling type {rope_type!r} - only 'llama3' (or none) is implemented")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "rms_norm_eps"):
        if cfg.get(key) is None:
            raise ConfigError(f"{key} is missing - is this a causal LM's config.json?")
    n_heads, hidden, head_dim = cfg["num_attention_heads"], cfg["hidden_size"], cfg.get("head_dim")
    if head_dim is None:  # as transformers: one head is hidden_size / heads wide, which must then be whole
        for key, value in (("hidden_size", hidden), ("num_attention_heads", n_heads)):
            if not is_size(value):
                raise ConfigError(f"{key} is {value!r} - every size must be a positive integer below 2**31")
        if hidden % n_heads:
            raise ConfigError(f"hidden_size {hidden} does not split into {n_heads} num_attention_heads and there "
                              "is no head_dim - add the head width as head_dim, or fix the two")
        head_dim = hidden // n_heads
    if not isinstance(cfg.get("tie_word_embeddings", False), bool):  # the string "false" would read as true
        raise ConfigError(f"tie_word_embeddings is {cfg['tie_word_embeddings']!r} - it must be true or false")
    args = ModelArgs(
        family=family, vocab_size=cfg["vocab_size"], dim=hidden, n_layers=cfg["num_hidden_layers"],
        n_heads=n_heads, n_kv_heads=n_heads if cfg.get("num_key_value_heads") is None else cfg["num_key_value_heads"],
        head_dim=head_dim, ffn_dim=cfg["intermediate_size"], norm_eps=cfg["rms_norm_eps"],
        rope_theta=float(theta) if is_number(theta) else theta, rope_scaling=scaling,
        max_seq_len=cfg.get("max_position_embeddings", 4096),
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        qkv_bias=family == "qwen2",  # [qwen] Qwen2 hard-codes bias=True on q/k/v
        qk_norm=family == "qwen3",   # [qwen]
    )
    check_args(args)
    return args


def is_size(value) -> bool:  # a positive int (JSON's true is not one) whose products fit torch's int64 sizes
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2 ** 31


def is_number(value) -> bool:  # a finite int or float (NaN fails both comparisons; a 400-digit int the second)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e308 < value < 1e308


def check_args(args: ModelArgs):
    """ConfigError unless every size is a positive integer, the heads fit together, and eps, theta, the scaling
    and the context are in range (the messages name the config.json keys)."""
    sizes = {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
             "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
             "ffn_dim": "intermediate_size", "max_seq_len": "max_position_embeddings"}  # ours -> config.json
    for field_name, key in sizes.items():
        value = getattr(args, field_name)
        if not is_size(value):
            raise ConfigError(f"{key} is {value!r} - every size must be a positive integer below 2**31")
    if args.n_heads % args.n_kv_heads:
        raise ConfigError(f"{args.n_heads} attention heads do not split into {args.n_kv_heads} kv-head groups "
                          "(num_key_value_heads) - fix num_attention_heads / num_key_value_heads")
    if args.head_dim % 2:
        raise ConfigError(f"head_dim is {args.head_dim} - RoPE rotates channel pairs, so it must be even")
    if args.max_seq_len > MAX_POSITIONS:
        raise ConfigError(f"max_position_embeddings is {args.max_seq_len} - red computes positions in float32, "
                          f"exact up to {MAX_POSITIONS}; lower it")
    numbers = {"rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, **(args.rope_scaling or {})}
    for name, value in numbers.items():
        if not is_number(value):
            raise ConfigError(f"{name} is {value!r} - it must be a finite number")
    if args.norm_eps < 0 or args.rope_theta <= 0:
        raise ConfigError(f"rms_norm_eps {args.norm_eps} / rope_theta {args.rope_theta} out of range - "
                          "eps must be >= 0 and theta > 0")
    s = args.rope_scaling
    if s and (s["factor"] <= 0 or s["high_freq_factor"] <= s["low_freq_factor"] or
              s["original_max_position_embeddings"] <= 0):
        raise ConfigError("llama3 rope_scaling needs factor > 0, high_freq_factor > low_freq_factor and "
                          "original_max_position_embeddings > 0 - restore it from the original checkpoint")


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

def read_config(path: str, weights: bool = True) -> tuple[dict, ModelArgs]:
    """config.json of checkpoint `path` as (raw dict, ModelArgs), checked against the weights' headers (not with
    weights=False: a folder of configs and tokenizer files) and with the files a student copies (`side_files`)."""
    if not os.path.isdir(path):
        raise LoadError(f"{path}: no such directory - pass a Hugging Face checkpoint directory")
    config_path = checked_file(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
        args = args_from_hf_config(cfg)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{config_path}: not valid JSON ({e}) - restore the file from the original checkpoint")
    except ConfigError as e:
        raise LoadError(f"{config_path}: {e}")
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{config_path}: missing or malformed field ({e}) - is this a causal LM config.json?")
    if weights:
        check_weights(path, args)
    side_files(path)
    return cfg, args


def checked_file(directory: str, name: str, where: str = "") -> str:
    """directory/name, unless it is not a regular file inside `directory` once links are followed (a link to a
    secret, a device, a pipe or another model's shard): then a LoadError naming `where` (default: the file).
    One way out is allowed: a Hugging Face hub cache snapshot, whose files link to ../../blobs/<hash>."""
    file, home = os.path.join(directory, name), os.path.realpath(directory)
    where, real = where or file, os.path.realpath(file)
    homes = [home]
    if os.path.basename(os.path.dirname(home)) == "snapshots":
        homes.append(os.path.join(os.path.dirname(os.path.dirname(home)), "blobs"))
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/") or not any(
            os.path.commonpath([real, h]) == h for h in homes):
        raise LoadError(f"{where}: leads outside {directory} (to {real}) - a checkpoint may only name regular "
                        "files inside its directory; copy the file in, or fix the link")
    if not os.path.exists(real):
        raise LoadError(f"{where}: missing - re-download the checkpoint")
    if not stat.S_ISREG(os.stat(real).st_mode):
        raise LoadError(f"{where}: not a regular file (a directory, device or pipe) - replace it with the "
                        "checkpoint's file")
    return file


def side_files(path: str) -> list[str]:
    """The tokenizer and generation files (SIDE_FILES) of checkpoint `path` that a saved student copies, each
    checked by `checked_file`: a link to a secret is refused, never copied into the student."""
    return [checked_file(path, name) for name in SIDE_FILES if os.path.lexists(os.path.join(path, name))]


def weight_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint: one model.safetensors, or every shard its index names (regular
    files inside the directory: an index naming /dev/zero or ../other/model.safetensors is refused)."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.lexists(single):
        return [checked_file(path, "model.safetensors")]
    if os.path.lexists(index):
        checked_file(path, "model.safetensors.index.json")
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(set(weight_map.values()))
            if not shards or not all(isinstance(s, str) and s for s in shards):
                raise ValueError("shard names must be non-empty strings")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LoadError(f"{index}: malformed ({type(e).__name__}: {e}) - it needs a weight_map of tensor "
                            "name -> shard file") from None
        return [checked_file(path, s, f"{index}: weight_map entry {s!r}") for s in shards]
    if any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(path)):
        raise LoadError(f"{path}: only pickle weights (.bin/.pt) found - red reads safetensors only; convert "
                        "with transformers: AutoModelForCausalLM.from_pretrained(d).save_pretrained(d)")
    raise LoadError(f"{path}: no model.safetensors or model.safetensors.index.json - is the download complete?")


def checkpoint_files(path: str) -> list[str]:
    """Every file of checkpoint `path` that red reads (config.json, the weights, tokenizer and generation files),
    for cli.check_outputs' inputs: an output may not replace a shard the index names. [] when the checkpoint
    is unreadable (loading it then says why)."""
    try:
        return [os.path.join(path, "config.json"), *weight_files(path), *side_files(path)]
    except (LoadError, OSError):
        return []


def _unreadable(file: str, e: Exception) -> LoadError:
    return LoadError(f"{file}: unreadable safetensors ({type(e).__name__}: {str(e)[:120]}) - the file is "
                     "truncated or corrupt; re-download or re-save it")


def read_headers(files: list[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors headers of `files` (no tensor data is read); a tensor in two
    files, or one that is not floating point, is a LoadError."""
    shapes, home = {}, {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                found = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
                         for name in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
            raise _unreadable(file, e) from None
        for name, (shape, dtype) in found.items():
            if name in home:
                raise LoadError(f"{file}: tensor {name} is in {home[name]} too - re-download the checkpoint")
            if dtype not in FLOAT_DTYPES:
                raise LoadError(f"{file}: tensor {name} is {dtype} - weights must be floating point "
                                f"({', '.join(FLOAT_DTYPES)}); re-save the checkpoint")
            shapes[name], home[name] = shape, file
    return shapes


def check_weights(path: str, args: ModelArgs):
    """Bounded before allocated: config.json's sizes against the safetensors headers, no tensor read. The layer
    count first (a million claimed layers are never built), then every name and shape against a meta model."""
    shapes = checkpoint_to_ours({k: torch.empty(shape, device="meta")
                                 for k, shape in read_headers(weight_files(path)).items()}, args)
    layers = {name.split(".")[1] for name in shapes if name.startswith("layers.")}
    if len(layers) != args.n_layers:
        raise LoadError(f"{os.path.join(path, 'config.json')}: num_hidden_layers is {args.n_layers} but the weights "
                        f"hold {len(layers)} layers - the config does not belong to these weights")
    with torch.device("meta"):  # bounded now: no more blocks than the files hold tensors for
        model = Transformer(args)
    check_state({k: v.shape for k, v in model.state_dict().items()}, shapes, path)


def read_safetensors(files: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the given safetensors files, keyed by checkpoint name."""
    tensors = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    tensors[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
            raise _unreadable(file, e) from None
    for name, t in tensors.items():  # a NaN weight would surface much later, as a NaN loss or an SVD failure
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise LoadError(f"tensor {name} holds NaN or Inf values - the checkpoint is corrupt; re-download it")
    return tensors


def read_tensors(path: str, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file that is not a checkpoint (a student state, an init file): every tensor, refused (one
    LoadError naming the file and what to do) unless each is floating point and finite."""
    if not os.path.isfile(path):  # a pipe would block and a device never end
        raise LoadError(f"{path}: unreadable (not a regular file) - pass a .safetensors {what}")
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own types for truncated or corrupt files
        raise LoadError(f"{path}: unreadable ({type(e).__name__}) - pass a .safetensors {what}") from None
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise LoadError(f"{path}: tensor {name} is {t.dtype} - a {what} holds floating-point tensors only")
        if not torch.isfinite(t).all():
            raise LoadError(f"{path}: tensor {name} holds NaN or Inf values - the {what} is corrupt (a diverged "
                            "run?); use an earlier one or make it again")
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
    _, args = read_config(path)  # every size checked against the headers: nothing below outgrows the files
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
        base, _ = read_config(like, weights=False)
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
        for file in side_files(like) if like is not None else ():  # regular files inside `like` only
            shutil.copy2(file, os.path.join(tmp, os.path.basename(file)))
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

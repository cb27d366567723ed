"""The EDistill student of Low-Rank Clone: frozen teacher weights times trainable projections.

Every student weight is a teacher weight seen through a trainable projection P of shape (D_t, W), which
shrinks the residual width from D_t to W and leaves heads, head_dim and FFN width as they are:

    input side  (reads the stream):   W_s = W_t P        embedding, q, k, v, gate, up, LM head
    output side (writes the stream):  W_s = P^T W_t      o, down                    # LRC (METHOD §2.1)

Per layer there are 7 projections (q, k, v, o, gate, up, down), plus one for the embedding that the LM head
shares when the teacher ties them (a separate `lm_head` one when it does not). The student's RMSNorm gains
(width W) are trainable too; Qwen2's q/k/v biases and Qwen3's per-head q/k norms are the teacher's, frozen.

`materialize()` turns projections into a full weight dict under `model.Transformer`'s parameter names, and
`forward` runs that same Transformer code on it with `torch.func.functional_call`: there is one model
implementation, and a merged student is a plain checkpoint by construction. LRC computes attention
factorised (x -> P_q -> W_q); the merged weight is the same linear map, so we always merge. `recomputed` runs
a block under activation checkpointing (distill.py --recompute).

Trainable state (`state_dict()`, what distill.py optimises and saves) is named like the Transformer it
becomes: `embed`, `lm_head` (untied teachers only), `norm`, `layers.{i}.{q,k,v,o,gate,up,down}` (projections,
(D_t, W)) and `layers.{i}.{input_layernorm,post_attention_layernorm}` (gains, (W,)).

Builds on model.py, load_weights.py and cli.py; init_select.py fills the projections (RED: selection).
Run as: python student.py --teacher DIR --state FILE.safetensors --out DIR   (merge into an HF checkpoint)
"""
import cli  # first, and standard library only: Ctrl-C during the imports below is one line

if __name__ == "__main__":
    cli.interrupt_while_starting()

import argparse
import contextlib
import contextvars
import dataclasses

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.utils.checkpoint import checkpoint

from load_weights import LoadError, load_model, save_model
from model import ModelArgs, Transformer, rope_inv_freq

INPUT_SIDE = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj"}      # W_s = W_t P
OUTPUT_SIDE = {"o": "self_attn.o_proj", "down": "mlp.down_proj"}  # W_s = P^T W_t
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")           # per layer, in forward order
PROJECTION_OF = {module: name for name, module in (INPUT_SIDE | OUTPUT_SIDE).items()}  # "mlp.up_proj" -> "up"
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")


class StudentError(ValueError):
    """A student that cannot be built from this teacher (one line, says what to do)."""


# ---------------------------------------------------------------------------------------------------------
# Width rules and the trainable-state layout

def check_width(args: ModelArgs, width: int):
    """Raise StudentError unless 0 < width <= D_t and width is a multiple of the attention heads."""
    if not 0 < width <= args.dim:
        raise StudentError(f"width {width} is outside 1..{args.dim} - the student must be at most as wide as "
                           f"the teacher (D_t = {args.dim})")
    if width % args.n_heads:
        # transformers 5 refuses hidden_size % num_attention_heads != 0, even with an explicit head_dim
        below, above = width - width % args.n_heads, width - width % args.n_heads + args.n_heads
        nearest = " or ".join(str(w) for w in (below, above) if 0 < w <= args.dim)
        raise StudentError(f"width {width} is not a multiple of the teacher's {args.n_heads} attention heads "
                           f"(transformers refuses such a config) - use {nearest}")


def default_width(args: ModelArgs) -> int:
    """Half the teacher's width, rounded down to a multiple of its heads (288 for SmolLM2-135M's 576)."""
    return max(args.n_heads, args.dim // 2 // args.n_heads * args.n_heads)


def state_shapes(args: ModelArgs, width: int) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The expected (projection shapes, norm-gain shapes) of a student of `width` for a teacher of `args`."""
    projections = {"embed": (args.dim, width)}
    if not args.tie_embeddings:
        projections["lm_head"] = (args.dim, width)  # untied teacher: its LM head gets its own projection
    norms = {"norm": (width,)}
    for i in range(args.n_layers):
        projections.update({f"layers.{i}.{name}": (args.dim, width) for name in PROJECTIONS})
        norms.update({f"layers.{i}.{name}": (width,) for name in LAYER_NORMS})
    return projections, norms


def _check_state(expected: dict[str, tuple], found: dict[str, torch.Tensor], what: str):
    """Raise StudentError naming missing, unexpected and mis-shaped tensors."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [f"{k} {tuple(found[k].shape)} != {expected[k]}" for k in sorted(expected.keys() & found.keys())
             if tuple(found[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise StudentError(f"{what} do not fit this teacher: missing {missing[:4]}, unexpected {unexpected[:4]}, "
                           f"wrong shapes {wrong[:4]} - were they made for another teacher or width?")


# ---------------------------------------------------------------------------------------------------------
# The projection equations (each written once)

def project_input(W_t: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Input-side weight: (out, D_t) teacher, (D_t, W) projection -> (out, W) student."""
    return W_t.to(P.dtype) @ P  # LRC (METHOD §2.1): W_s = W_t P

def project_output(W_t: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Output-side weight: (D_t, in) teacher, (D_t, W) projection -> (W, in) student."""
    return P.T @ W_t.to(P.dtype)  # LRC (METHOD §2.1): W_s = P^T W_t


# ---------------------------------------------------------------------------------------------------------
# Student

class Student(nn.Module):
    """Trainable projections + norm gains over a frozen teacher; forward = model.Transformer at width W."""

    def __init__(self, teacher: Transformer, width: int, projections: dict[str, torch.Tensor],
                 norms: dict[str, torch.Tensor]):
        super().__init__()
        check_width(teacher.args, width)
        expected_proj, expected_norms = state_shapes(teacher.args, width)
        _check_state(expected_proj, projections, "projections")
        _check_state(expected_norms, norms, "norm gains")
        # NOTE: the teacher is held outside the module tree (object.__setattr__ skips nn.Module's
        # registration), so parameters(), state_dict() and the optimizer see only the student's own state,
        # and student.to(device) does not move it: build the Student from a teacher already on its device.
        teacher.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)
        self.args = dataclasses.replace(teacher.args, dim=width)  # heads, head_dim, FFN width: the teacher's
        as_param = lambda t: nn.Parameter(t.detach().clone().float())  # fp32 masters, also on a bf16 teacher
        self.embed = as_param(projections["embed"])
        if "lm_head" in projections:
            self.lm_head = as_param(projections["lm_head"])
        self.norm = as_param(norms["norm"])
        self.layers = nn.ModuleList(
            nn.ParameterDict({name: as_param(projections[f"layers.{i}.{name}"]) for name in PROJECTIONS}
                             | {name: as_param(norms[f"layers.{i}.{name}"]) for name in LAYER_NORMS})
            for i in range(self.args.n_layers))
        device = teacher.embed_tokens.weight.device
        self.register_buffer("inv_freq", rope_inv_freq(self.args).to(device), persistent=False)
        with torch.device("meta"):  # a weightless shell: functional_call supplies every tensor it reads
            object.__setattr__(self, "shell", Transformer(self.args))
        self.to(device)

    @staticmethod
    def from_state_dict(teacher: Transformer, state: dict[str, torch.Tensor]) -> "Student":
        """Rebuild a Student from `student.state_dict()` tensors (e.g. read back from safetensors)."""
        if "embed" not in state or state["embed"].dim() != 2:
            raise StudentError("state has no 2-D 'embed' projection - pass a file written from a Student's "
                               "state_dict (init_select.py or distill.py)")
        is_norm = lambda k: k == "norm" or k.endswith("layernorm")
        return Student(teacher, state["embed"].shape[1], {k: v for k, v in state.items() if not is_norm(k)},
                       {k: v for k, v in state.items() if is_norm(k)})

    def source(self, name: str) -> tuple[str, torch.Tensor | None]:
        """How the student's tensor `name` (a Transformer parameter name) is made: ("input", P), ("output", P),
        ("gain", g): a trainable norm gain used as it is, or ("frozen", None): the teacher's tensor unchanged."""
        if name in ("embed_tokens.weight", "lm_head.weight"):
            return "input", self.embed if name == "embed_tokens.weight" else self.lm_head
        if name == "norm.weight":
            return "gain", self.norm
        if is_frozen(name):  # [qwen] q/k/v biases (Qwen2) and per-head q/k norms (Qwen3): the teacher's
            return "frozen", None
        _, layer, module = name.split(".", 2)                              # "layers", "3", "mlp.up_proj.weight"
        module = module.removesuffix(".weight")
        if module in LAYER_NORMS:
            return "gain", self.layers[int(layer)][module]
        side = "input" if module in INPUT_SIDE.values() else "output"
        return side, self.layers[int(layer)][PROJECTION_OF[module]]

    def student_weight(self, name: str, W_t: torch.Tensor) -> torch.Tensor:
        """The student's tensor `name` from the teacher's tensor of that name."""
        side, P = self.source(name)
        if side == "input":
            return project_input(W_t, P)                                   # (out, W)
        if side == "output":
            return project_output(W_t, P)                                  # (W, in)
        return P if side == "gain" else W_t.to(self.embed.dtype)           # (W,), or the teacher's own

    def materialize(self) -> dict[str, torch.Tensor]:
        """The student's weights under Transformer parameter names, differentiable w.r.t. projections/norms
        (under torch.no_grad(): plain tensors, and each gathered teacher weight is freed at once)."""
        # one teacher tensor at a time: with a sharded teacher (distill.py --fsdp) only one is ever whole
        return {name: self.student_weight(name, unsharded(W_t)) for name, W_t in self.teacher.named_parameters()}

    def forward(self, tokens: torch.Tensor, *, tap=None, weights: dict[str, torch.Tensor] | None = None,
                recompute: bool = False, **kwargs) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V): model.Transformer run on `weights` (default: materialize());
        recompute: activation checkpointing of every block (`recomputed`); other keyword arguments (cache, pad,
        last_only, head) go to Transformer.forward."""
        weights = self.materialize() if weights is None else weights
        tensors = {**weights, "inv_freq": self.inv_freq}
        kwargs |= {"tap": tap, "run_block": recomputed if recompute and torch.is_grad_enabled() else None}
        return torch.func.functional_call(self.shell, tensors, (tokens,), kwargs, strict=True)

    @torch.no_grad()
    def merge(self) -> Transformer:
        """A plain Transformer (student args) holding the materialised weights, ready for save_model."""
        weights = {k: v.detach().clone() for k, v in self.materialize().items()}
        with torch.device("meta"):
            model = Transformer(self.args)
        model.load_state_dict(weights, strict=True, assign=True)
        model.inv_freq = self.inv_freq.clone()
        return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Materialise once, run many micro-batches (METHOD §2.2)

def is_frozen(name: str) -> bool:
    """Student tensors copied from the teacher unchanged (no projection, no trainable gain)."""
    return name.endswith((".bias", "q_norm.weight", "k_norm.weight"))


def unsharded(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter that FSDP2 shards over ranks (a DTensor); any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def leaf_copies(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached leaves of materialized weights; the trained ones collect .grad over the micro-batches."""
    return {k: w.detach().requires_grad_(not is_frozen(k)) for k, w in weights.items()}


def backward_through(student: Student, leaves: dict[str, torch.Tensor]):
    """Turn the leaves' accumulated grads into projection/gain grads, one weight at a time.

    Chain rule: d loss / d P = (d W_s / d P)^T (d loss / d W_s), with d loss / d W_s the leaf's .grad. Each
    W_s is rebuilt from its teacher weight right here (one small matmul) instead of keeping materialize()'s
    autograd graph alive through the micro-batches: that graph would hold an fp32 copy of every bf16 teacher
    weight, and under --fsdp every gathered one, i.e. the whole teacher on every rank.
    """
    for name, W_t in student.teacher.named_parameters():
        grad = leaves[name].grad
        if grad is not None:
            torch.autograd.backward(student.student_weight(name, unsharded(W_t)), grad)


# ---------------------------------------------------------------------------------------------------------
# Several processes: the teacher sharded (FSDP2), the student's gradients averaged (DDP), AdamW's state sharded
# (ZeRO-1)

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


def optimizer_states(optimizer, params: list) -> dict[int, dict]:
    """Each parameter's AdamW state by its index in `params`. A ZeroRedundancyOptimizer (torchrun) holds only its
    rank's shard: its state here is what gather_optimizer brought to rank 0."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        return optimizer.state_dict()["state"]
    return {i: optimizer.state[p] for i, p in enumerate(params) if optimizer.state.get(p)}


def set_optimizer_states(optimizer, params: list, states: dict[int, dict]):
    """optimizer_states' inverse; a ZeroRedundancyOptimizer keeps the states of its own shard only."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.load_state_dict(torch.optim.Optimizer.state_dict(optimizer) | {"state": states})
        return
    for i, p in enumerate(params):
        optimizer.state[p] = states.get(i, {})


def gather_optimizer(optimizer):
    """Bring a ZeroRedundancyOptimizer's shards to rank 0 before it saves (collective: every rank calls it)."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)


def largest_over_ranks(value: int, device) -> int:
    """The largest of an integer over the ranks (e.g. a stop signal seen by some: every rank then stops)."""
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# ---------------------------------------------------------------------------------------------------------
# Activation checkpointing

_replaying = contextvars.ContextVar("replaying", default=False)


def replaying() -> bool:
    """True while a block runs a second time, recomputing its activations in the backward pass: a tap that
    accumulates (kd_loss.CloneLoss) must repeat its arithmetic then, but not count it."""
    return _replaying.get()


@contextlib.contextmanager
def _replay():
    token = _replaying.set(True)
    try:
        yield
    finally:
        _replaying.reset(token)


def recomputed(block: nn.Module, x, cos, sin, mask, tap) -> torch.Tensor:
    """block(x) with activation checkpointing: autograd keeps x, not the block's activations, and the backward
    runs the block again (under `replaying()`). The weights are captured now because functional_call swaps
    the student's in only while its forward runs, and the backward comes later."""
    weights = {**dict(block.named_parameters()), **dict(block.named_buffers())}
    run = lambda x: torch.func.functional_call(block, weights, (x, cos, sin, mask, None, tap))  # noqa: E731
    return checkpoint(run, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _replay()))


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="student.py", description="Merge a student state (projections + norms) "
                                                                    "into a plain Hugging Face checkpoint.")
    parser.add_argument("--teacher", required=True, help="teacher HF checkpoint directory")
    parser.add_argument("--state", required=True, help="student state as .safetensors (an init file of init_select.py, "
                                                       "or student.safetensors of a distill.py checkpoint)")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    args = cli.parse_args(parser, argv)
    from load_weights import checkpoint_files, read_tensors
    with cli.user_errors(LoadError, StudentError):
        cli.check_outputs({"--teacher": [args.teacher, *checkpoint_files(args.teacher)], "--state": args.state},
                          [cli.Output("--out", args.out, "dir", cli.is_checkpoint_dir, "checkpoint directory")])
        teacher = load_model(args.teacher)
        # finite floating-point tensors only: a NaN state (a diverged run) would be merged into a NaN model
        state = read_tensors(args.state, "student state")
        student = Student.from_state_dict(teacher, state)
        save_model(student.merge(), args.out, like=args.teacher)
    n_train = sum(p.numel() for p in student.parameters())
    print(f"{args.out}: width {student.args.dim} student of {args.teacher} ({n_train / 1e6:.1f}M trained "
          "parameters merged)")


if __name__ == "__main__":
    main()

"""model.py against transformers: logits and every hidden state, KV-cache decoding, padding, generation.

Builds on model.py and load_weights.py, with transformers as the reference.
Run as: pytest tests/test_model.py -q      (the real-teacher tests are marked slow)
"""
import dataclasses

import pytest
import torch
import transformers

from conftest import recorder
from load_weights import ConfigError, args_from_hf_config, load_model
from model import ContextError, KVCache, generate

FAMILIES = ["llama", "qwen2", "qwen3"]


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


# ---------------------------------------------------------------------------------------------------------
# parity with transformers

@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_hidden_states_match_transformers(tiny_model, family):
    path = tiny_model(family)
    ours, ref = load_model(path), hf_model(path)
    tokens = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    taps, tap = recorder()
    with torch.no_grad():
        logits = ours(tokens, tap=tap)
        expected = ref(tokens, output_hidden_states=True)
        final = ours.norm(taps[f"{ours.args.n_layers - 1}.resid"])
    assert logits.shape == (2, 33, 256)
    assert (logits - expected.logits).abs().max() <= 1e-4
    n = ours.args.n_layers
    assert (taps["0.embed"] - expected.hidden_states[0]).abs().max() == 0  # the embedding output
    for i in range(n - 1):  # HF's hidden_states[i + 1] is block i's output ...
        assert (taps[f"{i}.resid"] - expected.hidden_states[i + 1]).abs().max() <= 1e-4, i
    # ... except the last entry, which HF stores after the final norm
    assert (final - expected.hidden_states[n]).abs().max() <= 1e-4
    assert logits.abs().max() > 1.0  # a non-trivial network: the comparison above means something


def test_llama3_rope_scaling_matters(tiny_model):
    """The llama3 frequency rescaling is really applied: without it our logits leave transformers'."""
    path = tiny_model("llama")
    ours, ref = load_model(path), hf_model(path)
    assert ours.args.rope_scaling is not None and ours.args.rope_scaling["factor"] == 8.0
    from model import rope_inv_freq
    ours.inv_freq = rope_inv_freq(dataclasses.replace(ours.args, rope_scaling=None))
    tokens = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        assert (ours(tokens) - ref(tokens).logits).abs().max() > 1e-2


def test_taps_shapes(tiny_model):
    model = load_model(tiny_model("qwen3"))
    taps, tap = recorder()
    with torch.no_grad():
        model(torch.zeros(2, 5, dtype=torch.long), tap=tap)
    a = model.args
    expected = {"norm_in": a.dim, "q": a.n_heads * a.head_dim, "k": a.n_kv_heads * a.head_dim,
                "v": a.n_kv_heads * a.head_dim, "attn_heads": a.n_heads * a.head_dim, "attn_out": a.dim,
                "norm_post": a.dim, "gate": a.ffn_dim,
                "up": a.ffn_dim, "mlp_out": a.dim, "resid": a.dim}
    for i in range(a.n_layers):
        for name, width in expected.items():
            assert taps[f"{i}.{name}"].shape == (2, 5, width), (i, name)
    assert taps["0.embed"].shape == (2, 5, a.dim) and len(taps) == 1 + a.n_layers * len(expected)


def test_more_positions_than_the_model_has_are_refused(tiny_model):
    model = load_model(tiny_model("llama"))  # max_position_embeddings 256
    with pytest.raises(ContextError, match="257 positions"):
        model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ContextError, match="exceeds the model's 256 positions"):
        generate(model, [[1] * 200], max_new_tokens=57)


# ---------------------------------------------------------------------------------------------------------
# KV cache, padding, generation

@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_reproduces_full_forward(tiny_model, family):
    # float64: the cache is exact arithmetic, so fp32 kernel-order noise (~1e-5 on logits of size ~5)
    # should not hide or fake a difference
    model = load_model(tiny_model(family), dtype=torch.float64)
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(model.args, 2, 20, dtype=torch.float64)
        chunks = [model(tokens[:, :7], cache=cache)]  # a prefill chunk, then one token at a time
        chunks += [model(tokens[:, t:t + 1], cache=cache) for t in range(7, 12)]
        chunks += [model(tokens[:, 12:], cache=cache)]  # a second multi-token chunk on a non-empty cache
    assert (torch.cat(chunks, dim=1) - full).abs().max() <= 1e-10


def test_left_padding_gives_the_unpadded_logits(tiny_model):
    model = load_model(tiny_model("llama"))
    short, long = torch.randint(0, 256, (1, 6)), torch.randint(0, 256, (1, 10))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])  # (2, 10)
    with torch.no_grad():
        padded = model(batch, pad=torch.tensor([4, 0]))
        assert (padded[0, 4:] - model(short)[0]).abs().max() <= 1e-5
        assert (padded[1] - model(long)[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_equals_one_by_one(tiny_model, family):
    model = load_model(tiny_model(family))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 11, 7, 1)]
    batched = generate(model, prompts, max_new_tokens=12, eos_ids=[5, 9])
    single = [generate(model, [p], max_new_tokens=12, eos_ids=[5, 9])[0] for p in prompts]
    assert batched == single
    assert any(len(out) == 12 for out in single)  # at least one row ran to the limit


def test_greedy_matches_transformers_generate(tiny_model):
    path = tiny_model("qwen2")
    ours, ref = load_model(path), hf_model(path)
    prompt = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(4))
    expected = ref.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generate(ours, [prompt[0].tolist()], max_new_tokens=16)[0] == expected[0, 9:].tolist()


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_model):
    model = load_model(tiny_model("llama"))
    prompts = [[1, 2, 3], [4, 5]]
    run = lambda seed, **kw: generate(model, prompts, max_new_tokens=10, temperature=1.0,
                                      generator=torch.Generator().manual_seed(seed), **kw)
    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0, top_k=1) == generate(model, prompts, max_new_tokens=10)


def test_vocab_size_keeps_padded_embedding_rows_out(tiny_model):
    """Qwen pads its embedding past the tokenizer's vocab: generate(vocab_size=...) never emits those ids."""
    model = load_model(tiny_model("qwen2"))
    with torch.no_grad():  # make the padded rows (ids 200..255) the likeliest tokens everywhere
        model.embed_tokens.weight[200:] = 10 * model.embed_tokens.weight[:56].sum(0)
    sample = lambda **kw: generate(model, [[1, 2, 3]] * 4, max_new_tokens=20, temperature=1.0,
                                   generator=torch.Generator().manual_seed(0), **kw)
    assert max(max(row) for row in sample()) >= 200  # without the limit they do come out
    assert max(max(row) for row in sample(vocab_size=200)) < 200
    assert max(generate(model, [[1, 2, 3]], max_new_tokens=20, vocab_size=200)[0]) < 200  # greedy too


def test_stop_callback_ends_a_row(tiny_model):
    model = load_model(tiny_model("llama"))
    out = generate(model, [[1, 2], [3]], max_new_tokens=10, stop=lambda toks: len(toks) >= 3)
    assert [len(o) for o in out] == [3, 3]


# ---------------------------------------------------------------------------------------------------------
# config mapping

def test_config_errors():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=16, rms_norm_eps=1e-6)
    assert args_from_hf_config(base).head_dim == 4
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        args_from_hf_config(dict(base, model_type="gpt2"))
    with pytest.raises(ConfigError, match="rope_scaling type 'yarn'"):
        args_from_hf_config(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ConfigError, match="rope_scaling type 'linear'"):
        args_from_hf_config(dict(base, rope_parameters={"rope_type": "linear", "rope_theta": 1e4}))
    with pytest.raises(ConfigError, match="sliding-window"):
        args_from_hf_config(dict(base, model_type="qwen2", use_sliding_window=True))
    bad = {"rope_theta": dict(rope_theta=0.0), "rms_norm_eps": dict(rms_norm_eps=-1e-6),
           "hidden_size": dict(hidden_size=8.0), "rms_norm_eps is": dict(rms_norm_eps=float("nan")),
           "kv-head groups": dict(num_key_value_heads=3)}
    for match, override in bad.items():  # nonsense sizes and ranges never make a model
        with pytest.raises(ConfigError, match=match):
            args_from_hf_config(dict(base, **override))
    with pytest.raises(ConfigError, match="not an object"):
        args_from_hf_config([base])


# ---------------------------------------------------------------------------------------------------------
# the real example teacher

PARAGRAPH = ("The Industrial Revolution began in Great Britain in the late eighteenth century and spread to "
             "continental Europe and North America. Mechanised spinning and weaving transformed the textile "
             "industry, while improvements to the steam engine allowed factories to be built far from rivers. "
             "Historians still debate why it started where it did: cheap coal, high wages, secure property "
             "rights and a culture of tinkering have all been proposed.")
QUESTIONS = ["What is the capital of France?", "Give me three tips for staying healthy.",
             "If I have 3 apples and buy 5 more, how many apples do I have?"]


@pytest.mark.slow
def test_example_teacher_matches_transformers(example_teacher):
    from tokenizer import load_tokenizer
    ours, ref, tok = load_model(example_teacher), hf_model(example_teacher), load_tokenizer(example_teacher)
    ids = torch.tensor([tok.encode(PARAGRAPH)])
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max() <= 1e-3
    for question in QUESTIONS:
        prompt = tok.encode(tok.chat([{"role": "user", "content": question}]))
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):].tolist()
        if expected[-1] in tok.eos_ids:
            expected = expected[:-1]  # ours returns the reply without its stop token
        assert generate(ours, [prompt], max_new_tokens=32, eos_ids=tok.eos_ids)[0] == expected, question

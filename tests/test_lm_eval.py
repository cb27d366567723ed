"""lm-evaluation-harness on a red student, offline: its `hf` model reads the student directory red writes, and
the log-likelihood it gives each (context, continuation) of a multiple-choice task equals red's own forward pass
(model.py) on the same tokens to 1e-4 in fp32 (docs/eval-harness.md).

The student is RED's step-0 student of conftest.py's tiny teacher (channel selection, merged, saved as a Hugging
Face directory); the task is a YAML file over a local .jsonl (no download: HF_DATASETS_OFFLINE, HF_HUB_OFFLINE).
lm-eval moves the context's trailing spaces onto the continuation and cuts the continuation's ids off the whole
text's, so red's side does the same before scoring.

Builds on load_weights.py, model.py, tokenizer.py, init_select.py, student.py and data.py, with conftest.py's
tiny teacher and lm-eval (the reference: lm-evaluation-harness, its `hf` model through transformers).
Run as: pytest tests/test_lm_eval.py -q      (marked slow: lm-eval and datasets take seconds to import)
"""
import json

import pytest
import torch

pytest.importorskip("lm_eval")

ITEMS = [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "choices": ["7", "12", "1"], "label": 0},
         {"question": "The quick brown fox jumps over the lazy", "choices": ["dog", "cat", "student"], "label": 0},
         {"question": "def add(a, b):\n    return a +", "choices": ["b", "a", "0123456789"], "label": 0}]
TASK = """task: red_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def red_student(teacher: str, out: str) -> str:
    """RED's step-0 student of `teacher` at width 32 (selection from problems:50), written as an HF directory."""
    from data import load_windows
    from init_select import init_projections
    from load_weights import load_model, save_model
    from student import Student
    from tokenizer import load_tokenizer
    model = load_model(teacher)
    windows = load_windows("problems:50", load_tokenizer(teacher), 32)[:8]
    projections, norms, _ = init_projections("select", model, 32, batches=windows.split(4))
    save_model(Student(model, 32, projections, norms).merge(), out, like=teacher)
    return out


def red_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether it is the greedy one, tokenised as lm-eval tokenises."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # lm-eval's HFLM._encode_pair: trailing spaces belong to the continuation
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = tok.encode(context + continuation), tok.encode(context)
    tail = whole[len(head):]
    with torch.no_grad():
        logits = model(torch.tensor([whole]))[0, len(head) - 1:-1].float()  # (len(tail), V): the predictions
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(tail)
    return logp[torch.arange(len(tail)), target].sum().item(), bool((logp.argmax(-1) == target).all())


@pytest.mark.slow
def test_lm_eval_loglikelihoods_equal_red_forward(tmp_path, monkeypatch):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing written outside the test's folder
    from conftest import make_tiny_teacher
    from load_weights import load_model
    from tokenizer import load_tokenizer
    student = red_student(make_tiny_teacher(tmp_path / "teacher"), str(tmp_path / "student"))
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "red_tiny_choice.yaml").write_text(TASK.format(data=tmp_path / "items.jsonl",
                                                                         cache=tmp_path / "datasets"))
    import lm_eval
    from lm_eval.tasks import TaskManager
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={student},dtype=float32",
                                      tasks=["red_tiny_choice"], device="cpu", batch_size=4, log_samples=True,
                                      task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    samples = results["samples"]["red_tiny_choice"]
    model, tok = load_model(student), load_tokenizer(student)
    scored = 0
    for sample in samples:
        for (context, continuation), (theirs, greedy) in zip(sample["arguments"], sample["filtered_resps"]):
            ours, our_greedy = red_loglikelihood(model, tok, context, continuation)
            assert ours == pytest.approx(theirs, abs=1e-4), (context, continuation)
            assert our_greedy == greedy
            scored += 1
    assert scored == sum(len(item["choices"]) for item in ITEMS) == 9
    assert samples[0]["arguments"][0] == (f"Question: {ITEMS[0]['question']}\nAnswer:", " 7")  # target_delimiter
    accuracy = sum(max(range(3), key=lambda i: s["filtered_resps"][i][0]) == s["target"] for s in samples) / 3
    assert results["results"]["red_tiny_choice"]["acc,none"] == pytest.approx(accuracy)

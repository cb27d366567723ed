"""The README's equation table points at tests that exist, its commands name real flags, the files it names exist.

Builds on README.md and the files it names.
Run as: pytest tests/test_readme.py -q
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in sorted((ROOT / "docs").rglob("*.md"))}  # every page and record report


def test_equation_table_rows_point_to_existing_functions_and_tests():
    table = README[README.index("## Equations and where they live"):README.index("## Confirmed and reconstructed")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        code_file, _, names = cells[1].partition(":")
        source = (ROOT / code_file.strip("` ")).read_text()
        defined = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for name in re.findall(r"`(\w+)`", names):
            assert name in defined, f"{code_file}: {name} (README row {cells[0]!r})"
        test_file, _, test_name = cells[2].strip("` ").partition("::")
        tests = {n.name for n in ast.walk(ast.parse((ROOT / test_file).read_text())) if isinstance(n, ast.FunctionDef)}
        assert test_name in tests, f"{test_file}::{test_name} (README row {cells[0]!r})"


def test_flags_in_readme_exist():
    """Every --flag on a README (or docs/) command line of a tool is defined by that tool (distill.py's flags live
    in run_config.py and init_select.add_init_arguments)."""
    sources = {"distill.py": ["run_config.py", "init_select.py"], "init_select.py": ["init_select.py"],
               "erank.py": ["erank.py"], "eval_reasoning.py": ["eval_reasoning.py"], "data.py": ["data.py"],
               "student.py": ["student.py"], "scripts/generate.py": ["scripts/generate.py"],
               "experiments/plateau.py": ["experiments/plateau.py"], "experiments/reasoning_teacher.py": ["experiments/reasoning_teacher.py"],
               "experiments/error_kinds.py": ["experiments/error_kinds.py"]}
    text = "\n".join([README, *DOCS.values()])
    checked = 0
    for tool, files in sources.items():
        source = "".join((ROOT / f).read_text() for f in files)
        for line in re.findall(re.escape(tool) + r"[^\n`]*", text):
            for flag in re.findall(r"(--[a-z][a-z-]+)", line):
                assert f'"{flag}"' in source, f"README or docs/ use {tool} {flag}, which {tool} does not define"
                checked += 1
    assert checked >= 20


def test_pictures_and_scripts_the_readme_names_exist():
    named = set(re.findall(r"\b((?:docs|bench|experiments|scripts)/[\w./-]+\.(?:png|py|md|csv|json))", README))
    assert len(named) >= 10
    for path in named:
        assert (ROOT / path).is_file(), f"README names {path}, which is not in the repository"


def test_links_in_docs_resolve():
    """docs/*.md link their figures relative to themselves; every link that is not a web address resolves."""
    checked = 0
    for path, text in DOCS.items():
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if not re.match(r"[a-z]+://", target):
                assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links {target}, which does not exist"
                checked += 1
    assert checked >= 5

"""The README's equation table points at tests that exist, and its commands name real flags.

Builds on README.md and the files it names.
Run as: pytest tests/test_readme.py -q
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


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


def test_distill_flags_in_readme_exist():
    source = (ROOT / "distill.py").read_text()
    flags = set(re.findall(r"distill\.py[^\n]*", README))
    for line in flags:
        for flag in re.findall(r"(--[a-z][a-z-]+)", line):
            assert f'"{flag}"' in source, f"README uses distill.py {flag}, which distill.py does not define"


def test_every_module_docstring_says_what_it_builds_on_and_how_to_run_it():
    files = [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/*.py")]
    assert len(files) >= 20
    for path in files:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert doc.split("\n")[0].strip(), f"{path.name}: no one-line summary"
        assert "builds on" in doc.lower(), f"{path.relative_to(ROOT)}: docstring does not say what it builds on"
        assert "run" in doc.lower(), f"{path.relative_to(ROOT)}: docstring does not say how to run it"

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
    start = README.index("## Equations and where they live")
    table = README[start:README.index("\n## ", start + 1)]
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


def script_and_imports(script: Path) -> str:
    """The script's text and that of the project files it imports (its flags may live there: distill.py's are in
    run_config.py and init_select.add_init_arguments)."""
    texts = [script.read_text()]
    for node in ast.walk(ast.parse(texts[0])):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        for name in names:
            for candidate in (ROOT / (name.replace(".", "/") + ".py"), script.parent / (name + ".py")):
                if candidate.is_file() and candidate != script:
                    texts.append(candidate.read_text())
    return "\n".join(texts)


def commands(text: str) -> list[tuple[str, str]]:
    """(script path, its arguments) of every `python X.py ...` or `torchrun ... X.py ...` command in the text, with
    backslash-continued lines joined and comments cut."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        for part in re.split(r"&&|;|\|(?!\|)|`", line.split(" # ")[0]):
            m = re.search(r"(?:python|torchrun\b[^\n]*?)\s+((?:[\w-]+/)*\w+\.py)\b(.*)", part)
            if m:
                found.append((m.group(1), m.group(2)))
    return found


def test_every_command_in_readme_and_docs_names_a_script_and_its_flags():
    """Every `python X.py --flag ...` command in the README and docs/ runs a script that exists and passes only
    flags that script (or a project file it imports) defines."""
    checked = set()
    for page, text in [(ROOT / "README.md", README), *DOCS.items()]:
        for script, arguments in commands(text):
            path = ROOT / script
            assert path.is_file(), f"{page.relative_to(ROOT)} runs {script}, which is not in the repository"
            source = script_and_imports(path)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", arguments):
                assert f'"{flag}"' in source, f"{page.relative_to(ROOT)} runs {script} {flag}, which it does not define"
                checked.add((script, flag))
    assert len(checked) >= 60 and len({script for script, _ in checked}) >= 12


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

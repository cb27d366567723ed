"""Makes scripts/ importable as a package (bench/, experiments/ and tests import scripts.example_teacher); nothing runs here.

Builds on nothing.
Run as: the scripts themselves, e.g. python scripts/example_teacher.py or python scripts/generate.py --model DIR "hi"
"""

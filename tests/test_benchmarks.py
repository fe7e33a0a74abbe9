"""The README documents every benchmark: its command and where its results go."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(  # a benchmark runs as a script; the modules beside them are its parts
    path.stem
    for path in (ROOT / "benchmarks").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_readme_documents_each_benchmark(script):
    section = (ROOT / "README.md").read_text().split("\n## Benchmarks\n", 1)[1].split("\n## ")[0]
    assert f".venv/bin/python benchmarks/{script}.py" in section
    assert f"`benchmarks/results/{script}.json`" in section

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert "python -m experiments.edge_of_stability" in blocks[0]
    assert "python -m pytest" in blocks[1]
    assert blocks[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The Python API"):text.index("## Architecture")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for code in blocks:  # one session, as a reader would paste them
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out.split()
    assert "True" in out  # the lr = 50 runs are flagged as diverged
    assert (tmp_path / "chebyshev.nc").exists()
    ratio, residual = float(out[-2]), float(out[-1])
    assert 0 < ratio < 1.5 and 0 <= residual < 0.1

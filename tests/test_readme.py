import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_finds_modules(capsys):
    text = README.read_text()
    section = text[text.index("## Make your own model spatial"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {})
    deps = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(deps) == 2 and all(isinstance(d, list) for d in deps)
    assert 0 in deps[0] and 2 in deps[0] and 1 in deps[1] and 3 in deps[1]


def test_ci_runs_the_readme_test_command():
    cmd = re.search(r"Set up and run the tests:\n\n```bash\n(.*?)\n```", README.read_text(), re.S).group(1)
    ci = (README.parent / ".ci" / "run").read_text()
    assert cmd.strip() in ci

"""README's Python snippet runs as written (on CPU tensors here, on the GPU where there is one)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_snippet_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python code block"
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "torch.Size([2, 1, 16, 512]) torch.Size([2, 16, 1])" in capsys.readouterr().out

"""The public API: every name in ``imutune.__all__`` resolves, lazily, and the README example runs."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import imutune

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", [n for n in imutune.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_defining_module(name):
    obj = getattr(imutune, name)
    assert getattr(obj, "__module__", imutune._API[name]) == imutune._API[name]


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        imutune.not_a_name  # noqa: B018


def test_import_is_light():
    """``import imutune`` and the phone-side modules do not import torch."""
    code = ("import sys, imutune, imutune.runtime.replay, imutune.deploy.backends; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _readme_example() -> str:
    text = README.read_text()
    m = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S)
    assert m, "README.md has no '## Python API' section with a python code block"
    return m.group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "README.md (Python API)", "exec"), {"__name__": "__readme__"})

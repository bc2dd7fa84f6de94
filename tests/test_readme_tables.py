"""benchmarks/readme_tables.py: README tables are replaced by their source files, and stale ones are found."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "readme_tables", Path(__file__).resolve().parents[1] / "benchmarks" / "readme_tables.py")
rt = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rt)


def test_block_is_replaced_by_its_source(tmp_path):
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    readme = "intro\n<!-- table: t.md -->\nold\n<!-- /table -->\nend\n"
    new, problems = rt.render(readme, root=tmp_path)
    assert problems == []
    assert new == "intro\n<!-- table: t.md -->\n| a |\n|---|\n| 1 |\n<!-- /table -->\nend\n"


def test_missing_source_is_named_with_its_line(tmp_path):
    readme = "x\n\n<!-- table: runs/none.md -->\nold\n<!-- /table -->\n"
    new, problems = rt.render(readme, root=tmp_path)
    assert new == readme
    assert len(problems) == 1 and "line 3" in problems[0] and "runs/none.md" in problems[0]
    assert rt.render(readme, root=tmp_path, allow_missing=True)[1] == []


def test_check_mode_fails_on_a_stale_table(tmp_path, capsys):
    (tmp_path / "t.md").write_text("new table\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: t.md -->\nold table\n<!-- /table -->\n")
    rt.ROOT = tmp_path
    try:
        assert rt.main(["--readme", str(readme), "--check"]) == 1
        assert "differ" in capsys.readouterr().err
        assert rt.main(["--readme", str(readme)]) == 0
        assert rt.main(["--readme", str(readme), "--check"]) == 0
    finally:
        rt.ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad", ["<!-- table: a.md -->\nno end marker\n"])
def test_unterminated_block_is_left_alone(tmp_path, bad):
    assert rt.render(bad, root=tmp_path) == (bad, [])

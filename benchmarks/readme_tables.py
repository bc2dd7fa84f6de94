"""Write (or check) the README's benchmark tables from the benchmarks' own Markdown output.

Every generated block in README.md is fenced by two comments naming its source::

    <!-- table: runs/bench_filterloss/filterloss_readme.md -->
    ...replaced by that file's contents...
    <!-- /table -->

The source files are written by the benchmark commands (``imutune bench ... --out runs/...``), so every
README table is produced by a command in the repository. Usage::

    python benchmarks/readme_tables.py            # rewrite README.md's blocks from the files
    python benchmarks/readme_tables.py --check    # exit 1 where a block differs from its file
    python benchmarks/readme_tables.py --check --allow-missing   # skip blocks whose file is absent

A missing source file is an error (``--allow-missing`` skips it), named with the block's line number.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<src>[^ ]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def render(readme: str, *, root: Path, allow_missing: bool = False) -> tuple[str, list[str]]:
    """The README text with every block replaced by its source file; and the problems found."""
    problems: list[str] = []

    def sub(m: re.Match) -> str:
        src = root / m.group("src")
        line = readme.count("\n", 0, m.start()) + 1
        if not src.is_file():
            if not allow_missing:
                problems.append(f"README.md line {line}: source {m.group('src')!r} does not exist; run the "
                                f"benchmark that writes it first")
            return m.group(0)
        body = src.read_text().strip() + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, readme), problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 where a block is out of date")
    ap.add_argument("--allow-missing", action="store_true", help="skip blocks whose source file is absent")
    args = ap.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    new, problems = render(text, root=ROOT, allow_missing=args.allow_missing)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    if args.check:
        if new != text:
            print("README.md tables differ from their sources; run python benchmarks/readme_tables.py",
                  file=sys.stderr)
            return 1
        print(f"{len(BLOCK.findall(text))} README tables match their sources")
        return 0
    if new != text:
        path.write_text(new)
    print(f"{len(BLOCK.findall(new))} README tables written from their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())

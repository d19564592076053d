"""`make bench`: run every benchmark module in bench/ and write their sections to docs/benchmarks.md.

A benchmark module is `bench/bench_<name>.py` with `run() -> str` returning a Markdown section (a heading,
the side-by-side table and the ratios). Modules run in name order, one at a time; `BENCH=name1,name2` selects.
Numbers from other sections already in docs/benchmarks.md are kept when only some modules run.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import time
from pathlib import Path

import kubegraft_trainer  # noqa: F401  # before any TensorFlow import, for libcurl (see its __init__)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Produced by `make bench` (all) or `BENCH=<name> make bench` (one section), on the machine named in\n"
    "each section. Comparisons are side by side in one run, reported as ratios, because these machines\n"
    "are noisy.\n"
)
_MARK = "<!-- bench:{} -->"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"<!-- bench:([a-z0-9_]+) -->\n", text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def main() -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))
    wanted = [n for n in os.environ.get("BENCH", "").split(",") if n] or names
    for name in wanted:
        started = time.monotonic()
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        section = module.run().rstrip() + "\n\n"
        print(f"== bench {name} done in {time.monotonic() - started:.0f} s", flush=True)
        # Re-read just before writing, so benchmarks run concurrently don't drop each other's sections.
        sections = _sections(DOC.read_text()) if DOC.exists() else {}
        sections[name] = section
        DOC.write_text(
            HEADER + "\n" + "".join(_MARK.format(k) + "\n" + v for k, v in sorted(sections.items()))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

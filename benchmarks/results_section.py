"""One marked section of benchmarks/RESULTS.md, rewritten in place by the benchmark that owns it."""
import json
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(block: str, begin: str, end: str, heading: str, results: Path = RESULTS) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) where the file's ``begin`` ... ``end`` section
    is, or, where the file has none yet, at the end under ``## heading``; the rest of the file is kept."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    results.write_text(text)


def update_record(record: Path, fresh: list[dict], key: Callable[[dict], object], render: Callable[[list[dict]], str],
                  begin: str, end: str, heading: str, write: bool = True, results: Path = RESULTS) -> list[dict]:
    """The rows of the JSON list at ``record`` with ``fresh`` in place of the recorded rows of the same ``key``;
    prints ``render(rows)`` and, with ``write``, saves the rows and puts the table between ``begin`` and ``end``."""
    recorded = json.loads(record.read_text()) if record.is_file() else []
    replaced = {key(row) for row in fresh}
    rows = [row for row in recorded if key(row) not in replaced] + fresh
    text = render(rows)
    print(text)
    if write:
        record.write_text(json.dumps(rows, indent=1))
        write_section(text, begin, end, heading, results)
    return rows

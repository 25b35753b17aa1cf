"""One marked section of benchmarks/RESULTS.md, rewritten in place by the benchmark that owns it."""
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

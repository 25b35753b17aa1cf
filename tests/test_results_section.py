"""benchmarks/results_section.py: a marked section is replaced in place, or appended under its heading."""
from benchmarks.results_section import write_section

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def test_section_is_replaced_in_place_and_the_rest_kept(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# R\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    write_section(f"{BEGIN}\nnew table\n{END}", BEGIN, END, "X", results)
    assert results.read_text() == f"# R\n\nbefore\n\n{BEGIN}\nnew table\n{END}\n\nafter\n"


def test_missing_section_is_appended_under_its_heading(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\nsomething\n\n")
    write_section(f"{BEGIN}\nt\n{END}", BEGIN, END, "X results", results)
    assert results.read_text() == f"# R\n\nsomething\n\n## X results\n\n{BEGIN}\nt\n{END}\n"
    write_section(f"{BEGIN}\nu\n{END}", BEGIN, END, "X results", tmp_path / "new.md")
    assert (tmp_path / "new.md").read_text() == f"# Benchmark results\n\n## X results\n\n{BEGIN}\nu\n{END}\n"

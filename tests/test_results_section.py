"""benchmarks/results_section.py: a marked section is replaced in place, or appended under its heading."""
import json

from benchmarks.results_section import update_record, write_section

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


def test_record_rows_of_the_same_key_are_replaced_and_the_rest_kept(tmp_path, capsys):
    record, results = tmp_path / "record.json", tmp_path / "RESULTS.md"
    record.write_text(json.dumps([{"k": 1, "v": "old"}, {"k": 2, "v": "kept"}]))
    results.write_text(f"# R\n\n{BEGIN}\nold\n{END}\n")

    def render(rows):
        return "\n".join([BEGIN, *(f"{row['k']}={row['v']}" for row in rows), END])

    rows = update_record(record, [{"k": 1, "v": "new"}], lambda row: row["k"], render, BEGIN, END, "X", write=False,
                         results=results)
    assert rows == [{"k": 2, "v": "kept"}, {"k": 1, "v": "new"}]
    assert "2=kept\n1=new" in capsys.readouterr().out
    assert json.loads(record.read_text())[0]["v"] == "old" and "old" in results.read_text()  # nothing written
    update_record(record, [{"k": 1, "v": "new"}], lambda row: row["k"], render, BEGIN, END, "X", results=results)
    assert json.loads(record.read_text()) == rows
    assert results.read_text() == f"# R\n\n{BEGIN}\n2=kept\n1=new\n{END}\n"


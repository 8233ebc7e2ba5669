"""The study report (harness.reporting.report): the paper's ranking beside ours, and the appendix made from the
folder."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.reporting.report import MARKER, appendix, beside_paper, refresh_appendix, write_report

PAPER = pd.DataFrame({"dataset": ["CIFAR10"] * 3 + ["Artbench10"] * 3, "variant": ["A", "B", "C"] * 2,
                      "fid": [30.0, 40.0, 20.0, 10.0, 30.0, 20.0]})


def test_beside_paper_gives_percent_of_the_baseline_ranks_and_rank_correlations():
    ours = pd.DataFrame({"dataset": ["digits"] * 3, "variant": ["A", "B", "C"], "fid": [60.0, 90.0, 45.0]})
    shown, sentences = beside_paper(ours, PAPER, "fid", "FID", baseline="A")
    rows = shown.set_index("Variant")
    assert list(rows["vs A (digits)"]) == ["+0.0%", "+50.0%", "-25.0%"]
    assert list(rows["Rank (digits)"]) == ["2", "3", "1"]  # lower FID is better
    assert list(rows["vs A (CIFAR10, paper)"]) == ["+0.0%", "+33.3%", "-33.3%"]
    assert list(rows["Paper FID (Artbench10)"]) == ["10.00", "30.00", "20.00"]
    assert "against the paper's on CIFAR10: Spearman rho = +1.00" in sentences[0]  # the same order
    assert "against the paper's on Artbench10: Spearman rho = +0.50" in sentences[1]


def test_beside_paper_higher_is_better_and_a_missing_baseline_drops_the_relative_columns():
    ours = pd.DataFrame({"dataset": ["x"] * 3, "variant": ["A", "B", "C"], "acc": [0.5, 0.7, 0.6]})
    shown, _ = beside_paper(ours, PAPER, "acc", "Acc", baseline=None, higher_better=True)
    assert list(shown["Rank (x)"]) == ["3", "1", "2"]
    assert not any(c.startswith("vs ") for c in shown.columns)


def test_on_the_papers_own_datasets_each_ranking_is_compared_with_its_own():
    ours = pd.DataFrame({"dataset": ["CIFAR10"] * 3 + ["Artbench10"] * 3, "variant": ["A", "B", "C"] * 2,
                         "fid": [1.0, 2.0, 3.0, 1.0, 3.0, 2.0]})
    _, sentences = beside_paper(ours, PAPER, "fid", "FID", baseline="A")
    assert len(sentences) == 2
    assert "on CIFAR10 against the paper's on CIFAR10: Spearman rho = -0.50" in sentences[0]
    assert "on Artbench10 against the paper's on Artbench10: Spearman rho = +1.00" in sentences[1]


def test_too_few_shared_variants_give_no_correlation():
    ours = pd.DataFrame({"dataset": ["x", "x"], "variant": ["A", "Z"], "fid": [1.0, 2.0]})
    shown, sentences = beside_paper(ours, PAPER, "fid", "FID", baseline="A")
    assert sentences == [] and list(shown["Paper FID (CIFAR10)"]) == ["30.00", "–"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "pareto_fid.png").write_bytes(b"png")
    (tmp_path / "pareto_fid.csv").write_text("a\n1\n")
    (tmp_path / "NOTES.md").write_text("# Notes on this run\n\nThe machine was busy.\n")
    return tmp_path


def test_the_appendix_lists_plots_comparisons_and_notes_and_refreshing_it_never_duplicates(folder):
    path = write_report(folder, "# study (cpu profile)\n\nBody text.")
    text = path.read_text()
    assert text.startswith("# study (cpu profile)\n\nBody text.") and MARKER in text
    assert "![pareto_fid](pareto_fid.png)" in text and "[pareto_fid.csv](pareto_fid.csv)" in text
    assert "The machine was busy." in text and "Notes on this run" not in text
    assert "## Comparisons" not in text
    (folder / "compare_variant.md").write_text("# study: variant\n\ncaption\n\n| arm |\n|---|\n| D8 |\n")
    refresh_appendix(folder)
    refresh_appendix(folder)
    text = path.read_text()
    assert text.count(MARKER) == 1 and text.count("Body text.") == 1 and text.count("### By variant") == 1
    assert "| D8 |" in text and "[compare_variant.csv](compare_variant.csv)" in text


def test_a_hand_written_report_without_the_marker_keeps_its_text_and_gains_the_appendix(folder):
    (folder / "README.md").write_text("# old report\n\ntables\n")
    refresh_appendix(folder)
    text = (folder / "README.md").read_text()
    assert text.startswith("# old report\n\ntables") and appendix(folder) in text
    assert refresh_appendix(folder / "missing") is None

"""``pipeline data generate`` / ``pipeline data check`` through click's CliRunner."""

from click.testing import CliRunner

from fixtures_data import write_aan, write_listops
from pipelines.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, ["data", *args])


def _user_error(result) -> bool:
    """Exit status 1 through click's SystemExit: a user error. Status 1 alone is not enough, as
    CliRunner also reports 1 for a crash (its exception, not SystemExit, is then result.exception)."""
    return result.exit_code == 1 and isinstance(result.exception, SystemExit)


def test_generate_listops_then_check(tmp_path):
    out = tmp_path / "d"
    result = run("generate", "--task", "listops", "--out", str(out), "--size", "30", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert "train 24, val 3, test 3" in result.output
    assert sorted(p.name for p in (out / "listops-1000").iterdir()) == [
        "basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary directory left behind

    result = run("check", "--task", "listops", "--data-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "train      24 examples" in result.output and result.output.rstrip().endswith("OK")


def test_generate_refuses_non_empty_output_unless_forced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    result = run("generate", "--task", "listops", "--out", str(out), "--size", "5")
    assert _user_error(result) and "is not empty; pass --force" in result.output
    assert (out / "keep.txt").exists()

    result = run("generate", "--task", "listops", "--out", str(out), "--size", "5", "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "listops-1000/basic_val.tsv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_generate_pathfinder_is_deterministic(tmp_path):
    for name in ("a", "b"):
        result = run("generate", "--task", "pathfinder", "--out", str(tmp_path / name),
                     "--size", "10", "--seed", "4")
        assert result.exit_code == 0, result.output
    rel = "pathfinder32/curv_contour_length_14"
    for sub in ("metadata/0.npy", "imgs/0/sample_7.png"):
        a, b = (tmp_path / name / rel / sub for name in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()


def test_generate_bad_requests(tmp_path):
    result = run("generate", "--task", "text", "--out", str(tmp_path / "t"))
    assert _user_error(result)
    assert "is not generated" in result.output and "aclImdb" in result.output
    result = run("generate", "--task", "sudoku", "--out", str(tmp_path / "t"))
    assert _user_error(result) and "unknown task 'sudoku'" in result.output
    result = run("generate", "--task", "pathfinder", "--out", str(tmp_path / "t"), "--size", "3")
    assert _user_error(result) and "too small" in result.output
    assert not (tmp_path / "t").exists()


def test_check_reports_missing_data_with_instructions(tmp_path):
    result = run("check", "--task", "retrieval", "--data-dir", str(tmp_path))
    assert _user_error(result)
    assert "tsv_data/new_aan_pairs.train.tsv" in result.output and "lra_release.gz" in result.output
    assert result.output.rstrip().endswith("INVALID")

    result = run("check", "--task", "pathfinder", "--data-dir", str(tmp_path / "none"))
    assert _user_error(result) and "pipeline data generate --task pathfinder" in result.output


def test_check_reports_a_malformed_split_and_the_good_ones(tmp_path):
    write_aan(tmp_path, n=4)
    folder = write_listops(tmp_path)
    (folder / "basic_val.tsv").write_text("Source\tTarget\n( [SM 1 ) ] )\tx\n")
    result = run("check", "--task", "listops", "--data-dir", str(tmp_path))
    assert _user_error(result)
    assert "train       3 examples" in result.output
    assert "basic_val.tsv:2: Target 'x' is not an integer" in result.output

    result = run("check", "--task", "retrieval", "--data-dir", str(tmp_path))
    assert result.exit_code == 0 and "labels 0:2 1:2" in result.output

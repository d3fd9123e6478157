"""`pipeline bench`: the JSON shape promised to machines, on tiny sizes (correctness, not speed)."""

import json

import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.options import parse_int_list


def _run(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_attention_json_rows_have_the_documented_keys():
    out = json.loads(_run(["bench", "attention", "--lengths", "64,128", "--d-model", "16", "--heads", "2",
                           "--device", "cpu", "--json"]))
    rows = out["rows"]
    assert {(r["length"], r["kind"]) for r in rows} == {(n, k) for n in (64, 128)
                                                         for k in ("astro", "linear", "softmax")}
    for row in rows:
        assert {"length", "kind", "seconds", "peak_bytes"} <= row.keys()
        assert row["seconds"] > 0 and row["peak_bytes"] > 0
    assert any("softmax_over_astro_time" in s for s in out["summary"])


@pytest.mark.slow
def test_memory_json_rows_have_the_documented_keys():
    out = json.loads(_run(["bench", "memory", "--segments", "2", "--segment-len", "16", "--d-model", "16",
                           "--batch", "2", "--device", "cpu", "--json"]))
    rows = out["rows"]
    assert {r["mode"] for r in rows} == {"bptt", "amrb"}
    for row in rows:
        assert {"segments", "mode", "peak_bytes", "step_seconds"} <= row.keys()
        assert row["segments"] == 2 and row["peak_bytes"] > 0
    bptt, amrb = (next(r for r in rows if r["mode"] == m) for m in ("bptt", "amrb"))
    assert amrb["peak_bytes"] < bptt["peak_bytes"]  # the replay keeps one segment, not two


def _assert_user_error(result, *fragments: str) -> None:
    """A user error as docs/architecture.md promises: exit status 1 through click's SystemExit
    (a crash would leave its exception in ``result.exception`` instead: CliRunner captures the
    traceback, so it never shows in ``result.output``) and one ``Error:`` line naming the problem."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("bad", ["0", "a", "8-4", ",", "-3"])
def test_bad_lists_give_one_line_errors(bad):
    result = CliRunner().invoke(cli, ["bench", "attention", "--lengths", bad])
    _assert_user_error(result, "--lengths")


def test_parse_int_list_ranges_and_duplicates():
    assert parse_int_list("4,1-3,4", "--x") == [1, 2, 3, 4]


def test_throughput_json_rows_compare_presets_at_equal_size():
    out = json.loads(_run(["bench", "throughput", "--doc-len", "64", "--segments", "2", "--d-model", "16",
                           "--layers", "1", "--rounds", "1", "--device", "cpu", "--json"]))
    rows = {r["preset"]: r for r in out["rows"]}
    assert set(rows) == {"rmaat", "rmaat:bptt", "rmt", "transformer"}
    assert rows["rmaat"]["backprop"] == "amrb" and rows["rmt"]["backprop"] == "bptt"
    assert rows["rmaat:bptt"]["backprop"] == "bptt"
    assert rows["rmaat"]["peak_bytes"] < rows["rmaat:bptt"]["peak_bytes"]
    for row in rows.values():
        assert row["tokens"] == 128 and row["tokens_per_s"] > 0 and row["peak_bytes"] > 0
    rmt = next(s for s in out["summary"] if s["preset"] == "rmt")
    assert rmt["throughput_vs_rmt"] == 1.0


def test_throughput_rejects_unknown_preset():
    result = CliRunner().invoke(cli, ["bench", "throughput", "--presets", "gpt5"])
    _assert_user_error(result, "--presets", "unknown preset", "gpt5")


@pytest.mark.parametrize("args, message", [
    (["throughput", "--doc-len", "10", "--segments", "4"], "--doc-len 10 is not divisible by --segments 4"),
    (["attention", "--lengths", "64", "--d-model", "10", "--heads", "4"], "--heads 4 must divide --d-model 10"),
])
def test_inconsistent_sizes_give_one_line_errors(args, message):
    _assert_user_error(CliRunner().invoke(cli, ["bench", *args]), message)


def test_huge_range_fails_before_it_is_expanded():
    import click

    def at_most_100(value):
        if value > 100:
            raise click.ClickException(f"{value} > 100")

    with pytest.raises(click.ClickException, match="999999999 > 100"):
        parse_int_list("1-999999999", "--x", check=at_most_100)

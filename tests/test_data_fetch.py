"""``pipeline data fetch`` against a local HTTP server (127.0.0.1 only, no network).

The server serves tiny archives in the real layouts (built with fixtures_data's writers) and
misbehaves on request: wrong content, a body shorter than its Content-Length, a connection
closed early, HTTP errors. Every failure must be one ``Error:`` line, exit status 1, and leave
neither a partial --out nor a temporary directory beside it nor a file in the cache.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from fixtures_data import write_aan, write_cifar, write_imdb, write_listops
from pipelines.cli import cli
from rmaat.data import fetch as fetch_module

IMDB_KNOWN_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"


def _tar_gz(root: Path, names: list[str]) -> bytes:
    """A .tar.gz of ``root/<name>`` for each name, stored under its name (as the real archives)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            tar.add(root / name, arcname=name)
    return buffer.getvalue()


def _cut_after_first_folder(tar_gz: bytes) -> bytes:
    """The gzip stream of ``tar_gz`` cut right after the members of its first subfolder.

    A connection closed at such a point leaves a tar that ends cleanly between members (tarfile
    stops there without complaint): only the missing gzip trailer tells that it was cut.
    """
    raw = gzip.decompress(tar_gz)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    first = members[1].name  # members[0] is the top folder, e.g. lra_release
    end = max(m.offset_data + -(-m.size // 512) * 512 for m in members if m.name.startswith(first))
    compressor = zlib.compressobj(wbits=31)  # gzip framing, as the real archive's
    return compressor.compress(raw[:end]) + compressor.flush(zlib.Z_SYNC_FLUSH)  # no trailer


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _Server:
    """A threaded HTTP server; ``routes[path] = (status, body, mode)`` and ``hits`` per path.

    mode: "ok"; "short" (announces more bytes than it sends, then closes); "cut" (sends half the
    body with no Content-Length, then closes: a truncation HTTP cannot see); "slow" (sends half
    the body, then stalls for a second).
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, str]] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, body, mode = server.routes.get(self.path, (404, b"no such file", "ok"))
                self.send_response(status)
                if mode == "short":
                    self.send_header("Content-Length", str(len(body) + 1000))
                elif mode == "ok":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode in ("cut", "slow"):
                    self.wfile.write(body[: len(body) // 2])
                    if mode == "slow":
                        self.wfile.flush()
                        time.sleep(1.0)
                    return
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """The fixture archives: IMDb, CIFAR-10 and an LRA-release-like one (nested as the real one)."""
    root = tmp_path_factory.mktemp("archives")
    write_imdb(root / "imdb")
    write_cifar(root / "cifar")
    release = root / "lra" / "lra_release"
    write_listops(release)
    write_aan(release / "lra_release")  # retrieval sits one level deeper, as users report
    broken = root / "broken"
    (broken / "aclImdb" / "train" / "pos").mkdir(parents=True)  # no neg/, no test/: fails the check
    (broken / "aclImdb" / "train" / "pos" / "0_9.txt").write_text("great")
    return {
        "imdb": _tar_gz(root / "imdb", ["aclImdb"]),
        "cifar": _tar_gz(root / "cifar", ["cifar-10-batches-py"]),
        "lra": _tar_gz(root / "lra", ["lra_release"]),
        "broken": _tar_gz(broken, ["aclImdb"]),
    }


@pytest.fixture(scope="module")
def server(archives) -> _Server:
    s = _Server()
    s.routes.update({
        "/aclImdb_v1.tar.gz": (200, archives["imdb"], "ok"),
        "/cifar-10-python.tar.gz": (200, archives["cifar"], "ok"),
        "/lra_release.gz": (200, archives["lra"], "ok"),
        "/lra_cut.gz": (200, archives["lra"], "cut"),
        "/lra_cut_between_members.gz": (200, _cut_after_first_folder(archives["lra"]), "ok"),
        "/lra_bad_crc.gz": (200, archives["lra"][:-8] + bytes(4) + archives["lra"][-4:], "ok"),
        "/imdb_cut.tar.gz": (200, archives["imdb"], "cut"),
        "/imdb_short.tar.gz": (200, archives["imdb"], "short"),
        "/broken.tar.gz": (200, archives["broken"], "ok"),
        "/page.tar.gz": (200, b"<html>Sign in to download</html>", "ok"),
        "/500.tar.gz": (500, b"oops", "ok"),
        "/403.gz": (403, b"denied", "ok"),
        "/slow.tar.gz": (200, archives["imdb"], "slow"),
    })
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch, tmp_path):
    """requests honours proxy variables: reach the local server directly; and never write to
    the user's cache, even when a test forgets --cache-dir (the default cache is under XDG)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("RMAAT_DATA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def fetch(task: str, out: Path, url: str, *extra: str, cache: Path | None = None):
    args = ["data", "fetch", "--task", task, "--out", str(out), "--url", url, *extra]
    if cache is not None:
        args += ["--cache-dir", str(cache)]
    return CliRunner().invoke(cli, args)


def assert_one_line_error(result, *phrases: str) -> str:
    """Exit 1 via SystemExit, no traceback, exactly one ``Error:`` line holding every phrase."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # nothing after it
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def assert_nothing_left(parent: Path, cache: Path) -> None:
    """No --out, no temporary directory beside it, no (temporary) file in the cache."""
    if parent.exists():
        assert list(parent.iterdir()) == []
    if cache.exists():
        assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_fetch_text_then_reuse_the_cache(tmp_path, server, archives):
    cache, out = tmp_path / "cache", tmp_path / "data" / "d"
    md5 = _md5(archives["imdb"])
    hits = server.hits.get("/aclImdb_v1.tar.gz", 0)
    result = fetch("text", out, server.url("/aclImdb_v1.tar.gz"), "--md5", md5, cache=cache)
    assert result.exit_code == 0, result.output
    assert f"expected hash: md5:{md5}" in result.output and "unverified" not in result.output
    assert "(md5 checked)" in result.output
    assert f"data: {out / 'aclImdb'}\n" in result.output  # the final folder, not the temporary one
    assert "\nOK\n" in result.output
    assert (out / "aclImdb" / "train" / "pos" / "0_8.txt").read_text().startswith("pos review 0")
    assert sorted(p.name for p in (out / "aclImdb" / "test").iterdir()) == ["neg", "pos"]
    assert [p.name for p in out.parent.iterdir()] == ["d"]  # no temporary directory left
    assert server.hits["/aclImdb_v1.tar.gz"] == hits + 1

    check = CliRunner().invoke(cli, ["data", "check", "--task", "text", "--data-dir", str(out)])
    assert check.exit_code == 0 and check.output.rstrip().endswith("OK"), check.output

    # A second fetch is served from the cache: the server is not asked again.
    result = fetch("text", tmp_path / "data" / "d2", server.url("/aclImdb_v1.tar.gz"), "--md5", md5,
                   cache=cache)
    assert result.exit_code == 0, result.output
    assert "cached copy (server not asked)" in result.output
    assert server.hits["/aclImdb_v1.tar.gz"] == hits + 1

    # A non-empty --out is refused (one line) unless --force, which replaces it.
    (out / "mine.txt").write_text("user file")
    result = fetch("text", out, server.url("/aclImdb_v1.tar.gz"), "--md5", md5, cache=cache)
    assert_one_line_error(result, "is not empty; pass --force")
    assert (out / "mine.txt").exists()
    result = fetch("text", out, server.url("/aclImdb_v1.tar.gz"), "--md5", md5, "--force", cache=cache)
    assert result.exit_code == 0, result.output
    assert not (out / "mine.txt").exists() and (out / "aclImdb" / "test" / "neg").is_dir()
    assert sorted(p.name for p in out.parent.iterdir()) == ["d", "d2"]


def test_fetch_image(tmp_path, server, archives):
    out = tmp_path / "data" / "d"
    result = fetch("image", out, server.url("/cifar-10-python.tar.gz"),
                   "--sha256", hashlib.sha256(archives["cifar"]).hexdigest(), cache=tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert (out / "cifar-10-batches-py" / "test_batch").is_file()
    assert "train      18 examples" in result.output and "\nOK\n" in result.output


def test_fetch_lra_tasks_warn_unverified_and_share_one_download(tmp_path, server, monkeypatch):
    monkeypatch.setenv("RMAAT_DATA_CACHE", str(tmp_path / "cache"))  # the env var moves the cache
    hits = server.hits.get("/lra_release.gz", 0)
    result = fetch("listops", tmp_path / "listops", server.url("/lra_release.gz"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "unverified" in line]
    assert warnings == ["warning: the download is unverified (the LRA release (lra_release.gz) has "
                        "no published hash); pass --md5 or --sha256 to check it"]
    assert sorted(p.name for p in (tmp_path / "listops" / "listops-1000").iterdir()) == [
        "basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    assert [p.name for p in (tmp_path / "listops").iterdir()] == ["listops-1000"]  # only its folder

    result = fetch("retrieval", tmp_path / "retrieval", server.url("/lra_release.gz"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "retrieval" / "tsv_data" / "new_aan_pairs.eval.tsv").is_file()
    assert server.hits["/lra_release.gz"] == hits + 1  # the archive was downloaded once
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 1


def test_wrong_hash(tmp_path, server, archives):
    # A mirror keeps the archive's known hash: the fixture is not the real IMDb archive.
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("text", parent / "d", server.url("/aclImdb_v1.tar.gz"), cache=cache)
    assert_one_line_error(result, f"md5 of the download from {server.url('/aclImdb_v1.tar.gz')} is "
                                  f"{_md5(archives['imdb'])}, expected {IMDB_KNOWN_MD5}",
                          "pass its hash with --md5")
    assert_nothing_left(parent, cache)
    result = fetch("text", parent / "d", server.url("/aclImdb_v1.tar.gz"), "--sha256", "0" * 64,
                   cache=cache)
    assert_one_line_error(result, "sha256 of the download", "expected " + "0" * 64)
    assert_nothing_left(parent, cache)


def test_truncated_download_with_content_length(tmp_path, server, archives):
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("text", parent / "d", server.url("/imdb_short.tar.gz"), cache=cache)
    n = len(archives["imdb"])
    assert_one_line_error(result, "was cut short", f"after {n} of {n + 1000} bytes")
    assert_nothing_left(parent, cache)


def test_connection_closed_early(tmp_path, server, archives):
    parent, cache = tmp_path / "data", tmp_path / "cache"
    # With a hash, the short file fails it ...
    result = fetch("text", parent / "d", server.url("/imdb_cut.tar.gz"), "--md5", _md5(archives["imdb"]),
                   cache=cache)
    assert_one_line_error(result, "md5 of the download", f"expected {_md5(archives['imdb'])}")
    assert_nothing_left(parent, cache)
    # ... without one (the LRA release), unpacking finds the archive truncated and drops it,
    # wherever the cut falls: mid-member, or between members after a complete listops-1000/.
    for path in ("/lra_cut.gz", "/lra_cut_between_members.gz"):
        result = fetch("listops", parent / "d", server.url(path), cache=cache)
        assert_one_line_error(result, "is not a readable tar archive, or it is truncated",
                              "deleted it from the cache")
        assert_nothing_left(parent, cache)


def test_corrupt_archive_without_hash_fails_its_gzip_crc(tmp_path, server):
    # Intact deflate data, wrong CRC32 in the gzip trailer: only reading to the end notices.
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("listops", parent / "d", server.url("/lra_bad_crc.gz"), cache=cache)
    assert_one_line_error(result, "it is corrupt (CRC check failed", "deleted it from the cache")
    assert_nothing_left(parent, cache)


@pytest.mark.parametrize("path, status", [("/500.tar.gz", "HTTP 500 Internal Server Error"),
                                          ("/missing.tar.gz", "HTTP 404 Not Found")])
def test_http_errors(tmp_path, server, path, status):
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("listops", parent / "d", server.url(path), cache=cache)
    assert_one_line_error(result, f"{status} from {server.url(path)}")
    assert_nothing_left(parent, cache)


def test_official_lra_url_answering_403_points_to_a_mirror(tmp_path, server, monkeypatch):
    # The real URL cannot be reached offline: point the LRA release's entry at the local server.
    official = dataclasses.replace(fetch_module.LRA_RELEASE, url=server.url("/403.gz"))
    monkeypatch.setitem(fetch_module.TASK_ARCHIVES, "pathfinder", official)
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = CliRunner().invoke(cli, ["data", "fetch", "--task", "pathfinder",
                                      "--out", str(parent / "d"), "--cache-dir", str(cache)])
    assert_one_line_error(result, f"HTTP 403 Forbidden from {server.url('/403.gz')}",
                          "known to answer 403 Forbidden; pass --url with a mirror of lra_release.gz")
    assert_nothing_left(parent, cache)


def test_server_that_stops_answering(tmp_path, server, monkeypatch, archives):
    monkeypatch.setattr(fetch_module, "DOWNLOAD_TIMEOUT_S", 0.3)
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("text", parent / "d", server.url("/slow.tar.gz"), "--md5", _md5(archives["imdb"]),
                   cache=cache)
    assert_one_line_error(result, "127.0.0.1", "stopped answering for 0.3 s")
    assert_nothing_left(parent, cache)


def test_unreachable_host(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("image", parent / "d", f"http://127.0.0.1:{port}/c.tar.gz", cache=cache)
    assert_one_line_error(result, f"cannot reach 127.0.0.1:{port} ([Errno 111] Connection refused)")
    assert_nothing_left(parent, cache)


def test_not_an_archive_and_wrong_archive(tmp_path, server, archives):
    parent, cache = tmp_path / "data", tmp_path / "cache"
    result = fetch("pathfinder", parent / "d", server.url("/page.tar.gz"), cache=cache)
    assert_one_line_error(result, "is not a readable tar archive", "deleted it from the cache")
    assert_nothing_left(parent, cache)
    # A readable archive without the task's folder is kept in the cache (it is what the URL serves).
    result = fetch("text", parent / "d", server.url("/cifar-10-python.tar.gz"),
                   "--md5", _md5(archives["cifar"]), cache=cache)
    assert_one_line_error(result, "holds no aclImdb/ folder")
    assert list(parent.iterdir()) == []


def test_unpacked_data_failing_the_check_are_not_written(tmp_path, server, archives):
    parent, cache = tmp_path / "data", tmp_path / "cache"
    out = parent / "d"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("kept")  # --force replaces only after the check passes
    result = fetch("text", out, server.url("/broken.tar.gz"), "--md5", _md5(archives["broken"]),
                   "--force", cache=cache)
    assert_one_line_error(result, "the unpacked data fail `pipeline data check`",
                          f"nothing written to {out}")
    assert [p.name for p in parent.iterdir()] == ["d"] and (out / "old.txt").read_text() == "kept"


def test_member_escaping_the_archive_is_refused(tmp_path, server):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("listops-1000/basic_train.tsv", "listops-1000/../../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    server.routes["/evil.gz"] = (200, buffer.getvalue(), "ok")
    parent = tmp_path / "data"
    result = fetch("listops", parent / "d", server.url("/evil.gz"), cache=tmp_path / "cache")
    assert_one_line_error(result, "points outside the archive")
    assert list(parent.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("args, phrase", [
    (["--md5", "0" * 32, "--sha256", "0" * 64], "give --md5 or --sha256, not both"),
    (["--md5", "xyz"], "is not an md5 hash"),
    (["--url", "ftp://example.org/a.tgz"], "is not an http(s) URL"),
])
def test_bad_options(tmp_path, args, phrase):
    # A local URL, so that even a broken option check never reaches the network.
    result = CliRunner().invoke(cli, ["data", "fetch", "--task", "text", "--out", str(tmp_path / "d"),
                                      "--cache-dir", str(tmp_path / "c"), "--url",
                                      "http://127.0.0.1:9/a.tgz", *args])
    assert_one_line_error(result, phrase)
    assert list(tmp_path.iterdir()) == []


def test_help_says_the_lra_release_has_no_published_hash():
    result = CliRunner().invoke(cli, ["data", "fetch", "--help"])
    assert result.exit_code == 0
    assert "no published hash" in " ".join(result.output.split())

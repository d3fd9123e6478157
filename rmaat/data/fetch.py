"""Download a task's public archive and unpack it into the layout the loaders read.

``pipeline data fetch`` in three steps, so that ``--out`` never holds a half-unpacked data set:

1. download the archive into a cache with pooch (hash-checked when a hash is known; a cached
   file is reused, a failed download leaves nothing in the cache);
2. unpack only the task's folder (``aclImdb/``, ``cifar-10-batches-py/``, ``listops-1000/``, ...)
   into a temporary directory beside ``--out``, and run ``pipeline data check`` on it;
3. rename the temporary directory into place (rmaat.data.generate.replace_dir); on any failure
   it is removed instead.

Every failure a user can cause or meet (bad hash, HTTP error, unreachable host, truncated
download, not an archive, data that fail the check) is a DataError/ConfigError with a one-line
message, which the CLI prints as ``Error: ...``.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable
from urllib.parse import urlparse

from rmaat.data.check import CheckReport, check_task
from rmaat.data.generate import check_out_dir, replace_dir
from rmaat.data.tasks import LRA_RELEASE_URL, get_task
from rmaat.errors import ConfigError, DataError

#: Environment variable that moves the download cache (``--cache-dir`` wins over it).
CACHE_ENV = "RMAAT_DATA_CACHE"
#: Seconds without an answer (connect or read) before a download is abandoned.
DOWNLOAD_TIMEOUT_S = 60

_HEX_LENGTHS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class Archive:
    """A public archive holding one or more tasks' folders."""

    title: str
    url: str
    known_hash: str | None  # "md5:<hex>" / "sha256:<hex>" as pooch takes it; None: none published
    note: str = ""          # said when there is no hash, or when the download fails


IMDB = Archive("IMDb reviews (aclImdb_v1.tar.gz)",
               "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
               "md5:7c2ac02c03563afcf9b574c7e56c153a")
CIFAR10 = Archive("CIFAR-10 for Python (cifar-10-python.tar.gz)",
                  "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                  "md5:c58f30108f718f92721af3b95e74349a")
LRA_RELEASE = Archive("the LRA release (lra_release.gz)", LRA_RELEASE_URL, None,
                      note="the official LRA release URL is known to answer 403 Forbidden; "
                           "pass --url with a mirror of lra_release.gz")

#: Which archive holds each task (the folder unpacked is the task's ``TaskSpec.subdir``).
TASK_ARCHIVES: dict[str, Archive] = {
    "text": IMDB, "image": CIFAR10,
    "listops": LRA_RELEASE, "retrieval": LRA_RELEASE, "pathfinder": LRA_RELEASE,
}


@dataclass(frozen=True)
class Source:
    """What to download for one fetch: the archive, the URL actually used and the hash checked."""

    archive: Archive
    url: str
    known_hash: str | None


@dataclass
class FetchResult:
    """What :func:`fetch_task` did."""

    out: Path
    archive_path: Path   # the cached download
    downloaded: bool     # False: the cached copy was used, the server was not asked
    n_files: int         # files unpacked
    report: CheckReport  # ``pipeline data check`` of the result (always ok here)


class _CorruptArchive(DataError):
    """The download is not a readable archive: the cached copy is useless and is deleted."""


def _one_line(text: str) -> str:
    """Library messages may span lines; the CLI promises one."""
    return " ".join(str(text).split())


def resolve_source(task: str, url: str | None = None, md5: str | None = None,
                   sha256: str | None = None) -> Source:
    """The archive, URL and hash for ``task``: the known ones unless overridden.

    A mirror (``url``) keeps the archive's known hash (a mirror should serve the same file);
    ``md5``/``sha256`` replace it. ConfigError for unknown tasks, bad URLs or malformed hashes.
    """
    if task not in TASK_ARCHIVES:
        raise ConfigError(f"task {task!r} has no public archive to fetch; "
                          f"fetchable: {', '.join(TASK_ARCHIVES)}")
    archive = TASK_ARCHIVES[task]
    if md5 is not None and sha256 is not None:
        raise ConfigError("give --md5 or --sha256, not both")
    known_hash = archive.known_hash
    for algorithm, value in (("md5", md5), ("sha256", sha256)):
        if value is None:
            continue
        value = value.strip().lower()
        if not re.fullmatch(f"[0-9a-f]{{{_HEX_LENGTHS[algorithm]}}}", value):
            raise ConfigError(f"--{algorithm} {value!r} is not an {algorithm} hash "
                              f"({_HEX_LENGTHS[algorithm]} hexadecimal digits)")
        known_hash = f"{algorithm}:{value}"
    url = archive.url if url is None else url.strip()
    if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
        raise ConfigError(f"--url {url!r} is not an http(s) URL")
    return Source(archive, url, known_hash)


def default_cache_dir() -> Path:
    """``$RMAAT_DATA_CACHE`` if set, else the user cache folder (``~/.cache/rmaat-pipeline``)."""
    import pooch

    return Path(os.environ.get(CACHE_ENV) or pooch.os_cache("rmaat-pipeline")).expanduser()


def _download_error(error: Exception, source: Source) -> DataError:
    """A requests/pooch failure as a one-line DataError saying what happened and what to do."""
    import requests
    import urllib3

    url, host = source.url, urlparse(source.url).netloc
    if source.url != source.archive.url:
        mirror = "check --url"
    else:
        mirror = source.archive.note or "pass --url with a mirror"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        reason = error.response.reason or ""
        advice = mirror if status < 500 else "the server failed; try again later or use a mirror"
        return DataError(_one_line(f"HTTP {status} {reason} from {url}; {advice}"))
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        # urllib3 names the byte counts when the body is shorter than its Content-Length
        counts = re.search(r"(\d+) bytes read, (\d+) more expected", str(error))
        got = f" after {counts[1]} of {int(counts[1]) + int(counts[2])} bytes" if counts else ""
        return DataError(f"the download from {url} was cut short{got} (connection closed early); "
                         "nothing was cached or written; run the command again")
    cause = error.args[0] if error.args else None
    if isinstance(error, requests.ReadTimeout) or isinstance(cause, urllib3.exceptions.ReadTimeoutError):
        # (requests reports a read timeout in the body as a ConnectionError wrapping it)
        return DataError(f"{host} stopped answering for {DOWNLOAD_TIMEOUT_S} s while sending {url}; "
                         "nothing was cached or written; run the command again")
    if isinstance(error, requests.ConnectionError):
        # The useful part of urllib3's nested message is its "[Errno ...] ..." tail.
        errno_text = re.search(r"\[Errno [^\]]*\][^'\")]*", str(error))
        why = errno_text[0].strip() if errno_text else type(error).__name__
        return DataError(f"cannot reach {host} ({why}) for {url}; check the network or proxy, "
                         "or pass --url with a reachable mirror")
    return DataError(_one_line(f"the download from {url} failed ({type(error).__name__}: {error})"))


def _hash_error(error: ValueError, source: Source) -> DataError:
    """pooch's hash mismatch as one line: expected vs got, and what to do."""
    match = re.search(r"expected (\S+) but got (\S+?)\.", str(error))
    if match is None:  # some other ValueError from pooch: pass its words on
        return DataError(_one_line(f"the download from {source.url} failed: {error}"))
    algorithm, expected = match[1].split(":") if ":" in match[1] else ("sha256", match[1])
    return DataError(
        f"{algorithm} of the download from {source.url} is {match[2]}, expected {expected}: "
        "the file is corrupt or not the expected archive; it was deleted and nothing was written; "
        f"run the command again, or if you trust this file, pass its hash with --{algorithm}")


def download(source: Source, cache_dir: str | Path | None = None, *,
             progress: bool = False) -> tuple[Path, bool]:
    """Download ``source`` into the cache (or reuse a cached copy); return (path, downloaded).

    pooch downloads into a temporary file in the cache and moves it into place only once the
    hash matches, so an interrupted or failed download never leaves a file that looks cached.
    Raises DataError (one line) for every download failure.
    """
    import pooch
    import requests

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    fetcher = pooch.HTTPDownloader(progressbar=progress, timeout=DOWNLOAD_TIMEOUT_S)
    downloaded = False

    def downloader(url: str, output_file: str, pooch_obj: object) -> None:
        nonlocal downloaded  # pooch calls the downloader only when the cache cannot serve
        downloaded = True
        fetcher(url, output_file, pooch_obj)

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # our own lines say what happens; pooch's repeat them
    try:
        path = pooch.retrieve(source.url, known_hash=source.known_hash, path=cache,
                              downloader=downloader)
    except requests.RequestException as e:  # before OSError: requests' errors are OSErrors
        raise _download_error(e, source) from None
    except ValueError as e:
        raise _hash_error(e, source) from None
    except OSError as e:
        raise DataError(_one_line(f"cannot write the download cache {cache}: {e.strerror or e}; "
                                  f"choose another with --cache-dir or ${CACHE_ENV}")) from None
    finally:
        logger.setLevel(level)
    return Path(path), downloaded


def _relative_parts(name: str) -> tuple[str, ...]:
    """A member name's parts without ``.``; DataError for names that would escape the target."""
    path = PurePosixPath(name)
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if path.is_absolute() or ".." in parts:
        raise DataError(f"archive member {name!r} points outside the archive; refusing to unpack it")
    return parts


#: Leading bytes of the compressions an archive may use, and how to read each.
_COMPRESSIONS: dict[bytes, Callable[[Path], BinaryIO]] = {
    b"\x1f\x8b": lambda path: gzip.open(path, "rb"),
    b"BZh": lambda path: bz2.open(path, "rb"),
    b"\xfd7zXZ\x00": lambda path: lzma.open(path, "rb"),
}


def _open_decompressed(path: Path) -> BinaryIO:
    """``path`` as a stream of its decompressed bytes (a plain tar is read as it is)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    for prefix, opener in _COMPRESSIONS.items():
        if magic.startswith(prefix):
            return opener(path)
    return open(path, "rb")


def unpack_folder(archive_path: Path, folder: str, dest: Path, *, name: str | None = None) -> int:
    """Unpack the members under ``folder`` (e.g. ``listops-1000``) into ``dest/folder``.

    The folder may sit at any depth in the archive (the LRA release nests some tasks under
    ``lra_release/lra_release/``); the first place it occurs is used. Only regular files and
    directories are written (no links or devices), so a hostile archive cannot write outside
    ``dest``. ``name`` (default: the file's) names the archive in messages. Returns the number
    of files. Raises _CorruptArchive for unreadable, truncated or corrupt archives and DataError
    when the folder is not in the archive.
    """
    name = archive_path.name if name is None else name
    want = PurePosixPath(folder).parts
    prefix: tuple[str, ...] | None = None  # the parts before ``folder`` in the archive
    n_files = 0
    try:
        # Stream mode reads the archive once, front to back. tarfile ends quietly where a
        # truncated archive ends, so the decompression is ours: gzip/bz2/xz raise EOFError for
        # a stream cut short, and reading it to its end below checks its length and CRC.
        with _open_decompressed(archive_path) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                parts = _relative_parts(member.name)
                if prefix is None:
                    for i in range(len(parts) - len(want) + 1):
                        if parts[i:i + len(want)] == want:
                            prefix = parts[:i]
                            break
                    else:
                        continue
                if parts[:len(prefix) + len(want)] != prefix + want:
                    continue
                target = dest.joinpath(*parts[len(prefix):])
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    n_files += 1
            while stream.read(1 << 20):  # the rest (tar padding) up to the compressed trailer
                pass
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise _CorruptArchive(_one_line(f"{name} is not a readable tar archive, or it "
                                        f"is truncated ({e})")) from None
    except OSError as e:
        if e.errno is None:  # gzip.BadGzipFile and friends: a reading error, not a disk one
            raise _CorruptArchive(_one_line(f"{name} is not a readable tar archive, or it is "
                                            f"corrupt ({e})")) from None
        raise DataError(_one_line(f"cannot write into {dest}: {e.strerror or e}")) from None
    if prefix is None:
        raise DataError(f"{name} holds no {folder}/ folder; is it the right archive "
                        "for this task?")
    return n_files


def fetch_task(task: str, out: Path, source: Source, *, cache_dir: str | Path | None = None,
               force: bool = False, progress: bool = False,
               echo: Callable[[str], None] = lambda line: None) -> FetchResult:
    """Download ``source``, unpack ``task``'s folder into ``out`` and check it (see module doc).

    ``out`` ends up holding ``<TaskSpec.subdir>/...`` (e.g. ``out/aclImdb/train/pos/...``), or is
    left as it was when anything fails. ``echo`` receives progress lines.
    """
    spec = get_task(task)
    out = check_out_dir(out, force)
    echo(f"download: {source.url}")
    archive_path, downloaded = download(source, cache_dir, progress=progress)
    checked = f"{source.known_hash.split(':')[0]} checked" if source.known_hash else "unverified"
    echo(f"{'downloaded to' if downloaded else 'cached copy (server not asked):'} {archive_path} "
         f"({checked})")
    echo(f"unpacking {spec.subdir}/ and checking it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside --out, so the final rename stays on one file system and is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        try:
            n_files = unpack_folder(archive_path, spec.subdir, tmp, name=source.url)
        except _CorruptArchive as e:
            archive_path.unlink(missing_ok=True)  # else every later fetch would reuse it
            raise DataError(f"{e}; deleted it from the cache, nothing written; "
                            "run the command again or check --url") from None
        report = check_task(task, tmp)
        if not report.ok:
            problems = [p.replace(str(tmp), str(out)) for p in report.problems] or ["splits missing"]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DataError(_one_line(f"the unpacked data fail `pipeline data check`: {problems[0]}"
                                      f"{more}; nothing written to {out}"))
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    # The check ran in the temporary directory: name the final one.
    if report.root is not None:
        report.root = out / report.root.relative_to(tmp)
    for split in report.splits:
        split.source = split.source.replace(str(tmp), str(out))
    return FetchResult(out, archive_path, downloaded, n_files, report)

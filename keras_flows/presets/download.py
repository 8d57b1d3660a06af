"""Download-and-cache for preset files.

`fetch(url, sha256)` returns a local path holding the file at `url`,
downloading it on the first call only.

Cache layout, under the cache directory (`cache_root`):

    http(s)://HOST[:PORT]/A/B/NAME     -> HOST[_PORT]/A/B/NAME
    hf://ORG/REPO/A/NAME               -> hf/ORG/REPO/main/A/NAME
    hf://ORG/REPO@REVISION/A/NAME      -> hf/ORG/REPO/REVISION/A/NAME
    kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION/A/NAME
                                       -> kaggle/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION/A/NAME

Characters other than letters, digits and `._-` become `_`; a URL with a
query string gets one more folder, `q-<8 hex of its sha256>`, before NAME;
`filename=` replaces NAME. `cache_path` gives the path without fetching.

Environment variables:

    KERAS_FLOWS_CACHE    the cache directory (default $KERAS_HOME/keras_flows,
                         KERAS_HOME defaulting to ~/.keras); `cache_dir=` wins.
    KERAS_FLOWS_OFFLINE  `1` (or HF_HUB_OFFLINE=1): never touch the network,
                         unless `offline=False` is passed.
    HF_ENDPOINT          where `hf://` URLs resolve (https://huggingface.co):
                         `{HF_ENDPOINT}/ORG/REPO/resolve/REVISION/PATH`.
    KAGGLE_API_ENDPOINT  where `kaggle://` handles resolve (https://www.kaggle.com):
                         `{KAGGLE_API_ENDPOINT}/api/v1/models/OWNER/MODEL/FRAMEWORK/
                         VARIATION/VERSION/download/PATH`, Kaggle Models' file
                         download (public models need no account; with
                         KAGGLE_USERNAME and KAGGLE_KEY set, requests carry them).

Guarantees: a file at a cached path is complete and verified. It is written
to `NAME.part-PID-XXXX` in the same folder, then checked: against `sha256`
when given; otherwise its length against the Content-Length the server
declared, and its content against what its name claims (`check_file`: a
`.json` parses, an `.h5` opens with h5py, a `.zip`/`.tar.gz`/`.tgz` lists
to its end). Only then is it renamed into place. On any failure or
interruption (an exception, Ctrl-C, SIGTERM in the main thread) the partial
file is removed; one left by a process killed outright (SIGKILL, power cut)
is removed by the next fetch into that folder, once no process has its PID.
A cached file is checked again on every call (re-hashed with `sha256`,
else `check_file`); one that fails is reported (warning), removed and
downloaded again.

Time limits: `CONNECT_TIMEOUT` seconds to connect and receive the response
headers, `READ_TIMEOUT` seconds without body data, `DEADLINE` seconds for a
whole download (the `timeout=` and `deadline=` arguments override them).

Errors: `DownloadError` (an `OSError`) for network failures, time limits and
files that are not what their name claims, `OfflineError` (a
`DownloadError`) for a file missing from the cache in offline mode, and
`ChecksumError` (a `ValueError`) for a download whose sha256 is wrong.
"""

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile

from keras_flows.version import __version__

__all__ = ["fetch", "sha256_of", "cache_path", "cache_root", "check_file", "remove_stale_parts",
           "DownloadError", "OfflineError", "ChecksumError"]

CONNECT_TIMEOUT = 30  # seconds to connect and receive the response headers
READ_TIMEOUT = 60  # seconds without body data before a download fails
DEADLINE = 3600  # seconds a whole download may take
USER_AGENT = f"keras_flows/{__version__} (Python urllib {sys.version.split()[0]})"
SCHEMES = ("http://", "https://", "hf://", "kaggle://")
KAGGLE_FORM = "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION/PATH"
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")
_PART = re.compile(r".+\.part-(\d+)-\w+")  # NAME.part-PID-RANDOM, files and folders
_KINDS = {".json": "JSON", ".h5": "an HDF5 file", ".zip": "a zip archive",
          ".tar.gz": "a gzipped tar archive", ".tgz": "a gzipped tar archive"}


class DownloadError(OSError):
    """A file could not be downloaded (HTTP error, connection failure, time limit,
    short body, content that is not what the file's name claims)."""


class OfflineError(DownloadError):
    """Offline mode is on and the file is not (intact) in the cache."""


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the expected one; it was not kept."""


def sha256_of(path):
    """Hex sha256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path, name=None):
    """What is wrong with the file at `path` for the kind its name (or `name`)
    claims, as a clause ("is an HTML page, not JSON"), or None when it is whole.

    `.json` must parse, `.h5` open with h5py, `.zip` read with every CRC right,
    `.tar.gz`/`.tgz` list its members and decompress to the end. Other names
    are not checked (None).
    """
    name = name or os.path.basename(path)
    kind = next((k for suffix, k in _KINDS.items() if name.endswith(suffix)), None)
    if kind is None:
        return None
    with open(path, "rb") as f:
        head = f.read(64).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return f"is an HTML page, not {kind}"
    try:
        if kind == "JSON":
            with open(path, encoding="utf-8") as f:
                json.load(f)
        elif name.endswith(".h5"):
            import h5py

            with h5py.File(path, "r"):
                pass
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                if (bad := archive.testzip()) is not None:
                    raise zipfile.BadZipFile(f"bad CRC for its entry {bad!r}")
        else:
            with tarfile.open(path, "r:gz") as archive:
                archive.getmembers()
                while archive.fileobj.read(_CHUNK):  # to the gzip trailer and its CRC
                    pass
    except Exception as e:  # each parser has its own errors; any of them means "not whole"
        return f"is not {kind} ({type(e).__name__}: {e})"
    return None


def offline_mode():
    """Whether `KERAS_FLOWS_OFFLINE` (or `HF_HUB_OFFLINE`) forbids the network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("KERAS_FLOWS_OFFLINE", "HF_HUB_OFFLINE"))


def cache_root(cache_dir=None):
    """The cache directory: `cache_dir`, else `$KERAS_FLOWS_CACHE`, else
    `$KERAS_HOME/keras_flows` (KERAS_HOME defaulting to `~/.keras`)."""
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_FLOWS_CACHE") or os.path.join(
            os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"), "keras_flows")
    return os.path.expanduser(cache_dir)


def cache_path(url, *, filename=None, cache_dir=None):
    """Local path where `fetch(url, filename=..., cache_dir=...)` keeps the file."""
    return _resolve(url, filename, cache_dir)[1]


def remove_stale_parts(folder):
    """Removes the `*.part-PID-*` files and folders in `folder` whose process
    is no longer running (killed outright, before it could clean up)."""
    for entry in os.listdir(folder):
        match = _PART.fullmatch(entry)
        if match and not _running(int(match[1])):
            path = os.path.join(folder, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)


def _running(pid):
    if os.name == "nt":  # os.kill would terminate it there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def fetch(url, sha256=None, *, filename=None, cache_dir=None, offline=None, progress=True,
          timeout=None, deadline=None):
    """Returns a local path holding the file at `url`, downloading it once.

    Args:
      url: `http://`, `https://` or `hf://ORG/REPO[@REVISION]/PATH` URL.
      sha256: expected hex sha256 of the file, or None to check its length
        and content instead (see the module docstring).
      filename: name of the cached file; default the URL's last component.
      cache_dir: cache directory; default `cache_root()`.
      offline: True never uses the network, False may; None reads
        `KERAS_FLOWS_OFFLINE` and `HF_HUB_OFFLINE`.
      progress: show a progress bar on stderr while downloading.
      timeout: seconds, or a `(connect, read)` pair; default
        `(CONNECT_TIMEOUT, READ_TIMEOUT)`.
      deadline: seconds the whole download may take; default `DEADLINE`.

    Returns:
      path: the cached file; with `sha256`, its sha256 matches, else
      `check_file(path)` finds nothing wrong.

    Raises:
      ValueError: `url` has another scheme, or `sha256` is not 64 hex digits.
      ChecksumError: the downloaded file does not match `sha256`.
      OfflineError: offline, and the file is not in the cache or fails its check.
      DownloadError: the download failed (HTTP status, connection, time limit,
        a short body, content that is not what the file's name claims).
    """
    source, path = _resolve(url, filename, cache_dir)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r} (for {url}).")
    if offline is None:
        offline = offline_mode()

    problem = "is not in the cache"
    if os.path.isfile(path):
        if sha256 is None:
            wrong = check_file(path)
            if wrong is None:
                return path
            problem = f"in the cache {wrong}"
        else:
            actual = sha256_of(path)
            if actual == sha256:
                return path
            problem = f"in the cache has sha256 {actual}, expected {sha256}"
        if not offline:
            warnings.warn(f"Cached file {path} {problem.removeprefix('in the cache ')}; "
                          f"downloading {url} again.", stacklevel=2)
            os.remove(path)
    if offline:
        raise OfflineError(
            f"Offline mode: {os.path.basename(path)} {problem} ({path}), source {url}. "
            f"Run once online (unset KERAS_FLOWS_OFFLINE / HF_HUB_OFFLINE, or pass "
            f"offline=False) to download it, or copy the file to {path}.")
    if timeout is None:
        timeout = (CONNECT_TIMEOUT, READ_TIMEOUT)
    connect, read = timeout if isinstance(timeout, (tuple, list)) else (timeout, timeout)
    with _sigterm_raises(url):
        _download(url, source, path, sha256, progress, connect, read,
                  DEADLINE if deadline is None else deadline)
    return path


def _resolve(url, filename, cache_dir):
    """(URL to request, cache path) for `url`."""
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise ValueError(f"Cannot download {url!r}: the URL must start with one of "
                         f"{', '.join(SCHEMES)} (hf://ORG/REPO[@REVISION]/PATH, "
                         f"{KAGGLE_FORM}).")
    if url.startswith("hf://"):
        parts = url[len("hf://"):].split("/")
        if len(parts) < 3 or not all(parts):
            raise ValueError(f"Cannot download {url!r}: expected hf://ORG/REPO[@REVISION]/PATH.")
        org, (repo, _, revision), rest = parts[0], parts[1].partition("@"), parts[2:]
        revision = revision or "main"
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        source = "/".join([endpoint, org, repo, "resolve", urllib.parse.quote(revision, safe=""),
                           *rest])
        folders, name = ["hf", org, repo, revision, *rest[:-1]], rest[-1]
    elif url.startswith("kaggle://"):
        parts = url[len("kaggle://"):].split("/")
        if len(parts) < 6 or not all(parts) or not parts[4].isdigit():
            raise ValueError(f"Cannot download {url!r}: expected {KAGGLE_FORM}, VERSION a "
                             "number (a pinned version, so that the cache stays valid).")
        endpoint = os.environ.get("KAGGLE_API_ENDPOINT", "https://www.kaggle.com").rstrip("/")
        quoted = [urllib.parse.quote(p, safe="") for p in parts]
        source = "/".join([endpoint, "api/v1/models", *quoted[:5], "download", *quoted[5:]])
        folders, name = ["kaggle", *parts[:-1]], parts[-1]
    else:
        split = urllib.parse.urlsplit(url)
        if not split.netloc:
            raise ValueError(f"Cannot download {url!r}: the URL has no host.")
        source = urllib.parse.urlunsplit(split._replace(fragment=""))
        parts = [p for p in urllib.parse.unquote(split.path).split("/") if p]
        folders, name = [split.netloc, *parts[:-1]], parts[-1] if parts else None
        if split.query:
            folders.append("q-" + hashlib.sha256(split.query.encode()).hexdigest()[:8])
    name = filename or name
    if not name:
        raise ValueError(f"Cannot tell a file name from {url!r}; pass filename=.")
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", c) for c in [*folders, name]]
    safe = ["_" if c in (".", "..") else c for c in safe]
    return source, os.path.join(cache_root(cache_dir), *safe)


def _headers(url):
    headers = {"User-Agent": USER_AGENT}
    user, key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if url.startswith("kaggle://") and user and key:
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


def _download(url, source, path, sha256, progress, connect, read, deadline):
    """Downloads `source` to `path` via a temporary file; see the module docstring."""
    name = os.path.basename(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_parts(folder)
    end, late = time.monotonic() + deadline, f"not done within its deadline of {deadline:g} s"
    where = url if source == url else f"{url} ({source})"
    hint = (f"Check the URL and your connection. To work offline, copy the file to {path} "
            f"and set KERAS_FLOWS_OFFLINE=1.")
    fd, part = tempfile.mkstemp(prefix=f"{name}.part-{os.getpid()}-", dir=folder)
    try:
        try:
            request = urllib.request.Request(source, headers=_headers(url))
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(
                    request, timeout=min(connect, deadline)) as r:
                length = r.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                sock = getattr(getattr(r.fp, "raw", None), "_sock", None)
                bar = _Progress(name, total) if progress else None
                digest, size = hashlib.sha256(), 0
                while True:
                    if (left := end - time.monotonic()) <= 0:
                        raise TimeoutError(late)
                    if sock is not None:  # one timeout per read, within the deadline
                        sock.settimeout(min(read, left))
                    if not (chunk := r.read1(_CHUNK)):
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if bar:
                        bar.update(size)
                if bar:
                    bar.close()
        except urllib.error.HTTPError as e:
            raise DownloadError(f"Could not download {where}: HTTP {e.code} {e.reason}. "
                                f"{hint}") from e
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, TimeoutError) and time.monotonic() >= end:
                reason = TimeoutError(late)
            raise DownloadError(f"Could not download {where}: {reason!s} "
                                f"({type(reason).__name__}). {hint}") from e
        if total is not None and size != total:
            raise DownloadError(f"Could not download {where}: the connection ended after "
                                f"{size} of {total} bytes. {hint}")
        if sha256 is not None:
            if (actual := digest.hexdigest()) != sha256:
                raise ChecksumError(f"The file downloaded from {where} has sha256 {actual}, "
                                    f"expected {sha256}; it was not kept.")
        elif (wrong := check_file(part, name)) is not None:
            raise DownloadError(f"The file downloaded from {where} {wrong}; it was not "
                                f"kept. {hint}")
        os.replace(part, path)
    except BaseException:  # KeyboardInterrupt and SIGTERM included: no partial file
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
        raise


class _Terminated(BaseException):
    """SIGTERM arrived while `_sigterm_raises` was active."""


@contextlib.contextmanager
def _sigterm_raises(url):
    """Runs the block with SIGTERM raising `_Terminated`, so that its cleanup runs,
    then hands the signal on to the handler it replaced (under the default one,
    the process ends as SIGTERM would have ended it). Only in the main thread,
    where Python runs signal handlers, and only while SIGTERM is not ignored."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) in (signal.SIG_IGN, None)):
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise DownloadError(f"The download of {url} was interrupted by SIGTERM.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Progress:
    """One-line download progress on stderr, redrawn at most 10 times a second."""

    def __init__(self, name, total):
        self.name, self.total, self.size, self.last = name, total, 0, float("-inf")

    def update(self, size, force=False):
        self.size = size
        now = time.monotonic()
        if force or now - self.last >= 0.1:
            self.last = now
            line = f"{size / 1e6:.1f} MB"
            if self.total:
                line = f"{100 * size // self.total:3d}% {line} / {self.total / 1e6:.1f} MB"
            sys.stderr.write(f"\rDownloading {self.name}: {line}")
            sys.stderr.flush()

    def close(self):
        self.update(self.size, force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()

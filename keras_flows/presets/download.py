"""Download-and-cache for preset files.

`fetch(url, sha256)` returns a local path holding the file at `url`,
downloading it on the first call only.

Cache layout, under the cache directory (below):

    http(s)://HOST[:PORT]/A/B/NAME     -> HOST[_PORT]/A/B/NAME
    hf://ORG/REPO/A/NAME               -> hf/ORG/REPO/main/A/NAME
    hf://ORG/REPO@REVISION/A/NAME      -> hf/ORG/REPO/REVISION/A/NAME

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

Guarantees: a file at a cached path is complete. It is written to
`NAME.part-XXXX` in the same folder, checked against `sha256`, then renamed
into place; on any failure or interruption the partial file is removed.
With `sha256` given, a cached file is re-hashed on every call; one that
does not match is reported (warning), removed and downloaded again.

Errors: `DownloadError` (an `OSError`) for network failures, `OfflineError`
(a `DownloadError`) for a file missing from the cache in offline mode, and
`ChecksumError` (a `ValueError`) for a download whose sha256 is wrong.
"""

import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

from keras_flows.version import __version__

__all__ = ["fetch", "sha256_of", "cache_path", "DownloadError", "OfflineError", "ChecksumError"]

TIMEOUT = 60  # seconds without data before a download fails
USER_AGENT = f"keras_flows/{__version__} (Python urllib {sys.version.split()[0]})"
SCHEMES = ("http://", "https://", "hf://")
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")


class DownloadError(OSError):
    """A file could not be downloaded (HTTP error, connection failure, short body)."""


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


def cache_path(url, *, filename=None, cache_dir=None):
    """Local path where `fetch(url, filename=..., cache_dir=...)` keeps the file."""
    return _resolve(url, filename, cache_dir)[1]


def fetch(url, sha256=None, *, filename=None, cache_dir=None, offline=None, progress=True):
    """Returns a local path holding the file at `url`, downloading it once.

    Args:
      url: `http://`, `https://` or `hf://ORG/REPO[@REVISION]/PATH` URL.
      sha256: expected hex sha256 of the file, or None not to check.
      filename: name of the cached file; default the URL's last component.
      cache_dir: cache directory; default `$KERAS_FLOWS_CACHE`, else
        `$KERAS_HOME/keras_flows` (KERAS_HOME defaulting to `~/.keras`).
      offline: True never uses the network, False may; None reads
        `KERAS_FLOWS_OFFLINE` and `HF_HUB_OFFLINE`.
      progress: show a progress bar on stderr while downloading.

    Returns:
      path: the cached file; with `sha256`, its sha256 matches.

    Raises:
      ValueError: `url` has another scheme, or `sha256` is not 64 hex digits.
      ChecksumError: the downloaded file does not match `sha256`.
      OfflineError: offline, and the file is not in the cache or does not match.
      DownloadError: the download failed (HTTP status, connection, timeout).
    """
    source, path = _resolve(url, filename, cache_dir)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r} (for {url}).")
    if offline is None:
        offline = any(os.environ.get(v, "").strip().lower() in _TRUE
                      for v in ("KERAS_FLOWS_OFFLINE", "HF_HUB_OFFLINE"))

    problem = "is not in the cache"
    if os.path.isfile(path):
        if sha256 is None:
            return path
        actual = sha256_of(path)
        if actual == sha256:
            return path
        problem = f"in the cache has sha256 {actual}, expected {sha256}"
        if not offline:
            warnings.warn(f"Cached file {path} has sha256 {actual}, expected {sha256}; "
                          f"downloading {url} again.", stacklevel=2)
            os.remove(path)
    if offline:
        raise OfflineError(
            f"Offline mode: {os.path.basename(path)} {problem} ({path}), source {url}. "
            f"Run once online (unset KERAS_FLOWS_OFFLINE / HF_HUB_OFFLINE, or pass "
            f"offline=False) to download it, or copy the file to {path}.")
    _download(url, source, path, sha256, progress)
    return path


def _resolve(url, filename, cache_dir):
    """(URL to request, cache path) for `url`."""
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise ValueError(f"Cannot download {url!r}: the URL must start with one of "
                         f"{', '.join(SCHEMES)} (hf://ORG/REPO[@REVISION]/PATH).")
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
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_FLOWS_CACHE") or os.path.join(
            os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"), "keras_flows")
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", c) for c in [*folders, name]]
    safe = ["_" if c in (".", "..") else c for c in safe]
    return source, os.path.join(os.path.expanduser(cache_dir), *safe)


def _download(url, source, path, sha256, progress):
    """Downloads `source` to `path` via a temporary file; see the module docstring."""
    name = os.path.basename(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=name + ".part-", dir=folder)
    where = url if source == url else f"{url} ({source})"
    hint = (f"Check the URL and your connection. To work offline, copy the file to {path} "
            f"and set KERAS_FLOWS_OFFLINE=1.")
    try:
        try:
            request = urllib.request.Request(source, headers={"User-Agent": USER_AGENT})
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(request, timeout=TIMEOUT) as r:
                length = r.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = _Progress(name, total) if progress else None
                digest, size = hashlib.sha256(), 0
                while chunk := r.read(_CHUNK):
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
            raise DownloadError(f"Could not download {where}: {reason!s} "
                                f"({type(reason).__name__}). {hint}") from e
        if total is not None and size != total:
            raise DownloadError(f"Could not download {where}: the connection ended after "
                                f"{size} of {total} bytes. {hint}")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise ChecksumError(f"The file downloaded from {where} has sha256 {actual}, "
                                f"expected {sha256}; it was not kept.")
        os.replace(part, path)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file
        try:
            os.remove(part)
        except FileNotFoundError:
            pass
        raise


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

"""keras_flows.presets.download against a local HTTP server that injects faults."""

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile

import numpy as np
import pytest

from keras_flows.presets import download
from keras_flows.presets.download import (ChecksumError, DownloadError, OfflineError, cache_path,
                                          fetch, sha256_of)

PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _serve(server, relpath, data=PAYLOAD):
    file = server.root / relpath
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    return f"{server.url}/{relpath}"


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, fs in os.walk(folder) for f in fs)


def test_fresh_download_then_cache_hit(server, cache):
    url = _serve(server, "models/glow.bin")
    path = fetch(url, PAYLOAD_SHA, progress=False)
    with open(path, "rb") as f:
        assert f.read() == PAYLOAD
    assert sha256_of(path) == PAYLOAD_SHA
    port = server.server_address[1]
    assert path == os.path.join(cache, f"127.0.0.1_{port}", "models", "glow.bin")
    assert path == cache_path(url)
    assert server.requests["/models/glow.bin"] == 1
    assert server.agents[0].startswith("keras_flows/")
    for sha in (PAYLOAD_SHA, None):
        assert fetch(url, sha, progress=False) == path
    assert server.requests["/models/glow.bin"] == 1
    assert _files(cache) == [os.path.relpath(path, cache)]


def test_query_string_and_filename(server, cache):
    url = _serve(server, "get")
    a = fetch(url + "?id=1", filename="a.bin", progress=False)
    b = fetch(url + "?id=2", filename="a.bin", progress=False)
    assert a != b and os.path.basename(a) == os.path.basename(b) == "a.bin"
    assert server.requests["/get"] == 2


def test_corrupt_cache_is_downloaded_again(server, cache):
    url = _serve(server, "w.bin")
    path = fetch(url, PAYLOAD_SHA, progress=False)
    with open(path, "wb") as f:
        f.write(b"junk")
    with pytest.warns(UserWarning, match="w.bin"):
        assert fetch(url, PAYLOAD_SHA, progress=False) == path
    assert server.requests["/w.bin"] == 2
    assert sha256_of(path) == PAYLOAD_SHA


def test_corrupt_cache_is_removed_when_download_fails(server, cache):
    url = _serve(server, "r.bin")
    path = fetch(url, progress=False)
    with open(path, "wb") as f:
        f.write(b"junk")
    server.faults["/r.bin"] = "404"
    with pytest.warns(UserWarning, match="r.bin"), pytest.raises(DownloadError, match="404"):
        fetch(url, PAYLOAD_SHA, progress=False)
    assert _files(cache) == []


@pytest.mark.parametrize("progress", [False, True])
def test_truncated_download_leaves_nothing(server, cache, progress):
    url = _serve(server, "t.bin")
    server.faults["/t.bin"] = "truncate"
    with pytest.raises(DownloadError, match=f"{re.escape(url)}.*{len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        fetch(url, PAYLOAD_SHA, progress=progress)
    assert not os.path.exists(cache_path(url))
    assert _files(cache) == []
    del server.faults["/t.bin"]
    assert sha256_of(fetch(url, PAYLOAD_SHA, progress=progress)) == PAYLOAD_SHA
    assert _files(cache) == [os.path.relpath(cache_path(url), cache)]


def test_keyboard_interrupt_leaves_nothing(server, cache, monkeypatch):
    url = _serve(server, "k.bin")

    def interrupt(self, size, force=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(download._Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch(url, progress=True)
    assert server.requests["/k.bin"] == 1
    assert _files(cache) == []


def test_checksum_mismatch_raises_and_keeps_nothing(server, cache):
    url = _serve(server, "c.bin")
    server.faults["/c.bin"] = "corrupt"
    with pytest.raises(ChecksumError) as info:
        fetch(url, PAYLOAD_SHA, progress=False)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert url in message and PAYLOAD_SHA in message and "not kept" in message
    actual = [w for w in message.replace(",", " ").replace(";", " ").split()
              if len(w) == 64 and w != PAYLOAD_SHA]
    assert len(actual) == 1 and actual[0] != PAYLOAD_SHA
    assert _files(cache) == []


def test_offline_uses_cache_without_network(server, cache, monkeypatch):
    url = _serve(server, "o.bin")
    path = fetch(url, PAYLOAD_SHA, progress=False)
    server.faults["/o.bin"] = "404"
    assert fetch(url, PAYLOAD_SHA, offline=True) == path
    monkeypatch.setenv("KERAS_FLOWS_OFFLINE", "1")
    assert fetch(url, PAYLOAD_SHA) == path
    assert server.requests["/o.bin"] == 1


@pytest.mark.parametrize("how", ["argument", "KERAS_FLOWS_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_without_cache_raises(server, cache, monkeypatch, how):
    url = _serve(server, "missing.bin")
    kwargs = {"offline": True} if how == "argument" else {}
    if how != "argument":
        monkeypatch.setenv(how, "1")
    with pytest.raises(OfflineError) as info:
        fetch(url, PAYLOAD_SHA, **kwargs)
    message = str(info.value)
    assert "missing.bin" in message and url in message and cache_path(url) in message
    assert "online" in message and "copy" in message
    assert server.requests["/missing.bin"] == 0
    assert _files(cache) == []
    # offline=False overrides the environment.
    assert sha256_of(fetch(url, PAYLOAD_SHA, offline=False, progress=False)) == PAYLOAD_SHA


def test_offline_with_corrupt_cache_raises(server, cache):
    url = _serve(server, "bad.bin")
    path = fetch(url, progress=False)
    with open(path, "wb") as f:
        f.write(b"junk")
    with pytest.raises(OfflineError, match="bad.bin.*sha256"):
        fetch(url, PAYLOAD_SHA, offline=True)
    assert server.requests["/bad.bin"] == 1


def test_http_404(server, cache):
    url = f"{server.url}/nowhere.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, progress=False)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert url in message and "404" in message and "KERAS_FLOWS_OFFLINE" in message
    assert cache_path(url) in message
    assert server.requests["/nowhere.bin"] == 1
    assert _files(cache) == []


def test_connection_refused(cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.bin"
    with pytest.raises(DownloadError, match=f"{re.escape(url)}.*KERAS_FLOWS_OFFLINE"):
        fetch(url, progress=False)
    assert _files(cache) == []


@pytest.mark.parametrize("how", ["constant", "argument"])
def test_no_response_headers_times_out(server, cache, monkeypatch, how):
    url = _serve(server, "slow.bin")
    server.faults["/slow.bin"] = "hang"
    monkeypatch.setattr(download, "CONNECT_TIMEOUT", 0.3 if how == "constant" else 30)
    kwargs = {"timeout": (0.3, 30)} if how == "argument" else {}
    start = time.monotonic()
    with pytest.raises(DownloadError, match=f"{re.escape(url)}.*timed out"):
        fetch(url, progress=False, **kwargs)
    assert time.monotonic() - start < 5
    assert _files(cache) == []


@pytest.mark.parametrize("revision", [None, "v1.0"])
def test_hf_urls(server, cache, monkeypatch, revision):
    served = f"org/repo/resolve/{revision or 'main'}/dir/file.bin"
    _serve(server, served)
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")
    url = f"hf://org/repo{'@' + revision if revision else ''}/dir/file.bin"
    path = fetch(url, PAYLOAD_SHA, progress=False)
    assert server.requests["/" + served] == 1
    assert path == os.path.join(cache, "hf", "org", "repo", revision or "main", "dir", "file.bin")
    assert sha256_of(path) == PAYLOAD_SHA


@pytest.mark.parametrize("url", ["ftp://example.com/a.bin", "/tmp/a.bin", "file:///tmp/a.bin",
                                 "example.com/a.bin", "hf://org/repo"])
def test_bad_urls(cache, url):
    with pytest.raises(ValueError, match=re.escape(url)):
        fetch(url)


def test_bad_sha256(server, cache):
    with pytest.raises(ValueError, match="64 hex"):
        fetch(_serve(server, "s.bin"), "abc")
    assert server.requests["/s.bin"] == 0


@pytest.mark.parametrize("fault", [None, "nolength"])
def test_progress_on_stderr(server, cache, capfd, fault):
    url = _serve(server, "p.bin")
    server.faults["/p.bin"] = fault
    fetch(url, PAYLOAD_SHA, progress=True)
    out, err = capfd.readouterr()
    assert "p.bin" in err and f"{len(PAYLOAD) / 1e6:.1f} MB" in err
    assert ("100%" in err) == (fault is None)
    assert "p.bin" not in out


def test_no_progress(server, cache, capfd):
    url = _serve(server, "q.bin")
    server.faults["/q.bin"] = "nolength"
    assert sha256_of(fetch(url, PAYLOAD_SHA, progress=False)) == PAYLOAD_SHA
    out, err = capfd.readouterr()
    assert "q.bin" not in out + err and "MB" not in out + err
    assert server.requests["/q.bin"] == 1


def test_cache_dir_argument_and_keras_home(server, cache, tmp_path, monkeypatch):
    url = _serve(server, "d.bin")
    mine = tmp_path / "mine"
    path = fetch(url, progress=False, cache_dir=str(mine))
    assert path.startswith(str(mine) + os.sep) and os.path.isfile(path)
    assert not cache.exists()
    monkeypatch.delenv("KERAS_FLOWS_CACHE")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    path = fetch(url, progress=False)
    assert path.startswith(os.path.join(tmp_path, "home", "keras_flows") + os.sep)
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    path = fetch(url, progress=False)
    assert path.startswith(os.path.join(tmp_path, "user", ".keras", "keras_flows") + os.sep)
    assert server.requests["/d.bin"] == 3


# -- time limits --------------------------------------------------------------

@contextlib.contextmanager
def _dripping_server(every):
    """A server that answers 200 with Content-Length 1000, sends one byte, then one
    more every `every` seconds (none when `every` is None) until closed."""
    stop, listener = threading.Event(), socket.create_server(("127.0.0.1", 0))

    def serve():
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\nx")
            while not stop.wait(every or 10):
                conn.sendall(b"x")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/drip.bin"
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_a_body_that_stalls_times_out(cache):
    with _dripping_server(None) as url:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=f"{re.escape(url)}.*timed out"):
            fetch(url, progress=False, timeout=(5, 0.3))
        assert time.monotonic() - start < 3
    assert _files(cache) == []


def test_the_deadline_ends_a_download_that_trickles(cache):
    with _dripping_server(0.05) as url:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=f"{re.escape(url)}.*deadline of 0.5 s"):
            fetch(url, progress=False, timeout=(5, 1), deadline=0.5)
        assert time.monotonic() - start < 3
    assert _files(cache) == []


# -- files without a sha256: checked by length and content ------------------

@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """name -> the bytes of a whole file of each kind `check_file` knows."""
    import h5py

    folder = tmp_path_factory.mktemp("whole")
    with h5py.File(folder / "w.h5", "w") as f:
        f["vars/0"] = np.arange(4000.0)
    with zipfile.ZipFile(folder / "p.zip", "w") as z:
        z.writestr("p/config.json", PAYLOAD[:100_000])
    with tarfile.open(folder / "p.tar.gz", "w:gz") as t:
        info = tarfile.TarInfo("p/config.json")
        info.size = 100_000
        t.addfile(info, io.BytesIO(PAYLOAD[:100_000]))
    return {"config.json": json.dumps({"values": list(range(3000))}).encode(),
            "model.weights.h5": (folder / "w.h5").read_bytes(),
            "p.zip": (folder / "p.zip").read_bytes(),
            "p.tar.gz": (folder / "p.tar.gz").read_bytes()}


@pytest.mark.parametrize("fault", ["html", "truncate", "truncate without length"])
@pytest.mark.parametrize("name", ["config.json", "model.weights.h5", "p.zip", "p.tar.gz"])
def test_a_bad_file_without_sha256_is_refused_and_not_cached(server, cache, whole, name, fault):
    data = whole[name]
    if fault == "html":
        url = _serve(server, name, b"\n<!DOCTYPE html><html><body>Sign in</body></html>")
        expected = "is an HTML page, not "
    elif fault == "truncate":
        url = _serve(server, name, data)
        server.faults["/" + name] = "truncate"
        expected = f"after {len(data) // 2} of {len(data)} bytes"
    else:
        url = _serve(server, name, data[:len(data) // 2])
        server.faults["/" + name] = "nolength"
        expected = "is not "
    with pytest.raises(DownloadError) as info:
        fetch(url, progress=False)
    assert url in str(info.value) and expected in str(info.value), str(info.value)
    assert _files(cache) == []
    _serve(server, name, data)
    server.faults.clear()
    with open(fetch(url, progress=False), "rb") as f:
        assert f.read() == data


def test_a_bad_cached_file_without_sha256_is_downloaded_again(server, cache):
    data = b'{"class_name": "RealNVP"}'
    url = _serve(server, "p/metadata.json", data)
    path = fetch(url, progress=False)
    with open(path, "wb") as f:
        f.write(b"<html><body>Not found</body></html>")
    with pytest.raises(OfflineError, match="metadata.json in the cache is an HTML page, not JSON"):
        fetch(url, offline=True)
    with pytest.warns(UserWarning, match=f"{re.escape(path)} is an HTML page, not JSON"):
        assert fetch(url, progress=False) == path
    with open(path, "rb") as f:
        assert f.read() == data
    assert server.requests["/p/metadata.json"] == 2


# -- partial files ---------------------------------------------------------------

def test_part_files_of_dead_processes_are_removed_at_the_next_fetch(server, cache):
    url = _serve(server, "s/x.bin")
    folder = os.path.dirname(cache_path(url))
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = [f"y.bin.part-{dead.pid}-abc_12", f"staging.part-{dead.pid}-k3"]
    live = f"z.bin.part-{os.getpid()}-abc_12"
    os.makedirs(os.path.join(folder, stale[1], "sub"))
    for name in (stale[0], live):
        open(os.path.join(folder, name), "w").close()
    fetch(url, progress=False)
    assert sorted(os.listdir(folder)) == ["x.bin", live]


def _wait_for_part(folder):
    for _ in range(2000):
        if os.path.isdir(folder) and any(".part-" in f for f in os.listdir(folder)):
            return True
        time.sleep(0.01)
    return False


def test_sigterm_removes_the_part_file_then_reaches_the_previous_handler(server, cache):
    url = _serve(server, "term.bin")
    server.faults["/term.bin"] = "hang"

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    def kill():
        if _wait_for_part(os.path.dirname(cache_path(url))):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        threading.Thread(target=kill, daemon=True).start()
        with pytest.raises(Stop):
            fetch(url, progress=False, timeout=20)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _files(cache) == []


# Runs download.py in a fresh process without keras_flows/__init__.py (and so
# without Keras, seconds to import): stub packages hold only their paths.
_FETCH_ALONE = """
import os, sys, types
root = os.path.join(sys.argv[1], "keras_flows")
for name, path in (("keras_flows", root), ("keras_flows.presets", os.path.join(root, "presets"))):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [path]
from keras_flows.presets.download import fetch
fetch(sys.argv[2], progress=False)
"""


def test_sigterm_under_the_default_handler_ends_the_process_and_leaves_no_part(server, cache):
    url = _serve(server, "term.bin")
    server.faults["/term.bin"] = "hang"
    root = os.path.dirname(os.path.dirname(os.path.abspath(download.__file__)))
    child = subprocess.Popen([sys.executable, "-c", _FETCH_ALONE, os.path.dirname(root), url])
    try:
        assert _wait_for_part(os.path.dirname(cache_path(url)))
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == -signal.SIGTERM
    finally:
        child.kill()
    assert _files(cache) == []

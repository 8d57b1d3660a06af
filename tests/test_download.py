"""keras_flows.presets.download against a local HTTP server that injects faults."""

import hashlib
import os
import re
import socket

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
    url = _serve(server, "models/glow.weights.h5")
    path = fetch(url, PAYLOAD_SHA, progress=False)
    with open(path, "rb") as f:
        assert f.read() == PAYLOAD
    assert sha256_of(path) == PAYLOAD_SHA
    port = server.server_address[1]
    assert path == os.path.join(cache, f"127.0.0.1_{port}", "models", "glow.weights.h5")
    assert path == cache_path(url)
    assert server.requests["/models/glow.weights.h5"] == 1
    assert server.agents[0].startswith("keras_flows/")
    for sha in (PAYLOAD_SHA, None):
        assert fetch(url, sha, progress=False) == path
    assert server.requests["/models/glow.weights.h5"] == 1
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


def test_timeout(server, cache, monkeypatch):
    url = _serve(server, "slow.bin")
    server.faults["/slow.bin"] = "hang"
    monkeypatch.setattr(download, "TIMEOUT", 0.3)
    with pytest.raises(DownloadError, match=f"{re.escape(url)}.*timed out"):
        fetch(url, progress=False)
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

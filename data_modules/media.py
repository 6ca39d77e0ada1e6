"""Find the media file of each clip name under a user's download folder, whatever its layout.

Downloaders file the same clip differently (flat, ``<split>/<class>/``, ...), so the folder is
walked once and files are looked up by name without extension. YouTube-based lists also name
clips differently: by ``<id>_<start>_<end>``, ``<id>_<start>``, or the bare 11-character id
(CRMT's Kinetics-Sounds test list); a bare id matches the one file whose name starts with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from data_modules.manifest import ClipRecord

VIDEO_EXTENSIONS: Final = (".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov", ".m4v")
AUDIO_EXTENSIONS: Final = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg")
YOUTUBE_ID_LENGTH: Final = 11


class MediaIndex:
    """Media files under ``root`` with one of ``extensions``, by file name without extension."""

    def __init__(self, root: str | os.PathLike[str], extensions: Iterable[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"media folder {self.root} not found")
        wanted = {extension.lower() for extension in extensions}
        self.by_name: dict[str, list[Path]] = {}
        self.by_youtube_id: dict[str, list[Path]] = {}
        for folder, _, files in os.walk(self.root, followlinks=True):
            for file in files:
                stem, extension = os.path.splitext(file)
                if extension.lower() not in wanted:
                    continue
                path = Path(folder, file)
                self.by_name.setdefault(stem, []).append(path)
                if len(stem) > YOUTUBE_ID_LENGTH and stem[YOUTUBE_ID_LENGTH] == "_":
                    self.by_youtube_id.setdefault(stem[:YOUTUBE_ID_LENGTH], []).append(path)

    def find(self, *names: str) -> tuple[Path | None, str | None]:
        """The file of the first of ``names`` that matches, or ``(None, reason)``.

        A name matches a file named ``<name>.<ext>``; a bare YouTube id also matches a single
        ``<id>_*`` file. Several matches are ambiguous and reported, not guessed.
        """
        for name in names:
            candidates = self.by_name.get(name) or (
                self.by_youtube_id.get(name, []) if len(name) == YOUTUBE_ID_LENGTH else []
            )
            if len(candidates) == 1:
                return candidates[0], None
            if candidates:
                listed = ", ".join(str(path) for path in sorted(candidates)[:3])
                return None, f"{len(candidates)} files match clip {name!r} ({listed}); keep one"
        return None, f"no media file named {' or '.join(repr(name) for name in names)} under {self.root}"


def clip_record(
    name: str,
    label: int,
    split: str,
    videos: MediaIndex,
    *,
    audio: MediaIndex | None = None,
    aliases: tuple[str, ...] = (),
) -> ClipRecord:
    """The record of clip ``name``: its video (and, with ``audio``, its separate audio file) found
    by ``name`` or one of its ``aliases``; a clip whose file is missing gets a ``problem``."""
    video, problem = videos.find(name, *aliases)
    audio_path = None
    if audio is not None and problem is None:
        audio_path, audio_problem = audio.find(name, *aliases)
        problem = f"audio: {audio_problem}" if audio_problem else None
    return ClipRecord(
        path=video or videos.root / name, label=label, split=split, audio_path=audio_path, name=name, problem=problem
    )

"""Atomic checkpoints: a directory is written beside the target and renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile


def save_checkpoint(model, directory: str, processor=None, extra_files: dict[str, str] | None = None) -> str:
    """Save ``model`` (``save_pretrained``, safetensors) and optionally ``processor`` (or a tokenizer: anything with
    ``save_pretrained``) to ``directory`` atomically.

    Everything is written to a temporary sibling directory first; only a complete checkpoint is renamed to
    ``directory`` (an existing one is replaced only after the new one is complete), so a crash never leaves a
    half-written checkpoint under that name. ``extra_files`` maps file names to text contents.

    Returns the absolute path. Raises ``OSError`` from the file system.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        old = None
        if os.path.exists(directory):
            old = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".old-", dir=parent)
            os.rmdir(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory

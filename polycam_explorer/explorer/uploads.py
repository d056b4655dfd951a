"""Files from the upload control, read as files are."""
from __future__ import annotations

from pathlib import Path
from typing import Collection

from PIL import Image

from ..images import open_image


def upload_to_image(value) -> tuple[str, Image.Image]:
    """The (name, PIL image) of the first file of an ipywidgets FileUpload value, decoded as a file
    is (:func:`polycam_explorer.images.open_image`: EXIF orientation applied, 16-bit kept for
    :func:`load_image` to scale).

    Raises:
        ValueError: the upload is not an image (naming the file and the accepted formats), or is
            too large to read safely.
    """
    item = value[0]
    name = str(item.get("name") or "upload")
    return Path(name).stem, open_image(bytes(item["content"]), name=name)


def free_name(name: str, taken: Collection[str]) -> str:
    """``name``, or ``"name (2)"``, ``"name (3)"``... the first not in ``taken`` (two photos called
    IMG_0001.jpg are two images, not one replacing the other)."""
    k = 1
    free = name
    while free in taken:
        k += 1
        free = f"{name} ({k})"
    return free

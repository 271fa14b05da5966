"""Files carried inside the page as data URIs, so that a report needs nothing outside itself: figures, their
thumbnails for the index, and each CSV as a download link."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.runfiles import png_bytes

MAX_DOWNLOAD_BYTES = 4 << 20
THUMBNAIL_WIDTH = 360


def png_data_uri(path: Path) -> str:
    """The figure as a data URI (runfiles.DamagedFile when it is not a whole PNG)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(path)).decode("ascii")


def thumbnail_uri(path: Path, width: int = THUMBNAIL_WIDTH) -> str | None:
    """A small PNG of a figure (Pillow, which matplotlib brings), or the figure itself when it cannot be scaled; None
    when it is not a whole PNG."""
    try:
        data = png_bytes(path)
    except CircuitlabError:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.width > width:
                image = image.resize((width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    except Exception:  # noqa: BLE001  a PNG Pillow cannot scale: show it as it is
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def download(path: Path) -> dict | None:
    """{name, uri} of a CSV to download from the page; {name, mib} (no uri) when it is too large to carry; None
    when it cannot be read."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_DOWNLOAD_BYTES:
            return {"name": Path(path).name, "mib": size >> 20, "uri": None}
        data = Path(path).read_bytes()
    except OSError:
        return None
    return {"name": Path(path).name, "uri": "data:text/csv;base64," + base64.b64encode(data).decode("ascii")}

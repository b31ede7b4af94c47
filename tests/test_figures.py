"""``save_png``, the one figure writer: a palette PNG of the figure's size, written atomically."""
import io
import os

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from medzoo.core.figures import save_png


def _figure() -> Figure:
    """A 2 x 1 inch figure filled with a photograph-like image: a smooth jet map over random pixels."""
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(2, 1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rng.random((50, 100, 3)), aspect="auto")
    ax.imshow(np.linspace(0, 1, 50 * 100).reshape(50, 100), cmap="jet", alpha=0.4, aspect="auto")
    ax.set_axis_off()
    return fig


def test_save_png_writes_a_palette_png_of_the_figure_size(tmp_path):
    path = save_png(_figure(), tmp_path / "sub" / "f.png", dpi=50, tight=False)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "P"
        assert image.size == (100, 50)  # 2 x 1 inches at 50 dpi
    full_colour = io.BytesIO()
    _figure().savefig(full_colour, format="png", dpi=50)
    assert path.stat().st_size < len(full_colour.getvalue())
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temporary left beside it


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")

    save = Image.Image.save

    def half_then_fail(self, fp, *args, **kwargs):
        if not isinstance(fp, (str, os.PathLike)):  # matplotlib's own write to memory
            return save(self, fp, *args, **kwargs)
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_png(_figure(), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    monkeypatch.undo()
    save_png(_figure(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from medzoo.core.figures import save_png


def _figure() -> Figure:
    fig = Figure(figsize=(2, 1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.linspace(0, 1, 64 * 64).reshape(64, 64), cmap="jet", aspect="auto")
    ax.set_axis_off()
    return fig


def test_save_png_writes_a_palette_png_of_the_figure_size(tmp_path):
    path = save_png(_figure(), tmp_path / "sub" / "f.png", dpi=50, tight=False)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "P"
        assert image.size == (100, 50)  # 2 x 1 inches at 50 dpi
        assert len(image.getcolors(256)) <= 256
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temporary left beside it


def test_save_png_replaces_an_old_file_only_when_the_figure_renders(tmp_path):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")
    broken = _figure()
    broken.axes[0].text(0, 0, "$\\frac{$")  # mathtext that cannot be parsed fails at draw time
    with pytest.raises(ValueError):
        save_png(broken, path)
    assert path.read_bytes() == b"old"
    save_png(_figure(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

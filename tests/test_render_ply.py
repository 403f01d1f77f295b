"""3DGS PLY reading and writing."""

import numpy as np
import pytest
import torch

from render import RenderError, SplatAsset, primitive_splats, read_ply, write_ply
from render.ply import SH_C0


def _asset_with_sh(n=50, degree=2, seed=0) -> SplatAsset:
    gen = torch.Generator().manual_seed(seed)
    sh = 0.5 * torch.randn(n, (degree + 1) ** 2, 3, generator=gen)
    colors = (0.5 + SH_C0 * sh[:, 0].double()).float()
    return SplatAsset(means=torch.randn(n, 3, generator=gen), quats=torch.randn(n, 4, generator=gen),
                      scales=0.001 + torch.rand(n, 3, generator=gen),
                      opacities=0.01 + 0.98 * torch.rand(n, generator=gen), colors=colors, sh=sh)


def test_read_write_read_is_bit_exact(tmp_path):
    first, second = tmp_path / "a.ply", tmp_path / "b.ply"
    write_ply(first, _asset_with_sh())
    a = read_ply(first)
    write_ply(second, a)
    assert first.read_bytes() == second.read_bytes()  # file -> asset -> file reproduces every bit
    b = read_ply(second)
    for name in ("means", "quats", "scales", "opacities", "colors", "sh"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_asset_round_trip(tmp_path):
    src = _asset_with_sh(degree=3)
    write_ply(tmp_path / "x.ply", src)
    back = read_ply(tmp_path / "x.ply")
    assert torch.equal(back.means, src.means) and torch.equal(back.quats, src.quats)
    assert torch.equal(back.sh, src.sh) and torch.equal(back.colors, src.colors)
    # logit / log parameters: float32 rounding of the inverse activation, a few ulp.
    torch.testing.assert_close(back.opacities, src.opacities, rtol=2e-6, atol=0)
    torch.testing.assert_close(back.scales, src.scales, rtol=2e-6, atol=0)


def test_generated_asset_round_trip_and_layout(tmp_path):
    src = primitive_splats("box", size=(0.1, 0.1, 0.1), base_color=(0.2, 0.6, 0.9), density=2000)
    write_ply(tmp_path / "box.ply", src)
    text = (tmp_path / "box.ply").read_bytes().split(b"end_header")[0].decode()
    names = [line.split()[-1] for line in text.splitlines() if line.startswith("property")]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    back = read_ply(tmp_path / "box.ply")
    assert back.sh.shape == (src.num_gaussians, 1, 3)
    torch.testing.assert_close(back.colors, src.colors, rtol=0, atol=1e-6)
    torch.testing.assert_close(back.scales, src.scales, rtol=2e-6, atol=0)


def test_f_rest_is_channel_major(tmp_path):
    src = _asset_with_sh(n=3, degree=1)
    write_ply(tmp_path / "s.ply", src)
    data = (tmp_path / "s.ply").read_bytes()
    body = data[data.index(b"end_header\n") + len(b"end_header\n"):]
    row = np.frombuffer(body, dtype="<f4", count=26)  # first vertex: 3 + 3 + 3 + 9 + 1 + 3 + 4 floats
    f_rest = row[9:18]
    np.testing.assert_array_equal(f_rest[:3], src.sh[0, 1:, 0].numpy())  # R of bands 1..3, then G, then B
    np.testing.assert_array_equal(f_rest[3:6], src.sh[0, 1:, 1].numpy())


def _header(props, n=2):
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}", *[f"property float {p}" for p in props],
             "end_header"]
    return ("\n".join(lines) + "\n").encode()


ALL = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
       "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize(
    "content, match",
    [
        (_header([p for p in ALL if p != "scale_1"]) + bytes(2 * 13 * 4), "no property 'scale_1'"),
        (_header(ALL) + bytes(2 * 14 * 4 - 3), "truncated"),
        (_header(ALL).replace(b"binary_little_endian", b"ascii"), "ascii"),
        (_header(ALL + ["f_rest_0", "f_rest_1"]) + bytes(2 * 16 * 4), "f_rest"),
        (b"not a ply file", "not a PLY"),
    ],
)
def test_malformed_ply_raises_render_error_naming_file(tmp_path, content, match):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(RenderError, match=match) as err:
        read_ply(path)
    assert "bad.ply" in str(err.value)


def test_missing_file_raises_render_error(tmp_path):
    with pytest.raises(RenderError, match="cannot read"):
        read_ply(tmp_path / "nope.ply")

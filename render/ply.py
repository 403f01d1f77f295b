"""Standard 3D Gaussian Splatting PLY files (binary little endian), as written by the Inria code.

Per vertex: x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3, where opacity is a
logit, scales are logs, rot is a wxyz quaternion and colour = 0.5 + C0 * f_dc. f_rest holds the
higher SH bands channel-major (all R coefficients, then G, then B).

Exactness: activations (sigmoid, exp, 0.5 + C0 * x) are evaluated in float64 and rounded once to
float32. read -> write reproduces a file's parameters bit for bit (the asset keeps the file's raw
logits / logs and the SH coefficients, and reuses them while the activated tensors are unedited).
write -> read reproduces means, quats and SH exactly; opacities, scales and SH-less colours to
float32 rounding of the inverse activation (a few ulp), which no float32 file format can avoid.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from render.errors import RenderError
from render.types import SplatAsset

SH_C0 = 0.28209479177387814
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-raw.astype(np.float64)))).astype(np.float32)


def _exp(raw: np.ndarray) -> np.ndarray:
    return np.exp(raw.astype(np.float64)).astype(np.float32)


def _dc_to_color(dc: np.ndarray) -> np.ndarray:
    return (0.5 + SH_C0 * dc.astype(np.float64)).astype(np.float32)


def _parse_header(path, data: bytes) -> tuple[list[tuple[str, int, list[tuple[str, str]]]], int]:
    """Elements as (name, count, [(property, numpy type)]) and the byte offset of the body."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise RenderError(f"{path}: not a PLY file (no 'ply' magic or no 'end_header'); pass a 3DGS .ply")
    body = data.index(b"\n", end) + 1
    elements: list = []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            if tok[1:2] != ["binary_little_endian"]:
                raise RenderError(f"{path}: PLY format {' '.join(tok[1:])!r} is not supported; "
                                  "re-export it as binary_little_endian")
        elif tok[0] == "element" and len(tok) == 3:
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements:
            if tok[1] == "list" or tok[1] not in _TYPES or len(tok) != 3:
                raise RenderError(f"{path}: PLY property {' '.join(tok[1:])!r} of element "
                                  f"{elements[-1][0]!r} is not a supported scalar property")
            elements[-1][2].append((tok[2], _TYPES[tok[1]]))
        else:
            raise RenderError(f"{path}: malformed PLY header line {line!r}")
    return elements, body


def read_ply(path: str | os.PathLike) -> SplatAsset:
    """Read a 3DGS PLY into a SplatAsset (sh = all SH coefficients in the file, [N, S, 3])."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise RenderError(f"{path}: cannot read PLY file ({e.strerror}); check the path") from e
    elements, offset = _parse_header(path, data)
    vertex = None
    for name, count, props in elements:
        dtype = np.dtype(props)
        if name == "vertex":
            vertex = (count, dtype)
            break
        offset += count * dtype.itemsize  # skip elements stored before the vertices
    if vertex is None:
        raise RenderError(f"{path}: PLY has no 'vertex' element; a 3DGS PLY stores one Gaussian per vertex")
    count, dtype = vertex
    for prop in _REQUIRED:
        if prop not in dtype.names:
            raise RenderError(f"{path}: PLY has no property {prop!r}; a 3DGS PLY needs "
                              "x y z f_dc_0..2 opacity scale_0..2 rot_0..3 (and optional f_rest_*)")
    need = count * dtype.itemsize
    if len(data) - offset < need:
        raise RenderError(f"{path}: truncated PLY: {count} vertices need {need} bytes after the header, "
                          f"the file has {len(data) - offset}; re-export or re-download the file")
    v = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    rest = _rest_names(path, dtype.names)
    for prop in (*_REQUIRED, *rest):
        if not np.isfinite(v[prop]).all():
            raise RenderError(f"{path}: PLY property {prop!r} holds NaN or infinite values")

    def cols(names):
        if not names:
            return np.zeros((count, 0), np.float32)
        return np.stack([v[n].astype(np.float32) for n in names], axis=-1)

    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    s = 1 + len(rest) // 3
    sh = np.concatenate((dc[:, None, :], cols(rest).reshape(count, 3, s - 1).transpose(0, 2, 1)), axis=1)
    raw_opacity, raw_scale = v["opacity"].astype(np.float32), cols(["scale_0", "scale_1", "scale_2"])
    asset = SplatAsset(
        means=torch.from_numpy(cols(["x", "y", "z"])),
        quats=torch.from_numpy(cols(["rot_0", "rot_1", "rot_2", "rot_3"])),
        scales=torch.from_numpy(_exp(raw_scale)),
        opacities=torch.from_numpy(_sigmoid(raw_opacity)),
        colors=torch.from_numpy(_dc_to_color(dc)),
        sh=torch.from_numpy(np.ascontiguousarray(sh)),
    )
    asset.ply_raw = {"opacity": raw_opacity, "scale": raw_scale}
    return asset


def _rest_names(path, names) -> list[str]:
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n[7:]) if n[7:].isdigit() else -1)
    if [n[7:] for n in rest] != [str(i) for i in range(len(rest))] or len(rest) % 3:
        raise RenderError(f"{path}: PLY f_rest_* properties are {rest[:3]}...({len(rest)}); expected "
                          "f_rest_0..f_rest_{3*(S-1)-1} with S = (degree+1)^2")
    s = 1 + len(rest) // 3
    if int(round(s**0.5)) ** 2 != s:
        raise RenderError(f"{path}: PLY has {len(rest)} f_rest_* properties, so {s} SH coefficients per "
                          "channel; that must be a square (1, 4, 9, 16, 25)")
    return rest


def write_ply(path: str | os.PathLike, asset: SplatAsset) -> None:
    """Write a SplatAsset as a 3DGS PLY (normals written as zeros)."""
    n = asset.num_gaussians
    opac = asset.opacities.detach().cpu().numpy().astype(np.float32)
    scales = asset.scales.detach().cpu().numpy().astype(np.float32)
    colors = asset.colors.detach().cpu().numpy().astype(np.float32)
    if (opac <= 0).any() or (opac >= 1).any() or (scales <= 0).any():
        raise RenderError("write_ply needs opacities in (0, 1) and scales > 0 (they are stored as logit / log)")
    raw = asset.ply_raw or {}
    r_op, r_sc = raw.get("opacity"), raw.get("scale")
    # Reuse the file's exact raw values while the activated tensors still match them.
    if r_op is None or r_op.shape != opac.shape or not np.array_equal(_sigmoid(r_op), opac):
        r_op = np.log(opac.astype(np.float64) / (1.0 - opac.astype(np.float64))).astype(np.float32)
    if r_sc is None or r_sc.shape != scales.shape or not np.array_equal(_exp(r_sc), scales):
        r_sc = np.log(scales.astype(np.float64)).astype(np.float32)
    sh = None if asset.sh is None else asset.sh.detach().cpu().numpy().astype(np.float32)
    if sh is not None and np.array_equal(_dc_to_color(sh[:, 0]), colors):
        dc = sh[:, 0]
    else:
        dc = ((colors.astype(np.float64) - 0.5) / SH_C0).astype(np.float32)
    rest = np.zeros((n, 0), np.float32) if sh is None else sh[:, 1:].transpose(0, 2, 1).reshape(n, -1)
    columns = {
        **dict(zip("xyz", asset.means.detach().cpu().numpy().astype(np.float32).T)),
        "nx": np.zeros(n, np.float32), "ny": np.zeros(n, np.float32), "nz": np.zeros(n, np.float32),
        **{f"f_dc_{i}": dc[:, i] for i in range(3)},
        **{f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])},
        "opacity": r_op,
        **{f"scale_{i}": r_sc[:, i] for i in range(3)},
        **{f"rot_{i}": asset.quats.detach().cpu().numpy().astype(np.float32)[:, i] for i in range(4)},
    }
    table = np.empty(n, dtype=[(k, "<f4") for k in columns])
    for k, col in columns.items():
        table[k] = col
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}",
              *(f"property float {k}" for k in columns), "end_header"]
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(table.tobytes())

"""SplatScene: splat assets attached to physics bodies (or particles), posed into the world frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from render.errors import RenderError
from render.quat import quat_mul, quat_to_rotmat
from render.types import Gaussians, SplatAsset

SH_C0 = 0.28209479177387814


@dataclass
class _ParticleGroup:
    start: int  # first Gaussian of the group in the scene's concatenation
    particle_index: Tensor  # [n] int64 indices into the P particles


class SplatScene:
    """All Gaussians of a scene, concatenated once, posed per step in a few batched ops.

    Asset i is attached to body slot body_index[i] (an index into PhysicsState's K bodies), or
    -1 for static assets already in the world frame (captured backgrounds, the ground).
    instance_id[i] is written to GBuffer.instance_id (>= 1 for labelled objects; 0 = background).
    """

    def __init__(self, assets: list[SplatAsset], body_index: list[int], instance_id: list[int]):
        if not (len(assets) == len(body_index) == len(instance_id)) or not assets:
            raise RenderError(f"SplatScene needs one body_index and one instance_id per asset and at least one "
                              f"asset; got {len(assets)} assets, {len(body_index)} body_index, "
                              f"{len(instance_id)} instance_id")
        for i, (a, b, k) in enumerate(zip(assets, body_index, instance_id)):
            if not isinstance(a, SplatAsset):
                raise RenderError(f"assets[{i}] is a {type(a).__name__}; build it with mesh_to_splats, "
                                  "primitive_splats or read_ply")
            if int(b) < -1 or int(k) < 0:
                raise RenderError(f"asset {i}: body_index {b} must be >= -1 (-1 = static) and "
                                  f"instance_id {k} >= 0 (0 = background)")
        self._assets = list(assets)
        self._body = [int(b) for b in body_index]
        self._inst = [int(k) for k in instance_id]
        self._particles: list[_ParticleGroup] = []
        self._build()

    def add_particle_asset(self, asset: SplatAsset, particle_index, instance_id: int) -> None:
        """Attach an asset whose Gaussian j sits at particle particle_index[j] (+ asset.means[j]).

        particle_index: [n] ints into the P particles passed to posed(); asset.means are world-frame
        offsets (zero for particle_splats); its quats stay as given (world frame).
        """
        idx = torch.as_tensor(particle_index, dtype=torch.int64).reshape(-1)
        if idx.numel() != asset.num_gaussians or (idx.numel() and idx.min() < 0) or int(instance_id) < 0:
            raise RenderError(f"add_particle_asset: particle_index has {idx.numel()} entries (min "
                              f"{idx.min().item() if idx.numel() else '-'}) for {asset.num_gaussians} Gaussians "
                              f"and instance_id={instance_id}; need one index >= 0 per Gaussian, instance_id >= 0")
        self._particles.append(_ParticleGroup(self.num_gaussians, idx))
        self._assets.append(asset)
        self._body.append(-2)  # -2 marks particle-driven Gaussians
        self._inst.append(int(instance_id))
        self._build()

    def _build(self) -> None:
        a = self._assets
        counts = [x.num_gaussians for x in a]
        self.means = torch.cat([x.means for x in a]).float()  # [N, 3] body frame
        self.quats = torch.cat([x.quats for x in a]).float()  # [N, 4]
        self.scales = torch.cat([x.scales for x in a]).float()  # [N, 3]
        self.opacities = torch.cat([x.opacities for x in a]).float()  # [N]
        self.colors = torch.cat([x.colors for x in a]).float()  # [N, 3]
        self.slot = torch.repeat_interleave(torch.tensor(self._body), torch.tensor(counts))  # [N]
        self.instance_id = torch.repeat_interleave(torch.tensor(self._inst, dtype=torch.int32),
                                                   torch.tensor(counts))  # [N]
        self.sh = self._build_sh()
        self.num_bodies = max(self._body) + 1
        self.num_particles = max((int(g.particle_index.max()) + 1 for g in self._particles
                                  if g.particle_index.numel()), default=0)

    def _build_sh(self) -> Tensor | None:
        """[N, S, 3] when any asset has SH above degree 0; SH-less assets get their colour as DC."""
        s = max((x.sh.shape[1] for x in self._assets if x.sh is not None), default=1)
        if s == 1:
            return None
        parts = []
        for x in self._assets:
            part = torch.zeros(x.num_gaussians, s, 3)
            if x.sh is None:
                part[:, 0] = (x.colors.float() - 0.5) / SH_C0
            else:
                part[:, : x.sh.shape[1]] = x.sh
            parts.append(part)
        return torch.cat(parts)

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def to(self, device: torch.device | str) -> SplatScene:
        """Move the concatenated tensors (not the source assets) to `device`, in place."""
        for name in ("means", "quats", "scales", "opacities", "colors", "slot", "instance_id"):
            setattr(self, name, getattr(self, name).to(device))
        self.sh = None if self.sh is None else self.sh.to(device)
        for g in self._particles:
            g.particle_index = g.particle_index.to(device)
        return self

    def posed(
        self,
        body_pos: Tensor,  # [B, K, 3] metres, world frame
        body_quat: Tensor,  # [B, K, 4] wxyz
        particles: Tensor | None = None,  # [B, P, 3] metres, world frame
    ) -> Gaussians:
        """World-frame Gaussians: x_world = R(q_body) x_body + p_body, q_world = q_body * q_local."""
        b = self._check_pose(body_pos, body_quat, particles)
        dev, n = body_pos.device, self.num_gaussians
        attached = self.slot >= 0
        slot = self.slot.clamp_min(0).to(dev)
        # Static (and particle) Gaussians get the identity pose through a padded extra slot.
        pos = torch.cat((body_pos.float(), body_pos.new_zeros(b, 1, 3, dtype=torch.float32)), dim=1)  # [B, K+1, 3]
        ident = body_quat.new_tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float32).expand(b, 1, 4)
        quat = torch.cat((body_quat.float(), ident), dim=1)  # [B, K+1, 4]
        slot = torch.where(attached.to(dev), slot, body_pos.shape[1])
        rot = quat_to_rotmat(quat)[:, slot]  # [B, N, 3, 3]
        means = torch.einsum("bnij,nj->bni", rot, self.means.to(dev)) + pos[:, slot]  # [B, N, 3]
        quats = quat_mul(quat[:, slot] / quat[:, slot].norm(dim=-1, keepdim=True), self.quats.to(dev))
        if self._particles:
            means = means.clone()
            for g in self._particles:
                cnt = g.particle_index.numel()
                means[:, g.start:g.start + cnt] += particles[:, g.particle_index.to(dev)].float()  # [B, n, 3]
        return Gaussians(means=means, quats=quats, scales=self.scales, opacities=self.opacities,
                         colors=self.colors, instance_id=self.instance_id, sh=self.sh)

    def _check_pose(self, body_pos, body_quat, particles) -> int:
        if not isinstance(body_pos, Tensor) or body_pos.dim() != 3 or body_pos.shape[-1] != 3:
            raise RenderError(f"body_pos must be [B, K, 3], got {getattr(body_pos, 'shape', type(body_pos))}")
        b, k = body_pos.shape[:2]
        if not isinstance(body_quat, Tensor) or body_quat.shape != (b, k, 4):
            raise RenderError(f"body_quat must be [B, K, 4] = [{b}, {k}, 4] (wxyz) like body_pos, "
                              f"got {getattr(body_quat, 'shape', type(body_quat))}")
        if k < self.num_bodies:
            raise RenderError(f"the scene attaches assets to body slot {self.num_bodies - 1} but body_pos has "
                              f"only K={k} bodies; pass all bodies of the PhysicsState")
        if self._particles:
            if particles is None or particles.dim() != 3 or particles.shape[0] != b or particles.shape[2] != 3:
                raise RenderError(f"this scene has particle assets: pass particles=[B, P, 3] with B={b}, got "
                                  f"{None if particles is None else tuple(particles.shape)}")
            if particles.shape[1] < self.num_particles:
                raise RenderError(f"particle assets index particle {self.num_particles - 1} but particles has "
                                  f"P={particles.shape[1]}")
        return b

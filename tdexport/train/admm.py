"""TDC's ADMM low-rank-aware training: keep each planned layer's weight W close to a low-rank Z.

Scaled augmented Lagrangian: loss(W) + Σ_l (ρ/2)·‖W_l − Z_l + U_l‖². Every ``every`` optimizer steps:
Z ← Π(W + U) (projection onto the planned rank set by the final decomposition's own algorithm: HOOI
for Tucker-2, TT-SVD for both TT types, HT-2, SVD for SVD and Tucker-1; in torch on the training device),
then U ← U + W − Z. The projection gap ‖W − Z‖/‖W‖ is recorded per layer: as
it shrinks, decomposing W at the end loses less accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..factor.svd import truncated_svd
from ..factor.tt import tt_conv
from ..factor.tucker import tucker2
from ..layers import weight_matrix_of
from ..plan import Plan


def project(weight: Tensor, method: str, ranks: list[int], *, modes: list[list[int]] | None = None,
            iters: int = 5) -> Tensor:
    """Nearest tensor of the planned rank set, by the same algorithm as the final decomposition.

    Args:
        weight: conv kernel (O, I, kh, kw) or Linear weight (O, I).
        method: ``tucker2`` (HOSVD start + ``iters`` HOOI sweeps, as `tdexport.planner.compress`), ``tt``
            (TT-SVD of (O, kh·kw, I)), ``ttg`` (general TT over ``modes``, in the one mode order the layers use),
            ``ht2``, ``tucker1`` or ``svd`` (matrix (O, I·kh·kw)).
        ranks: the plan's ranks for that method.
        modes: general TT's [[i_1…i_n], [o_1…o_m]].
        iters: HOOI sweeps for Tucker-2 (the plan's ``options["iters"]``).

    Returns:
        The projection, same shape and dtype as ``weight``.

    Raises:
        ValueError: a method ADMM cannot project onto (cp: no closed-form nearest point; reorder: a storage
            format, not a rank).
    """
    w = weight.detach()
    if method == "tucker2":
        return tucker2(w, (ranks[0], ranks[1]), iters=iters).reconstruct().to(w.dtype)
    if method == "tt":
        return tt_conv(w, (ranks[0], ranks[1])).reconstruct().to(w.dtype)
    if method in ("svd", "tucker1"):
        # Tucker-1 is the truncated SVD of the mode-O unfolding, the same matrix as SVD's (O, I·kh·kw).
        return truncated_svd(weight_matrix_of(w), ranks[0]).reconstruct().reshape(w.shape).to(w.dtype)
    if method == "ht2":
        from ..factor.ht2 import ht2

        return ht2(w, ranks).reconstruct().to(w.dtype)
    if method == "ttg":
        from ..factor.tt_general import tt_general

        if modes is None:
            raise ValueError("projecting onto general TT needs the plan's modes")
        return tt_general(w, modes[0], modes[1], list(ranks)).reconstruct().to(w.dtype)
    raise ValueError(f"ADMM cannot project with method {method!r} (use tucker2, tt, ttg, ht2, tucker1 or svd)")


class Admm:
    """ADMM state for the layers a plan decomposes.

    Args:
        model: the dense model being trained (its parameters are read, never replaced).
        plan: a plan of ``model`` whose decomposed layers give method and ranks.
        rho: penalty weight ρ.
        rho_final: if set, ρ grows geometrically from ``rho`` to this over ``total_updates`` updates.
        total_updates: number of updates the run will make (for the ρ schedule).
    """

    def __init__(self, model: nn.Module, plan: Plan, *, rho: float, rho_final: float | None = None,
                 total_updates: int = 1) -> None:
        self.targets = [(e.name, e.method, list(e.ranks)) for e in plan.layers if e.decision == "decomposed"]
        if not self.targets:
            raise ValueError("the plan decomposes no layer, so ADMM has nothing to constrain")
        self.modes = {e.name: e.modes for e in plan.layers if e.decision == "decomposed"}
        self.iters = int(plan.options.get("iters", 5))
        modules = dict(model.named_modules())
        self.params = {name: modules[name].weight for name, _, _ in self.targets}
        self.rho0, self.rho_final, self.total = float(rho), rho_final, max(1, total_updates)
        self.updates = 0
        self.z = {n: self._project(self.params[n], n, m, r) for n, m, r in self.targets}
        self.u = {n: torch.zeros_like(self.params[n]) for n, _, _ in self.targets}
        self.history: list[dict] = []

    def _project(self, weight: Tensor, name: str, method: str, ranks: list[int]) -> Tensor:
        return project(weight, method, ranks, modes=self.modes.get(name), iters=self.iters)

    @property
    def rho(self) -> float:
        """Current ρ (constant, or on its geometric schedule)."""
        if self.rho_final is None:
            return self.rho0
        t = min(self.updates, self.total) / self.total
        return self.rho0 * (self.rho_final / self.rho0) ** t

    def penalty(self) -> Tensor:
        """(ρ/2)·Σ_l ‖W_l − Z_l + U_l‖², differentiable in W (a scalar on the weights' device)."""
        total = sum(((self.params[n] - self.z[n] + self.u[n]) ** 2).sum() for n, _, _ in self.targets)
        return 0.5 * self.rho * total

    def gaps(self) -> dict[str, float]:
        """Projection gap ‖W − Z‖/‖W‖ per layer."""
        out = {}
        for n, _, _ in self.targets:
            w = self.params[n].detach()
            out[n] = float(torch.linalg.vector_norm(w - self.z[n]) / torch.linalg.vector_norm(w).clamp_min(1e-30))
        return out

    @torch.no_grad()
    def update(self, step: int) -> dict:
        """Z ← Π(W + U), U ← U + W − Z; returns and records ``{step, rho, mean_gap, gaps}``."""
        for n, method, ranks in self.targets:
            w = self.params[n].detach()
            self.z[n] = self._project(w + self.u[n], n, method, ranks)
            self.u[n] += w - self.z[n]
        self.updates += 1
        gaps = self.gaps()
        entry = {"step": step, "rho": self.rho, "mean_gap": sum(gaps.values()) / len(gaps), "gaps": gaps}
        self.history.append(entry)
        return entry

    def state_dict(self) -> dict:
        """Tensors and counters needed to resume exactly."""
        return {"z": dict(self.z), "u": dict(self.u), "updates": self.updates, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (tensors moved to the weights' devices)."""
        self.z = {n: t.to(self.params[n].device) for n, t in state["z"].items()}
        self.u = {n: t.to(self.params[n].device) for n, t in state["u"].items()}
        self.updates, self.history = int(state["updates"]), list(state["history"])

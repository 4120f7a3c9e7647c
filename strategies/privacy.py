"""The server's side of ``[privacy]``: the accountant and its budget, the noise top-up, the curious server.

:class:`PrivacyMonitor` is called by :class:`strategies.wrapper.FleetStrategy` at three points of a round:

- before sending (:meth:`check_budget`): a round that would take epsilon past ``privacy.max-epsilon``
  raises :class:`BudgetExhausted`, and the run ends cleanly with the rounds so far;
- on the accepted updates (:meth:`top_up`): under ``privacy.noise = "distributed"`` each device added
  ``sigma C / sqrt(m)`` for ``m = devices-per-round``; when only ``k < m`` updates arrive, the server adds
  the missing ``sigma^2 C^2 (m - k) / m`` to their sum, so the released aggregate always carries the
  ``sigma C`` the accountant charges (post-processing cannot remove it; the devices' own share is what
  protects them from the server itself);
- after aggregation (:meth:`charge`): the round is charged to the accountant, and the curious server's
  label inference is scored (``privacy.label-inference``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fleet.config.scenario import ScenarioConfig
from fleet.privacy.accountant import Accountant, Epsilons
from fleet.privacy.dp import count_stddev, next_clip_norm, private_keys, update_multiplier

__all__ = ["BudgetExhausted", "PrivacyMonitor"]

State = dict[str, np.ndarray]


class BudgetExhausted(Exception):
    """The next round would exceed ``privacy.max-epsilon``; ``str(err)`` says by how much."""

    def __init__(self, server_round: int, epsilon: Epsilons, budget: float) -> None:
        self.server_round, self.epsilon, self.budget = server_round, epsilon, budget
        super().__init__(f"privacy budget: round {server_round} would take epsilon to {epsilon.worst:.3g} "
                         f"(RDP {epsilon.rdp:.3g}, PLD {epsilon.pld:.3g}) past privacy.max-epsilon = {budget:g}")


class PrivacyMonitor:
    """Accountant, budget, noise top-up and label inference of one run.

    Parameters
    ----------
    cfg : ScenarioConfig
        The scenario.
    labels_present : np.ndarray or None
        ``(devices, classes)`` booleans: which classes each device holds (the simulator's ground truth,
        only to score the label-inference attack; None without ``privacy.label-inference``).
    """

    def __init__(self, cfg: ScenarioConfig, labels_present: np.ndarray | None = None) -> None:
        self.cfg = cfg
        pv = cfg.privacy
        self.accountant = Accountant(pv.noise_multiplier, pv.delta) if pv.dp else None
        self.labels_present = labels_present if pv.label_inference else None
        self.row: dict[str, float | None] = {}
        self.clip_norm = pv.clip_norm  # the round's C (adaptive clipping moves it after every round)
        self.update_multiplier = update_multiplier(cfg)

    def check_budget(self, server_round: int, sampled: int, population: int) -> None:
        """Raise :class:`BudgetExhausted` if charging this round would exceed the budget."""
        budget = self.cfg.privacy.max_epsilon
        if self.accountant is None or budget <= 0 or sampled == 0:
            return
        eps = self.accountant.peek(sampled, population)
        if eps.worst > budget:
            raise BudgetExhausted(server_round, eps, budget)

    def top_up(self, updates: Mapping[int, State], base: State, rng: np.random.Generator,
               count: int | None = None) -> dict[int, State]:
        """The accepted (decoded) updates with the server's share of the noise when fewer than planned came.
        ``count``: the updates are one mean of ``count`` devices' (secure aggregation), not one per device."""
        pv = self.cfg.privacy
        m, k = self.cfg.federation.devices_per_round, count if count is not None else len(updates)
        if not pv.dp or pv.noise != "distributed" or k == 0 or k >= m or pv.noise_multiplier == 0:
            return dict(updates)
        missing = self.update_multiplier * self.clip_norm * math.sqrt((m - k) / m)  # std the sum lacks
        std = missing / k if count is not None else missing / math.sqrt(k)  # on the mean, or on each update
        keys = private_keys(base)
        out = {}
        for dev in sorted(updates):
            upd = dict(updates[dev])
            for key in keys:
                upd[key] = (upd[key] + rng.normal(0.0, std, upd[key].shape)).astype(np.float32)
            out[dev] = upd
        return out

    def adapt(self, unclipped: float, count: int, rng: np.random.Generator) -> None:
        """Adaptive clipping: the next round's C from the sum of the ``count`` devices' noised unclipped bits
        (the server adds the missing devices' share of the count's noise, as for the update)."""
        pv = self.cfg.privacy
        if not pv.dp or pv.clipping != "adaptive" or count == 0:
            return
        m = self.cfg.federation.devices_per_round
        if pv.noise == "distributed" and count < m:
            unclipped += float(rng.normal(0.0, count_stddev(pv.clipped_count_stddev, m) * math.sqrt((m - count) / m)))
        self.row["clip_norm"] = self.clip_norm  # the C this round clipped to
        self.clip_norm = next_clip_norm(self.clip_norm, unclipped, m, pv.target_quantile, pv.clip_lr)

    def charge(self, sampled: int, population: int) -> None:
        """Charge a released round to the accountant; its epsilon goes into the round's line."""
        if self.accountant is not None and sampled > 0:
            self.row.update(self.accountant.step(sampled, population).as_row())

    def observe(self, seen: Mapping[int, State], base: State, devices: list[int]) -> None:
        """Score the curious server: from what it saw (one update per device, or the sum under secure
        aggregation, keyed -1), how well does it tell which classes each of ``devices`` holds (mean AUC)?"""
        if self.labels_present is None or not seen:
            return
        from fleet.privacy.labels import label_inference_auc, label_scores

        num_classes = self.labels_present.shape[1]
        aucs = []
        for dev in devices:
            update = seen.get(dev, seen.get(-1))
            if update is None:
                continue
            auc = label_inference_auc(label_scores(update, base, num_classes), self.labels_present[dev])
            if math.isfinite(auc):
                aucs.append(auc)
        self.row["label_inference_auc"] = float(np.mean(aucs)) if aucs else None

    def take_row(self) -> dict[str, float | None]:
        """The round's privacy numbers for ``rounds.jsonl`` (then cleared)."""
        row, self.row = self.row, {}
        return row

    def summary(self) -> dict[str, object]:
        """What ``summary.json`` says about the run's guarantee."""
        pv = self.cfg.privacy
        out: dict[str, object] = {"dp": pv.dp, "secure_aggregation": pv.secure_aggregation, "audit": pv.audit}
        if self.accountant is not None:
            eps = self.accountant.epsilon()
            out.update({"noise_multiplier": pv.noise_multiplier, "clip_norm": self.clip_norm, "clipping": pv.clipping,
                        "noise": pv.noise,
                        "delta": pv.delta, "rounds_charged": len(self.accountant.rounds), **eps.as_row()})
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.accountant is None:
            return {}
        return {**self.accountant.state_dict(), "privacy_clip_norm": np.array([self.clip_norm], np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if self.accountant is not None:
            self.accountant.load_state_dict(state)
            if "privacy_clip_norm" in state:
                self.clip_norm = float(np.asarray(state["privacy_clip_norm"]).reshape(-1)[0])

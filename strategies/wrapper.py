"""FleetStrategy: the cross-cutting server side of a quantized edge fleet, wrapping a Flower strategy.

It does what every strategy in this fleet needs, and hands the rest to an inner
Flower Message-API strategy (built-in or the user's), as Flower's DP wrappers do:

- roster: which Flower node is which device (one ``query`` round at start);
- sampling: online devices only (availability model), seeded by (seed, round),
  with optional over-selection; per-device instructions (profile, bits by
  capability, deadline, injected faults) and the float reference sent once;
- replies: failures, timeouts, stragglers, out-of-memory and offline devices are
  recorded with their status; payloads are decoded with the run's codec and
  screened by the guard; only then does ``inner.aggregate_train`` see them, as
  plain float updates.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fleet import protocol as P
from fleet.arrays import record_from_numpy, record_to_numpy
from fleet.config.scenario import ScenarioConfig
from fleet.errors import one_line, reason_line
from fleet.hardware.catalogue import availability_model, catalogue, device_profiles
from fleet.hardware.profiles import nearest_bits
from fleet.model.roles import needs_reference
from fleet.quant.codecs import Codec
from fleet.quant.spec import is_quantizer_key
from fleet.train.schedule import round_window
from strategies.guard import screen_updates
from strategies.privacy import PrivacyMonitor
from strategies.sampling import draw_faults, sample_devices
from strategies.secagg import decode_mean, secure_mean, unclipped_sum

ROSTER_BATCH = 100  # roster queries in flight at once (see FleetStrategy.discover)

__all__ = ["FleetStrategy", "RoundLog", "is_eval_round"]


@dataclass
class RoundLog:
    """Everything that happened to the devices in one round (read by the results recorder)."""

    server_round: int
    reports: list[P.DeviceReport] = field(default_factory=list)
    sampled: int = 0
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    sim_time_s: float = 0.0
    strategy_metrics: dict[str, float] = field(default_factory=dict)  # what the inner strategy reported
    privacy: dict[str, float | None] = field(default_factory=dict)  # epsilon so far, label-inference AUC


class StrategyError(RuntimeError):
    """The inner (possibly user's) strategy failed; ``str(err)`` is one line naming the class and method."""


# Metrics the wrapper itself puts in each decoded reply: the inner strategy's averages of them are not its own.
_ANNOTATIONS = frozenset({P.WEIGHT_KEY, "bits", P.DEVICE})


class FleetStrategy(Strategy):
    """Wraps ``inner`` (a Flower ``Strategy``) with the fleet's sampling, decoding, guard and accounting.

    Parameters
    ----------
    inner : Strategy
        Aggregates decoded float updates (``fedavg``, ``fedadam``, a user's class...).
    cfg : ScenarioConfig
        The scenario.
    codec : Codec
        Decoder of the devices' uploads (the run's ``quant.codec``).
    qinfo : QuantInfo or None
        Which weights are quantized (for the ``qweights`` codec).
    reference : dict of str to np.ndarray
        The float reference's state, sent to each device once.
    ref_hash : str
        Its content hash.
    state_dir : str
        Where devices keep their state between rounds ("" = Flower's ``context.state``; simulation: inside the
        run directory).
    refine : callable or None
        Applied to each aggregated model (the composition root passes BatchNorm re-estimation on public data).
    round_offset : int
        Rounds already done before this ``start()`` (a resumed run).
    labels_present : np.ndarray or None
        Which classes each device holds (scores ``privacy.label-inference``; the simulator's ground truth).
    """

    def __init__(self, inner: Strategy, cfg: ScenarioConfig, codec: Codec, qinfo: Any,
                 reference: dict[str, np.ndarray], ref_hash: str, *, state_dir: str = "",
                 refine: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                 round_offset: int = 0, labels_present: np.ndarray | None = None) -> None:
        self.inner, self.cfg, self.codec, self.qinfo = inner, cfg, codec, qinfo
        self.privacy = PrivacyMonitor(cfg, labels_present)
        self.population = 0  # online devices the round sampled from (the accountant's n)
        self.reference = record_from_numpy(reference)
        self.reference_bytes = self.reference.count_bytes()
        self.ref_hash = ref_hash
        self.profiles = device_profiles(cfg)
        self.catalogue = catalogue(cfg)
        self.availability = availability_model(cfg)
        self.roster: dict[int, int] = {}  # node id -> device index
        self.nodes: dict[int, int] = {}  # device index -> node id
        self.participation = np.zeros(cfg.federation.num_devices, dtype=np.int64)
        self.has_reference = np.zeros(cfg.federation.num_devices, dtype=bool)
        self.round_offset = round_offset
        self.state_dir = state_dir
        self.current: dict[str, np.ndarray] = {}
        self.pending: dict[int, P.DeviceReport] = {}
        self.last: RoundLog | None = None
        self.refine = refine

    # -- roster --------------------------------------------------------------------------------
    def discover(self, grid: Grid, timeout: float) -> None:
        """Ask every node which device it simulates (Flower's node ids are random).

        The queries go out ``ROSTER_BATCH`` at a time: Flower's in-memory link state scans every
        stored message for every node on each poll, so 1000 queries at once cost 1000 x 1000
        checks per poll (57 s for the roster of 1000 devices here, batches of 100: see
        docs/scaling.md)."""
        node_ids = sorted(grid.get_node_ids())
        deadline = time.monotonic() + timeout
        errors: list[str] = []
        for start in range(0, len(node_ids), ROSTER_BATCH):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msgs = [Message(RecordDict({P.CONFIG: ConfigRecord({P.ASK: P.ASK_ROSTER})}), dst_node_id=n,
                            message_type=MessageType.QUERY) for n in node_ids[start:start + ROSTER_BATCH]]
            for reply in grid.send_and_receive(msgs, timeout=left):
                if reply.has_error():
                    errors.append(str(reply.error.reason).strip().splitlines()[-1:][0] if reply.error.reason else "")
                    continue
                dev = int(P.scalar(P.record(reply.content, P.REPORT, ConfigRecord)[P.DEVICE]))
                self.roster[reply.metadata.src_node_id] = dev
                self.nodes[dev] = reply.metadata.src_node_id
        if not self.nodes:
            why = f"; the ClientApp failed: {errors[0]}" if errors and errors[0] else ""
            raise RuntimeError(f"no device answered the roster query within {timeout:g} s; nothing can be "
                               f"sampled{why}")
        missing = self.cfg.federation.num_devices - len(self.nodes)
        if missing:
            log(WARNING, "roster: %d devices did not answer and will never be sampled", missing)

    # -- per-round instructions ----------------------------------------------------------------
    def _bits(self, device: int) -> tuple[int, int]:
        prof = self.catalogue[self.profiles[device]]
        w = nearest_bits(self.cfg.quant.weight_bits, prof.bits)
        if w > 8:
            w = 32  # 16-bit hardware trains in (half-)float: no integer grid to learn
        if w == self.cfg.quant.weight_bits:
            return w, self.cfg.quant.act_bits
        return w, (w if self.cfg.quant.act_bits != 32 and w != 32 else 32)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        rnd = server_round + self.round_offset
        self.current = record_to_numpy(arrays)
        extra = self._inner_config(server_round, arrays, config, grid)
        online = self.availability.online(rnd)
        online &= np.isin(np.arange(len(online)), list(self.nodes))
        want = int(round(self.cfg.federation.devices_per_round * self.cfg.devices.over_selection))
        chosen = sample_devices(online, want, self.cfg.federation.seed, rnd)
        self.population = int(online.sum())
        self.privacy.check_budget(rnd, len(chosen), self.population)
        faults = draw_faults(self.cfg.faults, chosen, self.cfg.federation.seed, rnd)
        self.last = RoundLog(rnd, sampled=len(chosen))
        self.pending = {}
        model_bytes = arrays.count_bytes()
        msgs = []
        window = round_window(self.cfg.train.lr_scope, rnd, self.cfg.federation.rounds)
        lr = float(extra.get("lr", self.cfg.train.lr))  # an inner strategy may set the round's rate
        for dev in chosen:
            w, a = self._bits(dev)
            ins = P.DeviceInstruction(
                server_round=rnd, device=int(dev), profile=self.profiles[dev], weight_bits=w, act_bits=a,
                participation=int(self.participation[dev]), ref_hash=self.ref_hash,
                deadline_s=self.cfg.devices.deadline_s, fault=faults.get(int(dev), ""),
                proximal_mu=float(extra.get("proximal-mu", 0.0)), lr=lr, lr_window_start=window[0],
                lr_window_end=window[1], evaluate=is_eval_round(rnd, self.cfg), state_dir=self.state_dir,
                clip_norm=self.privacy.clip_norm)
            content = RecordDict({P.ARRAYS: arrays, P.CONFIG: ins.to_record()})
            down = model_bytes
            if not self.has_reference[dev] and needs_reference(self.cfg, w, a):
                content[P.REFERENCE] = self.reference
                down += self.reference_bytes
                self.has_reference[dev] = True  # counted once: the device keeps it
            self.last.downlink_bytes += down
            pending = P.DeviceReport(device=int(dev), profile=self.profiles[dev], bits=w, downlink_bytes=down,
                                     method=self.cfg.coreset.method, fault=ins.fault)
            if self.availability.dropped(rnd, int(dev)):
                pending.status, pending.error = "offline", "went offline during the round"
                self.last.reports.append(pending)
                continue
            self.pending[self.nodes[int(dev)]] = pending
            msgs.append(Message(content, dst_node_id=self.nodes[int(dev)], message_type=MessageType.TRAIN))
        log(INFO, "round %d: sampled %d of %d online devices", rnd, len(chosen), int(online.sum()))
        return msgs

    def _inner_config(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                      grid: Grid) -> dict[str, Any]:
        """Let the inner strategy see the round (FedOpt keeps current arrays; FedProx adds proximal-mu)."""
        with self._user_code("configure_train"):
            msgs = list(self.inner.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
        if not msgs:
            return {}
        rec = msgs[0].content.get(getattr(self.inner, "configrecord_key", P.CONFIG))
        return dict(rec) if rec is not None else {}

    # -- replies -------------------------------------------------------------------------------
    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self.last is not None
        log_ = self.last
        decoded, ok, secure = self._collect(replies, log_)
        self.privacy.charge(log_.sampled, self.population)  # every round with instructions out (conservative)
        trained, count = sorted(ok), None  # the devices whose training the aggregate reflects
        self.privacy.adapt(unclipped_sum(ok, secure), len(ok), np.random.default_rng(secrets.randbits(128)))
        if secure is not None:  # one decoded "update": the mean, weighted by how many it stands for
            mean, count = secure
            decoded = {-1: decode_mean(mean, self.current, self.cfg, self.qinfo)}
            ok = {-1: P.DeviceReport(device=-1, weight=float(count), bits=self.cfg.quant.weight_bits,
                                     sim_time_s=max(r.sim_time_s for r in ok.values()))}
        self._keep_first(ok, decoded)
        accepted, rejected = (screen_updates(decoded, self.current, self.cfg.strategy.guard_norm_factor)
                              if self.cfg.strategy.guard else (sorted(decoded), []))
        for r in rejected:
            ok[r.device].status, ok[r.device].error = "rejected", r.reason
            log(WARNING, "round %d: rejected update of device %d: %s", log_.server_round, r.device, r.reason)
        log_.sim_time_s = max((ok[d].sim_time_s for d in accepted), default=0.0)
        seen = {d: decoded[d] for d in accepted}
        self.privacy.observe(seen, self.current, trained if count is not None else accepted)
        log_.privacy = self.privacy.take_row()
        if not accepted:
            return None, None
        # the server's noise from the OS's entropy too: whoever holds config.toml must not be able to remove it
        noised = self.privacy.top_up(seen, self.current, np.random.default_rng(secrets.randbits(128)), count=count)
        # Sorted by device: aggregation then sums in the same order whatever order replies arrived in.
        msgs = [_decoded_message(noised[d], ok[d]) for d in sorted(accepted)]
        with self._user_code("aggregate_train"):
            arrays, metrics = self.inner.aggregate_train(server_round, msgs)
        if arrays is not None:
            self._check_arrays(arrays)
        log_.strategy_metrics = _own_metrics(metrics)
        if arrays is not None and self.refine is not None:
            arrays = record_from_numpy(self.refine(record_to_numpy(arrays)))
        return arrays, metrics

    def _collect(self, replies: Iterable[Message], log_: RoundLog) -> tuple[
            dict[int, dict[str, np.ndarray]], dict[int, P.DeviceReport], tuple[dict[str, np.ndarray], int] | None]:
        """The round's replies: every report into ``log_``; the decoded updates and reports of the devices that
        trained; under secure aggregation no update of their own, but the sum (mean, count) from the first."""
        decoded: dict[int, dict[str, np.ndarray]] = {}
        ok: dict[int, P.DeviceReport] = {}
        secure: tuple[dict[str, np.ndarray], int] | None = None
        for msg in replies:
            pending = self.pending.pop(msg.metadata.src_node_id, None)
            if pending is None:
                continue
            if msg.has_error():
                pending.status, pending.error = "failed", reason_line(msg.error.reason)
                log_.reports.append(pending)
                continue
            rep = P.DeviceReport.from_records(P.record(msg.content, P.METRICS, MetricRecord),
                                              P.record(msg.content, P.REPORT, ConfigRecord))
            rep.downlink_bytes = pending.downlink_bytes
            log_.reports.append(rep)
            self.participation[rep.device] += 1
            if rep.status != "ok":
                continue
            log_.uplink_bytes += rep.uplink_bytes
            if self.cfg.privacy.secure_aggregation:
                secure = secure_mean(msg.content) or secure
                ok[rep.device] = rep
                continue
            try:
                decoded[rep.device] = self._decode(record_to_numpy(P.record(msg.content, P.ARRAYS, ArrayRecord)),
                                                   rep.bits)
            except Exception as exc:  # noqa: BLE001 - any undecodable payload is a rejected update
                rep.status, rep.error = "rejected", one_line(f"undecodable update: {exc}", last_line=True)
                continue
            ok[rep.device] = rep
        for pending in self.pending.values():  # never answered within the round timeout
            pending.status, pending.error = "failed", "no reply within federation.round-timeout-s"
            log_.reports.append(pending)
        self.pending = {}
        return decoded, ok, secure

    @contextlib.contextmanager
    def _user_code(self, method: str) -> Iterator[None]:
        """Any exception of the inner strategy becomes one line naming it; the traceback stays as the cause."""
        try:
            yield
        except Exception as exc:
            raise StrategyError(f"strategy {type(self.inner).__name__}.{method} raised {one_line(exc)}") from exc

    def _check_arrays(self, arrays: ArrayRecord) -> None:
        """What the inner strategy returns must be the global model: every key, every shape."""
        name = f"strategy {type(self.inner).__name__}.aggregate_train"
        got = {k: tuple(a.shape) for k, a in arrays.items()}
        missing = sorted(set(self.current) - set(got))
        if missing:
            raise StrategyError(f"{name} returned arrays without {len(missing)} of the model's keys: "
                                f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
        for k, shape in got.items():
            if k in self.current and shape != tuple(self.current[k].shape):
                raise StrategyError(f"{name} returned '{k}' of shape {shape}, the model's is "
                                    f"{tuple(self.current[k].shape)}")

    def _decode(self, payload: dict[str, np.ndarray], bits: int) -> dict[str, np.ndarray]:
        """Decode at the device's own width; a device at another width than the global model trained its
        own step sizes, which are not comparable: the global steps are kept for it (decode to float, then
        average weights across widths)."""
        own = bits == self.cfg.quant.weight_bits
        qinfo = self.qinfo
        if not own and bits < 32 and qinfo is not None:
            qinfo = qinfo.at_bits(bits, self.cfg.quant.weight_bits)
        out = self.codec.decode(payload, self.current, qinfo)
        if not own:
            out.update({k: self.current[k] for k in out if is_quantizer_key(k)})
        return out

    def _keep_first(self, ok: dict[int, P.DeviceReport], decoded: dict[int, dict[str, np.ndarray]]) -> None:
        """Over-selection (FedScale): keep the devices-per-round that finish first; the rest are stragglers."""
        k = self.cfg.federation.devices_per_round
        if self.cfg.devices.over_selection <= 1.0 or len(ok) <= k:
            return
        order = sorted(ok, key=lambda d: (ok[d].sim_time_s, d))
        for d in order[k:]:
            ok[d].status, ok[d].error = "straggler", "over-selected: finished after the first devices-per-round"
            decoded.pop(d)
            del ok[d]

    # -- evaluation is central (evaluate_fn); devices evaluate on-device inside train ----------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log(INFO, "\t├──> FleetStrategy: %d devices, %d per round, codec %s, weight by %s",
            self.cfg.federation.num_devices, self.cfg.federation.devices_per_round, self.codec.name,
            self.cfg.strategy.weight_by)
        log(INFO, "\t└──> inner strategy: %s", type(self.inner).__name__)

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        return {"participation": self.participation.copy(), "has_reference": self.has_reference.copy(),
                **self.privacy.state_dict()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.privacy.load_state_dict(state)
        self.participation = np.asarray(state["participation"], dtype=np.int64).copy()
        self.has_reference = np.asarray(state["has_reference"], dtype=bool).copy()


def is_eval_round(server_round: int, cfg: ScenarioConfig) -> bool:
    """Whether round ``server_round`` is evaluated (``federation.eval-every``; round 0 and the last always)."""
    every = cfg.federation.eval_every
    return server_round % every == 0 or server_round >= cfg.federation.rounds


def _own_metrics(metrics: MetricRecord | None) -> dict[str, float]:
    """The inner strategy's numeric metrics for ``rounds.jsonl`` (``strategy/<name>``), without its averages
    of the wrapper's own annotations (weight, bits, device index)."""
    if metrics is None:
        return {}
    return {k: float(v) for k, v in metrics.items()
            if k not in _ANNOTATIONS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _decoded_message(arrays: dict[str, np.ndarray], rep: P.DeviceReport) -> Message:
    content = RecordDict({
        P.ARRAYS: record_from_numpy({k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}),
        P.METRICS: MetricRecord({P.WEIGHT_KEY: float(rep.weight), "bits": int(rep.bits), P.DEVICE: int(rep.device)}),
    })
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


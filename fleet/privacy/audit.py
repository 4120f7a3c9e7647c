"""No raw data leaves a device: the rules every message a device sends must follow (``privacy.audit``).

A device may send, and the server checks that it sends only:

- **arrays** named after the model's aggregatable tensors, as the codecs name them (``k``, ``k::codes``,
  ``k::scale``), each no larger than that tensor in float32 (plus one scale per output channel), all
  together no larger than the float32 model (plus the scales);
- **numbers** under the device report's declared keys (``fleet.protocol.DeviceReport``) and the declared
  extras (``x-...`` keys of selectors and CLC);
- **strings** under the report's declared keys, each at most :data:`MAX_STRING` characters;
- **query answers**: the roster answer (its device index), the continual phase's per-task metric lists
  (at most one number per streamed task, no arrays), and SecAgg+'s protocol records (keys, shares and the
  masked vector, whose size is bounded by the model's).

Anything else fails the run with :class:`AuditError`, whose text names the device and the key. The checks
look at names and sizes, not values: a model tensor could still encode data in its values, which is what
the clipping and noise of ``[privacy]`` bound (docs/privacy.md).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fleet import protocol as P
from fleet.quant.codecs import CODES_SUFFIX, SCALE_SUFFIX

__all__ = ["AuditError", "MessageAudit", "MAX_STRING", "EXTRA_PREFIX"]

_FITRES = "fitres."  # Flower's legacy FitRes records (SecAgg+'s training stage)
MAX_STRING = 500  # characters of one report string (an error line is cut to fit)
EXTRA_PREFIX = "x-"


class AuditError(RuntimeError):
    """A device sent something the audit does not allow; ``str(err)`` is one line naming device and key."""


@functools.cache
def _report_keys() -> tuple[frozenset[str], frozenset[str]]:
    """(number keys, string keys) of a device report, from the protocol's dataclass and declared extras."""
    metrics, report = P.DeviceReport(device=0, extra=dict.fromkeys(P.REPORT_EXTRAS, 0.0)).to_records()
    return frozenset(metrics), frozenset(report)


@dataclass(frozen=True)
class MessageAudit:
    """The audit of one run: which arrays and sizes its model allows.

    Parameters
    ----------
    limits : dict of str to int
        Largest allowed byte size per payload key.
    max_total : int
        Largest allowed total array bytes of one message.
    max_list : int
        Longest allowed metric list (the continual phase's tasks).
    """

    limits: Mapping[str, int]
    max_total: int
    max_list: int = 0

    @classmethod
    def for_model(cls, state: Mapping[str, np.ndarray], max_list: int = 0) -> MessageAudit:
        """The audit for a model with this aggregatable ``state`` (the global arrays)."""
        limits: dict[str, int] = {}
        total = 0
        for k, v in state.items():
            a = np.asarray(v)
            fp32 = int(a.size) * 4
            channels = int(a.shape[0]) if a.ndim >= 2 else 1
            limits[k] = fp32
            limits[k + CODES_SUFFIX] = int(a.size)  # one byte per code at most (int8)
            limits[k + SCALE_SUFFIX] = 4 * channels
            total += fp32 + 4 * channels
        return cls(limits, total, max_list)

    def check(self, content: RecordDict, device: str, *, query: bool = False) -> None:
        """Raise :class:`AuditError` unless ``content`` (one message a device sent) follows the rules;
        ``query``: it answers a query (only there may metrics be lists: the continual phase's per-task rows)."""
        numbers, strings = _report_keys()
        total = 0
        for name, rec in content.items():
            where = f"privacy audit: device {device} sent"
            if name.startswith(_FITRES):
                self._check_fitres(rec, name, numbers, strings, where)
            elif isinstance(rec, ArrayRecord):
                if name != P.ARRAYS:
                    raise AuditError(f"{where} an array record '{name}' (only '{P.ARRAYS}' may hold arrays)")
                total += self._check_arrays(rec, where)
            elif isinstance(rec, MetricRecord):
                # lists only in the continual phase's answer, which carries nothing else
                self._check_metrics(rec, name, numbers, where, lists=query and len(content) == 1)
            elif isinstance(rec, ConfigRecord):
                self._check_config(rec, name, strings, where)
            else:
                raise AuditError(f"{where} a record '{name}' of unknown kind {type(rec).__name__}")
        if total > self.max_total:
            raise AuditError(f"privacy audit: device {device} sent {total} bytes of arrays, more than the "
                             f"float32 model's {self.max_total}")

    def _check_arrays(self, rec: ArrayRecord, where: str) -> int:
        total = 0
        for key, arr in rec.items():
            limit = self.limits.get(key)
            if limit is None:
                raise AuditError(f"{where} array '{key}', which is not a model or codec array")
            nbytes = int(arr.numpy().nbytes)
            if nbytes > limit:
                raise AuditError(f"{where} array '{key}' of {nbytes} bytes, more than its model tensor's {limit}")
            total += nbytes
        return total

    def _check_metrics(self, rec: MetricRecord, name: str, numbers: frozenset[str], where: str, *,
                       lists: bool) -> None:
        if name != P.METRICS:
            raise AuditError(f"{where} a metric record '{name}' (only '{P.METRICS}' may hold numbers)")
        for key, value in rec.items():
            if isinstance(value, list):
                if not lists:
                    raise AuditError(f"{where} metric '{key}' as a list (only the continual phase answers lists)")
                if key not in _stream_keys():
                    raise AuditError(f"{where} metric '{key}', which is not a declared continual-phase key")
                if len(value) > self.max_list:
                    raise AuditError(f"{where} metric '{key}' with {len(value)} values (at most {self.max_list})")
            elif key not in numbers:
                raise AuditError(f"{where} metric '{key}', which is not a declared report key")

    def _check_config(self, rec: ConfigRecord, name: str, strings: frozenset[str], where: str) -> None:
        if name == _secagg_key():
            self._check_secagg(rec, where)
            return
        if name != P.REPORT:
            raise AuditError(f"{where} a config record '{name}' (only '{P.REPORT}' may hold strings)")
        for key, value in rec.items():
            if key not in strings and key != P.DEVICE:
                raise AuditError(f"{where} report field '{key}', which is not a declared report key")
            if isinstance(value, (str, bytes)) and len(value) > MAX_STRING:
                raise AuditError(f"{where} report field '{key}' of {len(value)} characters (at most {MAX_STRING})")
            if isinstance(value, list):
                raise AuditError(f"{where} report field '{key}' as a list")

    def _check_fitres(self, rec: object, name: str, numbers: frozenset[str], strings: frozenset[str],
                      where: str) -> None:
        """The stage of SecAgg+ that trains answers in the legacy FitRes form: the report flattened into
        ``fitres.metrics`` (``n:``/``s:`` keys), the weight, the status; the masked vector rides in SecAgg+'s
        own record and the parameters record arrives emptied."""
        from fleet.privacy.secagg import NUMBER_PREFIX, STRING_PREFIX

        allowed = {f"{_FITRES}metrics": {NUMBER_PREFIX + k for k in numbers} | {STRING_PREFIX + k for k in strings},
                   f"{_FITRES}num_examples": {"num_examples"}, f"{_FITRES}status": {"code", "message"},
                   f"{_FITRES}parameters": set()}
        keys = allowed.get(name)
        if keys is None:
            raise AuditError(f"{where} a record '{name}', which the protocol does not send")
        for key in rec.keys():  # type: ignore[attr-defined]
            if key not in keys:
                raise AuditError(f"{where} '{name}' field '{key}', which is not a declared report key")
            value = rec[key]  # type: ignore[index]
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise AuditError(f"{where} '{name}' field '{key}' of {len(value)} characters (at most {MAX_STRING})")

    def _check_secagg(self, rec: ConfigRecord, where: str) -> None:
        """SecAgg+'s stage answers: public keys, encrypted shares, the masked vector (int64 per element)."""
        allowed = _secagg_reply_keys()
        size = 0
        for key, value in rec.items():
            if key not in allowed:
                raise AuditError(f"{where} SecAgg+ field '{key}', which the protocol does not send")
            if isinstance(value, list):
                size += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in value)
            elif isinstance(value, (bytes, str)):
                size += len(value)
        limit = 2 * self.max_total + 64 * 1024  # int64 codes of a float32 model, plus keys and shares
        if size > limit:
            raise AuditError(f"{where} {size} bytes of SecAgg+ fields, more than the protocol needs ({limit})")


@functools.cache
def _stream_keys() -> frozenset[str]:
    """What the continual phase answers per task (``fleet.qcore.device.stream_metrics``)."""
    import dataclasses

    from fleet.qcore.continual import TaskMetrics

    return frozenset([f.name for f in dataclasses.fields(TaskMetrics)] + ["sim_time_s", "energy_j"])


def _secagg_key() -> str:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return str(RECORD_KEY_CONFIGS)


@functools.cache
def _secagg_reply_keys() -> frozenset[str]:
    """What SecAgg+'s client mod answers in its stages (Flower's ``Key`` names)."""
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    return frozenset(str(k) for k in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2, Key.DESTINATION_LIST,
                                            Key.CIPHERTEXT_LIST, Key.MASKED_PARAMETERS, Key.NODE_ID_LIST,
                                            Key.SHARE_LIST))


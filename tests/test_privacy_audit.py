"""The message audit (``privacy.audit``): what a device may send, and the Grid that checks every reply."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from sklearn.datasets import load_digits

from fleet import protocol as P
from fleet.arrays import record_from_numpy
from fleet.model.architectures import build_model
from fleet.privacy.audit import MAX_STRING, AuditError, MessageAudit
from fleet.quant.codecs import build_codec, payload_nbytes
from fleet.quant.convert import init_quantizers, quant_info, quantize_model
from fleet.quant.spec import QuantInfo, split_state
from strategies.audit import AuditedGrid

State = dict[str, np.ndarray]
DEVICE = "3"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model() -> tuple[State, State, QuantInfo]:
    """(global, local, qinfo) of a small real 4-bit CNN: weights, steps, BatchNorm statistics."""
    torch.manual_seed(0)
    q = quantize_model(build_model("cnn", (1, 8, 8), 10), 4, 4, per_channel=True)
    init_quantizers(q, torch.randn(16, 1, 8, 8))
    glob, _ = split_state({k: v.numpy().astype(np.float32).copy() for k, v in q.state_dict().items()
                           if v.is_floating_point()})
    rng = np.random.default_rng(1)
    local = {k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in glob.items()}
    return glob, local, quant_info(q)


def _payload(model: tuple[State, State, QuantInfo], codec: str = "qweights", **options: object) -> State:
    glob, local, info = model
    return build_codec(codec, **options).encode(local, glob, np.random.default_rng(0),
                                                info if codec == "qweights" else None)


def _reply(payload: State, **extra: float) -> RecordDict:
    """A train reply's content, as ``fleet/client_app.py`` ``_handle_train`` builds it."""
    rep = P.DeviceReport(device=int(DEVICE), profile="rpi4", bits=4, weight=1.0, local_size=180, coreset_size=18,
                         coreset_fraction=0.1, train_samples=18, accuracy=0.5, loss=1.2,
                         uplink_bytes=payload_nbytes(payload), error="", extra=dict(extra))
    metrics, report = rep.to_records()
    return RecordDict({P.ARRAYS: record_from_numpy(payload), P.METRICS: metrics, P.REPORT: report})


def _raises(audit: MessageAudit, content: RecordDict, *fragments: str) -> str:
    with pytest.raises(AuditError) as info:
        audit.check(content, DEVICE)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"device {DEVICE} " in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def _digits(n: int = 20) -> np.ndarray:
    return (load_digits().images[:n] / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8): a device's images


# --------------------------------------------------------------------------- what passes


@pytest.mark.parametrize("codec,options", [("fp32", {}), ("fp16", {}), ("delta-int8", {"min_numel": 1}),
                                           ("delta-int8", {"min_numel": 1, "per_channel": True}),
                                           ("delta-int4", {"per_channel": True}), ("qweights", {})])
def test_well_formed_train_reply_passes(model: tuple[State, State, QuantInfo], codec: str, options: dict) -> None:
    glob = model[0]
    audit = MessageAudit.for_model(glob)
    content = _reply(_payload(model, codec, **options), **{"kd-clc-ratio": 0.4, "clc-beta": 0.1})
    audit.check(content, DEVICE)  # no exception


def test_roster_and_stream_answers_pass(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0], max_list=5)
    audit.check(RecordDict({P.REPORT: ConfigRecord({P.DEVICE: 3})}), DEVICE)
    stream = RecordDict({P.METRICS: MetricRecord({"accuracy_task": [0.1] * 5, "sim_time_s": [1.0] * 5, P.DEVICE: 3})})
    audit.check(stream, DEVICE, query=True)  # the continual phase's answer to a query
    with pytest.raises(AuditError, match="as a list"):
        audit.check(stream, DEVICE)  # the same lists in a train reply
    with pytest.raises(AuditError, match="6 values"):
        audit.check(RecordDict({P.METRICS: MetricRecord({"accuracy_task": [0.1] * 6})}), DEVICE, query=True)


def test_report_string_at_the_limit_passes(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    content[P.REPORT]["error"] = "e" * MAX_STRING
    audit.check(content, DEVICE)


# --------------------------------------------------------------------------- what fails


def test_data_tensor_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply({**_payload(model), "x_train": _digits()})
    _raises(audit, content, "'x_train'", "not a model or codec array")


def test_array_larger_than_its_model_tensor_fails(model: tuple[State, State, QuantInfo]) -> None:
    glob = model[0]
    audit = MessageAudit.for_model(glob)
    # float64 is twice the float32 tensor
    payload = {**_payload(model, "fp32"), "classifier.weight": glob["classifier.weight"].astype(np.float64)}
    _raises(audit, _reply(payload), "'classifier.weight'", "5120 bytes", "2560")
    # a wider tensor under a model key (the right dtype, more elements)
    payload = {**_payload(model, "fp32"), "classifier.bias": np.zeros(11, np.float32)}
    _raises(audit, _reply(payload), "'classifier.bias'")
    # codes: at most one byte per element
    payload = {**_payload(model, "qweights"), "conv2.weight::codes": np.zeros(32 * 16 * 9 + 1, np.uint8)}
    _raises(audit, _reply(payload), "'conv2.weight::codes'")
    # scales: at most one float per output channel
    payload = {**_payload(model, "delta-int8", min_numel=1), "conv3.weight::scale": np.zeros(65, np.float32)}
    _raises(audit, _reply(payload), "'conv3.weight::scale'")


def test_message_larger_than_the_model_fails(model: tuple[State, State, QuantInfo]) -> None:
    # Every tensor twice, as float32 and as codes: each array within its limit, the message over the model's
    audit = MessageAudit.for_model(model[0])
    both = {**_payload(model, "fp32"), **_payload(model, "delta-int8", min_numel=1)}
    msg = _raises(audit, _reply(both), "bytes of arrays")
    assert str(audit.max_total) in msg


def test_undeclared_metric_key_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    content[P.METRICS]["pixel-mean"] = 0.25
    _raises(audit, content, "'pixel-mean'", "not a declared report key")


def test_undeclared_report_field_and_list_fail(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    content[P.REPORT]["labels"] = "0,1,1,7"
    _raises(audit, content, "'labels'")
    content = _reply(_payload(model))
    content[P.REPORT]["error"] = ["a", "b"]
    _raises(audit, content, "'error'", "list")


def test_report_string_over_the_limit_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    content[P.REPORT]["error"] = "e" * (MAX_STRING + 1)
    _raises(audit, content, "'error'", f"{MAX_STRING + 1} characters")


def test_array_record_under_another_name_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    content["coreset"] = record_from_numpy({"classifier.bias": np.zeros(10, np.float32)})  # a model key, even
    _raises(audit, content, "'coreset'", "array record")


@pytest.mark.parametrize("record", [MetricRecord({"loss": 1.0}), ConfigRecord({"status": "ok"})])
def test_metric_or_config_record_under_another_name_fails(model: tuple[State, State, QuantInfo],
                                                          record: MetricRecord | ConfigRecord) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    content["side-channel"] = record
    _raises(audit, content, "'side-channel'")


# Raw data as numbers: extras are only the declared ones (fleet.protocol.REPORT_EXTRAS), lists only in the
# continual phase's answer.


def test_raw_data_smuggled_as_extra_metrics_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    content = _reply(_payload(model))
    pixels = _digits(10).ravel()  # 640 raw pixel values of the device's data
    for i, v in enumerate(pixels):
        content[P.METRICS][f"x-{i}"] = float(v)
    _raises(audit, content, "'x-")


def test_raw_data_smuggled_as_metric_lists_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0], max_list=10)  # what a run uses: stream.tasks (default 10)
    content = _reply(_payload(model))
    pixels = _digits(10).ravel()
    for i in range(0, len(pixels), 10):
        content[P.METRICS][f"image-{i // 10}"] = [float(v) for v in pixels[i:i + 10]]
    _raises(audit, content, "'image-")


BUG_METRICS_ONLY = (
    "fleet/privacy/audit.py MessageAudit.check: lists are allowed whenever the message holds one record "
    "(lists=len(content) == 1), and _check_metrics then checks only their length, never their key nor how many "
    "there are: a reply {'metrics': MetricRecord({'image-0': [10 pixels], ..., 'image-63': [...]})} passes, as a "
    "train reply or as the continual answer; the stream answer's keys are fixed (TaskMetrics fields, sim_time_s, "
    "energy_j, device) and AuditedGrid knows the message type")



def test_raw_data_as_a_metrics_only_reply_fails(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0], max_list=10)
    pixels = _digits(10).ravel()  # 640 raw pixel values of the device's data, as 64 lists of 10
    content = RecordDict({P.METRICS: MetricRecord({f"image-{i // 10}": [float(v) for v in pixels[i:i + 10]]
                                                   for i in range(0, len(pixels), 10)})})
    _raises(audit, content, "'image-")


# --------------------------------------------------------------------------- the audited grid


def _meta(node: int) -> Metadata:
    return Metadata(run_id=1, message_id=f"reply-{node}", src_node_id=node, dst_node_id=0,
                    reply_to_message_id=f"ins-{node}", group_id="", created_at=0.0, ttl=3600.0,
                    message_type=MessageType.TRAIN)


class _FakeGrid:
    """The Grid calls AuditedGrid forwards: canned replies, and a record of what passed through."""

    def __init__(self, replies: list[Message]) -> None:
        self.replies, self.pushed, self.timeouts = replies, [], []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self.timeouts.append(timeout)
        return list(self.replies)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return list(self.replies)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        self.pushed.extend(messages)
        return ["m1"]

    def get_node_ids(self) -> list[int]:
        return [101, 102, 103]


def test_audited_grid_checks_every_reply_and_counts_them(model: tuple[State, State, QuantInfo]) -> None:
    audit = MessageAudit.for_model(model[0])
    good = [Message(content=_reply(_payload(model)), metadata=_meta(n)) for n in (101, 103)]
    failed = Message(error=Error(code=0, reason="simulated OOM"), metadata=_meta(102))
    fake = _FakeGrid([good[0], failed, good[1]])
    grid = AuditedGrid(fake, audit, lambda node: str(node - 100))
    # Execute
    replies = grid.send_and_receive([], timeout=12.0)
    # Assert: every reply returned in order; the error reply (no content) is not audited
    assert replies == [good[0], failed, good[1]]
    assert grid.checked == 2 and fake.timeouts == [12.0]
    assert grid.pull_messages(["a"]) == fake.replies and grid.checked == 4
    assert list(grid.get_node_ids()) == [101, 102, 103]
    assert list(grid.push_messages([])) == ["m1"]


@pytest.mark.parametrize("path", ["send_and_receive", "pull_messages"])
def test_audited_grid_fails_on_a_bad_reply_naming_the_device(model: tuple[State, State, QuantInfo],
                                                             path: str) -> None:
    audit = MessageAudit.for_model(model[0])
    ok = Message(content=_reply(_payload(model)), metadata=_meta(101))
    leak = Message(content=_reply({**_payload(model), "x": _digits()}), metadata=_meta(105))
    grid = AuditedGrid(_FakeGrid([ok, leak]), audit, lambda node: str(node - 100))
    with pytest.raises(AuditError, match=r"device 5 sent array 'x',"):
        if path == "send_and_receive":
            grid.send_and_receive([], timeout=1.0)
        else:
            grid.pull_messages(["a", "b"])
    assert grid.checked == 1  # the good reply before it


def test_payload_record_holds_only_what_the_codec_made(model: tuple[State, State, QuantInfo]) -> None:
    # The fixture's replies are what the audit is checked against: the codec's own keys, nothing else
    payload = _payload(model, "qweights")
    rec = _reply(payload)[P.ARRAYS]
    assert isinstance(rec, ArrayRecord) and set(rec) == set(payload)
    assert any(k.endswith("::codes") for k in rec)

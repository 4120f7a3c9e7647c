"""Smoke test of ``python -m simulations.benchmarks.strategies --quick`` and its in-process grid."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from simulations.benchmarks import strategies as bench
from simulations.run.local_engine import LocalGrid, server_identity


def test_local_grid_delivers_to_each_node_and_turns_errors_into_replies() -> None:
    # Prepare: a ClientApp that answers with its partition id, and fails on partition 1
    app = ClientApp()

    @app.query()
    def query(msg: Message, context) -> Message:  # noqa: ANN001
        pid = context.node_config["partition-id"]
        if pid == 1:
            raise RuntimeError("boom")
        return Message(RecordDict({"r": ConfigRecord({"device": pid})}), reply_to=msg)

    grid = LocalGrid(app, num_nodes=3)
    nodes = list(grid.get_node_ids())
    with server_identity():
        msgs = [Message(RecordDict({"q": ConfigRecord({"ask": 1})}), dst_node_id=n, message_type="query")
                for n in nodes]
        # Execute
        replies = grid.send_and_receive(msgs, timeout=1.0)

    # Assert: one reply per message, from the right node; the failure is an error reply
    assert nodes == [1, 2, 3]
    assert [r.metadata.src_node_id for r in replies] == nodes
    assert [r.has_error() for r in replies] == [False, True, False]
    assert "boom" in replies[1].error.reason
    assert [r.content["r"]["device"] for r in (replies[0], replies[2])] == [0, 2]


def test_quick_benchmark_writes_table_and_json(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "strategies.json"
    lines: list[str] = []

    # Execute
    record = bench.main(["--quick", "--out", str(out)], log=lines.append)

    # Assert: every (strategy, condition) cell ran to the end and is in the JSON with its rounds
    saved = json.loads(out.read_text())
    assert saved["cells"] == json.loads(json.dumps(record["cells"]))
    cells = saved["cells"]
    assert len(cells) == len(bench.QUICK_STRATEGIES) * len(bench.CONDITIONS)
    rounds = bench.QUICK["federation.rounds"]
    for cell in cells:
        assert cell["status"] == "complete"
        assert len(cell["accuracy_per_round"]) == rounds + 1  # round 0 first
        assert 0.0 <= cell["final_accuracy"] <= 1.0  # the deployed integer model
        assert cell["uplink_bytes"] == sum(cell["uplink_bytes_per_round"]) > 0
    # The guard rejects exactly the corrupted updates; without it none are rejected
    by_cond = {c: [x for x in cells if x["condition"] == c] for c in bench.CONDITIONS}
    assert all(x["corrupt_sent"] == 0 for x in by_cond["clean"])
    assert all(x["rejected"] == x["corrupt_sent"] for x in by_cond["corrupt+guard"])
    assert all(x["rejected"] == 0 for x in by_cond["corrupt-no-guard"])
    for key in ("git_commit", "machine", "date", "budget", "strategies"):
        assert key in saved
    assert "fedavg" in saved["table"] and "corrupt-no-guard" in saved["table"]

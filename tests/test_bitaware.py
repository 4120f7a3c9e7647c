"""BitAwareFedAvg: both modes with mixed bit-widths, worked out by hand."""

import numpy as np
import pytest
from flwr.serverapp.exception import AggregationError
from mock_replies import aggregated, make_error_reply, make_reply

from strategies.bitaware import BitAwareFedAvg, bit_weights
from strategies.registry import build_inner_strategy


def test_weight_mode_scales_examples_by_bits() -> None:
    # Prepare: bits 2, 4, 8 -> w = 0.25, 0.5, 1; n = 10, 10, 20 -> 2.5, 5, 20 (sum 27.5)
    # mean = (0 * 2.5 + 4 * 5 + 8 * 20) / 27.5 = 180 / 27.5 = 72 / 11
    strategy = build_inner_strategy("bit-aware", {"mode": "weight"})
    replies = [
        make_reply({"w": [0.0]}, 10, bits=2, device=0),
        make_reply({"w": [4.0]}, 10, bits=4, device=1),
        make_reply({"w": [8.0]}, 20, bits=8, device=2),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(aggregated(arrays)["w"], [72 / 11], rtol=1e-6)


def _mixed_group_replies() -> list:
    # groups: 2-bit {x=0 n=10, x=4 n=30}, 4-bit {x=8 n=10}, 8-bit {x=16 n=10}
    return [
        make_reply({"w": [0.0, 1.0]}, 10, bits=2, device=0),
        make_reply({"w": [4.0, 1.0]}, 30, bits=2, device=1),
        make_reply({"w": [8.0, 1.0]}, 10, bits=4, device=2),
        make_reply({"w": [16.0, 1.0]}, 10, bits=8, device=3),
    ]


def test_group_mode_averages_groups_by_bits() -> None:
    # Prepare: group means 2-bit (0*10 + 4*30)/40 = 3, 4-bit 8, 8-bit 16;
    # group weights w = 0.25, 0.5, 1 (sum 1.75): (0.75 + 4 + 16) / 1.75 = 83 / 7.
    strategy = BitAwareFedAvg(mode="group")
    # Execute
    arrays, _ = strategy.aggregate_train(1, _mixed_group_replies())
    # Assert: a constant coordinate stays constant
    np.testing.assert_allclose(aggregated(arrays)["w"], [83 / 7, 1.0], rtol=1e-6)


def test_modes_differ_from_fedavg_on_the_same_replies() -> None:
    # Prepare: plain FedAvg = (0 + 120 + 80 + 160) / 60 = 6;
    # weight mode: n*w = 2.5, 7.5, 5, 10 (sum 25) -> (0 + 30 + 40 + 160) / 25 = 9.2
    strategy = BitAwareFedAvg(mode="weight")
    # Execute
    arrays, _ = strategy.aggregate_train(1, _mixed_group_replies())
    # Assert
    np.testing.assert_allclose(aggregated(arrays)["w"][0], 9.2, rtol=1e-6)


@pytest.mark.parametrize("mode", ["weight", "group"])
def test_single_bit_width_equals_fedavg(mode: str) -> None:
    # Prepare: all 4-bit -> (1 * 2 + 3 * 6) / 4 = 5
    replies = [make_reply({"w": [2.0]}, 1, bits=4), make_reply({"w": [6.0]}, 3, bits=4)]
    # Execute
    arrays, _ = BitAwareFedAvg(mode=mode).aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(aggregated(arrays)["w"], [5.0])


def test_metrics_are_weighted_by_bit_aware_weights_and_inputs_untouched() -> None:
    # Prepare: weights 2.5 (bits 2) and 20 (bits 8): mean bits = (2*2.5 + 8*20)/22.5
    replies = [
        make_reply({"w": [0.0]}, 10, bits=2),
        make_reply({"w": [1.0]}, 20, bits=8),
    ]
    # Execute
    _, metrics = BitAwareFedAvg().aggregate_train(1, replies)
    # Assert
    assert metrics is not None
    assert metrics["bits"] == pytest.approx((2 * 2.5 + 8 * 20) / 22.5)
    assert replies[0].content["metrics"]["num-examples"] == 10


def test_error_replies_are_ignored() -> None:
    replies = [make_reply({"w": [3.0]}, 1, bits=4), make_error_reply(device=1)]
    arrays, _ = BitAwareFedAvg().aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated(arrays)["w"], [3.0])


def test_missing_bits_metric_is_an_aggregation_error() -> None:
    reply = make_reply({"w": [3.0]}, 1)
    del reply.content["metrics"]["bits"]
    with pytest.raises(AggregationError):
        BitAwareFedAvg().aggregate_train(1, [reply])


def test_bit_weights_by_hand() -> None:
    assert bit_weights([10, 10, 20], [2, 4, 8], "weight") == [2.5, 5.0, 20.0]
    assert bit_weights([10, 30, 10], [2, 2, 8], "group") == [0.0625, 0.1875, 1.0]
    assert bit_weights([0, 5], [2, 8], "group") == [0.0, 1.0]


def test_unknown_mode_is_a_one_line_option_error() -> None:
    with pytest.raises(ValueError, match=r"^strategy\.options\.mode: ") as e:
        build_inner_strategy("bit-aware", {"mode": "median"})
    assert "\n" not in str(e.value)

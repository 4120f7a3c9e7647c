"""A coordinate-wise clipped mean: FedAvg that limits how far any device can pull.

Use it in a scenario with::

    [strategy]
    name = "my_strategies.clipped_mean:ClippedMean"
    options.radius = 0.05
"""

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg


class ClippedMean(FedAvg):
    """Weighted mean after clipping each coordinate to ``median +- radius``.

    For every tensor coordinate, each device's value is clipped into
    ``[m - radius, m + radius]`` where ``m`` is the coordinate-wise median over the
    round's devices, then the clipped values are averaged weighted by
    ``num-examples``. A single wild device moves a coordinate by at most
    ``radius * its weight share``, while agreeing devices average as in FedAvg.

    Parameters
    ----------
    radius : float (default: 0.1)
        Half-width of the clipping window around the median; must be > 0.
    **kwargs : Any
        Passed to `flwr.serverapp.strategy.FedAvg` (the fleet wrapper passes its
        sampling settings this way).
    """

    def __init__(self, radius: float = 0.1, **kwargs: Any) -> None:
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        super().__init__(**kwargs)
        self.radius = radius

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate decoded float updates with a coordinate-wise clipped mean."""
        # The fleet wrapper already dropped failed and rejected replies; stay safe.
        replies = [msg for msg in replies if not msg.has_error()]
        if not replies:
            return None, None
        weights = np.array(
            [msg.content["metrics"][self.weighted_by_key] for msg in replies],
            dtype=np.float64,
        )  # (K,)
        weights /= weights.sum()
        arrays = {}
        for key in replies[0].content["arrays"].keys():
            stack = np.stack(
                [msg.content["arrays"][key].numpy() for msg in replies]
            )  # (K, *shape)
            center = np.median(stack, axis=0)  # (*shape)
            clipped = np.clip(stack, center - self.radius, center + self.radius)
            mean = np.tensordot(weights, clipped, axes=1)  # (*shape)
            arrays[key] = Array(mean.astype(stack.dtype))
        metrics = self.train_metrics_aggr_fn(
            [msg.content for msg in replies], self.weighted_by_key
        )
        return ArrayRecord(arrays), metrics

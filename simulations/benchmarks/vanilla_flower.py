"""A plain Flower app, the baseline of the scale benchmark: no edgefleet imports.

The same MLP as ``fleet.model.architectures`` (64-128-64-10 on 8x8 digits), the same data
(scikit-learn's digits, 75/25 stratified split, pixels / 16; or an npz folder such as MNIST's,
pixels / 255, with ``root``), an IID split over
``num_devices`` SuperNodes with each device keeping 80% of its share for
training (as edgefleet's ``data.val-fraction = 0.2``), local Adam, and Flower's
own ``FedAvg`` with central evaluation only (``fraction_evaluate = 0``: edgefleet
evaluates centrally too). The ServerApp times every round the way edgefleet's
``rounds.jsonl`` ``wall_s`` does (from the previous central evaluation to this
one) and writes the times to ``timing_path`` as JSON.

Run standalone: ``python -m simulations.benchmarks.vanilla_flower --devices 100``.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecordValues, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "data_split", "digits_split", "make_client_app", "make_server_app", "run"]


class MLP(nn.Module):
    """Two hidden layers (128, 64), as ``fleet.model.architectures.MLP``."""

    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU(),
                                 nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, num_classes)


@functools.lru_cache(maxsize=2)
def data_split(root: str = "", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits (``root`` empty), or the ``<root>/*_train.npz`` and ``*_test.npz`` pair (images uint8 N x H x W,
    as MNIST's; pixels / 255): x (N, 1, H, W), y (N,), read-only, cached per process."""
    if not root:
        return digits_split(seed)
    train = next(Path(root).glob("*_train.npz"))
    out = []
    for path in (train, train.with_name(train.name.replace("_train", "_test"))):
        with np.load(path) as d:
            out += [(d["images"].astype(np.float32) / 255.0)[:, None], d["labels"].astype(np.int64)]
    return out[0], out[1], out[2], out[3]


@functools.lru_cache(maxsize=2)
def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits train/test arrays (read-only, cached per process): x (N, 1, 8, 8) in [0, 1], y (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 4, replace=False)] = True
    return x[~test], y[~test], x[test], y[test]


@functools.lru_cache(maxsize=2)
def _parts(num_devices: int, seed: int, root: str = "") -> list[np.ndarray]:
    x_train, _, _, _ = data_split(root, seed)
    perm = np.random.default_rng(seed).permutation(len(x_train))
    return [p[: max(1, int(round(0.8 * len(p))))] for p in np.array_split(perm, num_devices)]


def _state(model: nn.Module, arrays: ArrayRecord) -> None:
    model.load_state_dict(arrays.to_torch_state_dict())


def make_client_app(num_devices: int, epochs: int = 1, lr: float = 0.005, batch: int = 32,
                    seed: int = 0, root: str = "") -> ClientApp:
    """A ClientApp that trains the MLP on its IID share of digits (or of the npz folder ``root``)."""
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        x_train, y_train, _, _ = data_split(root, seed)
        idx = _parts(num_devices, seed, root)[pid]
        x, y = torch.from_numpy(x_train[idx]), torch.from_numpy(y_train[idx])  # (n, 1, H, W), (n,)
        model = MLP(x_train[0].size)
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)  # the server sends its model as an ArrayRecord
        _state(model, arrays)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed * 100003 + pid)
        model.train()
        loss = torch.zeros(())
        for _ in range(epochs):
            for b in torch.randperm(len(y), generator=gen).split(batch):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[b]), y[b])
                loss.backward()
                opt.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"train-loss": float(loss), "num-examples": len(y)})})
        return Message(content=content, reply_to=msg)

    return client


def make_server_app(num_rounds: int, devices_per_round: int, num_devices: int, timing_path: Path,
                    seed: int = 0, root: str = "") -> ServerApp:
    """A ServerApp running Flower's FedAvg; per-round wall seconds go to ``timing_path``."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(seed)  # FedAvg samples nodes with the global `random`
        torch.manual_seed(seed)
        _, _, x_test, y_test = data_split(root, seed)
        xt, yt = torch.from_numpy(x_test), torch.from_numpy(y_test)
        model = MLP(x_test[0].size)
        strategy = FedAvg(fraction_train=devices_per_round / num_devices, fraction_evaluate=0.0,
                          min_train_nodes=devices_per_round, min_available_nodes=num_devices)
        walls: list[float] = []
        accs: list[float] = []
        clock = {"t": time.perf_counter()}

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            _state(model, arrays)
            model.eval()
            with torch.no_grad():
                acc = float((model(xt).argmax(1) == yt).float().mean())
            if server_round > 0:  # same boundary as edgefleet's rounds.jsonl wall_s
                now = time.perf_counter()
                walls.append(now - clock["t"])
                clock["t"] = now
                accs.append(acc)
            return MetricRecord({"accuracy": acc})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=num_rounds,
                       evaluate_fn=evaluate_fn)
        timing_path.write_text(json.dumps({"round_wall_s": walls, "accuracy": accs}))

    return server


def run(num_devices: int, devices_per_round: int, rounds: int, epochs: int, timing_path: Path,
        num_cpus: int = 1, seed: int = 0, root: str = "") -> None:
    """Run the app on Flower's simulation engine (Ray, ``num_cpus`` CPUs, one per device)."""
    import warnings

    from flwr.simulation import run_simulation

    backend: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "num_cpus": num_cpus}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=make_server_app(rounds, devices_per_round, num_devices, timing_path, seed, root),
                       client_app=make_client_app(num_devices, epochs, seed=seed, root=root),
                       num_supernodes=num_devices, backend_config=backend)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timing", type=Path, default=Path("vanilla_timing.json"))
    parser.add_argument("--root", default="", help="folder of *_train.npz/*_test.npz (default: digits)")
    a = parser.parse_args()
    run(a.devices, a.per_round, a.rounds, a.epochs, a.timing, root=a.root)
    print(a.timing.read_text())

"""The scenario keys: one frozen dataclass per section, with help, type and range.

Each field's metadata carries its help text and its check; the kebab-case key is
``<section>.<field-name-with-dashes>``. Defaults here are the defaults of every run;
``pyproject.toml``'s ``[tool.flwr.app.config]`` mirrors them (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from fleet.train.schedule import LR_SCHEDULES, LR_SCOPES

BITS = (2, 3, 4, 5, 6, 7, 8, 32)


class ConfigError(ValueError):
    """A bad scenario value; ``str(err)`` is one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class Registry:
    """The allowed values of a key, read from the registry that implements them (a dict of names, or a tuple)
    when first needed: the schema names the registry instead of repeating it, and importing the schema loads
    no torch. Adding a selector, codec or model to its registry makes it a valid value here too."""

    def __init__(self, module: str, attr: str, prefix: tuple[Any, ...] = ()) -> None:
        self.module, self.attr, self.prefix = module, attr, prefix

    def names(self) -> tuple[Any, ...]:
        """The registry's names now (read each time: an entry registered at run time is valid at once)."""
        return self.prefix + tuple(getattr(importlib.import_module(self.module), self.attr))

    def __iter__(self) -> Any:
        return iter(self.names())

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.module}.{self.attr})"


def opt(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, choices: tuple[Any, ...] | Registry | None = None,
        kind: type | tuple[type, ...] | None = None) -> Any:
    """A config field with its help and constraints."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
            "kind": kind if kind is not None else type(default)}
    if isinstance(default, (dict, list, tuple)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def key_of(section: str, name: str) -> str:
    return f"{section}.{name.replace('_', '-')}"


def _type_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


def check_value(key: str, raw: Any, f: dataclasses.Field[Any]) -> Any:
    """Type-check and range-check one raw value against its field; returns the typed value."""
    m = f.metadata
    kind = m["kind"]
    v = raw
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(v, int) and not isinstance(v, bool):
        v = float(v) if int not in kinds else v
    ok = any(isinstance(v, k) and not (k is not bool and isinstance(v, bool)) for k in kinds)
    if not ok:
        raise ConfigError(key, f"must be {_type_name(kind)}, got {raw!r}")
    if m["choices"] is not None and v not in m["choices"]:
        valid = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in m["choices"])
        raise ConfigError(key, f"must be one of {valid}; got {raw!r}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        for bound, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                                  ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
            b = m[bound]
            if b is not None and not test(v, b):
                raise ConfigError(key, f"must be {word} {b:g}, got {raw!r}")
    return v


@dataclass(frozen=True)
class FederationConfig:
    num_devices: int = opt(100, "number of simulated devices (Flower SuperNodes)", ge=1)
    devices_per_round: int = opt(10, "devices sampled per round", ge=1)
    rounds: int = opt(5, "federated rounds", ge=1)
    seed: int = opt(0, "seed of every random choice in the run", ge=0)
    round_timeout_s: float = opt(600.0, "wall seconds the server waits for a round's replies", gt=0)
    eval_every: int = opt(1, "central and on-device evaluation every N rounds (the last round always)", ge=1)
    device_eval_limit: int = opt(0, "on-device evaluation samples: a fixed random subset of the device's "
                                 "held-out split (0 = all)", ge=0)
    engine: str = opt("auto", "what runs the devices under fleet run: 'local' (worker processes on this machine, "
                      "no Ray), 'ray' (Flower's simulation engine), 'auto' = ray with ray.address, else local "
                      "(docs/scaling.md)", choices=("auto", "local", "ray"))
    workers: int = opt(0, "engine = 'local': worker processes (0 = CPUs / ray.num-cpus-per-device)", ge=0)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = opt("digits", "dataset", choices=Registry("fleet.data.datasets", "DATASETS"))
    root: str = opt("", "folder of the dataset files (torchvision layout or npz files)")
    name: str = opt("", "npz file prefix: <root>/<name>_train.npz (default: the folder's only pair)")
    download: bool = opt(False, "let torchvision download the dataset into data.root")
    partition: str = opt("dirichlet", "how devices' data is split",
                         choices=Registry("fleet.data.partition", "PARTITIONERS"))
    alpha: float = opt(0.5, "Dirichlet concentration (label skew; smaller is more skewed)", gt=0)
    shards_per_device: int = opt(2, "classes per device for partition = shards", ge=1)
    quantity_sigma: float = opt(1.0, "log-normal sigma of device sizes for partition = quantity", gt=0)
    min_partition_size: int = opt(4, "smallest number of training samples a device may hold", ge=1)
    val_fraction: float = opt(0.2, "share of each device's data kept for on-device evaluation", ge=0, lt=1)
    public_fraction: float = opt(0.1, "share of the training set held out from devices for central pretraining",
                                 ge=0, lt=1)
    test_limit: int = opt(0, "central test samples per evaluation: a fixed random subset (0 = all)", ge=0)
    train_limit: int = opt(0, "training samples the fleet uses: a fixed random subset of the training set, "
                          "drawn before the public split and the partition (0 = all)", ge=0)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = opt("mlp", "architecture", choices=Registry("fleet.model.architectures", "MODELS"))
    checkpoint: str = opt("", "float reference checkpoint (safetensors); empty = pretrain centrally")
    pretrain_epochs: int = opt(20, "epochs of central pretraining on the public split", ge=0)
    pretrain_lr: float = opt(0.003, "learning rate of central pretraining (peak rate for sgd's one-cycle)", gt=0)
    pretrain_data: str = opt("public", "what the float reference is trained on: the public split, or the whole "
                             "training set ('train', the papers' protocol for one device)", choices=("public", "train"))
    pretrain_optimizer: str = opt("adam", "pretraining optimizer: adam with cosine decay, or sgd (Nesterov 0.9, "
                                  "weight decay 5e-4) with a one-cycle schedule", choices=("adam", "sgd"))
    pretrain_batch_size: int = opt(64, "pretraining batch size", ge=1)
    pretrain_augment: str = opt("auto", "pretraining augmentation: 'auto' = random crop (pad 4) and horizontal "
                                "flip for 32x32 colour images, none otherwise", choices=("auto", "none", "flip-crop"))
    cache_dir: str = opt("", "cache for pretrained references (default: ~/.cache/edgefleet)")


@dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = opt(32, "weight bits (32 = float)", choices=BITS)
    act_bits: int = opt(32, "activation bits (32 = float)", choices=BITS)
    per_channel: bool = opt(False, "per-output-channel weight step sizes")
    act_signed: str | bool = opt("auto", "activation range: 'auto' = unsigned [0, 2^b-1] after ReLU/ReLU6, signed "
                          "elsewhere (docs/quantization.md); true = signed everywhere, as ACS's code; false = unsigned",
                          choices=Registry("fleet.quant.signs", "ACT_SIGNED_CHOICES"), kind=(str, bool))
    weights_only: bool = opt(False, "quantize weights only (as the papers do for MobileNetV2)")
    keep_fp: str = opt("default", "comma-separated module names kept in float ('default': first conv, "
                       "classifier, downsample convs, as ACS; 'int8': those same layers at W8A8, so every layer "
                       "is integer on the device; 'none')")
    w8_layers: str = opt("", "comma-separated quantized module names whose weights use 8 bits (their inputs keep "
                             "their widths); e.g. one layer at a time, to check QGT's bottleneck report")
    codec: str = opt("fp32", "what devices upload",
                     choices=Registry("fleet.quant.codecs", "CODECS"))
    codec_per_channel: bool = opt(False, "per-channel scales for delta codecs")


@dataclass(frozen=True)
class CoresetConfig:
    method: str = opt("full", "coreset selector", choices=Registry("fleet.coreset.selectors", "SELECTORS"))
    fraction: float = opt(1.0, "share of local data in the coreset", gt=0, le=1)
    reselect_every: int = opt(1, "re-select every N rounds of the device's own participation", ge=1)
    balanced: bool = opt(True, "class-balanced top-k (false: global top-k)")
    score_norm: str = opt("none", "normalise each score before mixing (none = the paper)",
                          choices=Registry("fleet.coreset.budget", "SCORE_NORMS"))
    schedule: str = opt("paper", "EVS/DS weight schedule", choices=Registry("fleet.coreset.schedules", "SCHEDULES"))
    redraw: bool = opt(False, "random: re-draw at each re-selection (false: drawn once)")


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = opt(1, "local epochs per round", ge=1)
    lr: float = opt(0.005, "local learning rate", gt=0)
    batch_size: int = opt(32, "local batch size", ge=1)
    optimizer: str = opt("adam", "local optimizer", choices=("sgd", "adam"))
    lr_schedule: str = opt("cosine", "learning-rate schedule of a training job", choices=LR_SCHEDULES)
    lr_scope: str = opt("run", "what one schedule covers: 'run' = all rounds (the server sends each round its "
                        "share of the run), 'round' = each round's local training", choices=LR_SCOPES)
    optimizer_state: str = opt("round", "optimizer state: 'round' = fresh each round (FedAvg), 'device' = "
                               "kept on the device between its rounds", choices=("round", "device"))
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = opt(0.0, "weight decay on conv/linear weights", ge=0)
    act_step_lr_scale: float = opt(1.0, "learning rate of activation step sizes as a share of train.lr "
                                   "(ACS's code: 0.1, which at small budgets leaves them at their initial value)", gt=0)
    bn_refresh: bool = opt(True, "after local training, re-estimate BatchNorm running statistics with the trained "
                           "model on (up to 2048 of) the samples it trained on (docs/quantization.md)")
    kd: bool = opt(True, "distil from the float reference when the model is quantized (soft CE, T = 1)")
    clc_beta: float | str = opt(0.0, "CLC weight beta (0 = off; 'auto' = beta*L_CLC equals clc-auto-ratio*L_KD)",
                        kind=(float, str))
    clc_auto_ratio: float = opt(0.5, "target L_CLC share of L_KD for clc-beta = 'auto'", gt=0)
    clc_layers: str = opt("all", "comma-separated block names to correct ('all' = every block)")
    clc_mapping: str = opt("flat-softmax", "feature map to distribution",
                           choices=Registry("fleet.train.losses", "CLC_MAPPINGS"))
    qgt_lambda: float = opt(0.0, "QGT grid-attraction weight (0 = off)", ge=0)
    qgt_form: str = opt("sqdist", "QGT penalty form", choices=Registry("fleet.train.qgt", "QGT_FORMS"))
    qgt_warmup: float = opt(0.1, "share of local steps over which lambda ramps up", ge=0, le=1)
    qgt_mode: str = opt("qat", "how QGT trains: 'qat' = its regulariser on top of fake-quant QAT (LSQ, STE); 'ptq' "
                        "= QGT's own mode: train in float with the regulariser, then round to nearest at "
                        "quant.weight-bits (docs/methods.md)", choices=Registry("fleet.train.qgt", "QGT_MODES"))
    ptq_step: str = opt("mse", "how round-to-nearest (train.qgt-mode = 'ptq') sets each step: 'mse' = the step "
                        "minimising the tensor's squared rounding error (weights; each activation on calibration "
                        "samples); 'lsq-init' = LSQ's initial 2 mean|x|/sqrt(Qp) (docs/methods.md)",
                        choices=Registry("fleet.quant.clipping", "PTQ_STEPS"))

    def __post_init__(self) -> None:
        b = self.clc_beta
        if isinstance(b, str) and b != "auto":
            raise ConfigError("train.clc-beta", f"must be a number >= 0 or 'auto', got {b!r}")
        if not isinstance(b, str) and b < 0:
            raise ConfigError("train.clc-beta", f"must be >= 0, got {b!r}")


@dataclass(frozen=True)
class DevicesConfig:
    profiles: tuple[tuple[str, float], ...] = opt((("rpi4", 1.0),), "profile mix (table name = weight)",
                                                  kind=tuple)
    custom: dict[str, Any] = opt({}, "user profiles: [devices.custom.<name>] tables", kind=dict)
    availability: str = opt("always", "who is online", choices=("always", "profile"))
    deadline_s: float = opt(0.0, "simulated seconds a device has per round (0 = no deadline)", ge=0)
    straggler_policy: str = opt("drop", "late devices are dropped or cut to the work that fits",
                                choices=Registry("fleet.hardware.clock", "DEADLINE_POLICIES"))
    over_selection: float = opt(1.0, "sample this many times devices-per-round, keep the first to finish",
                                ge=1)
    memory_policy: str = opt("fail", "over the memory budget: fail as OOM or shrink the batch",
                             choices=Registry("fleet.hardware.memory", "MEMORY_POLICIES"))


@dataclass(frozen=True)
class StrategyConfig:
    name: str = opt("fedavg", "built-in strategy or import path package.module:Class")
    path: str = opt("", "folder to import strategy.name's module from without installing it (put first on sys.path)")
    options: tuple[tuple[str, Any], ...] = opt((), "keyword arguments of the strategy", kind=tuple)
    weight_by: str = opt("local-data", "aggregation weight", choices=("local-data", "coreset"))
    bn_stats: str = opt("public", "BatchNorm running statistics of the global model: 'average' (FedAvg of the "
                        "devices'), or 'public' (re-estimated on the server's public split after each aggregation; "
                        "averaged when there is none)", choices=("average", "public"))
    guard: bool = opt(True, "screen each decoded update before aggregation (non-finite values, wrong shapes, a norm "
                      "over guard-norm-factor times the round median); needs individual updates")
    guard_norm_factor: float = opt(10.0, "reject updates whose norm exceeds this times the round median",
                                   gt=1)


@dataclass(frozen=True)
class RayConfig:
    num_cpus_per_device: float = opt(1.0, "CPUs per running device: Ray reserves them, the device trains "
                                     "with that many torch threads (whole CPUs, at least 1), and the local "
                                     "engine runs CPUs / threads workers", gt=0)
    num_gpus_per_device: float = opt(0.0, "GPUs Ray reserves per running device", ge=0)
    num_cpus: int = opt(0, "CPUs Ray may use (0 = all)", ge=0)
    address: str = opt("", "address of an existing Ray cluster to join (empty = start one)")


@dataclass(frozen=True)
class OutputConfig:
    name: str = opt("", "the scenario's name: run directories runs/<name>/<timestamp> and the summary's `scenario`; "
                        "under fleet run the scenario file's stem (unless --set), under flwr run this key (else "
                        "`flwr`): every built-in scenario sets it to its file name")
    dir: str = opt("", "run directory (default runs/<scenario>/<timestamp>)")
    keep_checkpoints: int = opt(2, "round checkpoints kept", ge=1)
    tensorboard: bool = opt(False, "also write TensorBoard events (round scalars, device histograms, the config) "
                            "under RUN_DIR/tensorboard; needs `pip install 'edgefleet[tensorboard]'`")
    onnx: bool = opt(True, "a quantized run also writes RUN_DIR/model.onnx (QDQ) and checks it and the integer-only "
                           "path against the fake-quantized model (docs/quantization.md)")


@dataclass(frozen=True)
class FaultsConfig:
    crash: float = opt(0.0, "per device-round probability of a crash mid-training", ge=0, le=1)
    hang: float = opt(0.0, "probability of hanging past the round timeout", ge=0, le=1)
    corrupt: float = opt(0.0, "probability of a corrupted update (NaN/Inf, wrong shape, huge norm)", ge=0, le=1)
    stale: float = opt(0.0, "probability of silently sending the received model", ge=0, le=1)
    corrupt_form: str = opt("any", "how a corrupted update is corrupted (any = one of the three at random)",
                            choices=Registry("fleet.hardware.faults", "CORRUPT_FORMS", prefix=("any",)))

    def __post_init__(self) -> None:
        total = self.crash + self.hang + self.corrupt + self.stale
        if total > 1.0 + 1e-9:
            raise ConfigError("faults", f"crash + hang + corrupt + stale must be <= 1, got {total:g}")


@dataclass(frozen=True)
class StreamConfig:
    enabled: bool = opt(False, "after the federated phase, stream drifting data to every device (QCore)")
    tasks: int = opt(10, "stream batches (tasks) per device", ge=1)
    drift: str = opt("covariate", "kind of drift", choices=Registry("fleet.qcore.stream", "DRIFTS"))
    core_size: int = opt(20, "QCore size", ge=1)
    bits: int = opt(4, "bit-width of the deployed model during calibration",
                    choices=Registry("fleet.qcore.quant", "SUPPORTED_BITS"))
    calibration: str = opt("bfn", "on-device calibration", choices=Registry("fleet.qcore.calibrate", "CALIBRATIONS"))
    devices: int = opt(0, "devices that run the stream (0 = all)", ge=0)
    calibration_epochs: int = opt(10, "back-propagation epochs per stream batch (baselines, and what BFNs imitate)",
                                  ge=0)
    record_epochs: int = opt(10, "epochs of float training on the public split that record quantization misses",
                             ge=1)
    code_lr: float = opt(0.01, "back-propagation learning rate of the integer codes (their optimiser's, see "
                               "code-optimizer), in quantization steps",
                         gt=0)
    calibration_batch: int = opt(128, "back-propagation batch size on the core", ge=1)
    code_optimizer: str = opt("adam", "optimiser of the codes ('adam': every code moves about code-lr per step "
                                      "whatever its gradient; 'sgd': momentum 0.9, in proportion to it)",
                              choices=Registry("fleet.qcore.calibrate", "CODE_OPTIMIZERS"))
    codes_only: bool = opt(False, "back-propagation trains the codes alone (biases and norms stay as deployed), "
                                  "so every gain is one a BFN could make")


@dataclass(frozen=True)
class PrivacyConfig:
    audit: bool = opt(True, "check every message a device sends: only model or codec arrays no larger than the model, "
                      "declared report keys (docs/privacy.md); a violation fails the run naming device and key")
    dp: bool = opt(False, "differential privacy: each device clips its float model update to clip-norm and adds "
                   "Gaussian noise before encoding it; an accountant reports epsilon every round")
    clip_norm: float = opt(1.0, "L2 norm C a device's update (weights and biases) is clipped to (adaptive: "
                           "the first round's)", gt=0)
    clipping: str = opt("fixed", "fixed C, or adaptive: C follows the target-quantile of the devices' update norms, "
                        "learnt from their noised clipped/unclipped bits (Andrew et al. 2021, as Flower's "
                        "adaptive-clipping wrappers)", choices=("fixed", "adaptive"))
    target_quantile: float = opt(0.5, "adaptive clipping: the share of devices whose update should be unclipped",
                                 gt=0, lt=1)
    clip_lr: float = opt(0.2, "adaptive clipping: the geometric learning rate of C", gt=0)
    clipped_count_stddev: float = opt(0.0, "adaptive clipping: noise std of the round's count of unclipped updates "
                                      "(0 = devices-per-round / 20, Flower's default)", ge=0)
    noise_multiplier: float = opt(1.0, "sigma: the released aggregate's noise std is sigma * clip-norm", ge=0)
    noise: str = opt("distributed", "where the noise comes from: 'distributed' = each device adds std sigma*C/"
                     "sqrt(devices-per-round), so the sum carries sigma*C (pair it with secure-aggregation); "
                     "'local' = each device adds sigma*C, every update private by itself",
                     choices=("distributed", "local"))
    delta: float = opt(1e-5, "delta of the reported (epsilon, delta) guarantee", gt=0, lt=1)
    max_epsilon: float = opt(0.0, "privacy budget: the run stops cleanly before a round would take epsilon past it "
                             "(0 = no budget)", ge=0)
    secure_aggregation: bool = opt(False, "SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod): the server only "
                                   "ever sees the sum of the round's updates, summed exactly as integers")
    secagg_shares: float = opt(1.0, "SecAgg+ key shares per device, as a share of the round's devices", gt=0, le=1)
    secagg_threshold: float = opt(0.5, "SecAgg+ shares needed to reconstruct a dropped device's mask, as a share "
                                  "of the key shares", gt=0, le=1)
    membership_inference: bool = opt(True, "attack the final model: loss threshold and offline LiRA (members: the "
                                     "devices' training data; non-members: the test split); in summary.json and the "
                                     "report")
    shadow_models: int = opt(4, "LiRA shadow models, trained on the server's public split (0 = the loss attack only)",
                             ge=0)
    label_inference: bool = opt(False, "an honest-but-curious server infers each device's labels from what it sees "
                                "of the update (one device's, or only the sum under secure-aggregation); AUC per round")


SECTIONS: dict[str, type] = {
    "federation": FederationConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "quant": QuantConfig,
    "coreset": CoresetConfig,
    "train": TrainConfig,
    "devices": DevicesConfig,
    "strategy": StrategyConfig,
    "ray": RayConfig,
    "output": OutputConfig,
    "faults": FaultsConfig,
    "stream": StreamConfig,
    "privacy": PrivacyConfig,
}

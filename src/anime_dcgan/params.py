"""Typed, validated pipeline parameters read from ``params.yaml``.

Every stage loads the whole file through :func:`load_params`, so a typo anywhere (an unknown key, a
wrong type, a value out of range) stops the stage before it does any work, with a message that names
the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from anime_dcgan.errors import PipelineError

PARAMS_FILE = "params.yaml"


class ParamsError(PipelineError, ValueError):
    """params.yaml does not describe a valid run; the message lists every problem."""


class _Strict(BaseModel):
    # Unknown keys are errors (a typo must never be silently ignored); numbers written as strings
    # ("2e-4", which PyYAML reads as a str) are accepted because pydantic's lax mode parses them.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode would read `lr: true` as 1.0; a boolean is never a meaningful number here
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError("must be a power of two (16, 32, 64, 128 or 256)")
    return value


class DataParams(_Strict):
    """Where images come from and how they become the cached uint8 tensor file."""

    source: str = Field("synthetic", min_length=1)
    synthetic_count: Int = Field(20_000, ge=1, le=10_000_000)
    max_images: Int | None = Field(None, ge=1)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    image_size: Int = Field(64, ge=16, le=256)
    min_size: Int = Field(32, ge=1)
    image_column: str | None = None
    workers: Int = Field(0, ge=0, le=256)
    max_file_mb: Int = Field(64, ge=1)             # an archive member larger than this is refused
    max_compression_ratio: Int = Field(500, ge=1)  # and one that inflates more than this

    _check_size = field_validator("image_size")(_power_of_two)


# the article's architecture was called `seed` until it collided with the `seed` parameter
_RENAMED_ARCH = {"seed": "article"}
_REMOVED_KEYS = {
    "lr_d": "lr is now the learning rate of both networks and lr_g_scale the generator's multiple of it "
            "(the generator learns at lr x lr_g_scale); remove lr_d",
}


def _renamed_arch(value: Any) -> Any:
    if value in _RENAMED_ARCH:
        print(f"params.yaml: arch: {value!r} is the old name of {_RENAMED_ARCH[value]!r}; write "
              f"arch: {_RENAMED_ARCH[value]}", file=sys.stderr)
        return _RENAMED_ARCH[value]
    return value


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class ModelParams(_Strict):
    """The networks (training/networks.py)."""

    arch: Annotated[Literal["article", "dcgan"], BeforeValidator(_renamed_arch)] = "article"
    nz: Int = Field(100, ge=1, le=4096)
    ngf: Int = Field(64, ge=1, le=1024)
    ndf: Int = Field(64, ge=1, le=1024)
    d_norm: Literal["batch", "spectral"] = "batch"  # the discriminator's normalisation


class OptimParams(_Strict):
    """The GAN optimisation (training/step.py)."""

    batch_size: Int = Field(64, ge=2, le=65_536)
    lr: Float = Field(0.00015, gt=0, le=1)
    lr_g_scale: Float = Field(2.0, gt=0, le=100)
    beta1: Float = Field(0.5, ge=0, lt=1)
    beta2: Float = Field(0.999, ge=0, lt=1)
    label_noise: Float = Field(0.2, ge=0, lt=0.5)
    ema_decay: Float = Field(0.999, ge=0, lt=1)
    # what D sees (training/augment.py): DiffAugment of real and fake images with probability augment_p
    augment: Literal["none", "diffaugment"] = "none"
    augment_p: Float = Field(1.0, ge=0, le=1)
    mirror: bool = False  # horizontal flips of half the real images

    _check_finite = field_validator("lr", "lr_g_scale", "beta1", "beta2", "label_noise", "ema_decay",
                                    "augment_p")(_finite)

    @property
    def lr_d(self) -> float:
        return self.lr

    @property
    def lr_g(self) -> float:
        return self.lr * self.lr_g_scale


MIN_FID_SAMPLES = 4


class LoopParams(_Strict):
    """The loop around the step (training/loop.py)."""

    steps: Int = Field(200, ge=1)
    log_every: Int = Field(10, ge=1)
    sample_every: Int = Field(25, ge=1)
    checkpoint_every: Int = Field(100, ge=1)
    # FID during training (training/fid_monitor.py): every eval_every steps (0 = never), of eval_samples images
    eval_every: Int = Field(50, ge=0)
    eval_samples: Int = Field(250, ge=MIN_FID_SAMPLES)


def _devices(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ValueError("must be auto or a whole number of devices from 1 to 1024")
    return value


class RuntimeParams(_Strict):
    """Where and how the networks run (device.py)."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # processes of one training (training/distributed.py): 1, N, or auto = every visible GPU
    devices: Annotated[int | str, BeforeValidator(_devices)] = 1
    # with several CUDA processes: BatchNorm statistics over the global batch instead of each rank's share
    sync_batchnorm: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal["auto"] | bool = "auto"


class EvaluationParams(_Strict):
    """The generate and evaluate stages."""

    sample_source: Literal["ema", "raw", "best"] = "ema"
    n_samples: Int = Field(2000, ge=1)
    fid_samples: Int = Field(1000)
    fid_50k_full: bool = False  # also the field's protocol: 50,000 generated images against every real one

    @field_validator("fid_samples")
    @classmethod
    def _within_samples(cls, value: int, info: ValidationInfo) -> int:
        if value < MIN_FID_SAMPLES:
            raise ValueError(f"must be at least {MIN_FID_SAMPLES}: precision and recall (k = 3 nearest "
                             "neighbours) need more than 3 images on each side")
        n_samples = info.data.get("n_samples")
        if n_samples is not None and value > n_samples:
            raise ValueError(f"must not exceed n_samples ({n_samples}): the evaluate stage scores "
                             "the first fid_samples of the generated samples")
        return value


_SECTIONS = (ModelParams, OptimParams, LoopParams, RuntimeParams, EvaluationParams)
_Section = TypeVar("_Section", bound=_Strict)


class Params(*reversed(_SECTIONS)):
    """The whole of params.yaml: `seed`, `data:` and the sections' keys, which stay top-level so that
    `dvc exp run -S lr=...` works. Each section is the typed config of one component."""

    seed: Int = Field(0, ge=0, le=2**31 - 1)
    data: DataParams = DataParams()

    def section(self, cls: type[_Section]) -> _Section:
        return cls(**{key: getattr(self, key) for key in cls.model_fields})

    # each section as its own typed config (a copy holding that section's keys only)
    model = property(lambda self: self.section(ModelParams))
    optim = property(lambda self: self.section(OptimParams))
    loop = property(lambda self: self.section(LoopParams))
    runtime = property(lambda self: self.section(RuntimeParams))
    evaluation = property(lambda self: self.section(EvaluationParams))

    @model_validator(mode="after")
    def _best_needs_scores(self) -> Params:
        if self.sample_source == "best" and self.eval_every == 0:
            raise ValueError("sample_source: best needs FID during training, which eval_every: 0 turns off; "
                             "set eval_every (e.g. 250) or sample_source: ema")
        return self

    def training_identity(self) -> dict[str, Any]:
        """The parameters that determine a training run (its identity for resuming); without `steps`
        they name its lineage, the runs that extend one another."""
        return {"seed": self.seed, **self.model.model_dump(), **self.optim.model_dump(),
                **self.loop.model_dump(), **self.runtime.model_dump()}


def _known_keys(loc: tuple) -> list[str]:
    """The valid keys beside the one at `loc` (top level, or inside `data:`)."""
    model = DataParams if loc[:1] == ("data",) and len(loc) > 1 else Params
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if not key:  # a rule across keys: its message names them
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        if error["loc"] and error["loc"][-1] in _REMOVED_KEYS:
            return f"{key}: no longer a parameter: {_REMOVED_KEYS[error['loc'][-1]]}"
        close = difflib.get_close_matches(str(error["loc"][-1]), _known_keys(error["loc"]), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see the parameter table in README.md"
        return f"{key}: unknown key (value {error['input']!r}); {hint}"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and error["type"] != "missing":
        return f"{key}: {message} (got {error['input']!r})"
    return f"{key}: {message}"


def parse_params(raw: Any, origin: str = PARAMS_FILE) -> Params:
    """Validate an already-parsed mapping; raises ParamsError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of keys to values, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(error)}" for error in exc.errors())
        raise ParamsError(f"{origin} is invalid:\n{problems}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stages from the repository root") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, origin=str(path))

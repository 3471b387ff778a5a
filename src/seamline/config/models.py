"""Config models shared by every flow: retry, error policy, step and sink bases."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from seamline.config.types import Duration
from seamline.resilience.retry import RetryPolicy

__all__ = [
    "ComponentConfig",
    "FlowSettings",
    "OnErrorConfig",
    "RetryConfig",
    "SinkConfig",
    "SourceConfig",
    "StepConfig",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)


class RetryConfig(Strict):
    """How often and how patiently to retry a failed delivery."""

    max_attempts: int = Field(5, ge=1, le=1000, description="Attempts in all, the first included.")
    initial: Duration = Field(0.5, description="Upper bound of the first backoff (e.g. 500ms).")
    multiplier: float = Field(2.0, ge=1.0, description="Growth of the backoff bound per retry.")
    max: Duration = Field(300.0, description="Cap of a single backoff (e.g. 5m).")
    max_elapsed: Duration | None = Field(None, description="Give up after this long since the first attempt.")
    jitter: bool = Field(True, description="Full jitter: wait a random time up to the bound.")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial=self.initial,
            multiplier=self.multiplier,
            cap=self.max,
            max_elapsed=self.max_elapsed,
            jitter=self.jitter,
        )


class OnErrorConfig(Strict):
    """What happens when a message fails."""

    retry: RetryConfig = Field(default_factory=RetryConfig, description="Default retry policy of the flow.")
    dlq: Literal["store"] = Field("store", description="Where dead letters go: the state store.")


class FlowSettings(Strict):
    """Runtime knobs of one flow."""

    batch_size: int = Field(500, ge=1, le=100_000, description="Messages handled together.")
    concurrency: int = Field(2, ge=1, le=256, description="Batches in work at once.")
    queue: int = Field(4, ge=1, le=1024, description="Batches buffered between source and workers.")
    journal: Literal["hops", "edges", "off"] = Field(
        "hops", description="hops: a record per step; edges: source and sinks only; off: none."
    )
    drain_timeout: Duration = Field(30.0, description="On shutdown, how long in-flight work may finish.")

    @field_validator("journal", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        # YAML 1.1 reads a bare `off` as false
        return "off" if v is False else v


class ComponentConfig(Strict):
    """Base of every component config."""


class SourceConfig(ComponentConfig):
    """Base of source configs."""


class StepConfig(ComponentConfig):
    """Base of step configs: every step may carry a label."""

    label: str | None = Field(None, description="Name of this step in errors, the journal and tests.")


class SinkConfig(ComponentConfig):
    """Base of sink configs: a label and an optional retry policy of its own."""

    label: str | None = Field(None, description="Name of this sink (route targets, journal, errors).")
    retry: RetryConfig | None = Field(None, description="Retry policy of this sink (default: the flow's).")

"""Being written: a placeholder so the entry point resolves meanwhile."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")


class LlmTask:
    name: ClassVar[str] = "placeholder"
    Params: ClassVar[type[BaseModel]] = _Params

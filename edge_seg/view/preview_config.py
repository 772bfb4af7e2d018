"""The ``preview`` section of the device config (``edge-seg run --preview``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PreviewConfig(_Section):
    """The live preview over HTTP (``edge-seg run --preview``); bounded so slow or hostile clients cannot
    exhaust it, and behind a bearer token when reachable from other machines."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", description="off loopback: needs token/token_file or allow_open")
    port: int = Field(default=8080, ge=0, le=65535)
    max_fps: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    max_clients: int = Field(default=8, ge=1, le=1024, description="connections served at once (a stream is "
                                                                    "one); more get 503 with Retry-After")
    request_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False,
                                     description="the request line and headers must arrive within this")
    write_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False,
                                   description="a client that takes longer to accept one write is dropped")
    token: str | None = Field(default=None, description="bearer token every route but /healthz requires "
                                                        "(the page and stream also take ?token=)")
    token_file: Path | None = Field(default=None, description="file holding the token (read at start)")
    allow_open: bool = Field(default=False, description="serve off loopback without a token (anyone who "
                                                        "reaches the port sees the camera)")

    @field_validator("token")
    @classmethod
    def _usable_token(cls, token: str | None) -> str | None:
        from edge_seg.view.access import token_problem

        problem = None if token is None else token_problem(token)
        if problem is not None:
            raise ValueError(problem)
        return token

    @model_validator(mode="after")
    def _guarded_off_loopback(self) -> PreviewConfig:
        from edge_seg.view.access import is_address, is_loopback

        if self.token is not None and self.token_file is not None:
            raise ValueError("set preview.token or preview.token_file, not both")
        guarded = is_loopback(self.host) or self.token or self.token_file or self.allow_open
        if self.enabled and not guarded and is_address(self.host):  # a name is checked at start, after its bind
            raise ValueError(f"host {self.host or '(all addresses)'} is reachable from other machines: set "
                             "preview.token (or preview.token_file), or preview.allow_open: true to serve "
                             "anyone who reaches the port")
        return self


__all__ = ["PreviewConfig"]

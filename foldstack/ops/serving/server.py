"""Running the service with uvicorn."""

from __future__ import annotations

import ipaddress
import logging

from foldstack.ops.serving.app import create_app
from foldstack.ops.serving.schemas import ServingLimits
from foldstack.ops.serving.state import ModelSource

log = logging.getLogger("foldstack.ops.serving")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(source: ModelSource, *, host: str = "127.0.0.1", port: int = 8000, limits: ServingLimits | None = None,
          reload_seconds: float | None = 10.0, device: str = "cpu", log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted (one worker: the model is loaded once).

    With params (`source.cfg`), its `monitoring` section decides the prediction log (relative to the params
    file); a bundle directory served without params logs nothing.
    """
    import uvicorn

    if not is_loopback(host):
        log.warning("serving on %s: the service has no authentication; put it behind a proxy that has", host)
    cfg = source.cfg
    app = create_app(source, limits=limits, reload_seconds=reload_seconds, device=device,
                     monitoring=cfg.monitoring if cfg is not None else None,
                     monitoring_root=cfg.resolve_path(".") if cfg is not None else None)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)

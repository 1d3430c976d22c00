"""``edgereason serve``: an OpenAI-compatible HTTP server over one Engine.

The server only translates HTTP to engine calls: ``create_app(engine, settings)`` builds the app,
``serve(settings)`` loads the model behind it and runs uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ServerSettings

if TYPE_CHECKING:
    from .app import create_app, serve

__all__ = ["ServerSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # The app needs the server extra (FastAPI, uvicorn); the settings and the CLI's flags do not.
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

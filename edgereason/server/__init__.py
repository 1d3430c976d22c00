"""``edgereason serve``: an OpenAI-compatible HTTP server over one Engine.

The server only translates HTTP to engine calls: ``create_app(engine, settings)`` builds the app,
``serve(settings)`` loads the model behind it and runs uvicorn.
"""

from __future__ import annotations

from .app import create_app, serve
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]

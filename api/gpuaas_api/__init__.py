"""hosted·ai GPUaaS infrastructure API (see app.py for the application factory).

``create_app`` is imported on first use, so that importing the package (the CLI, the gunicorn
master) does not load Flask, SQLAlchemy and the whole application.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The HTTP door: an OpenAI-compatible API over the assistant, ingest uploads and recorded interactions.

``create_app`` builds the FastAPI app for a project home; ``run_server`` serves it (``ragloop serve``,
``python -m ragloop.serve``). The door holds no logic of its own: it translates HTTP into calls on the
stages and applies API keys.
"""

from ragloop.serve.app import create_app, run_server

__all__ = ["create_app", "run_server"]

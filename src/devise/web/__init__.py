"""A small web front end for image search (optional extra ``serve``: FastAPI and uvicorn).

``devise.web`` imports without the extra; :func:`create_app` raises an install
hint when FastAPI is missing.
"""

from devise.web.app import BackgroundServer, create_app

__all__ = ["BackgroundServer", "create_app"]

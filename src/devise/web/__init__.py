"""A small web front end for image search (optional extra ``serve``: FastAPI and uvicorn).

``devise.web`` imports without the extra; :func:`create_app` raises an install
hint when FastAPI is missing. Modules: ``app`` (routes), ``files`` (opening an
indexed file, checked), ``thumbnails`` (bounded thumbnail making and its disk
cache), ``server`` (uvicorn in a thread), and the page in ``static/``.
"""

from devise.web.app import LOOPBACK_HOSTS, create_app
from devise.web.server import BackgroundServer

__all__ = ["LOOPBACK_HOSTS", "BackgroundServer", "create_app"]

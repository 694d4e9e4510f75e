"""The image index, in one import: scanning, the file, exact search, updates.

Each concept has its own module; this one gathers their public names, so
``from devise.search.index import ImageIndex, update_index`` keeps working:

* :mod:`devise.search.scan` -- finding a folder's image files;
* :mod:`devise.search.index_file` -- the file format and its checked reader;
* :mod:`devise.search.exact` -- exact top-k search over an index or an array;
* :mod:`devise.search.update` -- creating and incrementally updating an index.
"""

from devise.search.exact import exact_search
from devise.search.index_file import (
    FORMAT,
    FORMAT_VERSION,
    ImageIndex,
    IndexDamagedError,
    IndexMismatchError,
    IndexWriteError,
    create_index_file,
    new_index_file,
)
from devise.search.scan import IMAGE_EXTENSIONS, ImageFile, scan_images
from devise.search.update import UpdateReport, update_index

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "ImageFile",
    "ImageIndex",
    "IndexDamagedError",
    "IndexMismatchError",
    "IndexWriteError",
    "UpdateReport",
    "create_index_file",
    "exact_search",
    "new_index_file",
    "scan_images",
    "update_index",
]

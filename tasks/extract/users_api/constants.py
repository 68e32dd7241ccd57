"""DummyJSON contract constants (kept apart from the logic)."""

from models.sources import DEFAULT_NAME

SOURCE = DEFAULT_NAME  # the default users API's name, in its rows' `source` and its checkpoint's key
CHECKPOINT_KEY = f"users:{SOURCE}"
SERVER_DEFAULT_LIMIT = 30  # what the service returns when `limit` is absent
MAX_429_WAITS = 8  # consecutive 429 answers honoured before giving up on a page
DEFAULT_RETRY_AFTER_SECONDS = 10.0  # when a 429 carries no usable Retry-After
# extract's position is stored at most this often (not after every page of a fast source), so a
# killed run fetches again the pages in flight and at most this long's worth before them
CHECKPOINT_EVERY_SECONDS = 0.05
RETRY_MAX_SECONDS = 60.0  # the longest backoff before another try of a page a transient error failed (jitter aside)

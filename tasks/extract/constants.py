"""DummyJSON contract constants (kept apart from the logic)."""

SOURCE = "dummyjson"
CHECKPOINT_KEY = "users:dummyjson"
SERVER_DEFAULT_LIMIT = 30  # what the service returns when `limit` is absent
MAX_429_WAITS = 8  # consecutive 429 answers honoured before giving up on a page
DEFAULT_RETRY_AFTER_SECONDS = 10.0  # when a 429 carries no usable Retry-After

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Import the URLconf, and with it every view, DRF, the API schema and the PDF library, when the worker starts
# rather than on its first request (which otherwise took ~0.7 s longer than the next ones).
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns  # noqa: B018 - evaluated for its imports

# Python's cyclic garbage collector, tuned for requests that build ~100,000 short-lived objects (a batch of 1,000
# events): with the defaults, full collections re-scanned the whole loaded app twice per ~20 batches, ~12 ms of
# CPU per batch on average. The objects loaded so far live as long as the worker, so they are frozen out of
# every collection, and the youngest generation is collected every 10,000 allocations instead of 700: ~2.7 ms
# of collection per batch (decision 027 has the measurement). Reference counting still frees everything that
# is not in a cycle at once; cyclic garbage waits at most a few more allocations.
import gc  # noqa: E402

gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10)

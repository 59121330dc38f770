from .fixtures import fast_stripe_retries, stripe_double  # noqa: F401

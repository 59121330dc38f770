"""Settings, read only from the environment (django-environ; a ``.env`` file is read when present)."""

from pathlib import Path
from urllib.parse import unquote

import environ
from csp import constants as csp_constants

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# Refusals below name the way out for a developer whose clone has no .env yet (docs/decisions/010).
_DEV_HINT = " For development, run `make run` once: it writes a .env with DEBUG=1 and a generated SECRET_KEY."
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError(f"SECRET_KEY must be set when DEBUG is off.{_DEV_HINT}")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_TZ = True
LANGUAGE_CODE = "en-us"
USE_I18N = False

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tenants",
    "notifications",
    "usage",
    "billing",
    "spend",
    "payments",
    "api",
    "portal",
    "axes",
    "observability",
]

MIDDLEWARE = [
    # First: the request id, the access-log line and the HTTP metrics see every request and its final status.
    "observability.middleware.RequestObservabilityMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.path_guard.RefuseNulInPath",  # a path with NUL names nothing: 404 before any query
    # Serves /static/ from STATIC_ROOT in every process that serves the app (DESIGN §16): no separate web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns locked-out logins into a lockout response.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # login throttling: refuses while an address/user is locked out
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:dashboard"
LOGOUT_REDIRECT_URL = "portal:login"
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Meterline <billing@meterline.example>")
if env("EMAIL_URL", default=""):
    globals().update(env.email_url("EMAIL_URL"))

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],  # each app ships its own templates/ (package data of the wheel)
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: DATABASE_URL names the server (production, CI, a developer's own). Without it, and only with
# DEBUG on, an embedded PostgreSQL is started or attached to in .devdata/pg (DESIGN §1). This has to live
# here, not in a conftest: pytest-django reads DATABASES before any conftest is imported.
DATABASE_URL = env("DATABASE_URL", default="")
if not DATABASE_URL:
    if not DEBUG:
        raise RuntimeError(f"DATABASE_URL must be set when DEBUG is off.{_DEV_HINT}")
    from config import devservices

    DATABASE_URL = devservices.start_postgres(BASE_DIR / ".devdata" / "pg")
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
# A Unix-socket directory travels percent-encoded in the host part of the URL; libpq wants it decoded.
DATABASES["default"]["HOST"] = unquote(DATABASES["default"]["HOST"])
# Persistent connections pay off in production (one per gunicorn worker thread). In development runserver
# starts a thread per request, and each kept its own connection for a minute: dozens of idle ones.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=0 if DEBUG else 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

STATIC_URL = "static/"
STATICFILES_DIRS = []
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
# With DEBUG off, pages link hashed, compressed copies that ``collectstatic`` writes (the image and .ci/run
# build them) and WhiteNoise serves them with far-future caching. With DEBUG on (``make run``, the tests)
# the files are served from the apps as they are, so nothing has to be collected first.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# The ingestion API reads request bodies itself, bounded by this limit (DESIGN §4: body ≤ 1 MiB).
INGEST_MAX_BODY_BYTES = 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BODY_BYTES

# HMAC key for API-key hashes. Separate from SECRET_KEY so that rotating one does not revoke every key.
API_KEY_HMAC_SECRET = env("API_KEY_HMAC_SECRET", default=SECRET_KEY)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.authentication.APIKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env("API_THROTTLE_RATE", default="6000/min")},
    "EXCEPTION_HANDLER": "api.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Meterline API",
    "DESCRIPTION": "Usage ingestion and read API for voice-AI agents. Authenticate with `Authorization: Bearer <key>`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # 3.1: full JSON Schema, so the schema can refuse what the API refuses (e.g. metadata key patterns).
    "OAS_VERSION": "3.1.0",
    # Request examples with current timestamps and new ids, so that each is accepted as shown.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.examples.add_examples"],
    # Swagger UI's assets come from the drf-spectacular-sidecar package, never from a CDN at run time.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: Redis in production and CI; the dev launcher hands in an embedded broker. Tests without a broker
# use the in-memory transport.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="memory://")
CELERY_BROKER_TRANSPORT_OPTIONS = env.json("CELERY_BROKER_TRANSPORT_OPTIONS", default={})
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "refresh-draft-invoices": {"task": "billing.tasks.refresh_drafts", "schedule": 15 * 60},
    "finalize-due-invoices": {"task": "billing.tasks.finalize_due_invoices", "schedule": 60 * 60},
    # budgets, balance alerts and auto-recharge; ingest, authorizations and credits queue a tenant's check within
    # seconds, so this only catches what changes with time alone (spend.tasks)
    "check-spend": {"task": "spend.tasks.check_spend", "schedule": 5 * 60},
    "reconcile-stripe": {"task": "payments.tasks.reconcile_stripe", "schedule": 15 * 60},
    "reconcile-topups": {"task": "payments.tasks.reconcile_topups", "schedule": 5 * 60},
    "reconcile-credit-notes": {"task": "payments.tasks.reconcile_credit_notes", "schedule": 15 * 60},
    "dispatch-pending-events": {"task": "notifications.tasks.dispatch_pending_events", "schedule": 60},
    "sweep-webhook-deliveries": {"task": "notifications.tasks.sweep_webhook_deliveries", "schedule": 60},
    # Daily, not hourly: the check re-reads every raw event a tenant ever sent.
    "verify-rollups": {"task": "usage.tasks.verify_all_rollups", "schedule": 24 * 60 * 60},
    "create-event-partitions": {"task": "usage.tasks.create_event_partitions", "schedule": 24 * 60 * 60},
    "archive-old-events": {"task": "usage.tasks.archive_old_events", "schedule": 24 * 60 * 60},
    # what tiered quantities were charged is kept only while their events can be corrected (decision 021)
    "prune-tiered-charges": {"task": "billing.tasks.prune_tiered_charges", "schedule": 24 * 60 * 60},
}

# Raw events (decision 023): monthly partitions created this many months ahead; months older than the current one
# and the EVENT_RETENTION_MONTHS before it are exported to gzip'd CSV files in EVENT_ARCHIVE_DIR and dropped from
# PostgreSQL (rollups, sessions, invoices and event ids stay). At least 2: events can be corrected for 35 days.
EVENT_PARTITIONS_AHEAD = env.int("EVENT_PARTITIONS_AHEAD", default=3)
EVENT_RETENTION_MONTHS = env.int("EVENT_RETENTION_MONTHS", default=13)
EVENT_ARCHIVE_DIR = env("EVENT_ARCHIVE_DIR", default=str(BASE_DIR / ".devdata" / "event-archive"))

STRIPE_API_KEY = env("STRIPE_API_KEY", default="")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env("STRIPE_API_BASE", default="")
# Prefix of our Stripe idempotency keys and metadata: distinct per deployment sharing one Stripe account.
STRIPE_NAMESPACE = env("STRIPE_NAMESPACE", default="meterline")
STRIPE_TIMEOUT_SECONDS = env.float("STRIPE_TIMEOUT_SECONDS", default=30)
# Stripe Tax computes invoices' tax instead of the staff-defined rates (decision 019, docs/stripe.md): each
# finalization asks Stripe Tax Calculations, and the Stripe invoice is created with automatic tax. Every line is
# sold under one tax code; the default is Stripe's "Software as a service (SaaS) - business use".
STRIPE_TAX_ENABLED = env.bool("STRIPE_TAX_ENABLED", default=False)
STRIPE_TAX_CODE = env("STRIPE_TAX_CODE", default="txcd_10103001")
# A spend check queued by ingest or an authorization runs this long after it, and at most one per tenant is queued
# in that window (spend.tasks); 0 checks after every batch (tests).
SPEND_CHECK_DELAY_SECONDS = env.float("SPEND_CHECK_DELAY_SECONDS", default=2.0)
# The seller, as invoices must name it (issue 16, decision 019); SELLER_COUNTRY (ISO 3166-1 alpha-2) also decides
# EU reverse charge (billing.taxes).
SELLER_NAME = env("SELLER_NAME", default="Meterline")
SELLER_ADDRESS = env("SELLER_ADDRESS", default="")
SELLER_COUNTRY = env("SELLER_COUNTRY", default="")
SELLER_TAX_ID = env("SELLER_TAX_ID", default="")
# Prepaid top-ups (decision 018): the smallest and largest amount a manager can buy, in the tenant's currency.
TOPUP_MIN_AMOUNT = env.str("TOPUP_MIN_AMOUNT", default="5")
TOPUP_MAX_AMOUNT = env.str("TOPUP_MAX_AMOUNT", default="100000")

# Requests to tenants' URLs (notifications.outbound, docs/decisions/008-outbound-requests.md): public addresses on
# ports 80/443 only. Local development may allow loopback and private networks (any port); never production.
OUTBOUND_ALLOW_PRIVATE_NETWORKS = env.bool("OUTBOUND_ALLOW_PRIVATE_NETWORKS", default=False)
OUTBOUND_ALLOWED_PORTS = env.list("OUTBOUND_ALLOWED_PORTS", cast=int, default=[80, 443])
# The CA certificates tenants' https endpoints are checked against; empty: certifi's bundle.
OUTBOUND_CA_BUNDLE = env("OUTBOUND_CA_BUNDLE", default="")
# Tenant webhooks (docs/webhooks.md): https only unless this development setting allows http; at most this
# many deliveries in flight per endpoint, so one slow receiver cannot hold every worker.
WEBHOOKS_ALLOW_HTTP = env.bool("WEBHOOKS_ALLOW_HTTP", default=False)
WEBHOOKS_MAX_CONCURRENT_PER_ENDPOINT = env.int("WEBHOOKS_MAX_CONCURRENT_PER_ENDPOINT", default=4)

# Production hardening (``manage.py check --deploy`` is clean with DEBUG off). TLS ends at the load balancer,
# which sets X-Forwarded-Proto; SECURE_SSL_REDIRECT is for deployments where Django itself must redirect.
if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz\Z"]  # load-balancer probes speak plain HTTP
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Headers and proxies (DESIGN §16, docs/decisions/006-headers-and-proxies.md). A Content-Security-Policy on
# every response (django-csp): scripts and styles only from our own static files (a per-response nonce for
# the few <style> blocks of third-party templates), nothing framed, forms posted only to us.
INSTALLED_APPS += ["csp"]
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware"
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "config.private_pages.PrivatePagesMiddleware",  # Cache-Control: private, no-store for logged-in people
)
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", csp_constants.NONCE],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Swagger UI's initialisation script as a file of its own (SpectacularSwaggerSplitView), and no validator
# badge: that would load an image from validator.swagger.io and tell it our schema's address.
SPECTACULAR_SETTINGS["SWAGGER_UI_SETTINGS"] = {"deepLinking": True, "validatorUrl": None}
# How many proxies (load balancer, nginx) in front of the app append to X-Forwarded-For. 0 (the default):
# the header is ignored and the login lockout and API throttle key on the connecting address.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
AXES_CLIENT_IP_CALLABLE = "tenants.authentication.client_address"
# Observability (docs/decisions/009-observability.md): Prometheus metrics and structured logs.
# GET /metrics exists only with a token; the Celery worker serves its pool's metrics on a port of its own.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_WORKER_PORT = env.int("METRICS_WORKER_PORT", default=0)
METRICS_WORKER_ADDRESS = env("METRICS_WORKER_ADDRESS", default="127.0.0.1")
if not DEBUG:
    SECURE_REDIRECT_EXEMPT = [*SECURE_REDIRECT_EXEMPT, r"^metrics$"]  # scraped on the internal network
# JSON lines in production; readable lines in development unless LOG_FORMAT=json. One access-log line per
# request comes from the middleware, so django.request keeps only 5xx and runserver's own line is dropped.
LOG_FORMAT = env("LOG_FORMAT", default="plain" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "observability.logs.Context"},
        "server_errors_only": {"()": "observability.logs.ServerErrorsOnly"},
    },
    "formatters": {
        "json": {"()": "observability.logs.Json"},
        "plain": {"()": "observability.logs.Plain"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
        "discard": {"class": "logging.NullHandler"},  # without any handler, logging's last resort prints it
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "stripe": {"level": "WARNING"},  # the SDK logs every request at INFO
        "axes": {"level": "WARNING"},  # three INFO lines of bookkeeping per failed login
        # Django's default config gives "django" a console handler of its own (in DEBUG): lines twice.
        "django": {"handlers": [], "level": "INFO"},
        "django.request": {"filters": ["server_errors_only"]},
        "django.server": {"handlers": ["discard"], "propagate": False},
    },
}
AXES_VERBOSE = False  # axes printed its banner once per process (five per `make run`)

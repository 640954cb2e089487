"""Herder settings: the only module that reads the environment.

Every setting has a default that works on one machine (SQLite, the in-memory
channel layer, the local Docker engine). Secrets may also be given as files:
`NAME_FILE=/run/secrets/name` (django-environ's FileAwareEnv).
"""

import ipaddress
import os
import re
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from herder.secretfiles import create_once, private_dir, private_file, read_secret

env = environ.FileAwareEnv()

BASE_DIR = Path(__file__).resolve().parent.parent

# The herder's own state: the SQLite file, the secret key, the token keys.
# Mode 0700, its files 0600 (herder/secretfiles.py).
HERDER_DATA_DIR = private_dir(Path(env.str("HERDER_DATA_DIR", default=str(BASE_DIR / "data"))).resolve())


def _secret_key() -> str:
    """The configured key, else one made on first start and kept in the data folder
    (written atomically, so concurrent first starts agree; an empty file is an error)."""
    configured = env.str("HERDER_SECRET_KEY", default="")
    if configured:
        return configured
    path = HERDER_DATA_DIR / "secret_key"
    create_once(path, secrets.token_urlsafe(50).encode())
    return read_secret(path, what="Django's secret key")


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, not {value}")
    return value


SECRET_KEY = _secret_key()
DEBUG = env.bool("HERDER_DEBUG", default=False)
# Golems reach the herder through bridge gateways and public names alike.
ALLOWED_HOSTS = env.list("HERDER_ALLOWED_HOSTS", default=["*"])

HERDER_PUBLIC_URL = env.str("HERDER_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
HERDER_WEBSTRATES_URL = env.str("HERDER_WEBSTRATES_URL", default="http://127.0.0.1:7007").rstrip("/")
HERDER_TOKEN_PASSWORD = env.str("HERDER_TOKEN_PASSWORD", default="")
HERDER_DAEMON_IMAGES = env.list("HERDER_DAEMON_IMAGES", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "herder",
    "accounts",
    "minions",
    "golems",
    "daemons",
]

# Django's own, run on the event loop rather than a thread hop per hook
# (herder/middleware.py): a spawn waited ~15 turns of a busy loop before its run.
MIDDLEWARE = [
    "herder.middleware.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "herder.middleware.SessionMiddleware",
    "herder.middleware.CommonMiddleware",
    "herder.middleware.CsrfViewMiddleware",
    "herder.middleware.AuthenticationMiddleware",
    "herder.middleware.MessageMiddleware",
    "herder.middleware.XFrameOptionsMiddleware",
    # The route's name for the request's log line and metrics (herder/requestlog.py).
    "herder.requestlog.RouteName",
]

ROOT_URLCONF = "herder.urls"
ASGI_APPLICATION = "herder.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The admin's index, overridden by herder/templates/admin/index.html (operator-admin).
        "DIRS": [BASE_DIR / "herder" / "templates"],
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

DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{HERDER_DATA_DIR / 'herder.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Created 0600 before Django connects: SQLite would create it with the umask's mode.
    _sqlite_name = str(DATABASES["default"]["NAME"])
    if _sqlite_name and _sqlite_name != ":memory:" and not _sqlite_name.startswith("file:"):
        private_file(Path(_sqlite_name))
    # Concurrent writers wait for the lock instead of failing at once. WAL:
    # readers never wait for a writer, and a commit appends to the log without
    # an fsync (0.02 ms against 2.6 ms here, far more while the disk is busy;
    # every minion run commits twice). A power cut may lose the last commits,
    # never the file's consistency. SQLite gives the log files the database's mode.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis, delivering within a process and a host without
            # Redis (herder/channel_layer.py).
            "BACKEND": "herder.channel_layer.HerderChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, the same as
            # channels-redis' blocking pop: an idle consumer would die on it.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# A refused CSRF check answers JSON like every other error (not Django's HTML page).
CSRF_FAILURE_VIEW = "herder.errors.csrf_failure"

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# herder/asgi.py serves the admin's and the API docs' assets from the
# installed apps: no collectstatic step on a fresh machine.

CORS_ALLOW_ALL_ORIGINS = True
CORS_URLS_REGEX = r"^/($|golem/|minion/|daemon/|token/)"

REST_FRAMEWORK = {
    "EXCEPTION_HANDLER": "herder.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
        # DRF's, refusing JSON nested too deeply for Python with a 400.
        "herder.parsers.JSONParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "herder",
    "DESCRIPTION": "Containers for webstrates: golems, minions and daemons.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # --- The schema's exactness (herder/schema.py) ---
    # 3.1: full JSON Schema, so the spawn forms' file fields can say which names
    # they take (propertyNames), which 3.0 cannot.
    "OAS_VERSION": "3.1.0",
    # Plain-Django routes, settings-driven enums, Retry-After on 429s and the
    # description of what OpenAPI cannot describe (WebSockets, the daemon proxy).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "herder.schema.postprocess",
    ],
}

# --- Admission: who a client is, and how much one may start --------------
# Proxies whose X-Forwarded-For is believed (addresses or networks); a client
# is the right-most hop they did not add.
HERDER_TRUSTED_PROXIES = env.list("HERDER_TRUSTED_PROXIES", default=[])
# Rates are counted in the cache: shared through Redis when REDIS_URL is set.
if env.str("REDIS_URL", default=""):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": env.str("REDIS_URL")}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Tokens ----------------------------------------------------------------
# JWTs naming an account (accounts/), signed with simplejwt. The key pair is
# HERDER_TOKEN_PRIVATE_KEY / HERDER_TOKEN_PUBLIC_KEY (PEM text, or *_FILE);
# with none configured it is created on first start in HERDER_DATA_DIR
# (token_private.pem, mode 0600, and token_public.pem).
from datetime import timedelta  # noqa: E402

from accounts.keys import token_key_pair  # noqa: E402

HERDER_TOKEN_ALGORITHM = env.str("HERDER_TOKEN_ALGORITHM", default="RS512")
if HERDER_TOKEN_ALGORITHM not in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
    raise ImproperlyConfigured(
        f"HERDER_TOKEN_ALGORITHM must be an RSA algorithm (RS512, PS512...), not {HERDER_TOKEN_ALGORITHM}"
    )
HERDER_TOKEN_PRIVATE_KEY, HERDER_TOKEN_PUBLIC_KEY = token_key_pair(
    private_pem=env.str("HERDER_TOKEN_PRIVATE_KEY", default="", multiline=True),
    public_pem=env.str("HERDER_TOKEN_PUBLIC_KEY", default="", multiline=True),
    data_dir=HERDER_DATA_DIR,
)
HERDER_TOKEN_ISSUER = env.str("HERDER_TOKEN_ISSUER", default="herder")
HERDER_TOKEN_LIFETIME = timedelta(
    days=_positive("HERDER_TOKEN_LIFETIME_DAYS", env.float("HERDER_TOKEN_LIFETIME_DAYS", default=365.0))
)
HERDER_TOKEN_DEFAULT_CREDITS = env.int("HERDER_TOKEN_DEFAULT_CREDITS", default=30000)

SIMPLE_JWT = {
    "ALGORITHM": HERDER_TOKEN_ALGORITHM,
    "SIGNING_KEY": HERDER_TOKEN_PRIVATE_KEY,
    "VERIFYING_KEY": HERDER_TOKEN_PUBLIC_KEY,
    "ISSUER": HERDER_TOKEN_ISSUER,
    "LEEWAY": 0,
    "ACCESS_TOKEN_LIFETIME": HERDER_TOKEN_LIFETIME,
    "USER_ID_FIELD": "email",
    "USER_ID_CLAIM": "sub",
    "JTI_CLAIM": "jti",
    # The "app" claim doubles as simplejwt's token type: only herder tokens pass.
    "TOKEN_TYPE_CLAIM": "app",
    "AUTH_HEADER_TYPES": ("Bearer",),
    "AUTH_TOKEN_CLASSES": ("accounts.tokens.AccountJWT",),
}

# The ASGI server `herd` runs: "uvicorn" (faster, see bench/) or "daphne".
HERDER_SERVER = env.str("HERDER_SERVER", default="uvicorn")

# --- The container runtime -------------------------------------------------
HERDER_RUNTIME = env.str("HERDER_RUNTIME", default="herder.runtime.DockerRuntime")

# --- Swarm (HERDER_RUNTIME=swarm) ---------------------------------------------
# "docker" and "swarm" name the two runtimes; any other value is a class path.
HERDER_RUNTIME = {"docker": "herder.runtime.DockerRuntime", "swarm": "herder.swarm.SwarmRuntime"}.get(
    HERDER_RUNTIME, HERDER_RUNTIME
)
# The attachable overlay network golem and daemon services join; the herder's
# replicas must be on it too (they reach services there by name).
HERDER_SWARM_NETWORK = env.str("HERDER_SWARM_NETWORK", default="herder")
# Placement constraints for golem and daemon services ("node.labels.golems==yes").
HERDER_SWARM_CONSTRAINTS = [c for c in env.list("HERDER_SWARM_CONSTRAINTS", default=[]) if c.strip()]
# Labels this deployment's containers (herder.instance); empty: a digest of the
# database's identity. Deployments sharing one engine must differ.
HERDER_INSTANCE = env.str("HERDER_INSTANCE", default="")
# The docker SDK's own variable; unset means the local engine.
DOCKER_HOST = env.str("DOCKER_HOST", default="")
# Seconds any one call to the engine may take before it counts as down (503).
HERDER_DOCKER_TIMEOUT = _positive("HERDER_DOCKER_TIMEOUT", env.float("HERDER_DOCKER_TIMEOUT", default=30.0))
# Threads for engine calls made from async code (herder.runtime.in_engine_pool):
# callers beyond them wait as futures, not as threads.
HERDER_DOCKER_THREADS = int(_positive("HERDER_DOCKER_THREADS", env.int("HERDER_DOCKER_THREADS", default=8)))

# --- Controlled minions ----------------------------------------------------
# env name -> image. HERDER_MINION_ENVS adds or replaces: "julia=me/julia:1,r=me/r".
HERDER_MINION_IMAGES = {name: f"herder/minion-{name}:latest" for name in ("python", "ruby", "node", "latex")}
HERDER_MINION_IMAGES.update(env.dict("HERDER_MINION_ENVS", default={}))

HERDER_MINION_TIMEOUT = _positive("HERDER_MINION_TIMEOUT", env.float("HERDER_MINION_TIMEOUT", default=30.0))
HERDER_MINION_MEMORY = env.str("HERDER_MINION_MEMORY", default="512m")
HERDER_MINION_CPUS = _positive("HERDER_MINION_CPUS", env.float("HERDER_MINION_CPUS", default=1.0))
# CPU weight (Docker's cpu_shares; the default is 1024) of a client's runs
# beyond its first while they run: under contention they get only what the
# others leave, so a client running four CPU-bound programs slows another
# client's one run as one program would. 0: every run weighs the same.
HERDER_MINION_CPU_WEIGHT_EXTRA = env.int("HERDER_MINION_CPU_WEIGHT_EXTRA", default=2)
if HERDER_MINION_CPU_WEIGHT_EXTRA and not 2 <= HERDER_MINION_CPU_WEIGHT_EXTRA <= 262144:
    raise ImproperlyConfigured("HERDER_MINION_CPU_WEIGHT_EXTRA is 0 (off) or 2-262144 (Docker's cpu_shares)")
HERDER_MINION_PIDS = int(_positive("HERDER_MINION_PIDS", env.int("HERDER_MINION_PIDS", default=256)))
HERDER_MINION_USER = env.str("HERDER_MINION_USER", default="65534:65534")
HERDER_MINION_WORKDIR_SIZE = env.str("HERDER_MINION_WORKDIR_SIZE", default="256m")
HERDER_MINION_TMP_SIZE = env.str("HERDER_MINION_TMP_SIZE", default="64m")
HERDER_MINION_OUTPUT_CAP = env.int("HERDER_MINION_OUTPUT_CAP", default=1024 * 1024)
HERDER_MINION_FILE_CAP = env.int("HERDER_MINION_FILE_CAP", default=32 * 1024 * 1024)
HERDER_MINION_MAX_FILES = env.int("HERDER_MINION_MAX_FILES", default=64)
HERDER_MINION_MAX_BYTES = env.int("HERDER_MINION_MAX_BYTES", default=10 * 1024 * 1024)
# Warm containers kept ready per env that has been asked for (0: every run cold).
HERDER_MINION_POOL_SIZE = env.int("HERDER_MINION_POOL_SIZE", default=2)
# Runs one container may serve, reset between them (1: a fresh container for
# every run). Reuse lifts throughput past the engine's container create rate.
HERDER_MINION_RUNS_PER_CONTAINER = int(
    _positive("HERDER_MINION_RUNS_PER_CONTAINER", env.int("HERDER_MINION_RUNS_PER_CONTAINER", default=50))
)
# A minion container older than its time limit plus this is an orphan of a
# herder process that died mid-run; the supervisor removes it.
HERDER_MINION_REAP_GRACE = env.float("HERDER_MINION_REAP_GRACE", default=30.0)

# Django refuses larger bodies before our own checks can answer 413: leave room.
DATA_UPLOAD_MAX_MEMORY_SIZE = HERDER_MINION_MAX_BYTES + 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = HERDER_MINION_MAX_FILES + 16
DATA_UPLOAD_MAX_NUMBER_FILES = HERDER_MINION_MAX_FILES + 16

# --- Admission: body caps, minion slots, throttles ---------------------------
# (herder/bodycap.py, herder/admission.py; the README's "Limits" table.)


def _size(name: str, text: str) -> int:
    """Bytes of a Docker-style size: "512m", "1g", "65536"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*", text.lower())
    if not match:
        raise ImproperlyConfigured(f"{name} must be a size such as 512m, not {text!r}")
    return int(float(match[1]) * 1024 ** " kmg".index(match[2] or " "))


def _rate(name: str, default: str) -> str:
    """A rate, N/s|m|h|d (herder.admission.Rate); empty or 0 turns it off."""
    text = env.str(name, default=default)
    if text.strip() not in ("", "0", "off", "none") and not re.fullmatch(r"\s*\d+\s*/\s*\d*\s*[smhd]\w*\s*", text):
        raise ImproperlyConfigured(f"{name} must be a rate such as 10/m, not {text!r}")
    return text


# `herd --workers N` tells each of its workers that it is one of N on this
# machine. The totals below (runs, sockets, bodies in progress) are the
# herd's: each worker holds its share (rounded up), so N workers together stay
# within what the machine holds. Per-client limits stay per process.
HERDER_WORKERS_HERE = max(1, env.int("HERDER_WORKERS_HERE", default=1))


# With REDIS_URL, how often each process tells the others what each client
# holds, so per-client limits hold across processes (herder/sharedslots.py);
# 0 turns it off (per-client limits per process).
HERDER_SLOTS_SHARE_INTERVAL = env.float("HERDER_SLOTS_SHARE_INTERVAL", default=0.5)


def _share(total: int) -> int:
    """This worker's part of a herd-wide total (0, no limit, stays 0)."""
    return -(-total // HERDER_WORKERS_HERE) if total > 0 else total


def _default_minion_slots() -> int:
    """Runs at once this machine can hold: 4 per core (a run mostly waits on
    its container), and no more than fit in memory at the minion memory limit."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores * 4, memory // _size("HERDER_MINION_MEMORY", HERDER_MINION_MEMORY)))


# Request bodies, refused with 413 while they stream (before Django reads
# them). Minion and daemon spawn take HERDER_MINION_MAX_BYTES plus form
# framing; the admin's forms this; every other route HERDER_MAX_BODY. The
# daemon proxy is not capped here: it streams bodies to the daemon.
HERDER_MAX_BODY = env.int("HERDER_MAX_BODY", default=16 * 1024)
HERDER_ADMIN_MAX_BODY = env.int("HERDER_ADMIN_MAX_BODY", default=1024 * 1024)
# Requests with bodies over HERDER_MAX_BODY (or chunked) in progress at once,
# per client and in all: what bodies may hold of memory and disk, in total.
HERDER_UPLOADS_PER_CLIENT = env.int("HERDER_UPLOADS_PER_CLIENT", default=8)
# Minion runs at once per client (address, or account with a token), in total,
# and how many may wait for a slot (FIFO, fair across clients) and how long.
HERDER_MINION_MAX_PER_CLIENT = env.int("HERDER_MINION_MAX_PER_CLIENT", default=4)
HERDER_MINION_MAX_PER_ACCOUNT = env.int("HERDER_MINION_MAX_PER_ACCOUNT", default=8)
HERDER_MINION_MAX_RUNNING = _share(env.int("HERDER_MINION_MAX_RUNNING", default=_default_minion_slots()))
HERDER_MINION_QUEUE = env.int("HERDER_MINION_QUEUE", default=4 * HERDER_MINION_MAX_RUNNING)
if "HERDER_MINION_QUEUE" in os.environ:
    HERDER_MINION_QUEUE = _share(HERDER_MINION_QUEUE)
HERDER_MINION_QUEUE_WAIT = env.float("HERDER_MINION_QUEUE_WAIT", default=10.0)
# Every run may hold its body, and daemon spawns and the like some more (waiters
# hold none: they wait before their body is read, herder/gate.py).
HERDER_UPLOADS_MAX = _share(
    env.int("HERDER_UPLOADS_MAX", default=(HERDER_MINION_MAX_RUNNING + 16) * HERDER_WORKERS_HERE)
)

# --- Database connections (PostgreSQL) ----------------------------------------
# Under ASGI every request's sync code runs in a thread of its own, so each
# request that touches the database opened a connection of its own: ~4 ms of
# the herder's CPU, ~5 ms of PostgreSQL's (SCRAM, a backend forked) and ~12 ms
# before its first query, on every minion run (bench/workers.py). A pool per
# process keeps them open (Django's psycopg pool; the supervisor lease keeps
# its own connection, outside it). A connection is held from a request's first
# query to its end, so a minion run holds one while it runs: room for every
# run at once and some more; past that a request waits HERDER_DB_POOL_TIMEOUT.
HERDER_DB_POOL = env.bool("HERDER_DB_POOL", default=True)
HERDER_DB_POOL_MAX = env.int("HERDER_DB_POOL_MAX", default=HERDER_MINION_MAX_RUNNING + 16)
HERDER_DB_POOL_TIMEOUT = env.float("HERDER_DB_POOL_TIMEOUT", default=10.0)
if HERDER_DB_POOL and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": HERDER_DB_POOL_MAX,
        "timeout": HERDER_DB_POOL_TIMEOUT,
    }
    # With a pool: a connection whose session ended (the server restarted, an
    # operator terminated it) is replaced before it is handed out, not failed on.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# Wrong token passwords per client, and failed admin logins per client and per
# username, before 429 (fixed windows, counted in the cache).
HERDER_TOKEN_GENERATE_RATE = _rate("HERDER_TOKEN_GENERATE_RATE", "10/m")
HERDER_ADMIN_LOGIN_RATE = _rate("HERDER_ADMIN_LOGIN_RATE", "10/m")
# Each section of GET /pressure: name -> a callable returning a JSON-able dict,
# cheap enough to poll every second (no Docker call).
HERDER_PRESSURE_SOURCES = {
    "minions": "minions.services.minion_pressure",
    "golems": "golems.services.golem_snapshot",
    "sockets": "herder.wslimits.snapshot",
}

# --- Daemons -----------------------------------------------------------------
HERDER_DAEMON_MEMORY = env.str("HERDER_DAEMON_MEMORY", default="512m")
HERDER_DAEMON_CPUS = _positive("HERDER_DAEMON_CPUS", env.float("HERDER_DAEMON_CPUS", default=1.0))
HERDER_DAEMON_PIDS = int(_positive("HERDER_DAEMON_PIDS", env.int("HERDER_DAEMON_PIDS", default=256)))
# Published ports listen here; 0.0.0.0 exposes daemons on every interface.
HERDER_DAEMON_PORT_HOST = env.str("HERDER_DAEMON_PORT_HOST", default="127.0.0.1")
# What spawn answers as "Address": how clients reach the published ports.
HERDER_DAEMON_ADDRESS = env.str("HERDER_DAEMON_ADDRESS", default=HERDER_DAEMON_PORT_HOST)
# Docker restart policy: a crashing daemon restarts, up to a few times.
HERDER_DAEMON_RESTART = env.str("HERDER_DAEMON_RESTART", default="on-failure")
# Drop every capability and forbid gaining privileges, as for minions.
HERDER_DAEMON_CONFINED = env.bool("HERDER_DAEMON_CONFINED", default=True)
HERDER_DAEMON_COST_PER_SECOND = env.int("HERDER_DAEMON_COST_PER_SECOND", default=1)
HERDER_DAEMON_MAX_PORTS = env.int("HERDER_DAEMON_MAX_PORTS", default=16)

# --- Daemon origins and the proxy's bounds ------------------------------------
# Each daemon's own origin, as JupyterHub's subdomain_host: "{name}.daemons.example.org"
# or "http://{name}.daemons.localhost:8000" ({name}: the daemon's host label). A
# request whose Host matches goes to that daemon, at its path as is. Empty: only
# the path route /daemon/v1/proxy/<Name>/, sandboxed on the herder's origin.
HERDER_DAEMON_ORIGIN = env.str("HERDER_DAEMON_ORIGIN", default="").strip().rstrip("/")
if HERDER_DAEMON_ORIGIN:
    _origin_host = HERDER_DAEMON_ORIGIN.split("://", 1)[-1]
    if (
        HERDER_DAEMON_ORIGIN.split("://", 1)[0] not in ("http", "https", _origin_host)
        or not _origin_host.startswith("{name}.")
        or _origin_host.count("{name}") != 1
        or "/" in _origin_host
    ):
        raise ImproperlyConfigured(
            "HERDER_DAEMON_ORIGIN is a host pattern starting with '{name}.', optionally with "
            f"scheme and port, e.g. https://{{name}}.daemons.example.org, not {HERDER_DAEMON_ORIGIN!r}"
        )
# Requests and WebSockets relayed at once to one daemon, per herder process
# (more: 429): one daemon with slow clients cannot take every connection.
HERDER_PROXY_MAX_PER_DAEMON = int(
    _positive("HERDER_PROXY_MAX_PER_DAEMON", env.int("HERDER_PROXY_MAX_PER_DAEMON", default=100))
)
# Seconds to open a connection to a daemon (then 502).
HERDER_PROXY_CONNECT_TIMEOUT = _positive(
    "HERDER_PROXY_CONNECT_TIMEOUT", env.float("HERDER_PROXY_CONNECT_TIMEOUT", default=5.0)
)
# Seconds a daemon may take to start its answer, and between two reads of it
# (before the answer starts: 504).
HERDER_PROXY_READ_TIMEOUT = _positive("HERDER_PROXY_READ_TIMEOUT", env.float("HERDER_PROXY_READ_TIMEOUT", default=60.0))
# Seconds without a byte either way before a relayed request or WebSocket is
# closed: a client that stops sending or reading frees its slot.
HERDER_PROXY_IDLE_TIMEOUT = _positive(
    "HERDER_PROXY_IDLE_TIMEOUT", env.float("HERDER_PROXY_IDLE_TIMEOUT", default=300.0)
)

# --- Golems ------------------------------------------------------------------
# One headless Chromium per webstrate (golems/). The golem opens
# <HERDER_GOLEM_WEBSTRATES_URL>/<webstrate>/: the webstrates server as the golem's
# container reaches it (default: HERDER_WEBSTRATES_URL).
HERDER_GOLEM_IMAGE = env.str("HERDER_GOLEM_IMAGE", default="herder/golem:latest")
HERDER_GOLEM_WEBSTRATES_URL = env.str("HERDER_GOLEM_WEBSTRATES_URL", default=HERDER_WEBSTRATES_URL).rstrip("/")
# Docker network of golem containers. Empty: "host" when both the webstrates URL
# and HERDER_PUBLIC_URL are on the loopback address (one machine), else the
# network "herder-golems" (a bridge without traffic between its containers,
# created when missing; the host is host.docker.internal). Any other name is
# created the same way when missing; "bridge" is the engine's default bridge.
HERDER_GOLEM_NETWORK = env.str("HERDER_GOLEM_NETWORK", default="")
# Chromium reaches only the webstrates server's and the herder's host:port (through
# the allow-list proxy in its container), plus these: "host" (ports 80 and 443) or "host:port".
HERDER_GOLEM_ALLOWED_HOSTS = env.list("HERDER_GOLEM_ALLOWED_HOSTS", default=[])
HERDER_GOLEM_MEMORY = env.str("HERDER_GOLEM_MEMORY", default="1g")
HERDER_GOLEM_CPUS = _positive("HERDER_GOLEM_CPUS", env.float("HERDER_GOLEM_CPUS", default=1.0))
HERDER_GOLEM_PIDS = int(_positive("HERDER_GOLEM_PIDS", env.int("HERDER_GOLEM_PIDS", default=512)))
HERDER_GOLEM_TMP_SIZE = env.str("HERDER_GOLEM_TMP_SIZE", default="256m")
# Chromium's own sandbox, under a seccomp profile that allows user namespaces.
# Off: --no-sandbox under the engine's default profile.
HERDER_GOLEM_SANDBOX = env.bool("HERDER_GOLEM_SANDBOX", default=True)
HERDER_GOLEM_SECCOMP_PROFILE = env.str(
    "HERDER_GOLEM_SECCOMP_PROFILE", default=str(BASE_DIR / "deploy" / "seccomp" / "golem.json")
)
# --- Golem identity (golems/services.py: golem_control_admit) ---
# A golem's control socket that does not carry its golem's proof (the cookie its
# container's Chromium presents) is refused while the webstrate has a golem
# container. Where none exists it still works (a golem in a browser tab) unless
# this is false: then only proven golems connect.
HERDER_GOLEM_CONTROL_OPEN = env.bool("HERDER_GOLEM_CONTROL_OPEN", default=True)
# Seconds without a spawn request (a person opening the page), a reset or a
# connected minion before a golem is reaped (0: never).
HERDER_GOLEM_IDLE_TIMEOUT = env.float("HERDER_GOLEM_IDLE_TIMEOUT", default=3600.0)
# How long an ad-hoc minion waits for the webstrate's golem (then golem-not-found, 4404).
HERDER_GOLEM_WAIT = _positive("HERDER_GOLEM_WAIT", env.float("HERDER_GOLEM_WAIT", default=20.0))
# Pairing liveness: a golem's control socket refreshes its presence and paired
# sockets ping each other this often; three missed beats count as gone (a crashed process).
HERDER_PAIRING_HEARTBEAT = _positive("HERDER_PAIRING_HEARTBEAT", env.float("HERDER_PAIRING_HEARTBEAT", default=5.0))
# How long a golem's connect-to waits for the minion to answer before 4404.
HERDER_PAIRING_REPLY_TIMEOUT = _positive(
    "HERDER_PAIRING_REPLY_TIMEOUT", env.float("HERDER_PAIRING_REPLY_TIMEOUT", default=5.0)
)
# Frames a socket queues towards its peer before it stops reading.
HERDER_PAIRING_BUFFER = int(_positive("HERDER_PAIRING_BUFFER", env.int("HERDER_PAIRING_BUFFER", default=1000)))


# --- Golem and WebSocket admission --------------------------------------------
# What one client, and everyone together, may make the herder hold: golems
# (1 GiB of Chromium each), WebSockets and the bytes they queue. README "Limits".
def _memory_bytes(text: str) -> int:
    """Docker's memory notation: 1g, 512m, 64k or bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([bkmg]?)b?\s*", text.lower())
    if not match:
        raise ImproperlyConfigured(f"A memory size is N, Nk, Nm or Ng, not {text!r}")
    return int(match.group(1)) * 1024 ** "bkmg".index(match.group(2) or "b")


# This machine's memory (the engine's, when it runs here): what golems share.
HERDER_MACHINE_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
# Golems at once, over every client: by default as many as fit the machine's
# memory at their limit (a Chromium each). Past it, spawning answers 429.
HERDER_GOLEM_MAX = env.int(
    "HERDER_GOLEM_MAX", default=max(1, HERDER_MACHINE_MEMORY // _memory_bytes(HERDER_GOLEM_MEMORY))
)
# New golems one client may ask for (a spawn of a golem that runs is free):
# any page can embed <img src=".../golem/v1/spawn/x">, so strangers do ask.
HERDER_GOLEM_SPAWN_RATE = env.str("HERDER_GOLEM_SPAWN_RATE", default="20/h")
# Spawn only for webstrates the webstrates server has (HEAD <url>/<id>/?json,
# answers cached briefly), so invented ids start no Chromium.
HERDER_GOLEM_CHECK_EXISTS = env.bool("HERDER_GOLEM_CHECK_EXISTS", default=True)
HERDER_GOLEM_CHECK_TIMEOUT = _positive(
    "HERDER_GOLEM_CHECK_TIMEOUT", env.float("HERDER_GOLEM_CHECK_TIMEOUT", default=3.0)
)
# Bytes (characters of text frames) a pairing socket queues towards its peer,
# beside HERDER_PAIRING_BUFFER frames: past them a paired socket stops reading
# its client, an unpaired minion is refused (4413).
HERDER_PAIRING_BUFFER_BYTES = int(
    _positive("HERDER_PAIRING_BUFFER_BYTES", env.int("HERDER_PAIRING_BUFFER_BYTES", default=1024 * 1024))
)
# The largest WebSocket message a client may send (close 1009 past it); the
# ASGI servers refuse it before buffering it whole.
HERDER_WS_MAX_FRAME = int(_positive("HERDER_WS_MAX_FRAME", env.int("HERDER_WS_MAX_FRAME", default=1024 * 1024)))
# WebSockets (every route) one client address, and everyone, may hold open in
# one herder process. The total's default gives each socket the most it can hold
# (its pairing buffer and three frames) within a quarter of the machine's memory.
HERDER_WS_MAX_PER_CLIENT = env.int("HERDER_WS_MAX_PER_CLIENT", default=128)
HERDER_WS_MAX = _share(
    env.int(
        "HERDER_WS_MAX",
        default=max(64, HERDER_MACHINE_MEMORY // 4 // (HERDER_PAIRING_BUFFER_BYTES + 3 * HERDER_WS_MAX_FRAME)),
    )
)

# --- The supervisor --------------------------------------------------------
HERDER_SUPERVISOR_INTERVAL = _positive(
    "HERDER_SUPERVISOR_INTERVAL", env.float("HERDER_SUPERVISOR_INTERVAL", default=5.0)
)
# Each is called once per interval with no arguments; apps add theirs here.
# These are the deployment's: only the process holding the supervisor lease
# (herder/lease.py) runs them.
HERDER_SUPERVISOR_DUTIES = [
    "daemons.services.daemon_supervise",
    # Golems: adopt after a restart, restart crashed ones, forget stale presence; reap idle ones.
    "golems.services.golem_reconcile",
    "golems.services.golem_reap_idle",
    # Operators: volumes of daemons gone for HERDER_DAEMON_VOLUME_RETENTION.
    "daemons.services.daemon_reap_volumes",
]
# These every herder process runs for itself, lease or not: they know what the
# process itself holds (its runs and warm containers).
HERDER_SUPERVISOR_LOCAL_DUTIES = [
    "minions.services.minion_reap_orphans",
]

# --- Workers (herd --workers) ------------------------------------------------
# Processes `herd` serves its port from. They share the channel layer and the
# cache through Redis, so more than one needs REDIS_URL (herd refuses it
# otherwise). Default: one per core with Redis, else 1.
HERDER_WORKERS = env.int("HERDER_WORKERS", default=(os.cpu_count() or 1) if REDIS_URL else 1)
# channels-redis forgets a group member after this many seconds (its own
# default, a day); sockets that stay connected renew theirs every quarter of it.
HERDER_GROUP_EXPIRY = int(_positive("HERDER_GROUP_EXPIRY", env.int("HERDER_GROUP_EXPIRY", default=86400)))
if REDIS_URL:
    CHANNEL_LAYERS["default"]["CONFIG"]["group_expiry"] = HERDER_GROUP_EXPIRY

# --- The relay between processes (herder/channel_layer.py) --------------------
# Processes of one host (workers of one `herd`, or herds sharing the host's
# network namespace) hand each other channel messages over Unix sockets instead
# of Redis; false sends them through Redis, as between hosts.
HERDER_RELAY_LINK = env.bool("HERDER_RELAY_LINK", default=True)
if REDIS_URL:
    CHANNEL_LAYERS["default"]["CONFIG"]["link"] = HERDER_RELAY_LINK

# --- Operators: the admin (operator-admin) ------------------------------------
# The last bytes of a failed minion run's stderr kept on its row, so the admin
# shows why it failed (the traceback's end); 0 keeps none.
HERDER_MINION_KEEP_STDERR = env.int("HERDER_MINION_KEEP_STDERR", default=4096)
# Days a stopped daemon's volume is kept (its owner may spawn it again with its
# files) before the supervisor removes it; 0 keeps volumes forever.
HERDER_DAEMON_VOLUME_RETENTION = timedelta(days=env.float("HERDER_DAEMON_VOLUME_RETENTION", default=30.0))

# --- Observability (herder/metrics.py, herder/health.py, herder/logs.py) ------
# Log lines: "text" (time level logger [request id]: event key=value ...) or
# "json" (one object a line), both carrying the request id (herder/logs.py).
HERDER_LOG_FORMAT = env.str("HERDER_LOG_FORMAT", default="text").lower()
if HERDER_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"HERDER_LOG_FORMAT is text or json, not {HERDER_LOG_FORMAT!r}")
# A client refused at the door (herder/door.py) more than
# HERDER_REFUSAL_DELAY_AFTER times within a second has its next refusals held
# back up to HERDER_REFUSAL_DELAY seconds (never longer than their Retry-After):
# a client retrying at once, ignoring Retry-After, then asks about once per
# delay on each connection instead of hundreds of times a second, each asking
# costing the herder's one event loop. At most HERDER_REFUSAL_DELAY_MAX_HELD
# connections are held so (per process); past that they are answered at once.
# HERDER_REFUSAL_DELAY=0: no delay.
HERDER_REFUSAL_DELAY = env.float("HERDER_REFUSAL_DELAY", default=1.0)
HERDER_REFUSAL_DELAY_AFTER = env.int("HERDER_REFUSAL_DELAY_AFTER", default=10)
HERDER_REFUSAL_DELAY_MAX_HELD = env.int("HERDER_REFUSAL_DELAY_MAX_HELD", default=1000)
if HERDER_REFUSAL_DELAY < 0 or HERDER_REFUSAL_DELAY_AFTER < 0 or HERDER_REFUSAL_DELAY_MAX_HELD < 0:
    raise ImproperlyConfigured("HERDER_REFUSAL_DELAY, _AFTER and _MAX_HELD are 0 or more")
# Refusals for load (429) are logged once per client and route in this many
# seconds, the next line counting those left out (a flood is thousands a second).
HERDER_LOG_REFUSALS_EVERY = _positive("HERDER_LOG_REFUSALS_EVERY", env.float("HERDER_LOG_REFUSALS_EVERY", default=10.0))
# Who may scrape GET /metrics: a request with `Authorization: Bearer <token>`
# (when set), or from these addresses or networks (default loopback only;
# empty: token only). A request that came through a proxy not in
# HERDER_TRUSTED_PROXIES is never allowed by address.
HERDER_METRICS_TOKEN = env.str("HERDER_METRICS_TOKEN", default="")
HERDER_METRICS_ALLOWED = env.list("HERDER_METRICS_ALLOWED", default=["127.0.0.0/8", "::1"])
for _network in HERDER_METRICS_ALLOWED:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"HERDER_METRICS_ALLOWED holds addresses or networks, not {_network!r}") from None
# prometheus_client's own variable (it reads it itself at import): with it set,
# every herder process writes its samples there and /metrics sums them. Used
# by `herd --workers N`; the folder must be emptied before the workers start.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# Seconds each /readyz check (database, channel layer, engine, images) may take.
HERDER_READY_TIMEOUT = _positive("HERDER_READY_TIMEOUT", env.float("HERDER_READY_TIMEOUT", default=2.0))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "herder.logs.RequestIdFilter"}},
    "formatters": {
        "text": {"()": "herder.logs.TextFormatter"},
        "json": {"()": "herder.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": HERDER_LOG_FORMAT, "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": env.str("HERDER_LOG_LEVEL", default="INFO")},
}

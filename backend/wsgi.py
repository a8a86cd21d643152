"""gunicorn entry point: gunicorn backend.wsgi:app"""
import atexit
import ipaddress
import logging
import os

from model.settings import Settings
from model.tools.loading import DeviceError

from .app import create_app
from .connection import redact_logs
from .container import Backend

log = logging.getLogger("backend")


def warn_if_exposed(host: str, settings: Settings) -> None:
    """A warning when every route is open to whoever reaches the address the backend listens on."""
    if settings.basic_auth or _is_loopback(host):
        return
    log.warning("listening on %s without basic auth: whoever reaches it can use every route, /setup included; set "
                "BASIC_AUTH_USER and BASIC_AUTH_PASS (and the same in Label Studio's model connection), or HOST=127.0.0.1",
                host)


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may well resolve beyond this machine
        return False


logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
redact_logs()
settings = Settings()
# HOST is what `make serve` binds; the image binds 0.0.0.0 without setting it.
warn_if_exposed(os.environ.get("HOST", "0.0.0.0"), settings)
try:
    backend = Backend.build(settings)
except DeviceError as exc:  # SEGAGENT_DEVICE=cuda without a usable GPU; gunicorn then stops: "Worker failed to boot"
    log.error("the backend cannot start: %s", exc)
    raise
atexit.register(backend.close)
app = create_app(backend)

"""Show manifests (TOML) and process settings.

A manifest is validated completely at start-up: unknown keys, missing required keys,
bad prices and negative stock stop the server with a message that names the file, the
key and the problem (``ManifestError``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from checkout import text
from media.ice import IceServer, credential_problem, url_problem
from media.ladder import Rung
from media.recording import RecordingConfig
from media.restream import Destination, destination_problem
from media.udp_ports import PortRange
from server.connections import ConnectionLimits
from server.throttle import Limits

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PRINTER_SCHEMES = ("tcp://", "usb://", "serial://", "file://")
# Guessing is throttled (server/throttle.py); these lengths keep it hopeless anyway.
MIN_STREAM_KEY = 12
MIN_STAFF_PASSWORD = 10
# Secrets published in the docs and the demo: refused by `serve` off loopback.
PUBLIC_SECRETS = frozenset({"change-me", "changeme", "demo-staff", "demo-stream-key"})


class ManifestError(ValueError):
    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{path}: {key}: {problem}")


@dataclass(frozen=True)
class VideoConfig:
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 1500


@dataclass(frozen=True)
class ProductConfig:
    sku: str
    name: str
    price: Decimal
    stock: int
    image: Path | None = None
    per_buyer_limit: int | None = None
    printer: str | None = None  # packing station; default printer when None
    description: str = ""
    barcode: str | None = None  # EAN/UPC or any code the counter's scanner reads

    @property
    def price_cents(self) -> int:
        return int(self.price * 100)


@dataclass(frozen=True)
class PrinterConfig:
    name: str
    connection: str
    profile: str = "TM-T88V"
    paper_mm: int = 80
    default: bool = False


@dataclass(frozen=True)
class ChatConfig:
    """The manifest's ``[chat]`` table: where the show's chat settings start."""

    slow_mode_s: int = 0
    blocked_words: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaffMember:
    """A named staff member (manifest ``[[staff.members]]``) with one role."""

    name: str
    role: str  # host | moderator | floor | cashier
    password_hash: str  # argon2, from ``showroom passwd``


CUE_ACTIONS = ("feature", "unfeature", "drop", "ticker", "pin")


@dataclass(frozen=True)
class CueConfig:
    """One step of the run of show (manifest ``[[cues]]``), run by the host's "Next"."""

    action: str  # one of CUE_ACTIONS
    label: str
    sku: str | None = None
    quantity: int = 0  # drop
    duration_s: int = 0  # drop
    per_buyer_limit: int = 0  # drop
    price: Decimal | None = None  # drop price
    text: str | None = None  # ticker / pin

    def public(self) -> dict:
        out = {"action": self.action, "label": self.label}
        for name in ("sku", "quantity", "duration_s", "per_buyer_limit", "text"):
            value = getattr(self, name)
            if value:
                out[name] = value
        if self.price is not None:
            out["price"] = f"{self.price:.2f}"
        return out


@dataclass(frozen=True)
class EmailConfig:
    """Manifest ``[email]``: SMTP settings. Without them emails are written to files."""

    host: str
    sender: str  # the From: address (manifest key ``from``)
    port: int = 587
    username: str | None = None
    password: str | None = None
    starttls: bool = True


@dataclass(frozen=True)
class ShowConfig:
    id: str
    title: str
    stream_key: str
    currency: str
    video: VideoConfig
    products: tuple[ProductConfig, ...]
    printers: tuple[PrinterConfig, ...]
    staff_password: str
    manifest_path: Path
    pickup_note: str = "Pick up at the counter"
    chat: ChatConfig = ChatConfig()
    starts_at: datetime | None = None  # announced start (timezone-aware)
    description: str = ""
    cover: Path | None = None
    email: EmailConfig | None = None
    cues: tuple[CueConfig, ...] = ()
    members: tuple[StaffMember, ...] = ()
    restreams: tuple[Destination, ...] = ()  # manifest [[restream]]
    playback_whep_url: str | None = None  # [show.playback] whep_url: viewers play from there
    ice_servers: tuple[IceServer, ...] = ()  # manifest [ice]: STUN first, then TURN
    # [[show.ladder]]: the rungs below the show's own size (None: one 360p rung at
    # 400 kbps; empty: the show's size only)
    ladder: tuple[Rung, ...] | None = None

    def member(self, name: str) -> StaffMember | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def product(self, sku: str) -> ProductConfig | None:
        for p in self.products:
            if p.sku == sku:
                return p
        return None

    @property
    def default_printer(self) -> PrinterConfig | None:
        for p in self.printers:
            if p.default:
                return p
        return self.printers[0] if self.printers else None


@dataclass
class Settings:
    """Process-wide settings from the command line and the environment."""

    manifests: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None
    data_dir: Path = Path("var")
    hold_seconds: int = 600
    payment_timeout_s: int = 900
    max_viewers_per_show: int = 500
    # WHEP sessions one client address may hold (0: no cap). None: 8 on a public host;
    # no cap on a loopback host, where every client (and a reverse proxy) is 127.0.0.1.
    max_viewers_per_ip: int | None = None
    whep_connect_timeout_s: float = 15.0  # a WHEP session not connected by then is closed
    # serve --workers N: the parent starts N processes; each has its index and the run
    # folder of their Unix sockets (None: a single process, no worker machinery).
    workers: int = 1
    worker_index: int | None = None
    run_dir: str | None = None
    print_worker: bool = True
    sandbox: bool = True  # Stripe: embedded localstripe unless STRIPE_SECRET_KEY is set
    # A rehearsal: shows unlisted, test payments only, and its own Redis database, so its
    # stock, orders and report never touch the real show's.
    rehearsal: bool = False
    public_url: str | None = None  # base URL printed on labels / QR codes
    # With edge nodes: the part of a show's audience the origin keeps itself before it
    # sends new viewers to an edge (307); 0 = every viewer to an edge while one is up.
    origin_share: float = 0.0
    # --public-ip: the address viewers reach (1:1 NAT), put in the server's candidates;
    # --udp-ports: every media (ICE) UDP socket inside this range, for firewalls.
    public_ip: str | None = None
    udp_ports: PortRange | None = None
    # Stripe (env STRIPE_* when unset). Sandbox mode: no secret key; api_base is localstripe.
    stripe_api_base: str | None = None
    stripe_secret_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_timeout_s: float = 10.0  # a Stripe call (retries included) never takes longer
    stripe_js_url: str | None = None  # Stripe.js for live-mode card forms (env STRIPE_JS_URL)
    # Embedded Redis AOF policy: everysec (a machine crash may lose ~1 s) or always.
    redis_appendfsync: str = "everysec"
    # Per-IP limits, so fresh cookies do not get around the per-viewer ones. A venue's
    # wifi puts many viewers behind one address: modest, not tight. 0 = no limit; None:
    # the default on a public host, no limit on a loopback one (behind a local reverse
    # proxy every viewer is 127.0.0.1).
    chat_ip_per_min: int | None = None  # chat messages a minute from one IP (default 60)
    reactions_ip_per_s: int | None = None  # reaction taps counted a second (default 40)
    # Remote ICE candidates the server checks toward (None: allowed only when serving on
    # a loopback host, i.e. a development or test box; a public server never checks
    # toward them unless told to).
    allow_loopback_candidates: bool | None = None
    allow_private_candidates: bool | None = None
    # Hoarding. A fresh cookie is a new buyer, so limits also count per IP: the buyers of
    # one IP (a household, a venue's wifi) may hold or order buyers_per_ip times a
    # product's per-buyer limit, and have max_pending_orders x buyers_per_ip unpaid
    # orders. 0 turns the per-IP limits off (load tests with many buyers on 127.0.0.1).
    buyers_per_ip: int = 4
    max_pending_orders: int = 2  # unpaid orders one buyer may have at once (0 = no cap)
    drop_hold_seconds: int = 120  # a running drop's units are held this long at most

    @property
    def loopback_host(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def viewer_ip_cap(self) -> int:
        if self.max_viewers_per_ip is not None:
            return self.max_viewers_per_ip
        return 0 if self.loopback_host else 8

    @property
    def chat_ip_limit(self) -> int:
        if self.chat_ip_per_min is not None:
            return self.chat_ip_per_min
        return 0 if self.loopback_host else 60

    @property
    def reactions_ip_limit(self) -> int:
        if self.reactions_ip_per_s is not None:
            return self.reactions_ip_per_s
        return 0 if self.loopback_host else 40

    def candidate_allowed(self, kind: str) -> bool:
        """``kind``: "loopback" or "private"."""
        explicit = getattr(self, f"allow_{kind}_candidates")
        return self.loopback_host if explicit is None else explicit

    # Recordings, replays and clips (env SHOWROOM_RECORDING_*, see media/recording.py).
    recording: RecordingConfig = field(default_factory=RecordingConfig.from_env)
    # Failed secret guesses per IP and per account (server/throttle.py).
    throttle: Limits = field(default_factory=Limits)
    # Connections, read deadlines and event streams per address (server/connections.py).
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


REHEARSAL_DB = 15


def rehearsal_redis_url(url: str) -> str:
    """The same Redis server, database REHEARSAL_DB (kept apart from the real show)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{REHEARSAL_DB}"))


# --- manifest parsing -------------------------------------------------------------

_SHOW_KEYS = {
    "id",
    "title",
    "stream_key",
    "currency",
    "video",
    "pickup_note",
    "starts_at",
    "description",
    "cover",
    "playback",
    "ladder",
}
_RUNG_KEYS = {"width", "height", "bitrate_kbps"}
_PLAYBACK_KEYS = {"whep_url"}
_RESTREAM_KEYS = {"name", "url", "key", "autostart"}
_EMAIL_KEYS = {"host", "port", "from", "username", "password", "starttls"}
_VIDEO_KEYS = {"width", "height", "fps", "bitrate_kbps"}
_PRODUCT_KEYS = {
    "sku",
    "name",
    "price",
    "stock",
    "image",
    "per_buyer_limit",
    "printer",
    "description",
    "barcode",
}
_PRINTER_KEYS = {"name", "connection", "profile", "paper_mm", "default"}
_TOP_KEYS = {
    "show",
    "products",
    "printers",
    "staff",
    "chat",
    "email",
    "cues",
    "restream",
    "ice",
}
_CUE_KEYS = {
    "action",
    "label",
    "sku",
    "quantity",
    "duration_s",
    "per_buyer_limit",
    "price",
    "text",
}
_CHAT_KEYS = {"slow_mode_s", "blocked_words"}
_STAFF_KEYS = {"password", "members"}
_MEMBER_KEYS = {"name", "role", "password_hash"}
ROLES = ("host", "moderator", "floor", "cashier")


def _unknown(path: Path, where: str, data: dict[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ManifestError(path, name, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _req(path: Path, where: str, data: dict[str, Any], key: str, typ: type) -> Any:
    if key not in data:
        raise ManifestError(path, f"{where}.{key}", "missing required key")
    return _typed(path, f"{where}.{key}", data[key], typ)


def _typed(path: Path, name: str, value: Any, typ: type) -> Any:
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ManifestError(path, name, f"must be an integer, got {value!r}")
    if typ is not int and not isinstance(value, typ):
        raise ManifestError(path, name, f"must be a {typ.__name__}, got {value!r}")
    return value


def _price(path: Path, name: str, value: Any) -> Decimal:
    if not isinstance(value, str):
        raise ManifestError(path, name, f'must be a decimal string like "18.00", got {value!r}')
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise ManifestError(path, name, f"not a decimal number: {value!r}") from None
    if not price.is_finite() or price < 0 or price != price.quantize(Decimal("0.01")):
        raise ManifestError(
            path, name, f"must be a non-negative amount with at most 2 decimals, got {value!r}"
        )
    if price > Decimal("999999.99"):
        raise ManifestError(path, name, "is too large")
    return price


def _barcode(path: Path, name: str, value: Any) -> str | None:
    if value is None:
        return None
    code = _typed(path, name, value, str).strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", code):
        raise ManifestError(path, name, "must be 1-64 letters, digits, '.', '_' or '-'")
    return code


def _starts_at(path: Path, value: Any) -> datetime:
    # TOML has native datetimes; an RFC 3339 string is accepted too. Local (zone-less)
    # times are refused: a show announced for "19:00" must say which 19:00.
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(
                path, "show.starts_at", f"not an RFC 3339 date-time: {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ManifestError(path, "show.starts_at", "must be a date-time like 2026-12-01T19:00:00Z")
    if value.tzinfo is None:
        raise ManifestError(path, "show.starts_at", "must include a time zone (Z or +01:00)")
    return value


def _email(path: Path, data: Any, env: dict[str, str]) -> EmailConfig | None:
    if data is None:
        return None
    _typed(path, "email", data, dict)
    _unknown(path, "email", data, _EMAIL_KEYS)
    host = _req(path, "email", data, "host", str).strip()
    sender = _req(path, "email", data, "from", str).strip()
    if not host:
        raise ManifestError(path, "email.host", "must not be empty")
    if "@" not in sender or any(c in sender for c in "\r\n"):
        raise ManifestError(path, "email.from", f"must be an email address, got {sender!r}")
    port = _typed(path, "email.port", data.get("port", 587), int)
    if not 1 <= port <= 65535:
        raise ManifestError(path, "email.port", "must be from 1 to 65535")
    username = data.get("username")
    if username is not None:
        _typed(path, "email.username", username, str)
    password = env.get("SHOWROOM_SMTP_PASSWORD") or data.get("password")
    if password is not None:
        _typed(path, "email.password", password, str)
    return EmailConfig(
        host=host,
        sender=sender,
        port=port,
        username=username,
        password=password,
        starttls=_typed(path, "email.starttls", data.get("starttls", True), bool),
    )


def _printable(path: Path, name: str, value: str) -> str:
    """Text that is printed on labels and drawn on the video: no control or format
    characters (checkout.text), which a printer would take as commands."""
    bad = text.unsafe_char(value)
    if bad is not None:
        raise ManifestError(
            path, name, f"contains a control or formatting character ({text.describe(bad)})"
        )
    return value


def show_env_name(show_id: str, what: str) -> str:
    """``SHOWROOM_<SHOW>_<WHAT>``: a per-show secret from the environment (the show id
    uppercased, anything but letters and digits as ``_``), e.g. SHOWROOM_FRIDAY_DROP_STREAM_KEY."""
    return f"SHOWROOM_{re.sub(r'[^A-Z0-9]', '_', show_id.upper())}_{what}"


def load_manifest(path: str | Path, env: dict[str, str] | None = None) -> ShowConfig:
    """Read and validate one show manifest; raise ManifestError on any problem."""
    path = Path(path)
    env = dict(os.environ) if env is None else env
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(path, "(file)", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(path, "(file)", f"not valid TOML: {exc}") from None
    _unknown(path, "", data, _TOP_KEYS)

    show = data.get("show")
    if not isinstance(show, dict):
        raise ManifestError(path, "show", "missing required table [show]")
    _unknown(path, "show", show, _SHOW_KEYS)
    show_id = _req(path, "show", show, "id", str)
    if not SLUG.match(show_id):
        raise ManifestError(
            path, "show.id", "must be a URL slug: lowercase letters, digits and dashes"
        )
    title = _printable(path, "show.title", _req(path, "show", show, "title", str).strip())
    if not title:
        raise ManifestError(path, "show.title", "must not be empty")
    stream_key = (
        env.get(show_env_name(show_id, "STREAM_KEY"))
        or env.get("SHOWROOM_STREAM_KEY")
        or _req(path, "show", show, "stream_key", str)
    )
    if len(stream_key) < MIN_STREAM_KEY:
        raise ManifestError(
            path,
            "show.stream_key",
            f"must be at least {MIN_STREAM_KEY} characters (got {len(stream_key)}); "
            "a long random key is best",
        )
    currency = _req(path, "show", show, "currency", str).lower()
    if not re.fullmatch(r"[a-z]{3}", currency):
        raise ManifestError(path, "show.currency", f"must be a 3-letter ISO code, got {currency!r}")
    pickup_note = _printable(
        path,
        "show.pickup_note",
        _typed(path, "show.pickup_note", show.get("pickup_note", "Pick up at the counter"), str),
    )

    starts_at = _starts_at(path, show["starts_at"]) if "starts_at" in show else None
    description = _typed(path, "show.description", show.get("description", ""), str).strip()
    cover = None
    if "cover" in show:
        cover = (path.parent / _typed(path, "show.cover", show["cover"], str)).resolve()
        if not cover.is_file():
            raise ManifestError(path, "show.cover", f"file not found: {cover}")

    vdata = show.get("video", {})
    _typed(path, "show.video", vdata, dict)
    _unknown(path, "show.video", vdata, _VIDEO_KEYS)
    video = VideoConfig(**{k: _typed(path, f"show.video.{k}", v, int) for k, v in vdata.items()})
    if not (160 <= video.width <= 3840 and video.width % 2 == 0):
        raise ManifestError(path, "show.video.width", "must be an even number from 160 to 3840")
    if not (120 <= video.height <= 3840 and video.height % 2 == 0):
        raise ManifestError(path, "show.video.height", "must be an even number from 120 to 3840")
    if not 1 <= video.fps <= 60:
        raise ManifestError(path, "show.video.fps", "must be from 1 to 60")
    if not 100 <= video.bitrate_kbps <= 20000:
        raise ManifestError(path, "show.video.bitrate_kbps", "must be from 100 to 20000")

    printers: list[PrinterConfig] = []
    for i, pdata in enumerate(_typed(path, "printers", data.get("printers", []), list)):
        where = f"printers[{i}]"
        _typed(path, where, pdata, dict)
        _unknown(path, where, pdata, _PRINTER_KEYS)
        conn = _req(path, where, pdata, "connection", str)
        if not conn.startswith(PRINTER_SCHEMES):
            raise ManifestError(
                path, f"{where}.connection", f"must start with one of {', '.join(PRINTER_SCHEMES)}"
            )
        paper = _typed(path, f"{where}.paper_mm", pdata.get("paper_mm", 80), int)
        if paper not in (58, 80):
            raise ManifestError(path, f"{where}.paper_mm", "must be 58 or 80")
        printers.append(
            PrinterConfig(
                name=_req(path, where, pdata, "name", str),
                connection=conn,
                profile=_typed(path, f"{where}.profile", pdata.get("profile", "TM-T88V"), str),
                paper_mm=paper,
                default=_typed(path, f"{where}.default", pdata.get("default", False), bool),
            )
        )
    printer_names = [p.name for p in printers]
    if len(set(printer_names)) != len(printer_names):
        raise ManifestError(path, "printers.name", "printer names must be unique")
    if sum(p.default for p in printers) > 1:
        raise ManifestError(path, "printers.default", "at most one printer may be the default")

    products: list[ProductConfig] = []
    for i, pdata in enumerate(_typed(path, "products", data.get("products", []), list)):
        where = f"products[{i}]"
        _typed(path, where, pdata, dict)
        _unknown(path, where, pdata, _PRODUCT_KEYS)
        sku = _req(path, where, pdata, "sku", str)
        if not SKU.match(sku):
            raise ManifestError(
                path, f"{where}.sku", f"must be letters, digits, '.', '_' or '-', got {sku!r}"
            )
        if any(p.sku == sku for p in products):
            raise ManifestError(path, f"{where}.sku", f"duplicate sku {sku!r}")
        name = _printable(path, f"{where}.name", _req(path, where, pdata, "name", str).strip())
        if not name:
            raise ManifestError(path, f"{where}.name", "must not be empty")
        if "price" not in pdata:
            raise ManifestError(path, f"{where}.price", "missing required key")
        price = _price(path, f"{where}.price", pdata["price"])
        stock = _req(path, where, pdata, "stock", int)
        if stock < 0:
            raise ManifestError(path, f"{where}.stock", f"must not be negative, got {stock}")
        limit = pdata.get("per_buyer_limit")
        if limit is not None:
            _typed(path, f"{where}.per_buyer_limit", limit, int)
            if limit < 1:
                raise ManifestError(path, f"{where}.per_buyer_limit", "must be at least 1")
        image = pdata.get("image")
        image_path = None
        if image is not None:
            _typed(path, f"{where}.image", image, str)
            image_path = (path.parent / image).resolve()
            if not image_path.is_file():
                raise ManifestError(path, f"{where}.image", f"file not found: {image_path}")
        printer = pdata.get("printer")
        if printer is not None:
            _typed(path, f"{where}.printer", printer, str)
            if printer not in printer_names:
                raise ManifestError(path, f"{where}.printer", f"no printer named {printer!r}")
        products.append(
            ProductConfig(
                sku=sku,
                name=name,
                price=price,
                stock=stock,
                image=image_path,
                per_buyer_limit=limit,
                printer=printer,
                description=_typed(path, f"{where}.description", pdata.get("description", ""), str),
                barcode=_barcode(path, f"{where}.barcode", pdata.get("barcode")),
            )
        )

    staff = data.get("staff", {})
    _typed(path, "staff", staff, dict)
    _unknown(path, "staff", staff, _STAFF_KEYS)
    password = env.get("SHOWROOM_STAFF_PASSWORD") or staff.get("password")
    if not isinstance(password, str) or not password:
        raise ManifestError(
            path, "staff.password", "missing required key (or set SHOWROOM_STAFF_PASSWORD)"
        )
    if len(password) < MIN_STAFF_PASSWORD:
        raise ManifestError(
            path,
            "staff.password",
            f"must be at least {MIN_STAFF_PASSWORD} characters (got {len(password)})",
        )

    chat = _chat(path, data.get("chat", {}))
    members = _members(path, staff.get("members", []))

    return ShowConfig(
        id=show_id,
        title=title,
        stream_key=stream_key,
        currency=currency,
        video=video,
        products=tuple(products),
        printers=tuple(printers),
        staff_password=password,
        manifest_path=path.resolve(),
        pickup_note=pickup_note,
        chat=chat,
        members=members,
        cues=_cues(path, data.get("cues", []), {p.sku: p for p in products}),
        starts_at=starts_at,
        description=description,
        cover=cover,
        email=_email(path, data.get("email"), env),
        restreams=_restreams(path, data.get("restream", []), env),
        playback_whep_url=_playback(path, show.get("playback")),
        ice_servers=_ice(path, data.get("ice")),
        ladder=_ladder(path, show.get("ladder"), video),
    )


def _ladder(path: Path, data: Any, video: VideoConfig) -> tuple[Rung, ...] | None:
    """``[[show.ladder]]``: each rung smaller than the show's size and cheaper than its
    bitrate (a rung that is not would only cost an encode)."""
    if data is None:
        return None
    rungs = []
    for i, rdata in enumerate(_typed(path, "show.ladder", data, list)):
        where = f"show.ladder[{i}]"
        _typed(path, where, rdata, dict)
        _unknown(path, where, rdata, _RUNG_KEYS)
        width = _req(path, where, rdata, "width", int)
        height = _req(path, where, rdata, "height", int)
        kbps = _req(path, where, rdata, "bitrate_kbps", int)
        if not (160 <= width <= video.width and width % 2 == 0):
            raise ManifestError(
                path, f"{where}.width", f"must be an even number from 160 to {video.width}"
            )
        if not (120 <= height <= video.height and height % 2 == 0):
            raise ManifestError(
                path, f"{where}.height", f"must be an even number from 120 to {video.height}"
            )
        if width * height >= video.width * video.height:
            raise ManifestError(path, where, "must be smaller than show.video")
        if not 100 <= kbps < video.bitrate_kbps:
            raise ManifestError(
                path,
                f"{where}.bitrate_kbps",
                f"must be from 100 to below show.video.bitrate_kbps ({video.bitrate_kbps})",
            )
        rungs.append(Rung(width, height, kbps))
    return tuple(rungs)


def _ice(path: Path, data: Any) -> tuple[IceServer, ...]:
    """``[ice]``: ``stun = [urls]`` and ``[[ice.turn]]`` url/username/credential."""
    if data is None:
        return ()
    _typed(path, "ice", data, dict)
    _unknown(path, "ice", data, {"stun", "turn"})
    out: list[IceServer] = []
    for i, url in enumerate(_typed(path, "ice.stun", data.get("stun", []), list)):
        url = _typed(path, f"ice.stun[{i}]", url, str).strip()
        if problem := url_problem(url, turn=False):
            raise ManifestError(path, f"ice.stun[{i}]", problem)
        out.append(IceServer(url))
    for i, item in enumerate(_typed(path, "ice.turn", data.get("turn", []), list)):
        where = f"ice.turn[{i}]"
        _typed(path, where, item, dict)
        _unknown(path, where, item, {"url", "username", "credential"})
        url = _req(path, where, item, "url", str).strip()
        if problem := url_problem(url, turn=True):
            raise ManifestError(path, f"{where}.url", problem)
        creds = []
        for key in ("username", "credential"):
            value = _req(path, where, item, key, str)
            if problem := credential_problem(value):
                raise ManifestError(path, f"{where}.{key}", problem)
            creds.append(value)
        out.append(IceServer(url, *creds))
    return tuple(out)


def restream_env_name(name: str) -> str:
    """``SHOWROOM_RESTREAM_<NAME>_KEY``: a destination's stream key from the environment."""
    return f"SHOWROOM_RESTREAM_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_KEY"


def _restreams(path: Path, data: Any, env: dict[str, str]) -> tuple[Destination, ...]:
    out: list[Destination] = []
    for i, item in enumerate(_typed(path, "restream", data, list)):
        where = f"restream[{i}]"
        _typed(path, where, item, dict)
        _unknown(path, where, item, _RESTREAM_KEYS)
        name = _req(path, where, item, "name", str)
        if not SLUG.match(name):
            raise ManifestError(
                path, f"{where}.name", "must be lowercase letters, digits and dashes (a URL slug)"
            )
        if any(d.name == name for d in out):
            raise ManifestError(path, f"{where}.name", f"duplicate restream name {name!r}")
        url = _req(path, where, item, "url", str).strip()
        problem = destination_problem(url)
        if problem:
            raise ManifestError(path, f"{where}.url", problem)
        key = env.get(restream_env_name(name)) or item.get("key")
        if key is not None:
            key = _typed(path, f"{where}.key", key, str).strip()
        if not key:
            raise ManifestError(
                path, f"{where}.key", f"missing required key (or set {restream_env_name(name)})"
            )
        if any(c.isspace() or ord(c) < 32 for c in key):
            raise ManifestError(
                path, f"{where}.key", "must not contain spaces or control characters"
            )
        autostart = _typed(path, f"{where}.autostart", item.get("autostart", False), bool)
        out.append(Destination(name, url, key, autostart))
    return tuple(out)


def _playback(path: Path, data: Any) -> str | None:
    if data is None:
        return None
    _typed(path, "show.playback", data, dict)
    _unknown(path, "show.playback", data, _PLAYBACK_KEYS)
    if "whep_url" not in data:
        return None
    url = _typed(path, "show.playback.whep_url", data["whep_url"], str).strip()
    # A plain host[:port]: the page's Content-Security-Policy names this origin.
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s]*)?", url):
        raise ManifestError(path, "show.playback.whep_url", f"must be an http(s) URL, got {url!r}")
    return url


def _cues(path: Path, data: Any, products: dict[str, ProductConfig]) -> tuple[CueConfig, ...]:
    cues = []
    for i, cue in enumerate(_typed(path, "cues", data, list)):
        where = f"cues[{i}]"
        _typed(path, where, cue, dict)
        _unknown(path, where, cue, _CUE_KEYS)
        action = _req(path, where, cue, "action", str)
        if action not in CUE_ACTIONS:
            raise ManifestError(path, f"{where}.action", f"must be one of {', '.join(CUE_ACTIONS)}")
        sku = cue.get("sku")
        if action in ("feature", "drop"):
            sku = _req(path, where, cue, "sku", str)
            if sku not in products:
                raise ManifestError(path, f"{where}.sku", f"no product {sku!r} in this show")
        text = cue.get("text")
        if action in ("ticker", "pin"):
            text = _req(path, where, cue, "text", str).strip()
            if not text or len(text) > 200:
                raise ManifestError(path, f"{where}.text", "must be 1 to 200 characters")
        quantity = duration = limit = 0
        price = None
        if action == "drop":
            quantity = _req(path, where, cue, "quantity", int)
            duration = _req(path, where, cue, "duration_s", int)
            limit = _typed(path, f"{where}.per_buyer_limit", cue.get("per_buyer_limit", 0), int)
            if quantity < 1 or not 1 <= duration <= 86400 or limit < 0:
                raise ManifestError(
                    path, where, "a drop needs quantity >= 1 and duration_s from 1 to 86400"
                )
            if "price" in cue:
                price = _price(path, f"{where}.price", cue["price"])
        default_label = {
            "feature": f"Feature {products[sku].name}" if sku in products else "Feature",
            "unfeature": "Take the product off screen",
            "drop": f"Drop: {quantity} x {products[sku].name}" if sku in products else "Drop",
            "ticker": f"Ticker: {text}",
            "pin": f"Pin: {text}",
        }[action]
        label = _typed(path, f"{where}.label", cue.get("label", default_label), str).strip()
        cues.append(
            CueConfig(action, label or default_label, sku, quantity, duration, limit, price, text)
        )
    return tuple(cues)


def _members(path: Path, data: Any) -> tuple[StaffMember, ...]:
    members: list[StaffMember] = []
    for i, m in enumerate(_typed(path, "staff.members", data, list)):
        where = f"staff.members[{i}]"
        _typed(path, where, m, dict)
        _unknown(path, where, m, _MEMBER_KEYS)
        name = _req(path, where, m, "name", str).strip()
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", name):
            raise ManifestError(
                path, f"{where}.name", "must be 1-32 letters, digits, '.', '_' or '-'"
            )
        if any(x.name == name for x in members):
            raise ManifestError(path, f"{where}.name", f"duplicate member {name!r}")
        role = _req(path, where, m, "role", str)
        if role not in ROLES:
            raise ManifestError(path, f"{where}.role", f"must be one of {', '.join(ROLES)}")
        hashed = _req(path, where, m, "password_hash", str)
        if not hashed.startswith("$argon2"):
            raise ManifestError(
                path, f"{where}.password_hash", "must be an argon2 hash from `showroom passwd`"
            )
        members.append(StaffMember(name, role, hashed))
    return tuple(members)


def _chat(path: Path, data: Any) -> ChatConfig:
    from server.chat import rules

    _typed(path, "chat", data, dict)
    _unknown(path, "chat", data, _CHAT_KEYS)
    try:
        slow = rules.clean_slow_mode(data.get("slow_mode_s", 0))
    except rules.Refused as exc:
        raise ManifestError(path, "chat.slow_mode_s", exc.detail) from None
    try:
        words = rules.clean_blocked_words(data.get("blocked_words", []))
    except rules.Refused as exc:
        raise ManifestError(path, "chat.blocked_words", exc.detail) from None
    return ChatConfig(slow, words)


def public_secrets_in(show: ShowConfig) -> list[str]:
    """Which of the show's secrets are ones anybody can read in the docs or the demo."""
    found = []
    if show.staff_password in PUBLIC_SECRETS:
        found.append("staff.password")
    if show.stream_key in PUBLIC_SECRETS:
        found.append("show.stream_key")
    return found


def load_shows(paths: list[Path], env: dict[str, str] | None = None) -> dict[str, ShowConfig]:
    shows: dict[str, ShowConfig] = {}
    for p in paths:
        show = load_manifest(p, env)
        if show.id in shows:
            raise ManifestError(
                p,
                "show.id",
                f"show {show.id!r} is already defined by {shows[show.id].manifest_path}",
            )
        shows[show.id] = show
    return shows

"""Printer connections: deliver ESC/POS bytes and ask whether the printer is there.

Every call here blocks (sockets, device files), so the worker runs them in a thread.
``send`` returns only when the printer has *accepted* every byte: for TCP, when the
kernel's send queue is empty (the printer's TCP stack acknowledged all of it) and the
printer's status reply (DLE EOT, if it gives them) says it is online; for
serial and USB device nodes, when the output queue drained. Anything else raises
``PrinterError`` with a sentence staff can act on.

Schemes: ``tcp://host:port`` (raw port 9100), ``usb://VID:PID`` (the kernel's usblp
device node for that printer), ``serial:///dev/ttyUSB0?baud=19200``, and
``file:///path``: a character device is written like a printer; a regular file path is
a *virtual printer* that writes one ``.bin`` file per label (plus its PNG preview) next
to that path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import stat
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from escpos.constants import RT_MASK_NOPAPER, RT_MASK_ONLINE, RT_STATUS_ONLINE, RT_STATUS_PAPER

TIOCOUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # == SIOCOUTQ for sockets
LPGETSTATUS = 0x060B
CONNECT_TIMEOUT_S = 3.0
STATUS_REPLY_S = 0.3
CONFIRM_S = 3.0  # a printer that answers status must confirm a label within this
NO_STATUS_WAIT_S = 0.005  # one that never answers: just long enough to see a close


class PrinterError(Exception):
    """The printer did not take the label (offline, refused, stalled, no paper...)."""


@dataclass(frozen=True)
class LabelFile:
    """What a virtual printer needs besides the bytes: a file stem and a PNG preview."""

    stem: str
    preview: Callable[[], bytes] | None = None


class Connection:
    def send(self, data: bytes, timeout: float, label: LabelFile | None = None) -> str | None:
        """Deliver ``data``; return where it went when that is worth logging (files)."""
        raise NotImplementedError

    def probe(self, timeout: float) -> None:
        """Raise PrinterError when the printer is unreachable or reports a problem."""
        raise NotImplementedError


# --- TCP (port 9100) --------------------------------------------------------------


@dataclass
class TcpConnection(Connection):
    host: str
    port: int
    # Whether this printer answers DLE EOT status queries, learnt from its answers: one
    # that does must confirm every label; one that never does is trusted once its TCP
    # stack acknowledged the bytes and it kept the connection open.
    answers_status: bool | None = field(default=None, compare=False)

    def _connect(self, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection(
                (self.host, self.port), timeout=min(timeout, CONNECT_TIMEOUT_S)
            )
        except OSError as exc:
            raise PrinterError(f"cannot connect to {self.host}:{self.port}: {_why(exc)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self, data: bytes, timeout: float, label: LabelFile | None = None) -> None:
        deadline = time.monotonic() + timeout
        sock = self._connect(timeout)
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.sendall(data)
            except OSError as exc:
                raise PrinterError(f"printer stopped taking data: {_why(exc)}") from None
            # sendall only filled our kernel buffer; wait until the printer acknowledged it.
            pause = 0.0002
            while _outq(sock.fileno()) > 0:
                if time.monotonic() > deadline:
                    raise PrinterError(f"printer did not take the label within {timeout:.0f} s")
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
            self._confirm(sock, deadline)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _confirm(self, sock: socket.socket, deadline: float) -> None:
        """After the label: ask the printer's status (DLE EOT 1). A label cut mid-send
        (the printer closed or reset the connection, or went offline) is not printed; a
        printer that answers status queries must answer this one too."""
        # A reset that emptied our send queue (the printer dropped the connection with
        # bytes unread) is already recorded on the socket: no need to wait for it.
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise PrinterError(f"printer dropped the connection mid-label: {os.strerror(error)}")
        wait = CONFIRM_S if self.answers_status else NO_STATUS_WAIT_S
        sock.settimeout(max(0.001, min(wait, deadline - time.monotonic())))
        try:
            sock.sendall(RT_STATUS_ONLINE)
            reply = sock.recv(1)
        except TimeoutError:
            if self.answers_status:
                raise PrinterError("printer did not confirm the label (no status reply)") from None
            return  # a printer without status replies: the bytes were acknowledged
        except OSError as exc:
            raise PrinterError(f"printer dropped the connection mid-label: {_why(exc)}") from None
        if not reply:
            raise PrinterError("printer closed the connection before confirming the label")
        self.answers_status = True
        _check_online(reply[0])

    def probe(self, timeout: float) -> None:
        sock = self._connect(timeout)
        try:
            answered = _status_query(sock)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
        if answered is not None:
            self.answers_status = answered


def _status_query(sock: socket.socket) -> bool | None:
    """ESC/POS real-time status (DLE EOT); printers that do not answer count as online.
    Returns whether the printer answered (None: it closed the connection quietly)."""
    sock.settimeout(STATUS_REPLY_S)
    for query, check in ((RT_STATUS_ONLINE, _check_online), (RT_STATUS_PAPER, _check_paper)):
        try:
            sock.sendall(query)
            reply = sock.recv(1)
        except TimeoutError:
            return False
        except OSError as exc:
            raise PrinterError(f"printer closed the connection: {_why(exc)}") from None
        if not reply:
            return None
        check(reply[0])
    return True


def _check_online(status: int) -> None:
    if status & RT_MASK_ONLINE:
        raise PrinterError("printer reports it is offline (cover open, paper out or error)")


def _check_paper(status: int) -> None:
    if status & RT_MASK_NOPAPER == RT_MASK_NOPAPER:
        raise PrinterError("printer is out of paper")


def _outq(fd: int) -> int:
    buf = fcntl.ioctl(fd, TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def _why(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return exc.strerror or exc.__class__.__name__


# --- device nodes: serial, USB (usblp), character devices ---------------------------


def _write_device(fd: int, data: bytes, deadline: float, what: str) -> None:
    view = memoryview(data)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000)):
            raise PrinterError(f"{what} did not take the label in time")
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise PrinterError(f"{what}: {_why(exc)}") from None
        view = view[n:]
    with contextlib.suppress(OSError):  # not every device has an output queue to drain
        while _outq(fd) > 0:
            if time.monotonic() > deadline:
                raise PrinterError(f"{what} did not take the label in time")
            time.sleep(0.005)


def _open_device(path: str, what: str, read_back: bool = False) -> int:
    mode = os.O_RDWR if read_back else os.O_WRONLY
    try:
        return os.open(path, mode | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise PrinterError(f"cannot open {what} {path}: {_why(exc)}") from None


@dataclass
class DeviceConnection(Connection):
    path: str
    baud: int | None = None  # serial only
    what: str = "printer device"
    # Serial lines carry the printer's status replies back (as over TCP, learnt).
    answers_status: bool | None = field(default=None, compare=False)

    def _open(self) -> int:
        fd = _open_device(self.path, self.what, read_back=self.baud is not None)
        if self.baud is not None:
            _configure_serial(fd, self.baud)
        return fd

    def send(self, data: bytes, timeout: float, label: LabelFile | None = None) -> None:
        fd = self._open()
        try:
            deadline = time.monotonic() + timeout
            _write_device(fd, data, deadline, self.what)
            if self.baud is not None:
                wait = CONFIRM_S if self.answers_status else NO_STATUS_WAIT_S
                reply = self._status(fd, min(wait, max(0.001, deadline - time.monotonic())))
                if reply is None and self.answers_status:
                    raise PrinterError(f"{self.what} did not confirm the label (no status reply)")
                if reply is not None:
                    _check_online(reply)
        finally:
            os.close(fd)

    def _status(self, fd: int, wait: float) -> int | None:
        """DLE EOT 1 on the line; the status byte, or None if none came within ``wait``."""
        with contextlib.suppress(termios.error):
            termios.tcflush(fd, termios.TCIFLUSH)  # no stale reply from an earlier query
        _write_device(fd, RT_STATUS_ONLINE, time.monotonic() + 1, self.what)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(int(wait * 1000)):
            return None
        try:
            reply = os.read(fd, 1)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise PrinterError(f"{self.what}: {_why(exc)}") from None
        if not reply:
            return None
        self.answers_status = True
        return reply[0]

    def probe(self, timeout: float) -> None:
        fd = self._open()
        try:
            if self.baud is not None:
                reply = self._status(fd, STATUS_REPLY_S)
                if reply is None:
                    self.answers_status = False
                else:
                    _check_online(reply)
            else:
                _usblp_status(fd)
        finally:
            os.close(fd)


def _configure_serial(fd: int, baud: int) -> None:
    """Raw 8N1 at ``baud`` (thermal printers default to 9600 or 19200)."""
    speed = getattr(termios, f"B{baud}", None)
    if speed is None:
        raise PrinterError(f"unsupported baud rate {baud}")
    try:
        attrs = termios.tcgetattr(fd)
    except termios.error:
        return  # not a tty (e.g. a pipe standing in for the port)
    attrs[0] = 0  # iflag
    attrs[1] = 0  # oflag: no newline translation
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] = 0  # lflag
    attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _usblp_status(fd: int) -> None:
    """usblp answers LPGETSTATUS with the printer port status; other devices don't."""
    try:
        buf = fcntl.ioctl(fd, LPGETSTATUS, b"\0\0\0\0")
    except OSError:
        return
    status = struct.unpack("i", buf)[0]
    if status & 0x20:
        raise PrinterError("printer is out of paper")
    if not status & 0x08:
        raise PrinterError("printer reports an error")


def usb_device_node(vid: int, pid: int, sysfs: Path = Path("/sys/class/usbmisc")) -> str | None:
    """The usblp node (/dev/usb/lpN) of the USB printer VID:PID, if one is plugged in."""
    if not sysfs.is_dir():
        return None
    for node in sorted(sysfs.glob("lp*")):
        device = (node / "device").resolve().parent
        try:
            v = int((device / "idVendor").read_text().strip(), 16)
            p = int((device / "idProduct").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if (v, p) == (vid, pid):
            return f"/dev/usb/{node.name}"
    return None


@dataclass
class UsbConnection(Connection):
    vid: int
    pid: int

    def _device(self) -> DeviceConnection:
        node = usb_device_node(self.vid, self.pid)
        if node is None:
            raise PrinterError(
                f"no USB printer {self.vid:04x}:{self.pid:04x} found (plugged in? usblp loaded?)"
            )
        return DeviceConnection(node, what=f"USB printer {self.vid:04x}:{self.pid:04x}")

    def send(self, data: bytes, timeout: float, label: LabelFile | None = None) -> None:
        self._device().send(data, timeout, label)

    def probe(self, timeout: float) -> None:
        self._device().probe(timeout)


# --- virtual printer (files) --------------------------------------------------------


@dataclass
class FileConnection(Connection):
    """A regular file path: one ``<stem>-<label>.bin`` (+ ``.png``) per label beside it."""

    path: Path

    def send(self, data: bytes, timeout: float, label: LabelFile | None = None) -> str:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{self.path.stem}-{label.stem if label else int(time.time() * 1000)}"
            target = folder / f"{name}.bin"
            tmp = target.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(target)  # a label file is complete or absent
            if label and label.preview:
                (folder / f"{name}.png").write_bytes(label.preview())
        except OSError as exc:
            raise PrinterError(f"cannot write {folder}: {_why(exc)}") from None
        return str(target)

    def probe(self, timeout: float) -> None:
        folder = self.path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PrinterError(f"folder {folder} is missing or not writable")


# --- parsing ------------------------------------------------------------------------


def open_connection(url: str) -> Connection:
    """The connection for a manifest ``connection`` string (ValueError when malformed)."""
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        if not parts.hostname:
            raise ValueError(f"{url}: missing host")
        return TcpConnection(parts.hostname, parts.port or 9100)
    if parts.scheme == "usb":
        vid, _, pid = parts.netloc.partition(":")
        try:
            return UsbConnection(int(vid, 16), int(pid, 16))
        except ValueError:
            raise ValueError(
                f"{url}: expected usb://VID:PID in hex, e.g. usb://04b8:0202"
            ) from None
    if parts.scheme == "serial":
        path = parts.path or parts.netloc
        baud = int(parse_qs(parts.query).get("baud", ["9600"])[0])
        return DeviceConnection(path, baud=baud, what=f"serial printer {path}")
    if parts.scheme == "file":
        path = Path(parts.path)
        with contextlib.suppress(OSError):
            if stat.S_ISCHR(path.stat().st_mode):
                return DeviceConnection(str(path), what=f"printer device {path}")
        return FileConnection(path)
    raise ValueError(f"{url}: unsupported printer connection")

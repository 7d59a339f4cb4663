"""Printer connections: ESC/POS status answers over TCP, a serial line (a real pty), URLs."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from devices.connections import (
    DeviceConnection,
    FileConnection,
    PrinterError,
    TcpConnection,
    UsbConnection,
    open_connection,
)


def status_printer(online_status: int, paper_status: int) -> tuple[socket.socket, int]:
    """A printer that answers DLE EOT 1 / DLE EOT 4 with the given status bytes."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    while chunk := conn.recv(3):
                        if chunk == b"\x10\x04\x01":
                            conn.sendall(bytes([online_status]))
                        elif chunk == b"\x10\x04\x04":
                            conn.sendall(bytes([paper_status]))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


@pytest.mark.parametrize(
    ("online", "paper", "problem"),
    [
        (0x12, 0x12, None),
        (0x1A, 0x12, "offline"),  # bit 3: offline (cover open, error)
        (0x12, 0x72, "out of paper"),  # paper end sensor
    ],
)
def test_status_query_reports_what_the_printer_says(online, paper, problem):
    srv, port = status_printer(online, paper)
    try:
        conn = TcpConnection("127.0.0.1", port)
        if problem is None:
            conn.probe(2)
        else:
            with pytest.raises(PrinterError, match=problem):
                conn.probe(2)
    finally:
        srv.close()


def test_unreachable_printer_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(PrinterError, match="cannot connect to 127.0.0.1"):
            TcpConnection("127.0.0.1", port).send(b"\x1b@", 2)


def test_serial_printer_gets_the_bytes_on_the_line():
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        conn = open_connection(f"serial://{path}?baud=19200")
        assert isinstance(conn, DeviceConnection) and conn.baud == 19200
        label = b"\x1b@hello\n\x1dV\x00"
        conn.send(label, 5)
        got = b""
        while len(got) < len(label):
            got += os.read(master, 1024)
        # Raw mode: no newline translation. (A status query, DLE EOT 1, may follow it.)
        assert got[: len(label)] == label
    finally:
        os.close(master)
        os.close(slave)


def test_connection_urls():
    assert open_connection("tcp://10.0.0.5:9100") == TcpConnection("10.0.0.5", 9100)
    assert open_connection("tcp://printer.local") == TcpConnection("printer.local", 9100)
    assert open_connection("usb://04b8:0202") == UsbConnection(0x04B8, 0x0202)
    assert isinstance(open_connection("file:///tmp/x/counter.bin"), FileConnection)
    assert isinstance(open_connection("file:///dev/null"), DeviceConnection)  # a device node
    with pytest.raises(ValueError):
        open_connection("usb://nothex")
    with pytest.raises(PrinterError, match="no USB printer 04b8:0202"):
        UsbConnection(0x04B8, 0x0202).send(b"x", 1)

"""One viewer's frame in one C call: its header fields, libsrtp in place, one GSO write.

The lean path (media/lean.py) sends each viewer a frame as a handful of Python steps per
packet: the header fields, a call into libsrtp, a view of the result, and a ``sendmsg``
whose arguments Python parses again for every viewer. Measured in the server at 200
viewers that interpreter work was about half of a viewer's cost, more than libsrtp and
the kernel's sends together. ``fs_send`` below does the same steps in C for one viewer
and one laid-out frame, so a viewer costs one call per frame, and the packets on the
wire are byte for byte those of the Python loop (``tests/test_media_lean.py`` compares
them).

It is compiled with cffi (the toolchain pylibsrtp and aiortc's codecs are built with)
the first time it is needed, or by ``python -m media.fastsend`` (``make venv`` runs it),
into a cache folder named for the source, and loaded from there afterwards. Where it
cannot be built (no C compiler) or ``SHOWROOM_FASTSEND=0`` is set, ``load()`` returns
None and the lean path runs its Python loop instead, the same packets, slower.

It relies on libsrtp 2's ``srtp_protect(srtp_t, void *, int *)`` as pylibsrtp 1.0
exposes it (``pylibsrtp._binding.lib.srtp_protect``), handed in as a function pointer,
and on the session's ``srtp_t`` (``Session._srtp[0]``); media/lean.py lists these among
the internals its test checks.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import socket
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("showroom.media.fastsend")

CDEF = """
struct fs_layout {              /* one laid-out frame (media/lean.py FrameLayout) */
    unsigned char *scratch;     /* the broadcast's scratch buffer */
    const unsigned char *tmpl;  /* the frame's packets at their slots */
    int tlen;
    const int *offsets;         /* each packet's slot */
    const int *lengths;         /* each packet's length before SRTP */
    const int *runs;            /* (start, end) per write */
    int nruns;
};
struct fs_viewer {              /* one viewer's stream (media/lean.py LeanSender) */
    void *srtp;                 /* its libsrtp session (srtp_t) */
    int fd;
    int gso;                    /* its socket takes GSO writes */
    unsigned int ssrc;
    int addrlen;
    unsigned char addr[28];     /* struct sockaddr_in or sockaddr_in6 */
    unsigned int seq;           /* the next RTP sequence number */
    unsigned int ts_offset;
    long long packets;          /* sent, for the RTCP sender report */
    long long octets;
    double rtx_allowance;       /* bytes of retransmission allowed now */
    long long last_ts;          /* codec-clock timestamp of the newest frame sent, -1 */
    int keyframe_seq;           /* first packet of the newest keyframe sent, -1 */
    int waiting;                /* for a keyframe before the next packet */
    int follow_up;              /* NACKs to retry or probe padding: Python's turn after a send */
    int hist_seq[128];          /* per fan-out entry slot (seq % 128): its first packet */
    int hist_fseq[128];         /* ... and the entry's fan-out sequence number, -1 */
};
void fs_init(void *protect, double rtx_burst, double rtx_share);
int fs_send_entry(const struct fs_layout *l, struct fs_viewer *v, long long timestamp,
                  int keyframe, int fseq, int count, long long nbytes);
int fs_send_all(const struct fs_layout *l, struct fs_viewer **vs, int n, long long timestamp,
                int keyframe, int fseq, int count, long long nbytes, int *out);
#define FS_HISTORY 128
#define FS_GSO_OFF 1
#define FS_LAGGING 2
#define FS_FOLLOW_UP 4
#define FS_SRTP_ERROR 8
#define FS_SRTP_FAILED -100000
"""

PRELUDE = r"""
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
"""

BODY = r"""
#define FS_MAX_RUN 64

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);
static protect_fn fs_protect;
static double fs_rtx_burst, fs_rtx_share;

void fs_init(void *protect, double rtx_burst, double rtx_share)
{
    fs_protect = (protect_fn)protect;
    fs_rtx_burst = rtx_burst;
    fs_rtx_share = rtx_share;
}

static int fs_sendto(struct fs_viewer *v, const unsigned char *p, int len)
{
    if (sendto(v->fd, p, len, 0, (const struct sockaddr *)v->addr, v->addrlen) < 0)
        return -errno;
    return 0;
}

/* One run of packets as one GSO write; a socket or route that refuses GSO gets them one
   by one, and the viewer no more GSO writes. */
static int fs_write_run(struct fs_viewer *v, unsigned char *const *pkts, const int *lens,
                        int count)
{
    int flag = 0;
    if (count == 1)
        return fs_sendto(v, pkts[0], lens[0]);
    if (v->gso) {
        struct iovec iov[FS_MAX_RUN];
        char control[CMSG_SPACE(sizeof(uint16_t))];
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        memset(control, 0, sizeof control);
        for (int k = 0; k < count; k++) {
            iov[k].iov_base = pkts[k];
            iov[k].iov_len = (size_t)lens[k];
        }
        msg.msg_name = v->addr;
        msg.msg_namelen = (socklen_t)v->addrlen;
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)count;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)lens[0];
        memcpy(CMSG_DATA(c), &size, sizeof size);
        if (sendmsg(v->fd, &msg, 0) >= 0)
            return 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -errno;
        v->gso = 0;
        flag = FS_GSO_OFF;
    }
    for (int k = 0; k < count; k++) {
        int rc = fs_sendto(v, pkts[k], lens[k]);
        if (rc)
            return rc;
    }
    return flag;
}

static int fs_send(const struct fs_layout *l, struct fs_viewer *v, unsigned int seq,
                   unsigned int ts)
{
    unsigned char *pkts[FS_MAX_RUN];
    int lens[FS_MAX_RUN];
    int flag = 0;
    memcpy(l->scratch, l->tmpl, (size_t)l->tlen);
    for (int r = 0; r < l->nruns; r++) {
        int start = l->runs[2 * r], end = l->runs[2 * r + 1];
        if (end - start > FS_MAX_RUN)
            return -EINVAL;
        for (int k = start; k < end; k++) {
            unsigned char *p = l->scratch + l->offsets[k];
            unsigned int s = (seq + (unsigned int)k) & 0xFFFF;
            p[2] = (unsigned char)(s >> 8);
            p[3] = (unsigned char)s;
            p[4] = (unsigned char)(ts >> 24);
            p[5] = (unsigned char)(ts >> 16);
            p[6] = (unsigned char)(ts >> 8);
            p[7] = (unsigned char)ts;
            p[8] = (unsigned char)(v->ssrc >> 24);
            p[9] = (unsigned char)(v->ssrc >> 16);
            p[10] = (unsigned char)(v->ssrc >> 8);
            p[11] = (unsigned char)v->ssrc;
            int len = l->lengths[k];
            int rc = fs_protect(v->srtp, p, &len);
            if (rc)
                return FS_SRTP_FAILED - rc;
            pkts[k - start] = p;
            lens[k - start] = len;
        }
        int rc = fs_write_run(v, pkts, lens, end - start);
        if (rc < 0)
            return rc;
        flag |= rc;
    }
    return flag;
}

/* One entry to one viewer, with the stream state LeanSender.send_entry keeps. */
int fs_send_entry(const struct fs_layout *l, struct fs_viewer *v, long long timestamp,
                  int keyframe, int fseq, int count, long long nbytes)
{
    unsigned int seq = v->seq;
    int slot = fseq & (FS_HISTORY - 1);
    v->hist_seq[slot] = (int)seq;
    v->hist_fseq[slot] = fseq;
    v->last_ts = timestamp;
    if (keyframe)
        v->keyframe_seq = (int)seq;
    v->seq = (seq + (unsigned int)count) & 0xFFFF;
    v->packets += count;
    v->octets += nbytes;
    double allowance = v->rtx_allowance + fs_rtx_share * (double)nbytes;
    v->rtx_allowance = allowance < fs_rtx_burst ? allowance : fs_rtx_burst;
    unsigned int ts = (unsigned int)((timestamp + (long long)v->ts_offset) & 0xFFFFFFFFLL);
    return fs_send(l, v, seq, ts);
}

/* One entry to every viewer of a group (alike: one layout). Viewers waiting for a
   keyframe are passed over until one comes. ``out`` gets (index << 4 | FS_* flags) for
   each viewer Python must see to; the count is returned. */
int fs_send_all(const struct fs_layout *l, struct fs_viewer **vs, int n, long long timestamp,
                int keyframe, int fseq, int count, long long nbytes, int *out)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        struct fs_viewer *v = vs[i];
        if (v->waiting) {
            if (!keyframe)
                continue;
            v->waiting = 0;
        }
        int gso = v->gso;
        int rc = fs_send_entry(l, v, timestamp, keyframe, fseq, count, nbytes);
        int flags = 0;
        if (rc <= FS_SRTP_FAILED)
            flags |= FS_SRTP_ERROR | FS_LAGGING;
        else if (rc < 0)
            flags |= FS_LAGGING;
        if (gso && !v->gso)
            flags |= FS_GSO_OFF;
        if (v->follow_up && !(flags & FS_LAGGING))
            flags |= FS_FOLLOW_UP;
        if (flags)
            out[k++] = (i << 4) | flags;
    }
    return k;
}
"""

HISTORY = 128  # frames of history per viewer for NACKs (a power of two: slot = seq % it)
GSO_OFF, LAGGING, FOLLOW_UP, SRTP_ERROR = 1, 2, 4, 8  # fs_send_all's flags
SRTP_FAILED = -100000
SOURCE = PRELUDE + CDEF + BODY  # the declarations cffi reads are the C ones
_NAME = "_showroom_fastsend_" + hashlib.sha1(SOURCE.encode()).hexdigest()[:10]
_loaded: Any = None
_tried = False
_lock = threading.Lock()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "showroom"


def _suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def build(folder: Path | None = None) -> Path:
    """Compile the module into ``folder`` (the cache by default); its path. Safe to run
    from several processes at once: each builds in its own folder and renames."""
    import cffi

    folder = folder or cache_dir()
    target = folder / (_NAME + _suffix())
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(_NAME, SOURCE, extra_compile_args=["-O2"])
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        os.replace(built, target)
    return target


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load() -> Any | None:
    """The compiled module (``ffi``, ``lib``), built on first use; None where it is
    turned off or cannot be built (the lean path then runs its Python loop)."""
    global _loaded, _tried
    if _tried:
        return _loaded
    with _lock:  # the server loads it from a thread at start-up
        if not _tried:
            _loaded = _load()
            _tried = True
    return _loaded


def _load() -> Any | None:
    if os.environ.get("SHOWROOM_FASTSEND", "1") == "0" or sys.platform != "linux":
        return None
    try:
        module = _import(build())
        from pylibsrtp._binding import ffi as srtp_ffi
        from pylibsrtp._binding import lib as srtp_lib

        from media.lean import RTX_BURST, RTX_SHARE

        protect = _pointer(module.ffi, srtp_ffi.addressof(srtp_lib, "srtp_protect"))
        module.lib.fs_init(protect, float(RTX_BURST), float(RTX_SHARE))
        return module
    except Exception as exc:  # no compiler, no headers: the Python loop does the work
        log.warning("lean path: C send loop unavailable (%s); using the Python loop", exc)
        return None


def sockaddr(family: int, addr: tuple) -> bytes:
    """``addr`` as the kernel's ``struct sockaddr_in`` / ``sockaddr_in6``."""
    if family == socket.AF_INET6:
        host, port = addr[0], addr[1]
        flow = addr[2] if len(addr) > 2 else 0
        scope = addr[3] if len(addr) > 3 else 0
        if "." in host and ":" not in host:
            host = "::ffff:" + host
        return (
            struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, flow)
            + socket.inet_pton(socket.AF_INET6, host.split("%")[0]) + struct.pack("=I", scope)
        )  # fmt: skip
    return (
        struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1])
        + socket.inet_aton(addr[0]) + b"\0" * 8
    )  # fmt: skip


def _pointer(ffi: Any, cdata: Any, ctype: str = "void *") -> Any:
    """A pointer from pylibsrtp's cffi module as one of ours."""
    from pylibsrtp._binding import ffi as srtp_ffi

    return ffi.cast(ctype, int(srtp_ffi.cast("uintptr_t", cdata)))


_abi_ffi: Any = None


def state() -> Any:
    """A new viewer's stream state (``struct fs_viewer``), no history yet: the C send
    loop's own where it loaded, else the same struct from cffi without a compiler (the
    Python loop keeps its state there too, so there is one place for it)."""
    global _abi_ffi
    module = load()
    if module is not None:
        ffi = module.ffi
    else:
        if _abi_ffi is None:
            import cffi

            _abi_ffi = cffi.FFI()
            _abi_ffi.cdef(CDEF)
        ffi = _abi_ffi
    v = ffi.new("struct fs_viewer *")
    v.last_ts = v.keyframe_seq = -1
    ffi.memmove(v.hist_fseq, b"\xff" * ffi.sizeof(v.hist_fseq), ffi.sizeof(v.hist_fseq))
    return v


def attach(module: Any, v: Any, srtp: Any, sock: socket.socket, addr: tuple) -> None:
    """Point ``v`` (from ``state()``) at the viewer's libsrtp session, socket and address."""
    ffi = module.ffi
    v.srtp = _pointer(ffi, srtp)
    v.fd = sock.fileno()
    raw = sockaddr(sock.family, addr)
    v.addrlen = len(raw)
    ffi.memmove(v.addr, raw, len(raw))


def forget_history(v: Any) -> None:
    for slot in range(HISTORY):
        v.hist_fseq[slot] = -1


class Group:
    """Viewers of one broadcast that share a layout, as the array ``fs_send_all`` takes."""

    def __init__(self, module: Any, viewers: list[Any]) -> None:
        self.viewers = viewers  # LeanSenders (they keep their states alive)
        self.n = len(viewers)
        self.array = module.ffi.new("struct fs_viewer *[]", [v.c for v in viewers])
        self.out = module.ffi.new("int[]", max(1, self.n))
        self.send_all = module.lib.fs_send_all  # looked up once, not per frame


def layout(
    module: Any,
    scratch: Any,
    template: bytearray,
    offsets: tuple[int, ...],
    lengths: tuple[int, ...],
    runs: tuple[tuple[int, int], ...],
) -> tuple[Any, ...]:
    """One laid-out frame's C view; the tuple keeps what the struct points at alive
    (``scratch``: the broadcast's buffer, a pylibsrtp cdata)."""
    ffi = module.ffi
    tmpl = ffi.from_buffer("unsigned char[]", template)
    offs = ffi.new("int[]", list(offsets) or [0])
    lens = ffi.new("int[]", list(lengths) or [0])
    flat = ffi.new("int[]", [i for run in runs for i in run] or [0])
    struct_ = ffi.new("struct fs_layout *")
    struct_.scratch = _pointer(ffi, scratch, "unsigned char *")
    struct_.tmpl = tmpl
    struct_.tlen = len(template)
    struct_.offsets, struct_.lengths, struct_.runs = offs, lens, flat
    struct_.nruns = len(runs)
    return struct_, tmpl, offs, lens, flat, scratch


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.environ.get("SHOWROOM_FASTSEND", "1") == "0":
        print("C send loop turned off (SHOWROOM_FASTSEND=0)")
    else:
        try:
            print(f"C send loop for the lean viewer path: {build()}")
        except Exception as exc:  # the server runs without it, slower
            print(f"C send loop not built ({exc}); the lean path will use its Python loop")

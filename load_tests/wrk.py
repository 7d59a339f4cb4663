"""A closed loop of HTTP requests driven by ``wrk`` (Debian's package; C, one thread).

The lean Python generator (``http_buyers.py``) costs about an eighth of what the server
spends per add-to-cart; on a 2-core machine that share comes out of the cores the server's
workers need, so a scaling ratio measured with it is capped below what the workers do.
wrk spends less (on one 2-core machine: 12 µs per add at 200 buyers, 18 µs at 1000, its Lua
``request()`` included, against 19 µs and 20 µs for the Python generator). Each connection
sends its next request as soon as its answer is in; the requests (one per buyer, each with
that buyer's cookie) are taken in turn, so a buyer's adds are spread over the connections
the way a browser's tabs would.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# wrk's latency quantiles reported per run: the run's distribution, sampled evenly, so
# windows can be pooled (each window weighs the same; they are of equal length).
QUANTILES = 999


class WrkMissing(RuntimeError):
    """wrk is not installed (``make system`` installs it)."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class WrkRun:
    requests: int  # answered below 400
    errors: int  # other answers, failed connects, reads, writes and timeouts
    seconds: float
    latencies_ms: list[float]  # QUANTILES quantiles of the run, not one per request
    cpu_s: float  # wrk's own CPU


def _lua_string(text: str) -> str:
    """A Lua long string of level 1 (``[=[...]=]``: a text may end in ``]``)."""
    if not text.isascii() or "]=]" in text or "\n" in text or text.endswith("]="):
        raise ValueError(f"cannot put {text!r} in a Lua long string")
    return f"[=[{text}]=]"


def lua_script(requests: list[Request]) -> str:
    """The wrk script: the requests, formatted once; ``request()`` takes them in turn;
    ``done()`` prints one JSON line (counts, duration, latency quantiles in µs)."""
    if not requests:
        raise ValueError("at least one request")
    entries = []
    for r in requests:
        # "[ " and " ]" around a key: "[[" would open a long string
        headers = ", ".join(
            f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in r.headers.items()
        )
        entries.append(
            f"  {{{_lua_string(r.method)}, {_lua_string(r.path)}, {{{headers}}}, "
            f"{_lua_string(r.body.decode())}}},"
        )
    return "\n".join(
        [
            "local specs = {",
            *entries,
            "}",
            "local built, turn = {}, 0",
            "function init(args)",
            "  for k, s in ipairs(specs) do",
            '    s[3]["Host"] = wrk.headers["Host"]',
            "    built[k] = wrk.format(s[1], s[2], s[3], s[4] ~= '' and s[4] or nil)",
            "  end",
            "end",
            "function request()",
            "  turn = turn % #built + 1",
            "  return built[turn]",
            "end",
            "function done(summary, latency, requests)",
            "  local e = summary.errors",
            "  local q = {}",
            f"  for i = 1, {QUANTILES} do q[i] = latency:percentile(i * 100 / {QUANTILES + 1}) end",
            '  io.write(string.format(\'WRK {"answers": %d, "duration_us": %d, "status": %d, '
            '"failed": %d, "quantiles_us": [%s]}\\n\', summary.requests, summary.duration, '
            'e.status, e.connect + e.read + e.write + e.timeout, table.concat(q, ", ")))',
            "end",
        ]
    )


def parse_output(stdout: str) -> tuple[int, int, float, list[float]]:
    """(good answers, errors, seconds, latency quantiles in ms) from wrk's output: an
    answer of 400 or more (counted among wrk's answers) or a failed connect, read, write
    or timeout is an error."""
    for line in stdout.splitlines():
        if line.startswith("WRK "):
            data = json.loads(line[4:])
            return (
                int(data["answers"]) - int(data["status"]),
                int(data["status"]) + int(data["failed"]),
                data["duration_us"] / 1e6,
                [q / 1000 for q in data["quantiles_us"]],
            )
    raise RuntimeError(f"wrk printed no result:\n{stdout[-2000:]}")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_script(path: Path, requests: list[Request]) -> Path:
    """``lua_script(requests)`` into ``path``, once for the runs that send them."""
    path.write_text(lua_script(requests))
    return path


async def closed_loop(url: str, script: Path, connections: int, seconds: float) -> WrkRun:
    """``connections`` keep-alive connections to ``url`` for ``seconds``, each sending
    its next request (from ``script``, see ``write_script``) as soon as its answer is in."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkMissing("wrk is not installed: `make system` installs it")
    base = urlsplit(url)
    cpu0 = _children_cpu_s()
    proc = await asyncio.create_subprocess_exec(
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(script), f"{base.scheme}://{base.netloc}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out.decode()[-2000:]}")
    good, errors, elapsed, quantiles = parse_output(out.decode())
    return WrkRun(good, errors, elapsed, quantiles, _children_cpu_s() - cpu0)

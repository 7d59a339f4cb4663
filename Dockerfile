# Showroom in a container: Debian's Python 3.11 and packages only (no prebuilt downloads).
# The two README commands (make demo, make test) stay the way to run it on a machine;
# this image is for running `showroom serve` behind a firewall or in compose.yaml.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev build-essential pkg-config \
      libavformat-dev libavcodec-dev libavdevice-dev libavutil-dev libswscale-dev \
      libswresample-dev libavfilter-dev libopus-dev libvpx-dev libsrtp2-dev \
      fonts-dejavu-core ca-certificates redis-tools \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server server
COPY media media
COPY checkout checkout
COPY overlays overlays
COPY web web
COPY devices devices
COPY load_tests load_tests
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir --upgrade pip \
 && /venv/bin/pip install --no-cache-dir .

ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/venv/cache
# The lean viewer path's C send loop, built here (the server runs as nobody).
RUN python -m media.fastsend && chmod -R a+rX /venv/cache
# HTTP, and the UDP range media sockets use (open exactly this in the firewall).
EXPOSE 8080 40000-40100/udp
VOLUME /data
USER nobody
ENTRYPOINT ["showroom"]
CMD ["serve", "--manifest", "/config/show.toml", "--host", "0.0.0.0", "--port", "8080", \
     "--data-dir", "/data", "--log-format", "json"]

"""The show's audio source: the publisher's samples, or silence.

Decoded publisher audio lands in a small bounded FIFO; the show's audio clock pulls one
20 ms frame at a time. When the FIFO runs dry (no publisher, no audio track, a network
hiccup) the frame is silence, and playback resumes only once a little audio has built up
again, so a jittery publisher does not turn into a stutter of tiny gaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CHANNELS = 2


@dataclass
class AudioFifo:
    capacity: int = 48000 // 5  # samples per channel (200 ms): older audio is dropped
    resume_at: int = 960 * 2  # samples per channel needed to resume after running dry
    high_water: int = 960 * 3  # more than this buffered: audio would lag the video
    dropped: int = 0
    _buf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    _playing: bool = False

    @property
    def buffered(self) -> int:
        return len(self._buf) // CHANNELS

    def push(self, interleaved: np.ndarray) -> None:
        """Add int16 interleaved stereo samples (any length)."""
        buf = np.concatenate((self._buf, interleaved.reshape(-1).astype(np.int16, copy=False)))
        excess = len(buf) // CHANNELS - self.capacity
        if excess > 0:
            self.dropped += excess
            buf = buf[excess * CHANNELS :]
        self._buf = buf

    def pop(self, samples: int) -> tuple[np.ndarray, bool]:
        """``samples`` per channel as shape (1, samples*2); True when it is real audio."""
        if not self._playing and self.buffered >= self.resume_at:
            self._playing = True
        if not self._playing or self.buffered < samples:
            self._playing = False
            return np.zeros((1, samples * CHANNELS), np.int16), False
        excess = self.buffered - samples - self.high_water
        if excess > 0:
            # Each underrun leaves a little more audio buffered; shed it so the audio
            # stays within ~60 ms of the live video instead of drifting behind.
            drop = self.buffered - samples - self.resume_at
            self.dropped += drop
            self._buf = self._buf[drop * CHANNELS :]
        n = samples * CHANNELS
        out, self._buf = self._buf[:n], self._buf[n:]
        return out.reshape(1, n), True

    def clear(self) -> None:
        self._buf = np.zeros(0, np.int16)
        self._playing = False

"""The program reader the index fuzz targets share (fuzz_indexmap, fuzz_prefix,
fuzz_items_in): a fuzz input read front to back as operations over a growing table of keys.

A step's first byte chooses the operation (``byte % ops``) and a key (``byte // ops``): a
choice below ``fresh`` reads a new key (a length byte, then that many bytes, or many more for
the largest lengths, so that long keys are reached), any other picks one of the keys seen so
far (``b""`` among them). Arguments after that are taken from the input as the target needs
them; past its end they are empty.
"""

from __future__ import annotations

from collections.abc import Iterator


class Program:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.keys: list[bytes] = [b""]

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end)."""
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        """The next byte, 0 past the end."""
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def new_key(self, short: int, times: int, long_from: int) -> bytes:
        """A new key: a length byte ``n``, then ``n % short`` bytes, or ``n * times`` from
        ``long_from`` on."""
        n = self.byte()
        key = self.take(n % short if n < long_from else n * times)
        self.keys.append(key)
        return key

    def known_key(self, choice: int) -> bytes:
        return self.keys[choice % len(self.keys)]

    def steps(self, ops: int, fresh: int, short: int, times: int,
              long_from: int = 250) -> Iterator[tuple[int, int, bytes]]:
        """(operation, choice, key) per step, until the input is read."""
        while self.pos < len(self.data):
            b = self.byte()
            op, choice = b % ops, b // ops
            if choice < fresh and self.pos < len(self.data):
                key = self.new_key(short, times, long_from)
            else:
                key = self.known_key(choice)
            yield op, choice, key

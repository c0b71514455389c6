"""Disk footprint of a session-store workload: no compression, zstd, zstd + trained dictionary.

Generates a realistic, reproducible data set of web sessions (small JSON documents of roughly
300-600 bytes: user ids, timestamps, roles, preferences, CSRF tokens, user agents, carts),
writes it to three fresh stores and reports each store's size on disk::

    python scripts/compression_ratio.py                 # 20,000 sessions
    python scripts/compression_ratio.py --count 50000 --dict-size 16384

The dictionary is trained (``Store.train_compression_dictionary``) on a sample of the data set
before the values are written, the way an application would train it on its existing sessions.
Disk bytes count every file in the store directory, the dictionary file included.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bitkv

ROLES = ["viewer", "editor", "admin", "billing", "support", "analyst", "owner"]
PERMISSIONS = ["read", "write", "delete", "share", "export", "invite", "manage_billing"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
]
LANGS = ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "ja-JP", "pt-BR"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "America/Sao_Paulo"]
FIRST = ["ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken", "linus"]
LAST = ["lovelace", "hopper", "turing", "dijkstra", "liskov", "knuth", "hamilton", "thompson"]


def make_session(rng: random.Random, now: int) -> tuple[bytes, bytes]:
    user_id = rng.randint(1, 2_000_000)
    created = now - rng.randint(0, 7 * 86400)
    name = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
    sid = f"{rng.getrandbits(128):032x}"
    doc: dict[str, object] = {
        "user_id": user_id,
        "email": f"{name}{rng.randint(1, 999)}@example.com",
        "created_at": created,
        "last_seen": created + rng.randint(0, 86400),
        "roles": sorted(rng.sample(ROLES, rng.randint(1, 3))),
        "perms": sorted(rng.sample(PERMISSIONS, rng.randint(0, 3))),
        "prefs": {
            "theme": rng.choice(["dark", "light", "system"]),
            "lang": rng.choice(LANGS),
            "tz": rng.choice(ZONES),
            "page_size": rng.choice([10, 25, 50, 100]),
            "notify": {"email": rng.random() < 0.7, "push": rng.random() < 0.4},
        },
        "csrf": base64.urlsafe_b64encode(rng.randbytes(32)).rstrip(b"=").decode(),
        "ip": f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
              f"{rng.randint(1, 254)}",
        "mfa": rng.random() < 0.5,
    }
    if rng.random() < 0.8:  # API clients send no user agent
        doc["ua"] = rng.choice(AGENTS)
    if rng.random() < 0.4:
        doc["cart"] = [{"sku": f"SKU-{rng.randint(10000, 99999)}", "qty": rng.randint(1, 4),
                        "cents": rng.randint(199, 99999)}
                       for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.2:
        doc["flash"] = rng.choice(["Saved.", "Welcome back!", "Your password was changed."])
    key = f"session:{sid}".encode()
    return key, json.dumps(doc, separators=(",", ":")).encode()


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if os.path.isfile(os.path.join(path, n)))


def load(path: str, items: list[tuple[bytes, bytes]], *, compression: str | None,
         samples: list[bytes] | None, dict_size: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with bitkv.open(path, compression=compression, auto_compact=False) as db:
        if samples is not None:
            db.train_compression_dictionary(samples, dict_size=dict_size)
        for start in range(0, len(items), 1000):
            with db.batch() as b:
                for k, v in items[start : start + 1000]:
                    b.put(k, v)
        assert len(db) == len(items)
    elapsed = time.perf_counter() - t0
    with bitkv.open(path, readonly=True) as db:  # read everything back through a fresh open
        t1 = time.perf_counter()
        for k, v in items:
            if db.get(k) != v:
                raise SystemExit(f"round trip failed for {k!r}")
        read = time.perf_counter() - t1
    return {"disk": dir_bytes(path), "write_s": elapsed, "read_s": read}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="sessions (default 20000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dict-size", type=int, default=16 * 1024,
                        help="dictionary size in bytes (default 16384)")
    parser.add_argument("--train-samples", type=int, default=2000,
                        help="sessions the dictionary is trained on (default 2000)")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    now = 1_700_000_000
    items = [make_session(rng, now) for _ in range(args.count)]
    sizes = sorted(len(v) for _k, v in items)
    value_bytes = sum(sizes)
    key_bytes = sum(len(k) for k, _v in items)
    print(f"{args.count} sessions: values {sizes[0]}-{sizes[-1]} bytes "
          f"(median {sizes[len(sizes) // 2]}, mean {value_bytes / len(sizes):.0f}); "
          f"{value_bytes / 1e6:.2f} MB of values + {key_bytes / 1e6:.2f} MB of keys")
    samples = [v for _k, v in random.Random(args.seed + 1).sample(items, args.train_samples)]

    rows = []
    with tempfile.TemporaryDirectory(prefix="bitkv-ratio-") as tmp:
        for label, compression, use_dict in (
            ("no compression", None, False),
            ("zstd (level 3), no dictionary", "zstd", False),
            (f"zstd + trained dictionary ({args.dict_size // 1024} KiB)", "zstd", True),
        ):
            path = os.path.join(tmp, label.split()[0] + ("-dict" if use_dict else ""))
            result = load(path, items, compression=compression,
                          samples=samples if use_dict else None, dict_size=args.dict_size)
            rows.append((label, result))

    base = rows[0][1]["disk"]
    print(f"\n{'store':44} {'disk MB':>9} {'vs plain':>9} {'B/session':>10} "
          f"{'write s':>8} {'read s':>7}")
    for label, r in rows:
        print(f"{label:44} {r['disk'] / 1e6:9.2f} {r['disk'] / base:9.2%} "
              f"{r['disk'] / args.count:10.0f} {r['write_s']:8.2f} {r['read_s']:7.2f}")
    logical = value_bytes + key_bytes
    print(f"\nlogical data (keys + values): {logical / 1e6:.2f} MB; the plain store adds the "
          f"28-byte record headers ({28 * args.count / 1e6:.2f} MB) and file headers.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Build bitkv's compiled extension with AddressSanitizer and UndefinedBehaviorSanitizer and run
# the index map's and the kernels' tests (get, get_many, record codec, batch, put, compaction's
# copy loop: test_kernels.py races gets, test_get_many.py batches, against compaction and close;
# test_differential.py; the prefix scans: test_prefix_keys.py) and the fuzz targets' seeded and
# random runs against it (a few minutes on an idle machine).
#
# The sanitized build goes into a temporary copy of the package, put first on PYTHONPATH, so the
# installed (unsanitized) build is untouched. The interpreter is not sanitized: libasan is
# preloaded, and leak detection is off (CPython keeps memory until exit by design); any
# invalid read or write, or any undefined behaviour (-fno-sanitize-recover), aborts the run.
#
#   scripts/asan_native.sh            # from the repo root, in the venv where bitkv is installed
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}

"$python" -c "import setuptools" 2>/dev/null || "$python" -m pip install -q "setuptools>=68"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r bitkv "$work/bitkv"
find "$work/bitkv" -name '*.so' -delete

# HOME_FROM_TAG_MAX_BITS=10: tables above 1,024 slots rehash keys from the arena when they
# grow or shift a cluster, a path the default build takes only above 2**28 slots.
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
flags="$flags -DHOME_FROM_TAG_MAX_BITS=10"
# HELPER_MIN_ENTRIES=1: hint_apply's hashing helper thread runs for every hint asked to use
# it (fuzz_replay.py asks for half of them), not only above 65,536 entries.
flags="$flags -DHELPER_MIN_ENTRIES=1"
(cd "$repo" && CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
  "$python" setup.py -q build_ext --build-lib "$work" --build-temp "$work/tmp" --force) \
  >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
so=$(ls "$work"/bitkv/_native*.so 2>/dev/null) || { cat "$work/build.log";
  echo "asan_native: the sanitized extension was not built" >&2; exit 1; }

libasan=$(gcc -print-file-name=libasan.so)
export LD_PRELOAD=$libasan
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH=$work
export PYTHONDONTWRITEBYTECODE=1

# Run from an empty directory so that the repo's own bitkv/ is not on sys.path first;
# --capture=sys leaves fd 2 alone, so a sanitizer report reaches the terminal before the abort.
cd "$work"
"$python" -c "
import sys, bitkv._native as m
assert m.__file__ == '$so', (m.__file__, '$so')
print('asan_native: testing', m.__file__)
"
"$python" -m pytest -q -p no:cacheprovider --capture=sys --rootdir "$repo" -c "$repo/pyproject.toml" \
  "$repo/tests/test_indexmap.py" "$repo/tests/test_native_crc.py" \
  "$repo/tests/test_native_put.py" "$repo/tests/test_compaction_native.py" \
  "$repo/tests/test_native_replay.py" "$repo/tests/test_resp_native.py" \
  "$repo/tests/test_fuzz_targets.py" "$repo/tests/test_entries_in.py" \
  -k "indexmap or Indexmap or items_in or entries_in or crc or native_put or put_target or kernel or compact or replay or agree or orphan or leak or resp or fuzz_get or prefix"
"$python" -m pytest -q -p no:cacheprovider --capture=sys --rootdir "$repo" -c "$repo/pyproject.toml" \
  "$repo/tests/test_kernels.py" "$repo/tests/test_differential.py" "$repo/tests/test_batch.py" \
  "$repo/tests/test_get_many.py" "$repo/tests/test_prefix_keys.py"
"$python" - "$repo/fuzz" <<'PY'
import random, sys, time
sys.path.insert(0, sys.argv[1])
import fuzz_batch, fuzz_codec_native, fuzz_compact, fuzz_get, fuzz_get_many, fuzz_indexmap
import fuzz_items_in, fuzz_prefix
assert fuzz_indexmap.IndexMap is not None and fuzz_compact.native_copy_live is not None
for target in (fuzz_indexmap, fuzz_items_in, fuzz_prefix, fuzz_get, fuzz_get_many,
               fuzz_codec_native, fuzz_batch):
    rng, started, n = random.Random(99), time.monotonic(), 0
    while time.monotonic() - started < 10:  # random programs for 10 s each
        target.check_one(rng.randbytes(rng.randint(0, 3000)))
        n += 1
    print(f"asan_native: {n} random {target.__name__} inputs ran clean")
import fuzz_put
assert fuzz_put.native_put is not None
rng, started, n = random.Random(98), time.monotonic(), 0
while time.monotonic() - started < 10:  # random put programs (and hostile states) for 10 s
    fuzz_put.check_one(rng.randbytes(rng.randint(0, 3000)))
    n += 1
print(f"asan_native: {n} random put programs ran clean")
seeds, started, n = fuzz_compact.seeds(), time.monotonic(), 0
while time.monotonic() - started < 10:  # mutated segments for 10 s
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        if len(data) > 5:
            data[rng.randrange(5, len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randint(0, len(data)):]
    fuzz_compact.check_one(bytes(data) + rng.randbytes(rng.randint(0, 64)))
    n += 1
print(f"asan_native: {n} mutated segments through both copy loops ran clean")
import fuzz_replay
assert fuzz_replay._native is not None
rng, started, n = random.Random(98), time.monotonic(), 0
while time.monotonic() - started < 10:  # random hints and segments for 10 s
    fuzz_replay.check_one(bytes([rng.randrange(4)]) + rng.randbytes(rng.randint(0, 3000)))
    n += 1
print(f"asan_native: {n} random hint and segment inputs ran clean")
PY
"$python" - "$repo/fuzz" <<'PY'
import random, sys, time
sys.path.insert(0, sys.argv[1])
import fuzz_resp
assert fuzz_resp.RespParser is not None
rng, started, n = random.Random(98), time.monotonic(), 0
corpus = fuzz_resp.seeds()
while time.monotonic() - started < 10:  # seeds with random edits for 10 s
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[i] = rng.randrange(256)
        else:
            del data[i : i + rng.randint(1, 8)]
    fuzz_resp.check_one(bytes(data))
    n += 1
print(f"asan_native: {n} mutated RESP streams ran clean")
PY
echo "asan_native: ok"

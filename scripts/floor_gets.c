/* The memory floor of a get at scale: what two dependent random reads cost on this machine
 * when the index and the segments are the sizes of bitkv's at 1M and at 48M keys.
 *
 * A bitkv get reads one 16-byte slot of the IndexMap's table (its place from the key's hash),
 * then the record's header at the offset the slot names, in the segment map: the second
 * read's address depends on the first. This loop does exactly those two reads per "get", in
 * anonymous memory on 2 MiB pages (as the table is, and as the segments are once they sit in
 * 2 MiB folios), and nothing else: the difference between its two sizes is what the memory
 * alone adds to every get at 48M keys, whatever the code around it does.
 *
 *   gcc -O2 -o /tmp/floor_gets scripts/floor_gets.c
 *   /tmp/floor_gets 2097152 104000000 200000      # 1M keys: a 32 MiB table, 99 MiB of segments
 *   /tmp/floor_gets 67108864 4992000000 200000    # 48M keys: a 1 GiB table, 4.7 GiB of segments
 *
 * As bench.py --scale reads them: GETS keys drawn at random once, read twice ("first pass",
 * every line fetched from memory, and "again", the same lines, which may still be cached),
 * each get's slot depending on the last get's bytes (no overlap between gets, as in a loop
 * of db.get from Python). CPU time (CLOCK_PROCESS_CPUTIME_ID) per get.
 * docs/performance.md, "Gets at scale", has the figures.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define HUGE ((size_t)2 << 20)

static unsigned char *
huge_block(size_t n)
{
    void *p = mmap(NULL, n + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    unsigned char *a = (unsigned char *)(((uintptr_t)p + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    (void)madvise(a, n, MADV_HUGEPAGE);
    memset(a, 1, n); /* every page present before timing, as in a warm store */
    return a;
}

static uint64_t
mix(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

static double
cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

int
main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SLOTS DATA_BYTES GETS\n", argv[0]);
        return 2;
    }
    size_t slots = strtoull(argv[1], NULL, 0), data = strtoull(argv[2], NULL, 0);
    size_t gets = strtoull(argv[3], NULL, 0);
    if (slots == 0 || data < 4096 || gets == 0) {
        fprintf(stderr, "SLOTS > 0, DATA_BYTES >= 4096, GETS > 0\n");
        return 2;
    }
    uint64_t *table = (uint64_t *)huge_block(slots * 16);
    unsigned char *segs = huge_block(data);
    for (size_t i = 0; i < slots; i++) {
        table[2 * i] = mix(i) % (data - 64); /* a record's offset */
    }
    size_t *keys = malloc(gets * sizeof *keys);
    if (keys == NULL) {
        perror("malloc");
        return 1;
    }
    for (size_t i = 0; i < gets; i++) {
        keys[i] = mix(i * 7919 + 1) % slots;
    }
    uint64_t sum = 0;
    for (int pass = 0; pass < 2; pass++) {
        double t0 = cpu_ns();
        for (size_t i = 0; i < gets; i++) {
            uint64_t off = table[2 * ((keys[i] + (sum & 1)) % slots)]; /* after the last get */
            sum += segs[off];                                           /* the record's header */
        }
        double t1 = cpu_ns();
        printf("table %zu MiB, segments %zu MiB, %s: %.1f ns per get\n", slots * 16 >> 20,
               data >> 20, pass ? "again" : "first pass", (t1 - t0) / (double)gets);
    }
    printf("(checksum %llu)\n", (unsigned long long)sum); /* keeps the reads */
    return 0;
}

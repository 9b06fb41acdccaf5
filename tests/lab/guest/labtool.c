/*
 * labtool: the data tool of husk's layer-5 device scenarios (tests/lab/scenarios/virtio.sh,
 * bench-net.sh).
 * One source, built static (gcc -static) for the test guest and for the lab host (or the
 * hardware-KVM host), so that both ends run the same pattern and checksum code.
 *
 * Data: a deterministic byte pattern keyed by a seed (pattern(seed) is an endless stream;
 * "N bytes of pattern(seed)" are its first N bytes), and a checksum (64 bits, printed as 16
 * hex digits) that does not depend on how the stream is cut into reads and writes.
 *
 *   labtool gen SEED BYTES                 write BYTES bytes of pattern(SEED) to stdout
 *   labtool check SEED BYTES [FILE]        read FILE (default stdin) to its end; succeed
 *                                          only if it is exactly BYTES bytes of
 *                                          pattern(SEED); says where it differs otherwise
 *   labtool sum [FILE]                     print the length and checksum of FILE (or stdin)
 *   labtool write-fsync PATH SEED BYTES    write BYTES bytes of pattern(SEED) at offset 0
 *                                          of PATH (created if missing), fsync it (and its
 *                                          directory when it is a new file), then print
 *                                          "write-fsync: done ..."
 *   labtool serve ENDPOINT [--count N] [--timeout SECS]
 *                                          accept N connections (default 1), each served by
 *                                          its own process, then exit 0 only if every one
 *                                          was served without error
 *   labtool client ENDPOINT [--conns N] [--retry SECS] [--timeout SECS] OP SEED BYTES
 *                                          open N connections (default 1) at once, then run
 *                                          OP on each: put (send BYTES bytes of
 *                                          pattern(SEED+i)), get (receive them), mixed (put
 *                                          on even i, get on odd i); exit 0 only if every
 *                                          transfer was verified
 *   labtool udp-send ADDR:PORT SIZE [--df] [--count N] [--seconds S]
 *                                          send N datagrams (default 1) of SIZE bytes of
 *                                          pattern(SIZE) to ADDR:PORT over IPv4, with --df
 *                                          with Don't Fragment set (IP_PMTUDISC_DO: a
 *                                          datagram larger than the path MTU fails with
 *                                          EMSGSIZE); exit 0 only if every send succeeded.
 *                                          With --seconds S: a flood, as fast as it goes
 *                                          for S seconds, send errors (ENOBUFS) counted,
 *                                          not fatal; prints the count and the rate
 *   labtool udp-recv ADDR:PORT SIZE [--timeout SECS]
 *                                          bind ADDR:PORT (IPv4), receive one datagram and
 *                                          succeed only if it is SIZE bytes of pattern(SIZE)
 *
 * ENDPOINT:
 *   --vsock-port P        serve: AF_VSOCK, listen on port P (any CID)
 *   --vsock CID:P         client: AF_VSOCK, connect to CID port P (the host is CID 2)
 *   --unix PATH           a plain Unix stream socket (serve: bound at PATH, replacing a stale
 *                         socket file; client: connected to PATH). husk delivers a guest's
 *                         connection to host port P at the socket <uds>_P.
 *   --hybrid PATH:P       client: husk's hybrid vsock host side: connect to the Unix socket
 *                         PATH, send "CONNECT P\n", expect "OK <n>\n", then raw bytes
 *   --tcp-listen ADDR:P   serve: TCP over IPv4, listen on ADDR (0.0.0.0: any) port P
 *   --tcp ADDR:P          client: TCP over IPv4, connect to ADDR port P
 *
 * The protocol on each connection: the client sends one line "PUT SEED BYTES\n" or
 * "GET SEED BYTES\n".
 *   PUT: the client sends the bytes and shuts down its sending side; the server reads to
 *        the end, verifies, and answers "RESULT <bytes> <checksum> <ok|verdict>\n".
 *   GET: the server sends the bytes followed by "SUM <checksum>\n" and closes; the client
 *        reads exactly BYTES bytes, verifies them, and compares its checksum with the
 *        server's.
 * The client judges every transfer: it has both checksums. Both sides print theirs for big
 * transfers (>= 1 MiB) and every failure names what was expected and what was seen. The
 * client's line for a big transfer ends with "in S s = R MB/s" (10^6 bytes per second),
 * timed from its request to the peer's RESULT (put) or to its last byte verified (get).
 *
 * Exit status: 0 success, 1 a check failed, 2 usage or setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <arpa/inet.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define BIG (1024 * 1024)
#define LINE_MAX_LEN 128

static const char *prog = "labtool";

static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    /* One write per line: lines of concurrent processes do not interleave. */
    ssize_t w = write(STDOUT_FILENO, buf, (size_t)n);
    (void)w;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: labtool gen SEED BYTES | check SEED BYTES [FILE] | sum [FILE]\n"
            "     | write-fsync PATH SEED BYTES\n"
            "     | serve (--vsock-port P | --unix PATH) [--count N] [--timeout SECS]\n"
            "     | client (--vsock CID:P | --hybrid PATH:P | --unix PATH) [--conns N]\n"
            "              [--retry SECS] [--timeout SECS] (put|get|mixed) SEED BYTES\n"
            "     | udp-send ADDR:PORT SIZE [--df] [--count N] [--seconds S]\n"
            "     | udp-recv ADDR:PORT SIZE [--timeout SECS]\n"
            "  ENDPOINT for serve also --tcp-listen ADDR:P, for client --tcp ADDR:P\n");
    exit(2);
}

static uint64_t parse_u64(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "%s: %s '%s' is not a number\n", prog, what, s);
        exit(2);
    }
    return v;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- pattern and checksum ------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The 8-byte little-endian word number `index` of pattern(seed). */
static uint64_t pattern_word(uint64_t seed, uint64_t index)
{
    return mix64(seed * 0x9e3779b97f4a7c15ULL + index + 1);
}

/* Fills buf with bytes [offset, offset+len) of pattern(seed). */
static void pattern_fill(unsigned char *buf, size_t len, uint64_t seed, uint64_t offset)
{
    size_t i = 0;
    while (i < len && (offset + i) % 8) {
        uint64_t w = pattern_word(seed, (offset + i) / 8);
        buf[i] = (unsigned char)(w >> (8 * ((offset + i) % 8)));
        i++;
    }
    while (len - i >= 8) {
        uint64_t w = pattern_word(seed, (offset + i) / 8);
        memcpy(buf + i, &w, 8); /* x86_64: little-endian */
        i += 8;
    }
    while (i < len) {
        uint64_t w = pattern_word(seed, (offset + i) / 8);
        buf[i] = (unsigned char)(w >> (8 * ((offset + i) % 8)));
        i++;
    }
}

struct sum {
    uint64_t h, n;
    unsigned char pend[8];
    unsigned npend;
};

static void sum_init(struct sum *s)
{
    memset(s, 0, sizeof *s);
    s->h = 0x6a09e667f3bcc908ULL;
}

static void sum_word(struct sum *s, uint64_t w)
{
    s->h = (s->h ^ w) * 0x9e3779b97f4a7c15ULL;
    s->h ^= s->h >> 29;
}

static void sum_update(struct sum *s, const unsigned char *p, size_t len)
{
    s->n += len;
    while (s->npend && len) {
        s->pend[s->npend++] = *p++;
        len--;
        if (s->npend == 8) {
            uint64_t w;
            memcpy(&w, s->pend, 8);
            sum_word(s, w);
            s->npend = 0;
        }
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        sum_word(s, w);
        p += 8;
        len -= 8;
    }
    memcpy(s->pend, p, len);
    s->npend = (unsigned)len;
}

static uint64_t sum_final(const struct sum *s0)
{
    struct sum s = *s0;
    if (s.npend) {
        uint64_t w = 0;
        memcpy(&w, s.pend, s.npend);
        sum_word(&s, w ^ 0x8000000000000000ULL);
    }
    sum_word(&s, s.n);
    return mix64(s.h);
}

/* Verifies a received stream against pattern(seed), chunk by chunk. */
struct verifier {
    uint64_t seed, offset;
    int bad;               /* a difference was found */
    uint64_t bad_offset;   /* where */
    unsigned expected, seen;
    unsigned char *want;
};

static void verifier_init(struct verifier *v, uint64_t seed)
{
    memset(v, 0, sizeof *v);
    v->seed = seed;
    v->want = malloc(CHUNK);
    if (!v->want) {
        perror("malloc");
        exit(2);
    }
}

static void verifier_update(struct verifier *v, const unsigned char *p, size_t len)
{
    if (!v->bad) {
        pattern_fill(v->want, len, v->seed, v->offset);
        if (memcmp(v->want, p, len)) {
            for (size_t i = 0; i < len; i++)
                if (v->want[i] != p[i]) {
                    v->bad = 1;
                    v->bad_offset = v->offset + i;
                    v->expected = v->want[i];
                    v->seen = p[i];
                    break;
                }
        }
    }
    v->offset += len;
}

/* The verdict on `total` bytes received where `want` were expected, into buf. */
static int verdict(const struct verifier *v, uint64_t want, char *buf, size_t size)
{
    if (v->bad) {
        snprintf(buf, size, "differs-at-%" PRIu64 ":expected-0x%02x:seen-0x%02x", v->bad_offset,
                 v->expected, v->seen);
        return 0;
    }
    if (v->offset != want) {
        snprintf(buf, size, "%" PRIu64 "-bytes-instead-of-%" PRIu64, v->offset, want);
        return 0;
    }
    snprintf(buf, size, "ok");
    return 1;
}

/* ---- I/O helpers ---------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads one '\n'-terminated line (byte by byte: nothing after it is consumed). Returns its
 * length without the newline, -1 on error, -2 on end of stream before a newline. */
static int read_line(int fd, char *buf, size_t size)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            buf[n] = 0;
            return -2;
        }
        if (c == '\n') {
            buf[n] = 0;
            return (int)n;
        }
        if (n + 1 >= size) {
            buf[n] = 0;
            errno = EMSGSIZE;
            return -1;
        }
        buf[n++] = c;
    }
}

/* Sends `bytes` bytes of pattern(seed) on fd, summing them into s. */
static int send_pattern(int fd, uint64_t seed, uint64_t bytes, struct sum *s)
{
    unsigned char *buf = malloc(CHUNK);
    if (!buf)
        return -1;
    uint64_t off = 0;
    while (off < bytes) {
        size_t len = bytes - off < CHUNK ? (size_t)(bytes - off) : CHUNK;
        pattern_fill(buf, len, seed, off);
        if (s)
            sum_update(s, buf, len);
        if (write_all(fd, buf, len) < 0) {
            free(buf);
            return -1;
        }
        off += len;
    }
    free(buf);
    return 0;
}

/* Receives up to `limit` bytes (or to the end of stream when limit is UINT64_MAX),
 * verifying and summing them. Returns -1 on a read error. */
static int recv_pattern(int fd, uint64_t limit, struct verifier *v, struct sum *s)
{
    unsigned char *buf = malloc(CHUNK);
    if (!buf)
        return -1;
    uint64_t got = 0;
    for (;;) {
        size_t want = CHUNK;
        if (limit != UINT64_MAX) {
            if (got >= limit)
                break;
            if (limit - got < want)
                want = (size_t)(limit - got);
        }
        ssize_t n = read(fd, buf, want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            free(buf);
            return -1;
        }
        if (n == 0)
            break;
        verifier_update(v, buf, (size_t)n);
        sum_update(s, buf, (size_t)n);
        got += (uint64_t)n;
    }
    free(buf);
    return 0;
}

/* ---- gen / check / sum / write-fsync --------------------------------------------------- */

static int cmd_gen(int argc, char **argv)
{
    if (argc != 2)
        usage();
    uint64_t seed = parse_u64(argv[0], "SEED"), bytes = parse_u64(argv[1], "BYTES");
    if (send_pattern(STDOUT_FILENO, seed, bytes, NULL) < 0) {
        fprintf(stderr, "%s gen: write: %s\n", prog, strerror(errno));
        return 1;
    }
    return 0;
}

static int open_input(const char *path)
{
    if (!path)
        return STDIN_FILENO;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        say("%s: cannot open %s: %s", prog, path, strerror(errno));
        exit(1);
    }
    return fd;
}

static int cmd_check(int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        usage();
    uint64_t seed = parse_u64(argv[0], "SEED"), bytes = parse_u64(argv[1], "BYTES");
    const char *name = argc == 3 ? argv[2] : "stdin";
    int fd = open_input(argc == 3 ? argv[2] : NULL);
    struct verifier v;
    struct sum s;
    verifier_init(&v, seed);
    sum_init(&s);
    if (recv_pattern(fd, UINT64_MAX, &v, &s) < 0) {
        say("check: FAIL: %s: read error after %" PRIu64 " bytes: %s", name, v.offset,
            strerror(errno));
        return 1;
    }
    char res[128];
    if (!verdict(&v, bytes, res, sizeof res)) {
        say("check: FAIL: %s: expected %" PRIu64 " bytes of pattern(%" PRIu64 "), saw %s", name,
            bytes, seed, res);
        return 1;
    }
    say("check: ok: %s holds exactly %" PRIu64 " bytes of pattern(%" PRIu64 ") sum=%016" PRIx64,
        name, bytes, seed, sum_final(&s));
    return 0;
}

static int cmd_sum(int argc, char **argv)
{
    if (argc > 1)
        usage();
    int fd = open_input(argc == 1 ? argv[0] : NULL);
    unsigned char *buf = malloc(CHUNK);
    struct sum s;
    sum_init(&s);
    for (;;) {
        ssize_t n = read(fd, buf, CHUNK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            say("sum: read error: %s", strerror(errno));
            return 1;
        }
        if (n == 0)
            break;
        sum_update(&s, buf, (size_t)n);
    }
    say("bytes=%" PRIu64 " sum=%016" PRIx64, s.n, sum_final(&s));
    return 0;
}

static int cmd_write_fsync(int argc, char **argv)
{
    if (argc != 3)
        usage();
    const char *path = argv[0];
    uint64_t seed = parse_u64(argv[1], "SEED"), bytes = parse_u64(argv[2], "BYTES");
    struct stat st;
    int existed = stat(path, &st) == 0;
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd < 0) {
        say("write-fsync: cannot open %s for writing: %s", path, strerror(errno));
        return 1;
    }
    struct sum s;
    sum_init(&s);
    if (send_pattern(fd, seed, bytes, &s) < 0) {
        say("write-fsync: write to %s failed: %s", path, strerror(errno));
        return 1;
    }
    if (fsync(fd) < 0) {
        say("write-fsync: fsync of %s failed: %s", path, strerror(errno));
        return 1;
    }
    if (close(fd) < 0) {
        say("write-fsync: close of %s failed: %s", path, strerror(errno));
        return 1;
    }
    if (!existed) {
        /* A new file's directory entry is durable only once the directory is synced. */
        char *copy = strdup(path);
        int dfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY) : -1;
        if (dfd < 0 || fsync(dfd) < 0) {
            say("write-fsync: fsync of the directory of %s failed: %s", path, strerror(errno));
            return 1;
        }
        close(dfd);
        free(copy);
    }
    say("write-fsync: done: %" PRIu64 " bytes of pattern(%" PRIu64 ") in %s, fsync returned, "
        "sum=%016" PRIx64,
        bytes, seed, path, sum_final(&s));
    return 0;
}

/* ---- endpoints ------------------------------------------------------------------------ */

enum kind { EP_NONE, EP_VSOCK, EP_UNIX, EP_HYBRID, EP_TCP };

struct endpoint {
    enum kind kind;
    unsigned cid, port;
    struct sockaddr_in inet; /* EP_TCP */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char desc[160];
};

static void set_path(struct endpoint *ep, const char *path, size_t len)
{
    if (len == 0 || len >= sizeof ep->path) {
        fprintf(stderr, "%s: socket path '%s' is empty or too long\n", prog, path);
        exit(2);
    }
    memcpy(ep->path, path, len);
    ep->path[len] = 0;
}

/* Parses "ADDR:PORT" (IPv4 dotted quad) into a; exits with a usage error otherwise. */
static void parse_inet(const char *val, struct sockaddr_in *a)
{
    const char *colon = strrchr(val, ':');
    char host[64];
    if (!colon || (size_t)(colon - val) >= sizeof host)
        usage();
    snprintf(host, sizeof host, "%.*s", (int)(colon - val), val);
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)parse_u64(colon + 1, "port"));
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
        fprintf(stderr, "%s: '%s' is not an IPv4 address\n", prog, host);
        exit(2);
    }
}

/* Parses one endpoint option at argv[*i]; returns 0 if argv[*i] is not one. */
static int parse_endpoint(int argc, char **argv, int *i, struct endpoint *ep, int server)
{
    const char *opt = argv[*i];
    if (strcmp(opt, "--vsock-port") && strcmp(opt, "--vsock") && strcmp(opt, "--unix") &&
        strcmp(opt, "--hybrid") && strcmp(opt, "--tcp-listen") && strcmp(opt, "--tcp"))
        return 0;
    if (*i + 1 >= argc)
        usage();
    const char *val = argv[++*i];
    if (ep->kind != EP_NONE)
        usage();
    if (!strcmp(opt, "--vsock-port") && server) {
        ep->kind = EP_VSOCK;
        ep->cid = VMADDR_CID_ANY;
        ep->port = (unsigned)parse_u64(val, "port");
        snprintf(ep->desc, sizeof ep->desc, "vsock port %u", ep->port);
    } else if (!strcmp(opt, "--vsock") && !server) {
        const char *colon = strchr(val, ':');
        if (!colon)
            usage();
        char cid[32];
        snprintf(cid, sizeof cid, "%.*s", (int)(colon - val), val);
        ep->kind = EP_VSOCK;
        ep->cid = (unsigned)parse_u64(cid, "CID");
        ep->port = (unsigned)parse_u64(colon + 1, "port");
        snprintf(ep->desc, sizeof ep->desc, "vsock %u:%u", ep->cid, ep->port);
    } else if (!strcmp(opt, "--unix")) {
        ep->kind = EP_UNIX;
        set_path(ep, val, strlen(val));
        snprintf(ep->desc, sizeof ep->desc, "unix %s", ep->path);
    } else if (!strcmp(opt, "--hybrid") && !server) {
        const char *colon = strrchr(val, ':');
        if (!colon)
            usage();
        ep->kind = EP_HYBRID;
        set_path(ep, val, (size_t)(colon - val));
        ep->port = (unsigned)parse_u64(colon + 1, "port");
        snprintf(ep->desc, sizeof ep->desc, "hybrid %s port %u", ep->path, ep->port);
    } else if ((!strcmp(opt, "--tcp-listen") && server) || (!strcmp(opt, "--tcp") && !server)) {
        ep->kind = EP_TCP;
        parse_inet(val, &ep->inet);
        ep->port = ntohs(ep->inet.sin_port);
        snprintf(ep->desc, sizeof ep->desc, "tcp %s", val);
    } else {
        usage();
    }
    return 1;
}

/* Opens one connection; on failure returns -1 with a reason in why. */
static int ep_connect(const struct endpoint *ep, char *why, size_t size)
{
    int fd;
    if (ep->kind == EP_VSOCK) {
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, size, "socket(AF_VSOCK): %s", strerror(errno));
            return -1;
        }
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = ep->cid, .svm_port = ep->port};
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            snprintf(why, size, "connect to %s: %s", ep->desc, strerror(errno));
            close(fd);
            return -1;
        }
        return fd;
    }
    if (ep->kind == EP_TCP) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, size, "socket(AF_INET): %s", strerror(errno));
            return -1;
        }
        if (connect(fd, (const struct sockaddr *)&ep->inet, sizeof ep->inet) < 0) {
            snprintf(why, size, "connect to %s: %s", ep->desc, strerror(errno));
            close(fd);
            return -1;
        }
        return fd;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, size, "socket(AF_UNIX): %s", strerror(errno));
        return -1;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, ep->path, strlen(ep->path) + 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        snprintf(why, size, "connect to %s: %s", ep->path, strerror(errno));
        close(fd);
        return -1;
    }
    if (ep->kind == EP_HYBRID) {
        char line[LINE_MAX_LEN];
        int n = snprintf(line, sizeof line, "CONNECT %u\n", ep->port);
        if (write_all(fd, line, (size_t)n) < 0) {
            snprintf(why, size, "sending 'CONNECT %u' to %s: %s", ep->port, ep->path,
                     strerror(errno));
            close(fd);
            return -1;
        }
        int r = read_line(fd, line, sizeof line);
        unsigned long host_port;
        char extra;
        if (r < 0 || sscanf(line, "OK %lu%c", &host_port, &extra) != 1) {
            if (r == -2 && line[0] == 0)
                snprintf(why, size,
                         "%s closed the connection after 'CONNECT %u' (expected 'OK <n>': "
                         "the guest refused or nothing listens on port %u)",
                         ep->path, ep->port, ep->port);
            else if (r == -1)
                snprintf(why, size, "reading the answer to 'CONNECT %u': %s", ep->port,
                         strerror(errno));
            else
                snprintf(why, size, "answer to 'CONNECT %u' was '%s', expected 'OK <n>'",
                         ep->port, line);
            close(fd);
            return -1;
        }
    }
    return fd;
}

static int ep_listen(const struct endpoint *ep)
{
    int fd;
    if (ep->kind == EP_VSOCK) {
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            say("serve: FAIL: socket(AF_VSOCK): %s", strerror(errno));
            exit(2);
        }
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = ep->port};
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            say("serve: FAIL: bind %s: %s", ep->desc, strerror(errno));
            exit(2);
        }
    } else if (ep->kind == EP_TCP) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            say("serve: FAIL: socket(AF_INET): %s", strerror(errno));
            exit(2);
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)&ep->inet, sizeof ep->inet) < 0) {
            say("serve: FAIL: bind %s: %s", ep->desc, strerror(errno));
            exit(2);
        }
    } else {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            say("serve: FAIL: socket(AF_UNIX): %s", strerror(errno));
            exit(2);
        }
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        memcpy(a.sun_path, ep->path, strlen(ep->path) + 1);
        struct stat st;
        if (lstat(ep->path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(ep->path);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            say("serve: FAIL: bind %s: %s", ep->path, strerror(errno));
            exit(2);
        }
    }
    if (listen(fd, 128) < 0) {
        say("serve: FAIL: listen on %s: %s", ep->desc, strerror(errno));
        exit(2);
    }
    return fd;
}

/* ---- serve ---------------------------------------------------------------------------- */

/* Serves one connection (in a child process); returns the exit status. */
static int serve_one(int fd, unsigned index)
{
    char line[LINE_MAX_LEN], op[8];
    uint64_t seed, bytes;
    char extra;
    int r = read_line(fd, line, sizeof line);
    if (r < 0 || sscanf(line, "%7s %" SCNu64 " %" SCNu64 "%c", op, &seed, &bytes, &extra) != 3 ||
        (strcmp(op, "PUT") && strcmp(op, "GET"))) {
        say("serve: FAIL: connection %u: expected a request 'PUT|GET SEED BYTES', saw '%s'%s",
            index, r == -1 ? strerror(errno) : line, r == -2 ? " and end of stream" : "");
        return 1;
    }
    struct sum s;
    sum_init(&s);
    double t0 = now();
    if (!strcmp(op, "GET")) {
        if (send_pattern(fd, seed, bytes, &s) < 0) {
            say("serve: FAIL: connection %u: GET %" PRIu64 " %" PRIu64 ": write failed: %s",
                index, seed, bytes, strerror(errno));
            return 1;
        }
        int n = snprintf(line, sizeof line, "SUM %016" PRIx64 "\n", sum_final(&s));
        if (write_all(fd, line, (size_t)n) < 0) {
            say("serve: FAIL: connection %u: writing the SUM line: %s", index, strerror(errno));
            return 1;
        }
        shutdown(fd, SHUT_WR);
        /* Wait for the client to close, so that nothing is cut off by our close. */
        char c;
        while (read(fd, &c, 1) > 0)
            ;
        if (bytes >= BIG)
            say("serve: sent GET seed=%" PRIu64 " bytes=%" PRIu64 " sum=%016" PRIx64
                " in %.2f s",
                seed, bytes, sum_final(&s), now() - t0);
        return 0;
    }
    struct verifier v;
    verifier_init(&v, seed);
    if (recv_pattern(fd, UINT64_MAX, &v, &s) < 0) {
        say("serve: FAIL: connection %u: PUT %" PRIu64 " %" PRIu64 ": read error after %" PRIu64
            " bytes: %s",
            index, seed, bytes, v.offset, strerror(errno));
        return 1;
    }
    char res[128];
    int ok = verdict(&v, bytes, res, sizeof res);
    double dt = now() - t0;
    int n = snprintf(line, sizeof line, "RESULT %" PRIu64 " %016" PRIx64 " %s\n", v.offset,
                     sum_final(&s), res);
    if (write_all(fd, line, (size_t)n) < 0) {
        say("serve: FAIL: connection %u: writing the RESULT line: %s", index, strerror(errno));
        return 1;
    }
    if (!ok)
        say("serve: FAIL: connection %u: PUT seed=%" PRIu64 ": expected %" PRIu64
            " bytes of the pattern, saw %s",
            index, seed, bytes, res);
    else if (bytes >= BIG)
        say("serve: received PUT seed=%" PRIu64 " bytes=%" PRIu64 " sum=%016" PRIx64
            " verified in %.2f s",
            seed, v.offset, sum_final(&s), dt);
    return ok ? 0 : 1;
}

static int cmd_serve(int argc, char **argv)
{
    struct endpoint ep = {0};
    uint64_t count = 1, timeout = 0;
    for (int i = 0; i < argc; i++) {
        if (parse_endpoint(argc, argv, &i, &ep, 1))
            continue;
        if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = parse_u64(argv[++i], "count");
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout = parse_u64(argv[++i], "timeout");
        else
            usage();
    }
    if (ep.kind != EP_VSOCK && ep.kind != EP_UNIX && ep.kind != EP_TCP)
        usage();
    if (timeout)
        alarm((unsigned)timeout); /* SIGALRM's default action ends the server */
    int lfd = ep_listen(&ep);
    say("serve: listening on %s for %" PRIu64 " connection(s)", ep.desc, count);
    uint64_t failed = 0, accepted = 0, done = 0;
    while (accepted < count) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            say("serve: FAIL: accept on %s: %s", ep.desc, strerror(errno));
            return 1;
        }
        accepted++;
        pid_t pid = fork();
        if (pid < 0) {
            say("serve: FAIL: fork: %s", strerror(errno));
            return 1;
        }
        if (pid == 0) {
            close(lfd);
            alarm(0);
            _exit(serve_one(fd, (unsigned)accepted));
        }
        close(fd);
        /* Reap whoever is done, without waiting. */
        int st;
        while (waitpid(-1, &st, WNOHANG) > 0) {
            done++;
            if (!WIFEXITED(st) || WEXITSTATUS(st))
                failed++;
        }
    }
    close(lfd);
    if (ep.kind == EP_UNIX)
        unlink(ep.path);
    int st;
    while (done < accepted && wait(&st) > 0) {
        done++;
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            failed++;
    }
    if (failed) {
        say("serve: FAIL: %" PRIu64 " of %" PRIu64 " connection(s) on %s failed", failed,
            accepted, ep.desc);
        return 1;
    }
    say("serve: ok: %" PRIu64 " connection(s) on %s served and verified", accepted, ep.desc);
    return 0;
}

/* ---- client --------------------------------------------------------------------------- */

/* Runs one transfer on an open connection (in a child process); returns the exit status. */
static int client_one(int fd, int get, uint64_t seed, uint64_t bytes, const char *desc,
                      unsigned index, int verbose)
{
    char line[LINE_MAX_LEN];
    int n = snprintf(line, sizeof line, "%s %" PRIu64 " %" PRIu64 "\n", get ? "GET" : "PUT", seed,
                     bytes);
    if (write_all(fd, line, (size_t)n) < 0) {
        say("client: FAIL: connection %u to %s: sending the request: %s", index, desc,
            strerror(errno));
        return 1;
    }
    struct sum s;
    sum_init(&s);
    double t0 = now();
    if (!get) {
        if (send_pattern(fd, seed, bytes, &s) < 0) {
            say("client: FAIL: connection %u to %s: PUT seed=%" PRIu64 " bytes=%" PRIu64
                ": write failed: %s",
                index, desc, seed, bytes, strerror(errno));
            return 1;
        }
        shutdown(fd, SHUT_WR);
        int r = read_line(fd, line, sizeof line);
        double dt = now() - t0;
        uint64_t peer_bytes, peer_sum;
        char verdict_buf[100], extra;
        if (r < 0 || sscanf(line, "RESULT %" SCNu64 " %" SCNx64 " %99s%c", &peer_bytes,
                            &peer_sum, verdict_buf, &extra) != 3) {
            say("client: FAIL: connection %u to %s: PUT seed=%" PRIu64 " bytes=%" PRIu64
                ": expected 'RESULT <bytes> <sum> ok' from the peer, saw '%s'%s",
                index, desc, seed, bytes, r == -1 ? strerror(errno) : line,
                r == -2 ? " and end of stream" : "");
            return 1;
        }
        uint64_t mine = sum_final(&s);
        if (peer_bytes != bytes || peer_sum != mine || strcmp(verdict_buf, "ok")) {
            say("client: FAIL: connection %u to %s: PUT seed=%" PRIu64 ": sent %" PRIu64
                " bytes sum=%016" PRIx64 ", the peer received %" PRIu64 " bytes sum=%016" PRIx64
                " verdict %s",
                index, desc, seed, bytes, mine, peer_bytes, peer_sum, verdict_buf);
            return 1;
        }
        if (verbose)
            say("client: PUT seed=%" PRIu64 " bytes=%" PRIu64 " sum=%016" PRIx64
                " (peer: bytes=%" PRIu64 " sum=%016" PRIx64 " %s) in %.3f s = %.1f MB/s",
                seed, bytes, mine, peer_bytes, peer_sum, verdict_buf, dt,
                (double)bytes / 1e6 / (dt > 0 ? dt : 1e-9));
        return 0;
    }
    struct verifier v;
    verifier_init(&v, seed);
    if (recv_pattern(fd, bytes, &v, &s) < 0) {
        say("client: FAIL: connection %u to %s: GET seed=%" PRIu64 " bytes=%" PRIu64
            ": read error after %" PRIu64 " bytes: %s",
            index, desc, seed, bytes, v.offset, strerror(errno));
        return 1;
    }
    double dt = now() - t0;
    char res[128];
    int ok = verdict(&v, bytes, res, sizeof res);
    uint64_t mine = sum_final(&s), peer_sum = 0;
    char extra;
    int r = read_line(fd, line, sizeof line);
    int have_sum = r >= 0 && sscanf(line, "SUM %" SCNx64 "%c", &peer_sum, &extra) == 1;
    if (!ok || !have_sum || peer_sum != mine) {
        char peer[LINE_MAX_LEN + 40];
        if (have_sum)
            snprintf(peer, sizeof peer, "sum=%016" PRIx64, peer_sum);
        else
            snprintf(peer, sizeof peer, "no 'SUM <sum>' line (saw '%s')",
                     r == -1 ? strerror(errno) : line);
        say("client: FAIL: connection %u to %s: GET seed=%" PRIu64 ": expected %" PRIu64
            " bytes of the pattern, received %s sum=%016" PRIx64 "; the peer sent %s",
            index, desc, seed, bytes, res, mine, peer);
        return 1;
    }
    if (verbose)
        say("client: GET seed=%" PRIu64 " bytes=%" PRIu64 " sum=%016" PRIx64
            " (peer: sum=%016" PRIx64 ") verified in %.3f s = %.1f MB/s",
            seed, bytes, mine, peer_sum, dt, (double)bytes / 1e6 / (dt > 0 ? dt : 1e-9));
    return 0;
}

static int cmd_client(int argc, char **argv)
{
    struct endpoint ep = {0};
    uint64_t conns = 1, retry = 0, timeout = 0;
    char *pos[3];
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        if (parse_endpoint(argc, argv, &i, &ep, 0))
            continue;
        if (!strcmp(argv[i], "--conns") && i + 1 < argc)
            conns = parse_u64(argv[++i], "conns");
        else if (!strcmp(argv[i], "--retry") && i + 1 < argc)
            retry = parse_u64(argv[++i], "retry");
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout = parse_u64(argv[++i], "timeout");
        else if (argv[i][0] != '-' && npos < 3)
            pos[npos++] = argv[i];
        else
            usage();
    }
    if (ep.kind == EP_NONE || npos != 3 || conns == 0 || conns > 1024)
        usage();
    int mode; /* 0 put, 1 get, 2 mixed */
    if (!strcmp(pos[0], "put"))
        mode = 0;
    else if (!strcmp(pos[0], "get"))
        mode = 1;
    else if (!strcmp(pos[0], "mixed"))
        mode = 2;
    else
        usage();
    uint64_t seed = parse_u64(pos[1], "SEED"), bytes = parse_u64(pos[2], "BYTES");
    if (timeout)
        alarm((unsigned)timeout);

    /* Every connection is opened by its own process, which reports on `ready` once it is
     * connected and then waits for `go` to close: all of them are open at the same time
     * before any data moves. */
    int ready[2], go[2];
    if (pipe(ready) < 0 || pipe(go) < 0) {
        perror("pipe");
        return 2;
    }
    double t0 = now();
    for (uint64_t i = 0; i < conns; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            say("client: FAIL: fork: %s", strerror(errno));
            return 1;
        }
        if (pid)
            continue;
        close(ready[0]);
        close(go[1]);
        char why[300];
        int fd = -1;
        double deadline = now() + (double)retry;
        for (;;) {
            fd = ep_connect(&ep, why, sizeof why);
            if (fd >= 0 || now() >= deadline)
                break;
            usleep(200 * 1000);
        }
        char flag = fd >= 0 ? 'y' : 'n';
        if (write(ready[1], &flag, 1) != 1)
            _exit(1);
        close(ready[1]);
        if (fd < 0) {
            say("client: FAIL: connection %u: %s", (unsigned)i, why);
            _exit(1);
        }
        char c;
        while (read(go[0], &c, 1) < 0 && errno == EINTR)
            ;
        int get = mode == 1 || (mode == 2 && i % 2);
        _exit(client_one(fd, get, seed + i, bytes, ep.desc, (unsigned)i,
                         conns == 1 || bytes >= BIG));
    }
    close(ready[1]);
    close(go[0]);
    uint64_t connected = 0, refused = 0;
    char flag;
    while (connected + refused < conns) {
        ssize_t r = read(ready[0], &flag, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (flag == 'y')
            connected++;
        else
            refused++;
    }
    double t_conn = now() - t0;
    close(go[1]); /* go */
    uint64_t failed = 0, done = 0;
    int st;
    while (wait(&st) > 0) {
        done++;
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            failed++;
    }
    double dt = now() - t0;
    const char *what = mode == 0 ? "put" : mode == 1 ? "get" : "mixed put/get";
    if (failed || done != conns || connected != conns) {
        say("client: FAIL: %s: %" PRIu64 " connection(s) expected, %" PRIu64
            " connected, %" PRIu64 " failed (%s of %" PRIu64 " bytes each)",
            ep.desc, conns, connected, failed, what, bytes);
        return 1;
    }
    say("client: ok: %" PRIu64 " connection(s) to %s, all open at once after %.2f s, %s of %" PRIu64
        " bytes each, all verified, %.2f s in all",
        conns, ep.desc, t_conn, what, bytes, dt);
    return 0;
}

/* ---- udp-send / udp-recv --------------------------------------------------------------- */

static int cmd_udp_send(int argc, char **argv)
{
    struct sockaddr_in to;
    uint64_t size = 0, count = 1, seconds = 0;
    int df = 0, npos = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--df"))
            df = 1;
        else if (!strcmp(argv[i], "--count") && i + 1 < argc)
            count = parse_u64(argv[++i], "count");
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = parse_u64(argv[++i], "seconds");
        else if (argv[i][0] != '-' && npos == 0) {
            parse_inet(argv[i], &to);
            npos++;
        } else if (argv[i][0] != '-' && npos == 1) {
            size = parse_u64(argv[i], "SIZE");
            npos++;
        } else
            usage();
    }
    if (npos != 2 || size > 65507)
        usage();
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        say("udp-send: FAIL: socket(AF_INET, SOCK_DGRAM): %s", strerror(errno));
        return 2;
    }
    int pmtu = df ? IP_PMTUDISC_DO : IP_PMTUDISC_DONT;
    if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu) < 0) {
        say("udp-send: FAIL: IP_MTU_DISCOVER: %s", strerror(errno));
        return 2;
    }
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf)
        return 2;
    pattern_fill(buf, size, size, 0);
    char dst[64];
    snprintf(dst, sizeof dst, "%s:%u", inet_ntoa(to.sin_addr), ntohs(to.sin_port));
    if (seconds) {
        uint64_t sent = 0, errors = 0;
        int last_errno = 0;
        double t0 = now(), end = t0 + (double)seconds, t = t0;
        while (t < end) {
            for (int k = 0; k < 64; k++) {
                if (sendto(fd, buf, size, 0, (struct sockaddr *)&to, sizeof to) < 0) {
                    errors++;
                    last_errno = errno;
                } else
                    sent++;
            }
            t = now();
        }
        say("udp-send: flood to %s: %" PRIu64 " datagrams of %" PRIu64 " bytes sent in %.2f s "
            "= %.1f MB/s, %" PRIu64 " sends refused%s%s",
            dst, sent, size, t - t0, (double)(sent * size) / 1e6 / (t - t0), errors,
            errors ? " (last: " : "", errors ? strerror(last_errno) : "");
        if (errors)
            say("udp-send: (refused sends are the qdisc or the device queue being full)");
        return sent ? 0 : 1;
    }
    for (uint64_t i = 0; i < count; i++) {
        if (sendto(fd, buf, size, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            say("udp-send: FAIL: datagram %" PRIu64 " of %" PRIu64 " bytes to %s%s: %s", i, size,
                dst, df ? " with DF" : "", strerror(errno));
            return 1;
        }
    }
    say("udp-send: ok: %" PRIu64 " datagram(s) of %" PRIu64 " bytes sent to %s%s", count, size,
        dst, df ? " with DF (IP_PMTUDISC_DO)" : "");
    return 0;
}

static int cmd_udp_recv(int argc, char **argv)
{
    struct sockaddr_in at;
    uint64_t size = 0, timeout = 0;
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout = parse_u64(argv[++i], "timeout");
        else if (argv[i][0] != '-' && npos == 0) {
            parse_inet(argv[i], &at);
            npos++;
        } else if (argv[i][0] != '-' && npos == 1) {
            size = parse_u64(argv[i], "SIZE");
            npos++;
        } else
            usage();
    }
    if (npos != 2 || size > 65507)
        usage();
    if (timeout)
        alarm((unsigned)timeout);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
        say("udp-recv: FAIL: bind %s:%u: %s", inet_ntoa(at.sin_addr), ntohs(at.sin_port),
            strerror(errno));
        return 2;
    }
    say("udp-recv: listening on %s:%u for one datagram of %" PRIu64 " bytes",
        inet_ntoa(at.sin_addr), ntohs(at.sin_port), size);
    unsigned char *buf = malloc(65536), *want = malloc(size ? size : 1);
    if (!buf || !want)
        return 2;
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    ssize_t n;
    while ((n = recvfrom(fd, buf, 65536, 0, (struct sockaddr *)&from, &flen)) < 0 && errno == EINTR)
        ;
    if (n < 0) {
        say("udp-recv: FAIL: recvfrom: %s", strerror(errno));
        return 1;
    }
    pattern_fill(want, size, size, 0);
    if ((uint64_t)n != size || memcmp(buf, want, size)) {
        say("udp-recv: FAIL: a datagram of %zd bytes from %s, expected %" PRIu64
            " bytes of pattern(%" PRIu64 ")%s",
            n, inet_ntoa(from.sin_addr), size, size,
            (uint64_t)n == size ? " (the bytes differ)" : "");
        return 1;
    }
    say("udp-recv: ok: one datagram of %zd bytes from %s, pattern verified", n,
        inet_ntoa(from.sin_addr));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    signal(SIGPIPE, SIG_IGN); /* a peer that goes away is an EPIPE error, reported */
    const char *cmd = argv[1];
    argc -= 2;
    argv += 2;
    if (!strcmp(cmd, "gen"))
        return cmd_gen(argc, argv);
    if (!strcmp(cmd, "check"))
        return cmd_check(argc, argv);
    if (!strcmp(cmd, "sum"))
        return cmd_sum(argc, argv);
    if (!strcmp(cmd, "write-fsync"))
        return cmd_write_fsync(argc, argv);
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc, argv);
    if (!strcmp(cmd, "client"))
        return cmd_client(argc, argv);
    if (!strcmp(cmd, "udp-send"))
        return cmd_udp_send(argc, argv);
    if (!strcmp(cmd, "udp-recv"))
        return cmd_udp_recv(argc, argv);
    usage();
    return 2;
}

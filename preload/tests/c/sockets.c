/* A small program that uses sockets the way real servers and clients do, and prints a
 * transcript that does not depend on timing. The preload tests run it plain and under
 * libcoresident_preload.so and compare the transcripts byte for byte.
 *
 *   sockets tcp       one process: an epoll (edge-triggered, non-blocking accept4)
 *                     echo server thread, and a client that uses blocking connect,
 *                     write/read, send/recv flags, readv/writev, sendmsg/recvmsg,
 *                     poll, select, FIONREAD, dup, shutdown; then a non-blocking
 *                     connect (EINPROGRESS, EPOLLOUT, SO_ERROR); then a fork whose
 *                     child leaves the socket alone
 *   sockets udp       a UDP echo over loopback
 *   sockets unix      a Unix stream socket pair across fork
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s (errno %d %s)\n", \
    __FILE__, __LINE__, #c, errno, strerror(errno)); exit(1); } } while (0)

static uint32_t sum(const unsigned char *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static int listener(struct sockaddr_in *addr) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(l >= 0);
    int one = 1;
    CHECK(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (struct sockaddr *)addr, sizeof *addr) == 0);
    socklen_t len = sizeof *addr;
    CHECK(getsockname(l, (struct sockaddr *)addr, &len) == 0);
    CHECK(listen(l, 16) == 0);
    return l;
}

/* The echo server: edge-triggered epoll, non-blocking sockets, read until EAGAIN. */
struct server { int l; int conns; };
static void *serve(void *arg) {
    struct server *s = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = s->l };
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, s->l, &ev) == 0);
    int closed = 0;
    static unsigned char buf[1 << 17];
    while (closed < s->conns) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 10000);
        CHECK(n > 0);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == s->l) {
                int c = accept4(s->l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                CHECK(c >= 0);
                struct epoll_event cev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = c };
                CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) == 0);
                continue;
            }
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    size_t off = 0;
                    while (off < (size_t)r) {
                        ssize_t w = write(fd, buf + off, r - off);
                        if (w < 0 && errno == EAGAIN) {
                            struct pollfd p = { .fd = fd, .events = POLLOUT };
                            CHECK(poll(&p, 1, 10000) == 1);
                            continue;
                        }
                        CHECK(w > 0);
                        off += w;
                    }
                    continue;
                }
                if (r == 0) {
                    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL) == 0);
                    CHECK(close(fd) == 0);
                    closed++;
                    break;
                }
                CHECK(errno == EAGAIN);
                break;
            }
        }
    }
    close(ep);
    return NULL;
}

static void read_exact(int fd, unsigned char *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        CHECK(r > 0);
        got += r;
    }
}

static void tcp(void) {
    struct sockaddr_in addr;
    int l = listener(&addr);
    struct server s = { .l = l, .conns = 2 };
    pthread_t t;
    CHECK(pthread_create(&t, NULL, serve, &s) == 0);

    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    CHECK(c >= 0);
    CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0);
    printf("connect: 0\n");

    static unsigned char out[1 << 16], in[1 << 16];
    for (size_t i = 0; i < sizeof out; i++) out[i] = (unsigned char)(i * 7 + 3);
    size_t sizes[] = { 1, 7, 64, 1000, 1024, 4096, 12345, 65536 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        CHECK(write(c, out, n) == (ssize_t)n);
        memset(in, 0, n);
        read_exact(c, in, n);
        printf("echo %zu: %s %08x\n", n, memcmp(in, out, n) == 0 ? "same" : "DIFFERENT", sum(in, n));
    }

    /* send/recv flags: MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT, MSG_NOSIGNAL. */
    CHECK(send(c, "peekaboo", 8, MSG_NOSIGNAL) == 8);
    struct pollfd p = { .fd = c, .events = POLLIN };
    int pr = poll(&p, 1, 10000);
    printf("poll: %d revents=%#x\n", pr, p.revents);
    unsigned char b[16];
    usleep(20000);
    int avail = -1;
    CHECK(ioctl(c, FIONREAD, &avail) == 0);
    printf("FIONREAD: %d\n", avail);
    ssize_t rr0 = recv(c, b, 4, MSG_PEEK);
    printf("peek: %zd %.4s\n", rr0, b);
    rr0 = recv(c, b, 8, MSG_WAITALL);
    printf("waitall: %zd %.8s\n", rr0, b);
    errno = 0;
    rr0 = recv(c, b, 8, MSG_DONTWAIT);
    printf("dontwait: %zd errno=%s\n", rr0, errno == EAGAIN ? "EAGAIN" : "other");

    /* select for reading, after a write. */
    CHECK(write(c, "sel", 3) == 3);
    fd_set rs; FD_ZERO(&rs); FD_SET(c, &rs);
    struct timeval tv = { .tv_sec = 10 };
    int sr = select(c + 1, &rs, NULL, NULL, &tv);
    printf("select: %d isset=%d\n", sr, FD_ISSET(c, &rs));
    read_exact(c, b, 3);
    printf("selected: %.3s\n", b);

    /* writev/readv and sendmsg/recvmsg. */
    struct iovec wv[3] = { { "ab", 2 }, { "cde", 3 }, { "f", 1 } };
    CHECK(writev(c, wv, 3) == 6);
    char x[2], y[4];
    struct iovec rv[2] = { { x, 2 }, { y, 4 } };
    size_t got = 0;
    while (got < 6) { ssize_t r = readv(c, rv, 2); CHECK(r > 0); got += r; if (got < 6) { rv[0].iov_len = 0; rv[1].iov_base = y + (got - 2); rv[1].iov_len = 6 - got; } }
    printf("readv: %.2s|%.4s\n", x, y);
    struct msghdr m = { 0 };
    struct iovec one = { "msg!", 4 };
    m.msg_iov = &one; m.msg_iovlen = 1;
    CHECK(sendmsg(c, &m, 0) == 4);
    char mb[4];
    struct iovec rone = { mb, 4 };
    struct msghdr rm = { 0 };
    rm.msg_iov = &rone; rm.msg_iovlen = 1;
    CHECK(recvmsg(c, &rm, MSG_WAITALL) == 4);
    printf("recvmsg: %.4s flags=%d\n", mb, rm.msg_flags);

    /* stdio over the socket: plain TCP allows it; the library refuses it on an
     * accelerated socket (EINVAL) rather than let stdio read what the stream does
     * not see. Either way no byte is read through it here. */
    int fdc = dup(c);
    FILE *f = fdopen(fdc, "r+");
    printf("fdopen: %s\n", f != NULL || errno == EINVAL ? "allowed or refused" : "other error");
    if (f) fclose(f); else close(fdc);

    /* A dup reads the same connection; closing one of two keeps it open. */
    int d = dup(c);
    CHECK(d >= 0);
    CHECK(write(d, "dup", 3) == 3);
    read_exact(c, b, 3);
    printf("dup: %.3s\n", b);
    CHECK(close(d) == 0);

    /* A fork whose child leaves the socket alone: the parent goes on. */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) _exit(0);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(write(c, "after fork", 10) == 10);
    read_exact(c, b, 10);
    printf("after fork: %.10s\n", b);

    /* Half close: the server sees end of stream and closes; we read 0. */
    CHECK(shutdown(c, SHUT_WR) == 0);
    printf("eof: %zd\n", read(c, b, sizeof b));
    CHECK(close(c) == 0);

    /* A non-blocking connect. */
    int nb = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(nb >= 0);
    int r = connect(nb, (struct sockaddr *)&addr, sizeof addr);
    printf("nonblocking connect: %s\n", r == 0 || errno == EINPROGRESS ? "ok" : "FAILED");
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLOUT, .data.u64 = 42 };
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, nb, &ev) == 0);
    struct epoll_event got_ev;
    int en = epoll_wait(ep, &got_ev, 1, 10000);
    printf("epollout: %d events=%#x data=%llu\n", en, got_ev.events, (unsigned long long)got_ev.data.u64);
    int err = -1; socklen_t el = sizeof err;
    CHECK(getsockopt(nb, SOL_SOCKET, SO_ERROR, &err, &el) == 0);
    printf("SO_ERROR: %d\n", err);
    ev.events = EPOLLIN; ev.data.u64 = 43;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, nb, &ev) == 0);
    size_t sent = 0;
    while (sent < 5) { ssize_t w = write(nb, "hello" + sent, 5 - sent); if (w < 0 && errno == EAGAIN) continue; CHECK(w > 0); sent += w; }
    en = epoll_wait(ep, &got_ev, 1, 10000);
    printf("epollin: %d events=%#x data=%llu\n", en, got_ev.events, (unsigned long long)got_ev.data.u64);
    got = 0;
    while (got < 5) { ssize_t rr = read(nb, b + got, 5 - got); if (rr < 0 && errno == EAGAIN) { struct pollfd q = { nb, POLLIN, 0 }; poll(&q, 1, 10000); continue; } CHECK(rr > 0); got += rr; }
    printf("nonblocking echo: %.5s\n", b);
    CHECK(close(nb) == 0);
    close(ep);
    CHECK(pthread_join(t, NULL) == 0);
    close(l);
}

static void udp(void) {
    int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(a >= 0 && b >= 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK(bind(b, (struct sockaddr *)&addr, sizeof addr) == 0);
    socklen_t len = sizeof addr;
    CHECK(getsockname(b, (struct sockaddr *)&addr, &len) == 0);
    for (int i = 1; i <= 3; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "datagram %d", i);
        CHECK(sendto(a, msg, n, 0, (struct sockaddr *)&addr, sizeof addr) == n);
        char in[64];
        struct sockaddr_in from; socklen_t fl = sizeof from;
        ssize_t r = recvfrom(b, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
        printf("udp: %zd %.*s from-loopback=%d\n", r, (int)r, in, from.sin_addr.s_addr == htonl(INADDR_LOOPBACK));
    }
    close(a); close(b);
}

static void unix_stream(void) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char b[5];
        read_exact(sv[1], (unsigned char *)b, 5);
        CHECK(write(sv[1], b, 5) == 5);
        _exit(0);
    }
    CHECK(write(sv[0], "unix!", 5) == 5);
    unsigned char b[5];
    read_exact(sv[0], b, 5);
    printf("unix: %.5s\n", b);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
}

/* One connection (accelerated in-process when the library runs with
 * CORESIDENT_INPROC=1), held open until a line arrives on stdin, so that a test can look
 * at it with `coresident status` and withdraw it with `coresident withdraw`. */
static void hold(void) {
    struct sockaddr_in addr;
    int l = listener(&addr);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(c >= 0);
    CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0);
    unsigned char b[4];
    CHECK(write(c, "ping", 4) == 4);
    read_exact(s, b, 4);
    CHECK(write(s, b, 4) == 4);
    read_exact(c, b, 4);
    printf("ready %d\n", (int)getpid());
    char line[16];
    CHECK(fgets(line, sizeof line, stdin) != NULL);
    CHECK(write(c, "pong", 4) == 4);
    read_exact(s, b, 4);
    printf("after: %.4s\n", b);
    close(c); close(s); close(l);
}

/* An echo server for one connection on 127.0.0.1:PORT (prints "listening" first). */
static void echo_server(int port) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(l >= 0);
    int one = 1;
    CHECK(setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK(bind(l, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(listen(l, 4) == 0);
    printf("listening\n");
    int c = accept(l, NULL, NULL);
    CHECK(c >= 0);
    static unsigned char buf[1 << 16];
    for (;;) {
        ssize_t r = read(c, buf, sizeof buf);
        CHECK(r >= 0);
        if (r == 0) break;
        for (ssize_t off = 0; off < r;) { ssize_t w = write(c, buf + off, r - off); CHECK(w > 0); off += w; }
    }
    close(c); close(l);
}

/* One client, two servers at once: interleaved messages, each echo checked against
 * what was sent on that connection only; prints "ready", waits for a line on stdin
 * (a test looks at `coresident status`), then one more round. */
static void mixed(int p1, int p2) {
    int fds[2];
    int ports[2] = { p1, p2 };
    for (int i = 0; i < 2; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(fds[i] >= 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(ports[i]), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        CHECK(connect(fds[i], (struct sockaddr *)&a, sizeof a) == 0);
    }
    static unsigned char out[2][8192], in[8192];
    for (int round = 0; round < 201; round++) {
        if (round == 200) {
            printf("ready\n");
            char line[8];
            CHECK(fgets(line, sizeof line, stdin) != NULL);
        }
        for (int i = 0; i < 2; i++) {
            size_t n = 1 + (round * 37 + i * 911) % sizeof out[i];
            for (size_t k = 0; k < n; k++) out[i][k] = (unsigned char)('A' + i * 16 + (k + round) % 13);
            CHECK(write(fds[i], out[i], n) == (ssize_t)n);
        }
        for (int i = 0; i < 2; i++) {
            size_t n = 1 + (round * 37 + i * 911) % sizeof out[i];
            read_exact(fds[i], in, n);
            if (memcmp(in, out[i], n) != 0) { printf("cross-talk on connection %d round %d\n", i, round); exit(1); }
        }
    }
    printf("mixed: ok\n");
    close(fds[0]); close(fds[1]);
}

/* A client of an echo server: 4 MiB of a pattern in 1000-byte writes, the echo read
 * back and checked; "client: ok", or an error message and exit status 3 (the
 * connection failed: reset, refused). */
static void client(int port) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(c >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) { printf("client: connect: %s\n", strerror(errno)); exit(3); }
    static unsigned char out[1000], in[1000];
    for (int i = 0; i < 4 * 1048; i++) {
        for (int k = 0; k < 1000; k++) out[k] = (unsigned char)(i * 7 + k);
        if (write(c, out, sizeof out) != (ssize_t)sizeof out) { printf("client: write: %s\n", strerror(errno)); exit(3); }
        size_t got = 0;
        while (got < sizeof in) {
            ssize_t r = read(c, in + got, sizeof in - got);
            if (r <= 0) { printf("client: read: %s\n", r == 0 ? "end of stream" : strerror(errno)); exit(3); }
            got += r;
        }
        if (memcmp(in, out, sizeof in) != 0) { printf("client: WRONG BYTES at message %d\n", i); exit(1); }
    }
    printf("client: ok\n");
    close(c);
}

/* Writing to a peer that closed: the server accepts and closes at once; the client
 * sends with MSG_NOSIGNAL until it fails (EPIPE or ECONNRESET, as TCP says), then once
 * more with write(), which raises SIGPIPE. */
static volatile sig_atomic_t sigpipes;
static void on_sigpipe(int sig) { (void)sig; sigpipes++; }
static void epipe(void) {
    struct sockaddr_in addr;
    int l = listener(&addr);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(c >= 0);
    CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0);
    CHECK(close(s) == 0);
    signal(SIGPIPE, on_sigpipe);
    int err = 0;
    for (int i = 0; i < 100000 && !err; i++) {
        if (send(c, "x", 1, MSG_NOSIGNAL) < 0) err = errno;
        else usleep(100);
    }
    printf("send after close: %s, no SIGPIPE: %d\n", err == EPIPE || err == ECONNRESET ? "failed" : "never failed", sigpipes == 0);
    ssize_t w = write(c, "y", 1);
    printf("write after close: %zd %s, SIGPIPE: %d\n", w, w < 0 && errno == EPIPE ? "EPIPE" : "other", sigpipes > 0);
    close(c); close(l);
}

/* One connection to an echo server, used by several threads at once: `writers` threads
 * each send 500 blocks of 3000 bytes filled with their own tag; the main thread reads
 * the echo and checks every block is whole (one write's bytes are never interleaved
 * with another's) and every byte arrived. */
struct writer { int fd; unsigned char tag; };
static void *write_blocks(void *arg) {
    struct writer *w = arg;
    unsigned char block[3000];
    memset(block, w->tag, sizeof block);
    for (int i = 0; i < 500; i++) CHECK(write(w->fd, block, sizeof block) == (ssize_t)sizeof block);
    return NULL;
}
static void threads(int port, int writers) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(c >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    pthread_t t[4];
    struct writer w[4];
    for (int i = 0; i < writers; i++) {
        w[i].fd = c; w[i].tag = (unsigned char)('A' + i);
        CHECK(pthread_create(&t[i], NULL, write_blocks, &w[i]) == 0);
    }
    static unsigned char block[3000];
    int count[4] = { 0 };
    for (int b = 0; b < 500 * writers; b++) {
        read_exact(c, block, sizeof block);
        for (size_t k = 1; k < sizeof block; k++)
            if (block[k] != block[0]) { printf("threads: block %d interleaved\n", b); exit(1); }
        count[block[0] - 'A']++;
    }
    for (int i = 0; i < writers; i++) CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < writers; i++) if (count[i] != 500) { printf("threads: writer %d: %d blocks\n", i, count[i]); exit(1); }
    printf("threads: %d writers and a reader: ok\n", writers);
    close(c);
}

/* A connection inherited across exec: connected (accelerated under the library), then
 * `sh` is exec'd with the socket as its fd 3; it writes a line there and reads the
 * echo. Plain: "exec: echo: hello". Under the library the socket cannot cross into the
 * new image: sh gets a closed socket (the write fails or the read ends), never bytes
 * that are not the stream's. */
static void exec_inherit(int port) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(c >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(write(c, "ping", 4) == 4);
    unsigned char b[4];
    read_exact(c, b, 4);
    CHECK(dup2(c, 3) == 3);
    char *argv[] = { "sh", "-c", "echo hello >&3 && read -r x <&3 && echo \"exec: echo: $x\" || echo 'exec: the socket did not cross'", NULL };
    execv("/bin/sh", argv);
    printf("exec failed: %s\n", strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) { fprintf(stderr, "usage: sockets tcp|udp|unix\n"); return 2; }
    if (!strcmp(argv[1], "tcp")) tcp();
    else if (!strcmp(argv[1], "udp")) udp();
    else if (!strcmp(argv[1], "unix")) unix_stream();
    else if (!strcmp(argv[1], "hold")) hold();
    else if (!strcmp(argv[1], "epipe")) epipe();
    else if (!strcmp(argv[1], "exec-inherit") && argc == 3) exec_inherit(atoi(argv[2]));
    else if (!strcmp(argv[1], "threads") && argc == 4) threads(atoi(argv[2]), atoi(argv[3]));
    else if (!strcmp(argv[1], "echo-server") && argc == 3) echo_server(atoi(argv[2]));
    else if (!strcmp(argv[1], "mixed") && argc == 4) mixed(atoi(argv[2]), atoi(argv[3]));
    else if (!strcmp(argv[1], "client") && argc == 3) client(atoi(argv[2]));
    else return 2;
    printf("done\n");
    return 0;
}

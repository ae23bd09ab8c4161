/* Consume load generator for make bench (bench/consume.py builds and starts it).
 *
 * h2load, which measures CanUse, sends one fixed body, and every Consume needs its own
 * idempotency key. This is h2load's engine (nghttp2, in C) in h2load's shape (CONNECTIONS
 * connections x STREAMS streams in flight) with a fresh key per call, so the generator takes
 * as little of the two cores as h2load does: Node's http2 (the generator before this one)
 * took ~200 us of CPU per call, 0.4 of a core at 2 000 calls/s, beside the service measured.
 *
 * Usage: consume_load HOST:PORT CALLS CONNECTIONS STREAMS METER KEYPREFIX SUBJECT...
 * (subjects distinct, plain names: printed as JSON keys unescaped; call i is for subject
 * i mod their number)
 * Prints one JSON object: calls, seconds, latencies' p50/p99 (ms), allowed calls per subject,
 * and failures (non-OK grpc-status, or a stream reset).
 *
 * CONSUME_RATE=N (calls/s) makes it open-loop, as h2load --rps does and as a latency target at
 * a given rate means: call i is due at i/N seconds, sent then if fewer than CONNECTIONS x
 * STREAMS are in flight, and its latency counts from when it was due, so a server that falls
 * behind shows its queue in the tail (no coordinated omission).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PATH "/entitlements.v1.UsageService/Consume"

typedef struct {
  uint8_t body[1024];
  size_t len, off;
  double started;   /* ms: when the call was due (open loop) or sent (closed loop) */
  int subject;
  int status;       /* grpc-status, -1 until seen */
  uint8_t head[7];  /* the response's first bytes: frame header, then the allowed field */
  size_t got;
  int conn;
} Call;

typedef struct {
  int fd;
  nghttp2_session *session;
  int events;
} Conn;

static Conn *conns;
static int connections, streams, calls, subject_count;
static char **subjects;
static const char *meter, *prefix, *authority;
static Call *slots;
static Call **free_slots;
static int free_count;
static double *latencies;
static long *allowed_by;
static int next_call, done_calls, in_flight, failures;
static double rate;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void die(const char *what) {
  fprintf(stderr, "consume_load: %s\n", what);
  exit(1);
}

static size_t varint(uint8_t *out, uint64_t v) {
  size_t n = 0;
  while (v > 127) {
    out[n++] = (uint8_t)((v & 127) | 128);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

static size_t text_field(uint8_t *out, int number, const char *s) {
  size_t len = strlen(s), n = varint(out, (uint64_t)(number << 3 | 2));
  n += varint(out + n, len);
  memcpy(out + n, s, len);
  return n + len;
}

/* A gRPC frame of ConsumeRequest{subject, limit: meter, amount: 1, idempotency_key}. */
static void build(Call *c, int i) {
  char key[256];
  uint8_t *m = c->body + 5;
  size_t n;
  snprintf(key, sizeof key, "%s-%d", prefix, i);
  c->subject = i % subject_count;
  if (strlen(subjects[c->subject]) + strlen(meter) + strlen(key) + 32 > sizeof c->body - 5)
    die("subject, meter or key too long");
  n = text_field(m, 1, subjects[c->subject]);
  n += text_field(m + n, 2, meter);
  m[n++] = 3 << 3;
  m[n++] = 1;
  n += text_field(m + n, 4, key);
  c->body[0] = 0;
  c->body[1] = (uint8_t)(n >> 24);
  c->body[2] = (uint8_t)(n >> 16);
  c->body[3] = (uint8_t)(n >> 8);
  c->body[4] = (uint8_t)n;
  c->len = n + 5;
  c->off = 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user) {
  Call *c = source->ptr;
  size_t n = c->len - c->off;
  (void)s, (void)id, (void)user;
  if (n > length) n = length;
  memcpy(buf, c->body + c->off, n);
  c->off += n;
  if (c->off == c->len) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static void submit(int conn, double started) {
  Call *c;
  nghttp2_data_provider body;
  nghttp2_nv headers[] = {
      {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)":authority", (uint8_t *)authority, 10, strlen(authority), NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)":path", (uint8_t *)PATH, 5, sizeof PATH - 1, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, NGHTTP2_NV_FLAG_NONE},
  };
  if (free_count == 0) die("no free stream slot");
  c = free_slots[--free_count];
  build(c, next_call++);
  c->started = started;
  c->status = -1;
  c->got = 0;
  c->conn = conn;
  body.source.ptr = c;
  body.read_callback = read_body;
  if (nghttp2_submit_request(conns[conn].session, NULL, headers, 6, &body, c) < 0)
    die("nghttp2_submit_request failed");
  in_flight++;
}

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t length, int flags,
                       void *user) {
  Conn *conn = user;
  ssize_t n = write(conn->fd, data, length);
  (void)s, (void)flags;
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return NGHTTP2_ERR_WOULDBLOCK;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  return n;
}

static int header_cb(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
  Call *c = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  (void)flags, (void)user, (void)valuelen;
  if (c && namelen == 11 && memcmp(name, "grpc-status", 11) == 0) c->status = atoi((const char *)value);
  return 0;
}

static int data_cb(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *user) {
  Call *c = nghttp2_session_get_stream_user_data(s, id);
  (void)flags, (void)user;
  while (c && c->got < sizeof c->head && len > 0) {
    c->head[c->got++] = *data++;
    len--;
  }
  return 0;
}

static int close_cb(nghttp2_session *s, int32_t id, uint32_t error, void *user) {
  Call *c = nghttp2_session_get_stream_user_data(s, id);
  (void)user;
  if (c == NULL) return 0;
  latencies[done_calls++] = now_ms() - c->started;
  /* ConsumeResponse field 1 (allowed) comes first when true: tag 0x08, value 1. */
  if (error != 0 || c->status != 0) failures++;
  else if (c->got == sizeof c->head && c->head[5] == 0x08 && c->head[6] == 1)
    allowed_by[c->subject]++;
  free_slots[free_count++] = c;
  in_flight--;
  if (rate == 0 && next_call < calls) submit(c->conn, now_ms());
  return 0;
}

static int open_conn(const char *host, const char *port) {
  struct addrinfo hints = {0}, *found;
  int fd, one = 1;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, port, &hints, &found) != 0) die("cannot resolve the target");
  fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  if (fd < 0 || connect(fd, found->ai_addr, found->ai_addrlen) != 0) die("cannot connect");
  freeaddrinfo(found);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double at(double q) {
  long i = (long)(q * done_calls);
  return latencies[i < done_calls - 1 ? i : done_calls - 1];
}

static void pump(int ep, Conn *conn) {
  struct epoll_event ev;
  int want;
  if (nghttp2_session_send(conn->session) != 0) die("connection failed (send)");
  want = EPOLLIN | (nghttp2_session_want_write(conn->session) ? EPOLLOUT : 0);
  if (want != conn->events) {
    ev.events = (uint32_t)want;
    ev.data.ptr = conn;
    epoll_ctl(ep, EPOLL_CTL_MOD, conn->fd, &ev);
    conn->events = want;
  }
}

int main(int argc, char **argv) {
  char host[256], *colon;
  const char *rate_env = getenv("CONSUME_RATE");
  nghttp2_session_callbacks *callbacks;
  struct epoll_event ev, events[16];
  double start, seconds, gap;
  int ep, i, cap, printed = 0, sent = 0;
  uint8_t buf[65536];

  if (argc < 8) die("usage: consume_load HOST:PORT CALLS CONNECTIONS STREAMS METER KEYPREFIX SUBJECT...");
  authority = argv[1];
  calls = atoi(argv[2]);
  connections = atoi(argv[3]);
  streams = atoi(argv[4]);
  meter = argv[5];
  prefix = argv[6];
  subjects = argv + 7;
  subject_count = argc - 7;
  rate = rate_env ? atof(rate_env) : 0;
  if (calls < 1 || connections < 1 || streams < 1) die("CALLS, CONNECTIONS and STREAMS must be positive");
  cap = connections * streams;
  snprintf(host, sizeof host, "%s", authority);
  colon = strrchr(host, ':');
  if (colon == NULL) die("target must be HOST:PORT");
  *colon = 0;

  slots = calloc((size_t)cap, sizeof *slots);
  free_slots = calloc((size_t)cap, sizeof *free_slots);
  latencies = calloc((size_t)calls, sizeof *latencies);
  allowed_by = calloc((size_t)subject_count, sizeof *allowed_by);
  conns = calloc((size_t)connections, sizeof *conns);
  if (!slots || !free_slots || !latencies || !allowed_by || !conns) die("out of memory");
  for (i = 0; i < cap; i++) free_slots[free_count++] = &slots[i];

  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_send_callback(callbacks, send_cb);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, header_cb);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, data_cb);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, close_cb);
  ep = epoll_create1(0);
  for (i = 0; i < connections; i++) {
    conns[i].fd = open_conn(host, colon + 1);
    if (nghttp2_session_client_new(&conns[i].session, callbacks, &conns[i]) != 0) die("nghttp2 session");
    nghttp2_submit_settings(conns[i].session, NGHTTP2_FLAG_NONE, NULL, 0);
    ev.events = EPOLLIN;
    ev.data.ptr = &conns[i];
    conns[i].events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
  }

  start = now_ms();
  gap = rate > 0 ? 1e3 / rate : 0;
  if (rate == 0)
    for (i = 0; i < cap && next_call < calls; i++) submit(i % connections, start);
  while (done_calls < calls) {
    int n, timeout = -1; /* -1: until a response (closed loop, or every stream in use) */
    if (rate > 0) {
      double now = now_ms();
      while (sent < calls && in_flight < cap && start + sent * gap <= now) {
        submit(sent % connections, start + sent * gap);
        sent++;
      }
      if (sent < calls && in_flight < cap) timeout = (int)(start + sent * gap - now) + 1;
    }
    for (i = 0; i < connections; i++) pump(ep, &conns[i]);
    n = epoll_wait(ep, events, 16, timeout);
    for (i = 0; i < n; i++) {
      Conn *conn = events[i].data.ptr;
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
          ssize_t got = read(conn->fd, buf, sizeof buf);
          if (got > 0) {
            if (nghttp2_session_mem_recv(conn->session, buf, (size_t)got) < 0) die("bad HTTP/2 from the server");
            continue;
          }
          if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          die("the server closed a connection");
        }
      }
    }
  }
  seconds = (now_ms() - start) / 1e3;
  for (i = 0; i < connections; i++) {
    nghttp2_session_terminate_session(conns[i].session, NGHTTP2_NO_ERROR);
    nghttp2_session_send(conns[i].session);
    close(conns[i].fd);
  }
  qsort(latencies, (size_t)done_calls, sizeof *latencies, by_value);
  printf("{\"calls\":%d,\"seconds\":%.6f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"allowed\":{", calls,
         seconds, at(0.5), at(0.99));
  for (i = 0; i < subject_count; i++) {
    if (allowed_by[i] == 0) continue;
    printf("%s\"%s\":%ld", printed++ ? "," : "", subjects[i], allowed_by[i]);
  }
  printf("},\"failures\":%d}", failures);
  return 0;
}

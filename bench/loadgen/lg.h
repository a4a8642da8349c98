/*
 * lg: the livehub load generator. One parent process forks WebSocket
 * worker processes (each an epoll loop over its share of the connections)
 * and, for the publishing scenarios, one gRPC publisher process. Workers and
 * the publisher report to the parent over pipes; the parent merges, reads
 * the hub's RSS and CPU from /proc and prints the result.
 */
#ifndef LG_H
#define LG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lg_scenario { SC_IDLE, SC_BROADCAST, SC_JOBS, SC_CHURN };
enum lg_proto { PROTO_WS, PROTO_SIO };

/* Hubs the WebSocket connections are spread over (--ws A,B,C). */
#define LG_MAX_HUBS 8

struct lg_opts {
	enum lg_scenario scenario;
	enum lg_proto proto;
	int nws;                        /* hubs in --ws: connection g goes to hub g % nws */
	char ws_host[LG_MAX_HUBS][64];  /* their WebSocket addresses */
	int ws_port[LG_MAX_HUBS];
	int pub_hub;                    /* which of them --grpc is (cross-node figures) */
	char grpc_target[128];
	char secret[256];
	int conns;        /* WebSocket connections, in all workers */
	int workers;      /* worker processes */
	int tenants;      /* tenants the measured connections are spread over */
	int foreign;      /* extra connections in a tenant nobody publishes to */
	int stalled;      /* extra connections in the measured tenants that stop reading */
	int src_addrs;    /* source addresses 127.0.0.2 .. 127.0.0.(1+src_addrs) */
	double rate;      /* publishes per second (broadcast, jobs) */
	double duration;  /* seconds of publishing, or of churn */
	int payload;      /* bytes of the event's data object */
	int hub_pid[LG_MAX_HUBS]; /* for RSS and CPU (summed); none = not measured */
	int nhub_pids;
	int redis_pid;            /* redis-server, for its CPU; 0 = not measured */
	bool token_query; /* ?token= instead of Authorization: Bearer */
	int max_inflight; /* gRPC calls in flight at most */
	int burst_us;     /* send calls due within this many µs together */
	bool stream;      /* publish over one PublishStream call instead of unary calls */
	double drain;     /* seconds to wait at most for deliveries after publishing */
	int handshakes;   /* connection attempts in flight per worker */
	double settle;    /* seconds to wait before reading the idle RSS */
	char label[64];   /* hub name printed in the RESULT line */
};

/* Log-linear histogram of nanoseconds: exact below 128, then 64 sub-buckets
 * per power of two (about 1.6 % resolution), up to 2^41 ns. */
#define H_LINEAR   128
#define H_SUB_BITS 6
#define H_MAX_EXP  41
#define H_BUCKETS  (H_LINEAR + (H_MAX_EXP - 7) * (1 << H_SUB_BITS))

struct hist {
	uint64_t count;
	uint64_t max;
	uint64_t b[H_BUCKETS];
};

void hist_add(struct hist *h, uint64_t v);
void hist_merge(struct hist *into, const struct hist *from);
uint64_t hist_pct(const struct hist *h, double pct); /* 0 when empty */

/* What one worker measured; summed by the parent. */
struct wstats {
	uint64_t connected;    /* upgrades that got the `connected` message */
	uint64_t ready;        /* connections ready for the measurement */
	uint64_t connect_fail; /* refused, reset, HTTP status other than 101… */
	uint64_t events;       /* events received on the expected channel */
	uint64_t gaps;         /* offset jumped forward */
	uint64_t dups;         /* offset seen again */
	uint64_t reorders;     /* offset went back */
	uint64_t foreign;      /* event carrying another tenant's marker */
	uint64_t unexpected;   /* event on a channel this connection is not on */
	uint64_t epoch_changes;
	uint64_t parse_errors;
	uint64_t missing; /* expected minus received, summed over connections */
	uint64_t extra;   /* received beyond the expected count */
	uint64_t closed;  /* connections the hub closed during the run */
	uint64_t errors;  /* `error` messages from the hub */
	uint64_t cycles;  /* churn: connect-subscribe-close cycles done */
	uint64_t bytes_in;
	uint64_t stalled; /* connections that stopped reading once ready */
	uint64_t xevents; /* events received on a hub other than the publisher's */
	double cpu_s;     /* the worker's own user+system seconds */
	struct hist lat;  /* publish -> deliver, or churn cycle time */
	struct hist xlat; /* publish -> deliver on hubs other than the publisher's */
};

struct pstats {
	uint64_t issued, ok, failed;
	uint64_t late;       /* calls issued more than 1 ms behind schedule */
	uint64_t max_lag_ns; /* the worst delay behind schedule */
	double elapsed_s;    /* first call to last completion */
	double cpu_s;
	struct hist rpc; /* call round-trip times */
};

/* Parent -> worker command. */
struct wcmd {
	int op;             /* CMD_PROGRESS, CMD_FINISH */
	uint64_t published; /* FINISH: successful publishes (to compute expectations) */
	double duration;
};
enum { CMD_PROGRESS = 1, CMD_FINISH = 2 };
/* CMD_PROGRESS is answered with one uint64_t: events still missing on the
 * worker's open connections, given `published`. */

/* Worker -> parent messages: a READY header, then a final wstats. */
struct wready {
	uint64_t ready, failed;
};

uint64_t now_ns(void);
int write_all(int fd, const void *buf, size_t len);
int read_all(int fd, void *buf, size_t len);

/* jwt.c: an HS256 token for tenant/user, valid for an hour. Returns the
 * length written to out (NUL-terminated), or -1 when cap is too small. */
int jwt_mint(char *out, size_t cap, const char *secret, const char *tenant, const char *user);

/* worker.c: runs the connections [first, first+count) and exits. */
void worker_main(const struct lg_opts *o, int index, int first, int count, int to_parent,
                 int from_parent);

/* publisher.c: publishes for o->duration seconds, writes a pstats, exits. */
void publisher_main(const struct lg_opts *o, int to_parent);

/* Who connection g is: its tenant and user names and its job channel. */
void conn_identity(const struct lg_opts *o, int g, char *tenant, size_t tcap, char *user,
                   size_t ucap);
bool conn_is_foreign(const struct lg_opts *o, int g);
bool conn_is_stalled(const struct lg_opts *o, int g);

#endif

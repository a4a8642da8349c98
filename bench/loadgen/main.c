/*
 * lg main: options, the worker and publisher processes, the hub's /proc
 * figures, and the report. Exit status: 0 when every check passed, 1 when
 * the run FAILED (gaps, duplicates, reordering, foreign or lost events,
 * failed connections or publishes), 2 on bad usage or setup errors.
 *
 * The last line printed is `RESULT key=value ...`, which bench/run.sh reads.
 */
#define _GNU_SOURCE
#include "lg.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: lg SCENARIO [options]   SCENARIO: idle | broadcast | jobs | churn\n"
	        "  --ws HOST:PORT[,...]    hub WebSocket address (127.0.0.1:8080); several (up to 8):\n"
	        "                          connection g goes to the (g mod n)-th, round-robin\n"
	        "  --grpc HOST:PORT        hub gRPC address (127.0.0.1:50051)\n"
	        "  --pub-hub K             which --ws hub (from 0) --grpc belongs to (0): deliveries\n"
	        "                          on the others are the cross-node figures\n"
	        "  --secret S              JWT HS256 secret (dev-secret)\n"
	        "  --proto ws|socketio     client protocol (ws)\n"
	        "  --conns N               measured connections (1000)\n"
	        "  --foreign N             extra connections in another tenant (0)\n"
	        "  --stalled N             extra connections on the measured channels that stop\n"
	        "                          reading once ready (0); the hub should close them\n"
	        "  --tenants N             tenants the measured connections are spread over (1)\n"
	        "  --workers N             worker processes (2)\n"
	        "  --src-addrs N           source addresses 127.0.0.2.. (8)\n"
	        "  --rate R                publishes per second (100)\n"
	        "  --duration S            seconds of publishing or churn (10)\n"
	        "  --payload B             bytes of the event data object (64)\n"
	        "  --hub-pid PID[,...]     hub processes for RSS and CPU figures (summed)\n"
	        "  --redis-pid PID         redis-server, for its CPU figure\n"
	        "  --token-query           send the token as ?token= (default: Authorization header)\n"
	        "  --inflight N            gRPC calls in flight at most (256)\n"
	        "  --burst-us U            send the calls due within U µs together (0)\n"
	        "  --stream                publish over one PublishStream call (default: unary calls)\n"
	        "  --handshakes N          connection attempts in flight per worker (200)\n"
	        "  --drain S               seconds to wait at most for deliveries after publishing (30)\n"
	        "  --settle S              idle: seconds before reading the hub's RSS (3)\n"
	        "  --label NAME            hub name for the RESULT line\n");
}

static int split_hostport(const char *s, char *host, size_t hcap, int *port)
{
	const char *c = strrchr(s, ':');
	if (!c || (size_t)(c - s) >= hcap)
		return -1;
	memcpy(host, s, (size_t)(c - s));
	host[c - s] = 0;
	*port = atoi(c + 1);
	return *port > 0 ? 0 : -1;
}

/* "A,B,C" into o->ws_host/ws_port. */
static int parse_ws_list(struct lg_opts *o, const char *arg)
{
	char buf[1024];
	snprintf(buf, sizeof(buf), "%s", arg);
	o->nws = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (o->nws == LG_MAX_HUBS ||
		    split_hostport(t, o->ws_host[o->nws], sizeof(o->ws_host[0]), &o->ws_port[o->nws]))
			return -1;
		o->nws++;
	}
	return o->nws ? 0 : -1;
}

static int parse_pid_list(struct lg_opts *o, const char *arg)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", arg);
	o->nhub_pids = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (o->nhub_pids == LG_MAX_HUBS || atoi(t) <= 0)
			return -1;
		o->hub_pid[o->nhub_pids++] = atoi(t);
	}
	return 0;
}

static int parse(struct lg_opts *o, int argc, char **argv)
{
	static const struct option lo[] = {{"ws", 1, 0, 'w'},
	                                   {"grpc", 1, 0, 'g'},
	                                   {"secret", 1, 0, 's'},
	                                   {"proto", 1, 0, 'P'},
	                                   {"conns", 1, 0, 'n'},
	                                   {"foreign", 1, 0, 'f'},
	                                   {"stalled", 1, 0, 'Z'},
	                                   {"tenants", 1, 0, 'T'},
	                                   {"workers", 1, 0, 'W'},
	                                   {"src-addrs", 1, 0, 'A'},
	                                   {"rate", 1, 0, 'r'},
	                                   {"duration", 1, 0, 'd'},
	                                   {"payload", 1, 0, 'p'},
	                                   {"hub-pid", 1, 0, 'H'},
	                                   {"redis-pid", 1, 0, 'R'},
	                                   {"pub-hub", 1, 0, 'K'},
	                                   {"token-query", 0, 0, 'q'},
	                                   {"inflight", 1, 0, 'I'},
	                                   {"handshakes", 1, 0, 'h'},
	                                   {"drain", 1, 0, 'D'},
	                                   {"settle", 1, 0, 'S'},
	                                   {"label", 1, 0, 'L'},
	                                   {"burst-us", 1, 0, 'B'},
	                                   {"stream", 0, 0, 'X'},
	                                   {"help", 0, 0, '?'},
	                                   {0, 0, 0, 0}};
	*o = (struct lg_opts){.nws = 1,
	                      .ws_port = {8080},
	                      .conns = 1000,
	                      .workers = 2,
	                      .tenants = 1,
	                      .src_addrs = 8,
	                      .rate = 100,
	                      .duration = 10,
	                      .payload = 64,
	                      .max_inflight = 256,
	                      .handshakes = 200,
	                      .drain = 30,
	                      .settle = 3};
	strcpy(o->ws_host[0], "127.0.0.1");
	strcpy(o->grpc_target, "127.0.0.1:50051");
	strcpy(o->secret, "dev-secret");
	strcpy(o->label, "hub");
	if (argc < 2)
		return -1;
	const char *sc = argv[1];
	if (!strcmp(sc, "idle"))
		o->scenario = SC_IDLE;
	else if (!strcmp(sc, "broadcast"))
		o->scenario = SC_BROADCAST;
	else if (!strcmp(sc, "jobs"))
		o->scenario = SC_JOBS;
	else if (!strcmp(sc, "churn"))
		o->scenario = SC_CHURN;
	else
		return -1;
	optind = 2;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'w':
			if (parse_ws_list(o, optarg))
				return -1;
			break;
		case 'g': snprintf(o->grpc_target, sizeof(o->grpc_target), "%s", optarg); break;
		case 's': snprintf(o->secret, sizeof(o->secret), "%s", optarg); break;
		case 'P': o->proto = !strcmp(optarg, "socketio") ? PROTO_SIO : PROTO_WS; break;
		case 'n': o->conns = atoi(optarg); break;
		case 'f': o->foreign = atoi(optarg); break;
		case 'Z': o->stalled = atoi(optarg); break;
		case 'T': o->tenants = atoi(optarg); break;
		case 'W': o->workers = atoi(optarg); break;
		case 'A': o->src_addrs = atoi(optarg); break;
		case 'r': o->rate = atof(optarg); break;
		case 'd': o->duration = atof(optarg); break;
		case 'p': o->payload = atoi(optarg); break;
		case 'H':
			if (parse_pid_list(o, optarg))
				return -1;
			break;
		case 'R': o->redis_pid = atoi(optarg); break;
		case 'K': o->pub_hub = atoi(optarg); break;
		case 'q': o->token_query = true; break;
		case 'I': o->max_inflight = atoi(optarg); break;
		case 'h': o->handshakes = atoi(optarg); break;
		case 'D': o->drain = atof(optarg); break;
		case 'S': o->settle = atof(optarg); break;
		case 'X': o->stream = true; break;
		case 'B': o->burst_us = atoi(optarg); break;
		case 'L': snprintf(o->label, sizeof(o->label), "%s", optarg); break;
		default: return -1;
		}
	}
	if (o->conns < 1 || o->workers < 1 || o->tenants < 1 || o->src_addrs < 1 ||
	    o->src_addrs > 250 || o->rate <= 0 || o->duration <= 0 || o->max_inflight < 1 ||
	    o->handshakes < 1 || o->pub_hub < 0 || o->pub_hub >= o->nws)
		return -1;
	return 0;
}

/* The hub's resident set in bytes, or -1. */
static long hub_rss(int pid)
{
	char path[64], line[256];
	long kb = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

/* The hub's user+system CPU seconds (all threads), or -1. */
static double hub_cpu(int pid)
{
	char path[64], buf[2048];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	unsigned long ut, st;
	/* Fields after the name: state(3) ... utime(14) stime(15). */
	if (!p ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Summed over the --hub-pid processes; -1 when none or one is unreadable. */
static long hubs_rss(const struct lg_opts *o)
{
	long sum = 0;
	for (int i = 0; i < o->nhub_pids; i++) {
		long v = hub_rss(o->hub_pid[i]);
		if (v < 0)
			return -1;
		sum += v;
	}
	return o->nhub_pids ? sum : -1;
}

static double hubs_cpu(const struct lg_opts *o)
{
	double sum = 0;
	for (int i = 0; i < o->nhub_pids; i++) {
		double v = hub_cpu(o->hub_pid[i]);
		if (v < 0)
			return -1;
		sum += v;
	}
	return o->nhub_pids ? sum : -1;
}

struct child {
	pid_t pid;
	int rd, wr;
};

static int spawn_workers(const struct lg_opts *o, struct child *w)
{
	int total = o->conns + o->foreign + o->stalled;
	for (int i = 0; i < o->workers; i++) {
		int first = (int)((long)total * i / o->workers);
		int last = (int)((long)total * (i + 1) / o->workers);
		int up[2], down[2];
		if (pipe(up) || pipe(down))
			return -1;
		pid_t pid = fork();
		if (pid < 0)
			return -1;
		if (pid == 0) {
			close(up[0]);
			close(down[1]);
			for (int k = 0; k < i; k++) {
				close(w[k].rd);
				close(w[k].wr);
			}
			worker_main(o, i, first, last - first, up[1], down[0]);
			_exit(0);
		}
		close(up[1]);
		close(down[0]);
		w[i] = (struct child){.pid = pid, .rd = up[0], .wr = down[1]};
	}
	return 0;
}

static void sleep_s(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

struct run {
	struct wstats ws;
	struct pstats ps;
	struct wready rd;
	long rss0, rss1;
	double cpu0, cpu1, wall;
	double rcpu0, rcpu1; /* redis-server */
	bool published;
};

static int run_publisher(const struct lg_opts *o, struct pstats *ps)
{
	int fd[2];
	if (pipe(fd))
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		close(fd[0]);
		publisher_main(o, fd[1]);
		_exit(0);
	}
	close(fd[1]);
	int rc = read_all(fd[0], ps, sizeof(*ps));
	close(fd[0]);
	waitpid(pid, NULL, 0);
	return rc;
}

/* Waits until every open connection has all its events, or o->drain
 * seconds; what is still missing then is counted by the workers. */
static int drain(const struct lg_opts *o, struct child *w, uint64_t published)
{
	uint64_t deadline = now_ns() + (uint64_t)(o->drain * 1e9);
	struct wcmd cmd = {.op = CMD_PROGRESS, .published = published};

	for (;;) {
		uint64_t missing = 0;
		for (int i = 0; i < o->workers; i++) {
			uint64_t m;
			if (write_all(w[i].wr, &cmd, sizeof(cmd)) ||
			    read_all(w[i].rd, &m, sizeof(m)))
				return -1;
			missing += m;
		}
		if (!missing || now_ns() > deadline)
			return 0;
		sleep_s(0.05);
	}
}

static int drive(const struct lg_opts *o, struct child *w, struct run *r)
{
	r->rss0 = hubs_rss(o);
	uint64_t t0 = now_ns();
	r->cpu0 = hubs_cpu(o);
	if (spawn_workers(o, w))
		return -1;
	for (int i = 0; i < o->workers; i++) {
		struct wready rd;
		if (read_all(w[i].rd, &rd, sizeof(rd)))
			return -1;
		r->rd.ready += rd.ready;
		r->rd.failed += rd.failed;
	}
	fprintf(stderr, "lg: %llu connections ready, %llu failed (%.1f s)\n",
	        (unsigned long long)r->rd.ready, (unsigned long long)r->rd.failed,
	        (double)(now_ns() - t0) / 1e9);
	if (o->scenario == SC_IDLE) {
		sleep_s(o->settle);
		r->rss1 = hubs_rss(o);
	}
	if (o->scenario == SC_BROADCAST || o->scenario == SC_JOBS) {
		t0 = now_ns();
		r->cpu0 = hubs_cpu(o);
		r->rcpu0 = o->redis_pid ? hub_cpu(o->redis_pid) : -1;
		if (run_publisher(o, &r->ps))
			return -1;
		r->published = true;
		if (drain(o, w, r->ps.ok))
			return -1;
		r->rss1 = hubs_rss(o);
	}
	r->cpu1 = hubs_cpu(o);
	r->rcpu1 = o->redis_pid ? hub_cpu(o->redis_pid) : -1;
	r->wall = (double)(now_ns() - t0) / 1e9;
	struct wcmd cmd = {.op = CMD_FINISH, .published = r->ps.ok};
	for (int i = 0; i < o->workers; i++)
		write_all(w[i].wr, &cmd, sizeof(cmd));
	struct wstats *one = malloc(sizeof(*one));
	for (int i = 0; i < o->workers; i++) {
		if (read_all(w[i].rd, one, sizeof(*one)))
			return -1;
		uint64_t *a = &r->ws.connected, *b = &one->connected;
		for (size_t k = 0; k < offsetof(struct wstats, cpu_s) / sizeof(uint64_t); k++)
			a[k] += b[k];
		r->ws.cpu_s += one->cpu_s;
		hist_merge(&r->ws.lat, &one->lat);
		hist_merge(&r->ws.xlat, &one->xlat);
		waitpid(w[i].pid, NULL, 0);
	}
	free(one);
	return 0;
}

#define U(x) ((unsigned long long)(x))

static bool report_checks(const struct lg_opts *o, const struct run *r)
{
	const struct wstats *s = &r->ws;
	uint64_t bad = s->gaps + s->dups + s->reorders + s->foreign + s->unexpected +
	               s->epoch_changes + s->parse_errors + s->missing + s->extra + s->closed +
	               s->errors + r->ps.failed;
	uint64_t want = (uint64_t)(o->conns + o->foreign + o->stalled);
	bool failed_conns = o->scenario == SC_CHURN ? s->connect_fail > 0 : r->rd.ready < want;
	printf("checks: gaps=%llu dups=%llu reorders=%llu foreign=%llu unexpected=%llu epoch_changes=%llu "
	       "parse_errors=%llu missing=%llu extra=%llu hub_closed=%llu hub_errors=%llu publish_failed=%llu "
	       "connect_failed=%llu\n",
	       U(s->gaps), U(s->dups), U(s->reorders), U(s->foreign), U(s->unexpected),
	       U(s->epoch_changes), U(s->parse_errors), U(s->missing), U(s->extra), U(s->closed),
	       U(s->errors), U(r->ps.failed), U(s->connect_fail));
	return bad == 0 && !failed_conns;
}

static void report(const struct lg_opts *o, const struct run *r, bool ok)
{
	static const char *names[] = {"idle", "broadcast", "jobs", "churn"};
	const struct wstats *s = &r->ws;
	double cpu = r->cpu1 >= 0 && r->cpu0 >= 0 ? r->cpu1 - r->cpu0 : -1;
	char res[1536];
	int n = snprintf(res, sizeof(res),
	                 "RESULT hub=%s scenario=%s proto=%s conns=%d foreign=%d ready=%llu",
	                 o->label, names[o->scenario], o->proto == PROTO_SIO ? "socketio" : "ws",
	                 o->conns, o->foreign, U(r->rd.ready));
	if (o->nws > 1)
		n += snprintf(res + n, sizeof(res) - (size_t)n, " hubs=%d", o->nws);
	if (o->stalled)
		n += snprintf(res + n, sizeof(res) - (size_t)n, " stalled=%llu", U(s->stalled));
	if (o->scenario == SC_IDLE && r->rss0 > 0 && r->rss1 > 0 && r->rd.ready)
		n += snprintf(res + n, sizeof(res) - (size_t)n,
		              " rss_before=%ld rss_after=%ld rss_per_conn=%.0f", r->rss0, r->rss1,
		              (double)(r->rss1 - r->rss0) / (double)r->rd.ready);
	if (r->published) {
		double dur = r->ps.elapsed_s > 0 ? r->ps.elapsed_s : o->duration;
		n += snprintf(
		        res + n, sizeof(res) - (size_t)n,
		        " pub_mode=%s rate=%.0f payload=%d published=%llu pub_rate=%.0f deliveries=%llu deliv_per_s=%.0f"
		        " pub_late=%llu pub_max_lag_us=%.0f pub_cpu_s=%.2f rpc_p99_us=%.0f",
		        o->stream ? "stream" : "unary", o->rate, o->payload, U(r->ps.ok),
		        (double)r->ps.ok / dur, U(s->events),
		        (double)s->events / (r->wall > 0 ? r->wall : dur), U(r->ps.late),
		        r->ps.max_lag_ns / 1e3, r->ps.cpu_s, hist_pct(&r->ps.rpc, 99) / 1e3);
		if (cpu > 0)
			n += snprintf(res + n, sizeof(res) - (size_t)n, " deliv_per_cpu_s=%.0f",
			              (double)s->events / cpu);
	}
	if (o->scenario == SC_CHURN)
		n += snprintf(res + n, sizeof(res) - (size_t)n, " cycles=%llu cycles_per_s=%.0f",
		              U(s->cycles), (double)s->cycles / o->duration);
	if (s->lat.count)
		n += snprintf(res + n, sizeof(res) - (size_t)n,
		              " p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f",
		              hist_pct(&s->lat, 50) / 1e3, hist_pct(&s->lat, 99) / 1e3,
		              hist_pct(&s->lat, 99.9) / 1e3, s->lat.max / 1e3);
	if (s->xlat.count)
		n += snprintf(res + n, sizeof(res) - (size_t)n,
		              " xnode_deliveries=%llu xnode_p50_us=%.0f xnode_p99_us=%.0f",
		              U(s->xevents), hist_pct(&s->xlat, 50) / 1e3, hist_pct(&s->xlat, 99) / 1e3);
	if (cpu >= 0)
		n += snprintf(res + n, sizeof(res) - (size_t)n, " hub_cpu_s=%.2f hub_cpu_pct=%.0f",
		              cpu, 100.0 * cpu / r->wall);
	if (o->redis_pid && r->rcpu0 >= 0 && r->rcpu1 >= 0)
		n += snprintf(res + n, sizeof(res) - (size_t)n, " redis_cpu_s=%.2f",
		              r->rcpu1 - r->rcpu0);
	snprintf(res + n, sizeof(res) - (size_t)n, " lg_cpu_pct=%.0f wall_s=%.1f status=%s",
	         100.0 * (s->cpu_s + r->ps.cpu_s) / (r->wall > 0 ? r->wall : 1), r->wall,
	         ok ? "OK" : "FAILED");
	printf("%s\n", res);
}

int main(int argc, char **argv)
{
	static struct lg_opts o;
	static struct run r;

	if (parse(&o, argc, argv)) {
		usage(stderr);
		return 2;
	}
	int total = o.conns + o.foreign + o.stalled;
	if ((total + o.workers - 1) / o.workers > 19000) {
		fprintf(stderr, "lg: more than 19000 connections per worker; raise --workers\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct child *w = calloc((size_t)o.workers, sizeof(*w));
	if (drive(&o, w, &r)) {
		fprintf(stderr, "lg: a worker or the publisher died\n");
		for (int i = 0; i < o.workers; i++)
			if (w[i].pid > 0)
				kill(w[i].pid, SIGKILL);
		return 2;
	}
	bool ok = report_checks(&o, &r);
	report(&o, &r, ok);
	return ok ? 0 : 1;
}

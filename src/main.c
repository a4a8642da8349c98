/*
 * livehub's entry point: `livehub [options]` runs the hub, `livehub token`
 * mints a development token.
 *
 * Threads: the main thread runs the libwebsockets service loop (it owns every
 * connection and the hub); gRPC runs its completion-queue thread; one signal
 * thread waits for SIGINT/SIGTERM (and SIGHUP: reload). Shutdown order:
 * stop gRPC first while the service thread still drains the hand-off queue
 * (so calls in flight get their replies), then stop the service loop
 * (clients get close 1001), then free. gRPC threads call
 * lws_cancel_service(), so the lws context outlives them.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "apikeys.h"
#include "auth.h"
#include "config.h"
#include "handoff.h"
#include "livehub.h"
#include "log.h"
#include "metrics.h"
#include "publication.h"
#include "rpc.h"
#include "ws.h"

struct run {
	struct lh_config cfg;
	struct ws *ws;
	struct rpc *rpc;
	sigset_t sigs;
	_Atomic int stopped; /* the signal thread has stopped gRPC and the loop */
	int argc;            /* the command line, read again on SIGHUP */
	char **argv;
	size_t nkeys; /* API keys configured at start */
};

/* The development-mode rule: with no API key (and no mutual TLS) gRPC may
 * listen on loopback only. Returns 0, or -1 after a message on stderr. */
static int check_open_grpc(const struct lh_config *cfg)
{
	if (cfg->grpc_tls_client_ca[0] || config_host_is_loopback(cfg->grpc_host))
		return 0;
	fprintf(stderr,
	        "livehub: LIVEHUB_GRPC_HOST is %s, but no gRPC API key is configured: "
	        "anyone who can reach the port could publish to every tenant. Set "
	        "LIVEHUB_API_KEYS_FILE or LIVEHUB_API_KEYS (or LIVEHUB_GRPC_TLS_CLIENT_CA "
	        "for mutual TLS), or listen on a loopback address (127.0.0.1, ::1)\n",
	        cfg->grpc_host);
	return -1;
}

/* Loads the gRPC API keys cfg names and applies the development-mode rule
 * to cfg and, on a reload, to running (the listener actually bound: its
 * address and TLS change only with a restart). Returns 0 with *out (NULL
 * when no key is configured), or -1 after a message on stderr (nothing of
 * a key in it). */
static int load_keys(const struct lh_config *cfg, const struct lh_config *running,
                     struct apikeys **out)
{
	char err[512];
	if (apikeys_load(cfg->api_keys_file, cfg->api_keys, out, err, sizeof err)) {
		fprintf(stderr, "livehub: %s\n", err);
		return -1;
	}
	if (!*out && (check_open_grpc(cfg) || (running && check_open_grpc(running))))
		return -1;
	struct stat st;
	if (*out && cfg->api_keys_file[0] && stat(cfg->api_keys_file, &st) == 0 &&
	    (st.st_mode & 077))
		log_warn("msg=\"the API key file can be read by other users; chmod 600 it\" "
		         "file=%s mode=%03o",
		         cfg->api_keys_file, (unsigned)(st.st_mode & 0777));
	return 0;
}

/* The loud start-up warning of development mode. */
static void warn_no_keys(const struct lh_config *cfg)
{
	if (cfg->grpc_tls_client_ca[0])
		log_warn("event=grpc_auth_mtls_only msg=\"no gRPC API key configured: every caller "
		         "with a client certificate signed by LIVEHUB_GRPC_TLS_CLIENT_CA may call "
		         "every method\"");
	else
		log_warn("event=grpc_auth_disabled msg=\"DEVELOPMENT MODE: no gRPC API key "
		         "configured, every local caller may publish to any tenant and call admin "
		         "methods; gRPC listens on loopback only. Set LIVEHUB_API_KEYS_FILE or "
		         "LIVEHUB_API_KEYS in production\"");
}

/* SIGHUP, on the signal thread: reads the configuration again (file,
 * environment, flags) and hands the JWT secret and the limits to the
 * service thread. Settings that need a restart keep their running value;
 * an invalid configuration changes nothing. */
static void reload(struct run *r)
{
	struct lh_config nc;
	bool help;
	log_info("event=reload_started");
	if (config_load(&nc, r->argc, r->argv, &help) || config_resolve_secret(&nc)) {
		metrics_inc(&lh_metrics.reload_failures, 1);
		log_error("event=reload_failed msg=\"invalid configuration (see above); the "
		          "running one stays\"");
		return;
	}
	struct apikeys *keys;
	if (load_keys(&nc, &r->cfg, &keys)) {
		metrics_inc(&lh_metrics.reload_failures, 1);
		log_error("event=reload_failed msg=\"invalid API keys (see above); the running "
		          "ones stay\"");
		explicit_bzero(&nc, sizeof nc);
		return;
	}
	struct auth_config ac;
	char err[400];
	config_auth(&nc, &ac);
	struct auth *auth = auth_new(&ac, err, sizeof err);
	if (!auth) {
		apikeys_free(keys);
		metrics_inc(&lh_metrics.reload_failures, 1);
		log_error("event=reload_failed msg=\"%s\"", err);
		explicit_bzero(&nc, sizeof nc);
		return;
	}
	struct hub_limits lim;
	config_hub_limits(&nc, &lim); /* config_load checked it */
	bool secret_changed = nc.jwt_secret_len != r->cfg.jwt_secret_len ||
	                      memcmp(nc.jwt_secret, r->cfg.jwt_secret, nc.jwt_secret_len) != 0;
	bool restart = strcmp(nc.ws_host, r->cfg.ws_host) || nc.ws_port != r->cfg.ws_port ||
	               strcmp(nc.grpc_host, r->cfg.grpc_host) || nc.grpc_port != r->cfg.grpc_port ||
	               nc.handoff_max != r->cfg.handoff_max ||
	               nc.handoff_max_bytes != r->cfg.handoff_max_bytes ||
	               nc.rx_buffer_size != r->cfg.rx_buffer_size ||
	               nc.ping_interval_s != r->cfg.ping_interval_s ||
	               nc.ping_timeout_s != r->cfg.ping_timeout_s ||
	               nc.shutdown_timeout_s != r->cfg.shutdown_timeout_s ||
	               nc.auth_timeout_s != r->cfg.auth_timeout_s ||
	               nc.presence_ttl != r->cfg.presence_ttl ||
	               strcmp(nc.tls_cert, r->cfg.tls_cert) || strcmp(nc.tls_key, r->cfg.tls_key) ||
	               strcmp(nc.grpc_tls_cert, r->cfg.grpc_tls_cert) ||
	               strcmp(nc.grpc_tls_key, r->cfg.grpc_tls_key) ||
	               strcmp(nc.grpc_tls_client_ca, r->cfg.grpc_tls_client_ca);
	bool keys_changed = strcmp(nc.jwt_keys, r->cfg.jwt_keys) != 0;
	/* Presence first: the service thread applies it in the same wake-up
	 * as, or before, the reload that logs reload_applied. */
	struct presence *pr = ws_presence_new(&nc);
	if (pr)
		ws_reload_presence(r->ws, pr);
	else
		log_error(
		        "event=reload_partial msg=\"out of memory: presence settings unchanged\"");
	ws_reload(r->ws, auth, &lim);
	ws_reload_edge(r->ws, &nc);
	size_t nkeys = keys ? keys->n : 0;
	rpc_set_keys(r->rpc, keys);
	if (!nkeys)
		warn_no_keys(&r->cfg);
	memcpy(r->cfg.jwt_secret, nc.jwt_secret, sizeof nc.jwt_secret);
	r->cfg.jwt_secret_len = nc.jwt_secret_len;
	memcpy(r->cfg.jwt_keys, nc.jwt_keys, sizeof nc.jwt_keys);
	/* The copy of the secret on this stack is not left behind. */
	explicit_bzero(&nc, sizeof nc);
	metrics_inc(&lh_metrics.reloads, 1);
	log_info("event=reload secret_changed=%s jwt_keys_changed=%s max_subscriptions=%u "
	         "sendq_max_frames=%u api_keys=%zu",
	         secret_changed ? "true" : "false", keys_changed ? "true" : "false",
	         lim.max_subs_per_conn, lim.sendq_max_frames, nkeys);
	if (restart)
		log_warn("event=reload_partial msg=\"addresses, ports, ping times, rx buffer, "
		         "hand-off size, shutdown and auth timeouts, the presence TTL and TLS "
		         "files apply only after a restart\"");
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *signal_thread(void *arg)
{
	struct run *r = arg;
	int sig = 0;
	for (;;) {
		sigwait(&r->sigs, &sig);
		if (sig != SIGHUP)
			break;
		reload(r);
	}
	/* /readyz and health answer "not serving" from here on. */
	atomic_store(&lh_metrics.ready, false);
	log_info("event=shutdown_started signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
	/* One deadline for the whole shutdown: gRPC calls in flight get up to
	 * half of it, closing the clients gets whatever is left. */
	int64_t total_ms = (int64_t)r->cfg.shutdown_timeout_s * 1000;
	int64_t start = now_ms();
	rpc_stop(r->rpc, (int)(total_ms / 2));
	r->rpc = NULL;
	int64_t left = total_ms - (now_ms() - start);
	/* Before ws_stop(): once the loop ends, main reads this to tell a
	 * requested stop from a failed loop. */
	atomic_store(&r->stopped, 1);
	ws_stop(r->ws, left > 0 ? (int)left : 0);
	return NULL;
}

/* Answers every publication still queued with LH_ECLOSED, so gRPC calls
 * waiting for them can finish when the service loop is gone. */
static void fail_queued(struct handoff *q)
{
	struct publication *p = handoff_take(q);
	while (p) {
		struct publication *next = p->next;
		p->status = LH_ECLOSED;
		if (p->on_done)
			p->on_done(p);
		p = next;
	}
}

static void print_banner(const struct run *r, const char *argv0)
{
	const struct lh_config *c = &r->cfg;
	const char *host = strcmp(c->ws_host, "0.0.0.0") == 0 ? "127.0.0.1" : c->ws_host;
	int wsp = ws_port(r->ws);
	/* JSON logs go to a machine: the human banner would break them (the
	 * event=ready line has the ports). */
	if (strcmp(c->log_format, "json") == 0)
		goto ready_line;
	bool tls = c->tls_cert[0] != '\0';
	fprintf(stderr,
	        "\nlivehub %s\n"
	        "  WebSocket  %s://%s:%d/ws?token=TOKEN   (health: %s://%s:%d/healthz)\n"
	        "  gRPC       %s:%d  livehub.v1.HubService (proto/livehub/v1/hub.proto)%s\n",
	        LH_VERSION, tls ? "wss" : "ws", host, wsp, tls ? "https" : "http", host, wsp,
	        c->grpc_host, rpc_port(r->rpc),
	        c->grpc_tls_client_ca[0] ? ", mutual TLS"
	        : c->grpc_tls_cert[0]    ? ", TLS"
	                                 : "");
	if (r->nkeys)
		fprintf(stderr, "  API keys   %zu configured (authorization: Bearer <key>)\n",
		        r->nkeys);
	else
		fprintf(stderr, "  API keys   NONE: development mode, any local caller may call "
		                "any method (set LIVEHUB_API_KEYS_FILE)\n");
	if (c->jwt_secret_dev) {
		char *demo = auth_mint(c->jwt_secret, c->jwt_secret_len, c->tenant_claim,
		                       c->user_claim, "demo", "alice", 86400);
		fprintf(stderr,
		        "  Tokens     development secret in %s (set LIVEHUB_JWT_SECRET in production)\n"
		        "             mint one: %s token --tenant demo --user alice\n"
		        "             tenant demo, user alice, 24 h: %s\n",
		        c->dev_secret_file, argv0, demo ? demo : "(mint failed)");
		/* A new user's first minute: open the page, run one command, see
		 * bars move (clients/demo, clients/python/demo.py). */
		if (c->demo && demo)
			fprintf(stderr,
			        "  Demo       http://%s:%d/?token=%s\n"
			        "             publish a demo job: /usr/bin/python3 clients/python/demo.py "
			        "--addr %s:%d\n",
			        host, wsp, demo, c->grpc_host, rpc_port(r->rpc));
		free(demo);
	}
	fprintf(stderr, "\n");
ready_line:
	/* The one machine-readable line, on stdout: tests and scripts wait for it. */
	printf("livehub ready ws=%s:%d grpc=%s:%d\n", c->ws_host, wsp, c->grpc_host,
	       rpc_port(r->rpc));
	fflush(stdout);
}

static int serve(int argc, char **argv)
{
	struct run r = {0};
	bool help;
	if (config_load(&r.cfg, argc, argv, &help))
		return 2;
	if (help) {
		config_usage(stdout);
		return 0;
	}
	if (r.cfg.show_version) {
		printf("livehub %s\n", LH_VERSION);
		return 0;
	}
	struct apikeys *keys = NULL;
	if (load_keys(&r.cfg, NULL, &keys))
		return 2;
	if (r.cfg.check_only) {
		apikeys_free(keys);
		printf("livehub: configuration OK%s\n",
		       r.cfg.jwt_secret_len || r.cfg.jwt_keys[0]
		               ? ""
		               : " (no JWT secret set: the development secret would be used)");
		return 0;
	}
	r.argc = argc;
	r.argv = argv;
	if (config_resolve_secret(&r.cfg)) {
		apikeys_free(keys);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	metrics_init();
	/* Before any thread exists, so every thread inherits the mask and only
	 * the signal thread sees SIGINT/SIGTERM. */
	sigemptyset(&r.sigs);
	sigaddset(&r.sigs, SIGINT);
	sigaddset(&r.sigs, SIGTERM);
	sigaddset(&r.sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &r.sigs, NULL);

	int rc = 1;
	struct auth_config ac;
	char err[400] = "";
	config_auth(&r.cfg, &ac);
	struct auth *auth = auth_new(&ac, err, sizeof err);
	if (!auth)
		log_error("msg=\"%s\"", err);
	struct handoff *q = handoff_new((size_t)r.cfg.handoff_max, (size_t)r.cfg.handoff_max_bytes);
	if (!auth || !q) {
		apikeys_free(keys);
		goto out;
	}
	r.ws = ws_new(&r.cfg, auth, q);
	if (!r.ws) {
		apikeys_free(keys);
		goto out;
	}
	r.nkeys = keys ? keys->n : 0;
	if (!keys)
		warn_no_keys(&r.cfg);
	r.rpc = rpc_start(&r.cfg, ws_hub(r.ws), ws_broker(r.ws), q, keys);
	if (!r.rpc)
		goto out;
	/* Ready before the ready line: whoever waits for it may probe at once. */
	atomic_store(&lh_metrics.ready, true);
	log_info("event=ready version=%s ws_port=%d grpc_port=%d", LH_VERSION, ws_port(r.ws),
	         rpc_port(r.rpc));
	print_banner(&r, argv[0]);

	pthread_t sig_thread;
	if (pthread_create(&sig_thread, NULL, signal_thread, &r)) {
		/* Without it nothing can stop gRPC while a service loop drains the
		 * hand-off queue (rpc_stop() waits for every queued publication),
		 * and this happens before any client could rely on us: exit now. */
		log_error("msg=\"cannot start the signal thread\"");
		_exit(1);
	}
	rc = ws_run(r.ws) == 0 ? 0 : 1;
	if (!atomic_load(&r.stopped)) {
		/* The loop ended on its own (a fatal lws error): stop gRPC the same
		 * way, answering queued publications ourselves meanwhile. */
		log_error("msg=\"service loop failed; stopping\"");
		handoff_close(q);
		pthread_kill(sig_thread, SIGTERM);
		while (!atomic_load(&r.stopped)) {
			fail_queued(q);
			nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
		}
		rc = 1;
	}
	pthread_join(sig_thread, NULL);
	handoff_close(q);
	fail_queued(q);
	log_info("event=stopped");
out:
	if (r.rpc)
		rpc_stop(r.rpc, 0);
	if (r.ws)
		ws_free(r.ws);
	if (q)
		handoff_free(q);
	auth_free(auth);
	return rc;
}

/* Removes "--name value" from argv (in place) and returns value, or NULL. */
static const char *take_opt(int *argc, char **argv, const char *name)
{
	for (int i = 1; i < *argc; i++) {
		size_t n = strlen(name);
		const char *v = NULL;
		int used = 0;
		if (strcmp(argv[i], name) == 0 && i + 1 < *argc)
			v = argv[i + 1], used = 2;
		else if (strncmp(argv[i], name, n) == 0 && argv[i][n] == '=')
			v = argv[i] + n + 1, used = 1;
		if (used) {
			memmove(argv + i, argv + i + used,
			        sizeof(char *) * (size_t)(*argc - i - used + 1));
			*argc -= used;
			return v;
		}
	}
	return NULL;
}

static int cmd_token(int argc, char **argv)
{
	const char *tenant = take_opt(&argc, argv, "--tenant");
	const char *user = take_opt(&argc, argv, "--user");
	const char *ttl_text = take_opt(&argc, argv, "--ttl");
	struct lh_config cfg;
	bool help;
	if (config_load(&cfg, argc, argv, &help))
		return 2;
	if (help || !tenant || !user) {
		fprintf(help ? stdout : stderr,
		        "usage: livehub token --tenant T --user U [--ttl SECONDS] [--jwt-secret S]\n"
		        "Prints an HS256 token for tenant T and user U (default lifetime 24 h;\n"
		        "--ttl 0 for none), signed with the configured or development secret.\n");
		return help ? 0 : 2;
	}
	if (!name_tenant_ok(tenant, strlen(tenant))) {
		fprintf(stderr, "livehub: --tenant must be 1-%d characters of A-Z a-z 0-9 _ . -\n",
		        LH_TENANT_MAX);
		return 2;
	}
	if (!name_user_ok(user, strlen(user))) {
		fprintf(stderr,
		        "livehub: --user must be 1-%d characters of A-Z a-z 0-9 _ . : @ + -\n",
		        LH_USER_MAX);
		return 2;
	}
	char *end = NULL;
	long long ttl = ttl_text ? strtoll(ttl_text, &end, 10) : 86400;
	if (ttl_text && (*end || ttl < 0 || ttl > 10LL * 365 * 86400)) {
		fprintf(stderr, "livehub: --ttl must be a number of seconds from 0 to 315360000\n");
		return 2;
	}
	if (config_resolve_secret(&cfg))
		return 2;
	if (cfg.jwt_secret_len == 0) {
		fprintf(stderr,
		        "livehub: token signs with LIVEHUB_JWT_SECRET (HS256), and none is set; "
		        "tokens for LIVEHUB_JWT_KEYS come from your token issuer\n");
		return 2;
	}
	char *tok = auth_mint(cfg.jwt_secret, cfg.jwt_secret_len, cfg.tenant_claim, cfg.user_claim,
	                      tenant, user, ttl);
	if (!tok) {
		fprintf(stderr, "livehub: minting the token failed\n");
		return 1;
	}
	printf("%s\n", tok);
	free(tok);
	return 0;
}

/* `livehub apikey --name N --scopes S[+S] [--tenants T[+T]]`: prints a new
 * random key, then its entries for LIVEHUB_API_KEYS and for the key file
 * (both by SHA-256, so the configuration never holds the key itself). */
static int cmd_apikey(int argc, char **argv)
{
	const char *name = take_opt(&argc, argv, "--name");
	const char *scopes = take_opt(&argc, argv, "--scopes");
	const char *tenants = take_opt(&argc, argv, "--tenants");
	bool help = argc > 1 && strcmp(argv[1], "--help") == 0;
	if (help || argc > 1 || !name || !scopes) {
		fprintf(help ? stdout : stderr,
		        "usage: livehub apikey --name NAME --scopes publish|admin[+...] "
		        "[--tenants T[+T...]]\n"
		        "Prints a new random gRPC API key (line 1), then its LIVEHUB_API_KEYS entry\n"
		        "and its LIVEHUB_API_KEYS_FILE entry, both holding only the key's SHA-256.\n");
		return help ? 0 : 2;
	}
	char key[44], hex[65], entry[1024], err[512];
	if (apikeys_generate(key, hex)) {
		fprintf(stderr, "livehub: no random bytes for a key\n");
		return 1;
	}
	int n = snprintf(entry, sizeof entry, "%s:%s%s%s=sha256:%s", name, scopes,
	                 tenants ? ":" : "", tenants ? tenants : "", hex);
	struct apikeys *t = NULL;
	/* The entry goes through the same parser as the configuration. */
	if (n < 0 || (size_t)n >= sizeof entry || apikeys_load(NULL, entry, &t, err, sizeof err)) {
		fprintf(stderr, "livehub: %s\n",
		        n < 0 || (size_t)n >= sizeof entry ? "too long" : err);
		return 2;
	}
	printf("%s\nLIVEHUB_API_KEYS entry: %s\nkey file entry: {\"name\": \"%s\", "
	       "\"key_sha256\": \"%s\", \"scopes\": [",
	       key, entry, t->keys[0].name, hex);
	printf("\"%s\"%s", t->keys[0].scopes & APIKEY_SCOPE_ADMIN ? "admin" : "publish", "]");
	if (t->keys[0].ntenants) {
		printf(", \"tenants\": [");
		for (int i = 0; i < t->keys[0].ntenants; i++)
			printf("%s\"%s\"", i ? ", " : "", t->keys[0].tenants[i]);
		printf("]");
	}
	printf("}\n");
	apikeys_free(t);
	explicit_bzero(key, sizeof key);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--version") == 0) {
		printf("livehub %s\n", LH_VERSION);
		return 0;
	}
	if (argc > 1 && strcmp(argv[1], "token") == 0)
		return cmd_token(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "apikey") == 0)
		return cmd_apikey(argc - 1, argv + 1);
	return serve(argc, argv);
}

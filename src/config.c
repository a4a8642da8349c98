/*
 * config: defaults, then the JSON configuration file, then LIVEHUB_*
 * environment variables, then flags.
 *
 * Every setting is one row of the table below, so the file keys, the
 * environment, the flags, the validation and --help cannot drift apart. A
 * file key is the flag's name with '_' for '-' ("ws_port"). The file is
 * JSON read with jansson (already linked for the client protocol): no
 * hand-written parser, no new dependency, and strict types (a number where
 * a number belongs).
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "broker.h"
#include "edge.h"
#include "hub.h"
#include "log.h"
#include "presence.h"
#include "tls_files.h"

enum kind { K_STR, K_INT };

struct setting {
	const char *flag; /* without "--" */
	const char *env;
	enum kind kind;
	size_t off;    /* offset in struct lh_config */
	size_t size;   /* K_STR: buffer size */
	long min, max; /* K_INT: accepted range */
	const char *help;
};

/* clang-format off */
#define STR(field, flag, env, help) \
	{flag, env, K_STR, offsetof(struct lh_config, field), sizeof(((struct lh_config *)0)->field), 0, 0, help}
#define INT(field, flag, env, lo, hi, help) \
	{flag, env, K_INT, offsetof(struct lh_config, field), 0, lo, hi, help}

static const struct setting settings[] = {
	STR(ws_host, "ws-host", "LIVEHUB_WS_HOST", "address of the WebSocket/HTTP listener"),
	INT(ws_port, "ws-port", "LIVEHUB_WS_PORT", 0, 65535, "WebSocket/HTTP port (0: any free port)"),
	STR(grpc_host, "grpc-host", "LIVEHUB_GRPC_HOST", "address of the gRPC listener"),
	INT(grpc_port, "grpc-port", "LIVEHUB_GRPC_PORT", 0, 65535, "gRPC port (0: any free port)"),
	STR(jwt_secret, "jwt-secret", "LIVEHUB_JWT_SECRET", "HS256 secret for client tokens"),
	STR(dev_secret_file, "dev-secret-file", "LIVEHUB_DEV_SECRET_FILE",
	    "where the development secret is kept when no secret is set"),
	STR(tenant_claim, "jwt-tenant-claim", "LIVEHUB_JWT_TENANT_CLAIM", "token claim naming the tenant"),
	INT(jwt_leeway_s, "jwt-leeway", "LIVEHUB_JWT_LEEWAY", 0, 3600, "seconds of clock skew allowed on exp/nbf/iat"),
	STR(jwt_keys, "jwt-keys", "LIVEHUB_JWT_KEYS",
	    "token keys, kid:ALG:SOURCE,... (ALG HS256..HS512 RS256..RS512 ES256 ES384; SOURCE env:VAR, file:PATH or PATH)"),
	STR(user_claim, "jwt-user-claim", "LIVEHUB_JWT_USER_CLAIM", "token claim naming the user"),
	STR(jwt_issuer, "jwt-issuer", "LIVEHUB_JWT_ISSUER", "required iss claim (none: not checked)"),
	STR(jwt_audience, "jwt-audience", "LIVEHUB_JWT_AUDIENCE", "required aud claim value (none: not checked)"),
	STR(guest_channels, "guest-channels", "LIVEHUB_GUEST_CHANNELS",
	    "channel patterns a role \"guest\" token may subscribe to, comma-separated"),
	INT(auth_timeout_s, "auth-timeout", "LIVEHUB_AUTH_TIMEOUT", 0, 300,
	    "seconds a client that connected without a token has to send auth (0: refuse with 401)"),
	INT(handoff_max, "handoff-max", "LIVEHUB_HANDOFF_MAX", 1, 10000000,
	    "publications queued from gRPC to the hub before RESOURCE_EXHAUSTED"),
	INT(max_subs_per_conn, "max-subscriptions", "LIVEHUB_MAX_SUBSCRIPTIONS", 1, 100000,
	    "channels one connection may subscribe to"),
	INT(sendq_max_frames, "sendq-max-frames", "LIVEHUB_SENDQ_MAX_FRAMES", 1, 10000000,
	    "frames queued for one connection before it is closed as a slow consumer"),
	INT(sendq_max_bytes, "sendq-max-bytes", "LIVEHUB_SENDQ_MAX_BYTES", 1024, 1073741824,
	    "payload bytes queued for one connection before it is closed as a slow consumer"),
	INT(handoff_max_bytes, "handoff-max-bytes", "LIVEHUB_HANDOFF_MAX_BYTES", 65536, 2147483647,
	    "bytes of publications queued from gRPC to the hub before RESOURCE_EXHAUSTED"),
	INT(history_size, "history-size", "LIVEHUB_HISTORY_SIZE", 0, 100000,
	    "publications kept per channel for recovery (0: no history)"),
	INT(history_ttl_s, "history-ttl", "LIVEHUB_HISTORY_TTL", 0, 604800,
	    "seconds a publication stays in channel history (0: no age limit)"),
	INT(history_max_bytes, "history-max-bytes", "LIVEHUB_HISTORY_MAX_BYTES", 0, 2147483647,
	    "memory for the history of all channels; the oldest entries go first"),
	STR(history_kinds, "history-kinds", "LIVEHUB_HISTORY_KINDS",
	    "history per channel kind, kind:size[/ttl],... e.g. \"job:50/600,price:0\""),
	INT(idem_window_s, "idempotency-window", "LIVEHUB_IDEMPOTENCY_WINDOW", 0, 86400,
	    "seconds a publish idempotency key is remembered (0: keys are ignored)"),
	INT(idem_max, "idempotency-max", "LIVEHUB_IDEMPOTENCY_MAX", 0, 10000000,
	    "idempotency keys remembered at most (the oldest are forgotten first)"),
	INT(ping_interval_s, "ping-interval", "LIVEHUB_PING_INTERVAL", 1, 65535,
	    "seconds between WebSocket pings to an idle client"),
	INT(ping_timeout_s, "ping-timeout", "LIVEHUB_PING_TIMEOUT", 2, 65535,
	    "seconds of silence after which a client is dropped"),
	INT(shutdown_timeout_s, "shutdown-timeout", "LIVEHUB_SHUTDOWN_TIMEOUT", 0, 3600,
	    "seconds a graceful shutdown may take"),
	INT(rx_buffer_size, "rx-buffer", "LIVEHUB_RX_BUFFER", 128, 65536,
	    "receive buffer per connection, bytes"),
	INT(write_batch, "write-batch", "LIVEHUB_WRITE_BATCH", 0, 1048576,
	    "bytes of queued messages sent as one WebSocket frame (0: one message per frame)"),
	INT(direct_writes, "direct-writes", "LIVEHUB_DIRECT_WRITES", 0, 1,
	    "1: publications are written at the end of their loop turn, without a writable event; 0: every write waits for one"),
	STR(allowed_origins, "allowed-origins", "LIVEHUB_ALLOWED_ORIGINS",
	    "comma-separated Origin allow-list, * for host labels (CORS_ORIGINS is read when unset; none: any origin)"),
	INT(max_connections, "max-connections", "LIVEHUB_MAX_CONNECTIONS", 0, 10000000,
	    "WebSocket connections in all (0: the fd limit less 100)"),
	INT(max_conns_per_ip, "max-connections-per-ip", "LIVEHUB_MAX_CONNECTIONS_PER_IP", 0, 10000000,
	    "WebSocket connections from one client address (0: no limit)"),
	INT(max_conns_per_user, "max-connections-per-user", "LIVEHUB_MAX_CONNECTIONS_PER_USER", 0, 10000000,
	    "WebSocket connections of one user of a tenant (0: no limit)"),
	INT(max_conns_per_tenant, "max-connections-per-tenant", "LIVEHUB_MAX_CONNECTIONS_PER_TENANT", 0, 10000000,
	    "WebSocket connections of one tenant (0: no limit)"),
	INT(rate_limit, "rate-limit", "LIVEHUB_RATE_LIMIT", 0, 1000000,
	    "client messages a minute per connection, refilled continuously (0: no limit)"),
	INT(rate_burst, "rate-burst", "LIVEHUB_RATE_BURST", 1, 1000000,
	    "client messages a connection may send at once (token bucket capacity)"),
	INT(rate_strikes, "rate-limit-strikes", "LIVEHUB_RATE_LIMIT_STRIKES", 0, 65535,
	    "RATE_LIMITED refusals in a row that close the connection with 1008 (0: never)"),
	INT(max_message_size, "max-message-size", "LIVEHUB_MAX_MESSAGE_SIZE", 256, 16777216,
	    "largest client message in bytes (close 1009 beyond)"),
	INT(max_json_depth, "max-json-depth", "LIVEHUB_MAX_JSON_DEPTH", 1, 1000,
	    "deepest nesting of objects and arrays in a client message"),
	INT(max_json_elements, "max-json-elements", "LIVEHUB_MAX_JSON_ELEMENTS", 1, 10000000,
	    "object members plus array elements in a client message"),
	INT(demo, "demo", "LIVEHUB_DEMO", 0, 1, "serve the demo page at / and the browser client at /livehub.js (0: off)"),
	STR(event_loop, "event-loop", "LIVEHUB_EVENT_LOOP", "WebSocket event loop: poll or libuv"),
	STR(presence_channels, "presence-channels", "LIVEHUB_PRESENCE_CHANNELS",
	    "channels that send presence:join/leave, e.g. \"board:*,project:*\" (empty: none)"),
	STR(client_events, "client-events", "LIVEHUB_CLIENT_EVENTS",
	    "channels where clients may publish client events, e.g. \"board:*\" (empty: none)"),
	INT(client_event_rate, "client-event-rate", "LIVEHUB_CLIENT_EVENT_RATE", 1, 100000,
	    "client events per second one connection may publish"),
	INT(client_event_burst, "client-event-burst", "LIVEHUB_CLIENT_EVENT_BURST", 1, 100000,
	    "client events one connection may publish at once"),
	INT(tenant_presence, "tenant-presence", "LIVEHUB_TENANT_PRESENCE", 0, 1,
	    "1: $tenant gets user:online/user:offline and answers presence"),
	INT(presence_ttl, "presence-ttl", "LIVEHUB_PRESENCE_TTL", 0, 3600,
	    "Redis mode: seconds a node's presence entries outlive it; refreshed every third of it (0: presence per node only)"),
	STR(redis_url, "redis-url", "LIVEHUB_REDIS_URL",
	    "redis://[[user]:password@]host[:port][/db] or unix:///path: nodes share channels over Redis (none: one node)"),
	STR(redis_prefix, "redis-prefix", "LIVEHUB_REDIS_PREFIX", "prefix of every Redis key and pub/sub channel"),
	STR(node_id, "node-id", "LIVEHUB_NODE_ID", "this node's name in logs, stats and presence (none: random 16 hex)"),
	STR(log_level, "log-level", "LIVEHUB_LOG_LEVEL", "debug, info, warn or error"),
	STR(log_format, "log-format", "LIVEHUB_LOG_FORMAT", "logfmt or json (one line per entry on stderr)"),
	STR(config_file, "config", "LIVEHUB_CONFIG", "JSON configuration file (settings below by name, e.g. \"ws_port\")"),
	STR(api_keys_file, "api-keys-file", "LIVEHUB_API_KEYS_FILE",
	    "JSON file of gRPC API keys (docs/SECURITY.md); none: development mode, gRPC on loopback only"),
	STR(api_keys, "api-keys", "LIVEHUB_API_KEYS", "gRPC API keys, NAME:SCOPES[:TENANTS]=KEY,..."),
	STR(tls_cert, "tls-cert", "LIVEHUB_TLS_CERT", "PEM certificate chain: serve wss:// and https://"),
	STR(tls_key, "tls-key", "LIVEHUB_TLS_KEY", "PEM private key of --tls-cert"),
	STR(grpc_tls_cert, "grpc-tls-cert", "LIVEHUB_GRPC_TLS_CERT",
	    "PEM certificate chain for gRPC over TLS (default: --tls-cert)"),
	STR(grpc_tls_key, "grpc-tls-key", "LIVEHUB_GRPC_TLS_KEY", "PEM private key of the gRPC certificate (default: --tls-key)"),
	STR(grpc_tls_client_ca, "grpc-tls-client-ca", "LIVEHUB_GRPC_TLS_CLIENT_CA",
	    "PEM CA bundle: gRPC callers must present a certificate it signed (mutual TLS)"),
};
/* clang-format on */
#define NSETTINGS (sizeof(settings) / sizeof(settings[0]))

static void defaults(struct lh_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	strcpy(cfg->ws_host, "0.0.0.0");
	cfg->ws_port = 8080;
	strcpy(cfg->grpc_host, "127.0.0.1");
	cfg->grpc_port = 50051;
	strcpy(cfg->dev_secret_file, ".livehub/dev-secret");
	strcpy(cfg->tenant_claim, "tenant_id");
	strcpy(cfg->user_claim, "sub");
	cfg->auth_timeout_s = 5;
	cfg->jwt_leeway_s = 30;
	cfg->handoff_max = 65536;
	cfg->max_subs_per_conn = 128;
	cfg->sendq_max_frames = 4096;
	cfg->sendq_max_bytes = 4 * 1024 * 1024;
	cfg->handoff_max_bytes = 64 * 1024 * 1024;
	cfg->history_size = 100;
	cfg->history_ttl_s = 300;
	cfg->history_max_bytes = 256 * 1024 * 1024;
	strcpy(cfg->history_kinds, "$tenant:100/120,$user:100/300");
	cfg->idem_window_s = 300;
	cfg->idem_max = 100000;
	cfg->ping_interval_s = 30;
	cfg->ping_timeout_s = 90;
	cfg->shutdown_timeout_s = 10;
	cfg->rx_buffer_size = 128;
	cfg->write_batch = 32768;
	cfg->direct_writes = 1;
	cfg->max_connections = 0;
	cfg->max_conns_per_ip = 1000;
	cfg->max_conns_per_user = 32;
	cfg->max_conns_per_tenant = 0;
	cfg->rate_limit = 100;
	cfg->rate_burst = 10;
	cfg->rate_strikes = 10;
	cfg->max_message_size = 65536;
	cfg->max_json_depth = 16;
	cfg->max_json_elements = 1000;
	cfg->demo = 1;
	strcpy(cfg->event_loop, "libuv");
	cfg->client_event_rate = 10;
	cfg->client_event_burst = 20;
	cfg->presence_ttl = 30;
	strcpy(cfg->redis_prefix, "livehub");
	strcpy(cfg->log_level, "info");
	strcpy(cfg->log_format, "logfmt");
}

/* Stores text as the value of s; from names where it came from. */
static int apply(struct lh_config *cfg, const struct setting *s, const char *text, const char *from)
{
	char *field = (char *)cfg + s->off;
	if (s->kind == K_STR) {
		if (strlen(text) >= s->size) {
			fprintf(stderr, "livehub: %s: longer than %zu characters\n", from,
			        s->size - 1);
			return -1;
		}
		strcpy(field, text);
		return 0;
	}
	char *end;
	errno = 0;
	long v = strtol(text, &end, 10);
	if (errno || end == text || *end || v < s->min || v > s->max) {
		fprintf(stderr, "livehub: %s: \"%s\" is not a whole number from %ld to %ld\n", from,
		        text, s->min, s->max);
		return -1;
	}
	*(int *)field = (int)v;
	return 0;
}

/* The configuration file named by --config (argv) or else LIVEHUB_CONFIG;
 * NULL when none. */
static const char *config_path(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			return argv[i + 1];
		if (strncmp(argv[i], "--config=", 9) == 0)
			return argv[i] + 9;
	}
	const char *env = getenv("LIVEHUB_CONFIG");
	return env && *env ? env : NULL;
}

/* The setting whose file key is key (its flag with '_' for '-'), or NULL. */
static const struct setting *by_key(const char *key)
{
	for (size_t i = 0; i < NSETTINGS; i++) {
		const char *f = settings[i].flag, *k = key;
		while (*f && (*f == *k || (*f == '-' && *k == '_')))
			f++, k++;
		if (!*f && !*k)
			return &settings[i];
	}
	return NULL;
}

/* Applies one file entry: strings for text settings, whole numbers for
 * numeric ones. */
static int apply_json(struct lh_config *cfg, const struct setting *st, json_t *v, const char *from)
{
	char num[32];
	if (st->kind == K_STR) {
		if (!json_is_string(v)) {
			fprintf(stderr, "livehub: %s: must be a string\n", from);
			return -1;
		}
		return apply(cfg, st, json_string_value(v), from);
	}
	if (!json_is_integer(v)) {
		fprintf(stderr, "livehub: %s: must be a whole number from %ld to %ld\n", from,
		        st->min, st->max);
		return -1;
	}
	snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	return apply(cfg, st, num, from);
}

/* Reads the JSON object in path: every key must name a setting. */
static int from_file(struct lh_config *cfg, const char *path)
{
	json_error_t e;
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
	if (!root) {
		fprintf(stderr, "livehub: configuration file %s: %s (line %d)\n", path, e.text,
		        e.line);
		return -1;
	}
	int rc = 0;
	if (!json_is_object(root)) {
		fprintf(stderr, "livehub: configuration file %s: must be a JSON object\n", path);
		rc = -1;
	}
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v)
	{
		if (rc)
			break;
		const struct setting *st = by_key(key);
		char from[400];
		snprintf(from, sizeof from, "%s: \"%s\"", path, key);
		if (!st || strcmp(st->flag, "config") == 0) {
			fprintf(stderr,
			        "livehub: %s: not a setting (see livehub --help; keys are the "
			        "option names with _ for -, e.g. \"ws_port\")\n",
			        from);
			rc = -1;
		} else {
			rc = apply_json(cfg, st, v, from);
		}
	}
	json_decref(root);
	return rc;
}

static int from_env(struct lh_config *cfg)
{
	/* The seeds' name for the origin allow-list, when ours is not set. */
	const char *cors = getenv("CORS_ORIGINS");
	if (cors && !getenv("LIVEHUB_ALLOWED_ORIGINS")) {
		const struct setting *st = by_key("allowed_origins");
		if (apply(cfg, st, cors, "CORS_ORIGINS"))
			return -1;
	}
	for (size_t i = 0; i < NSETTINGS; i++) {
		const char *v = getenv(settings[i].env);
		if (v && apply(cfg, &settings[i], v, settings[i].env))
			return -1;
	}
	return 0;
}

static int from_flags(struct lh_config *cfg, int argc, char **argv, bool *help)
{
	enum { OPT_HELP = 1000, OPT_VERSION, OPT_CHECK };
	struct option opts[NSETTINGS + 4];
	for (size_t i = 0; i < NSETTINGS; i++)
		opts[i] = (struct option){settings[i].flag, required_argument, NULL, (int)i};
	opts[NSETTINGS] = (struct option){"help", no_argument, NULL, OPT_HELP};
	opts[NSETTINGS + 1] = (struct option){"version", no_argument, NULL, OPT_VERSION};
	opts[NSETTINGS + 2] = (struct option){"check-config", no_argument, NULL, OPT_CHECK};
	opts[NSETTINGS + 3] = (struct option){NULL, 0, NULL, 0};
	optind = 0; /* GNU: reinitialise, argv[0] is skipped */
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == OPT_HELP || c == OPT_VERSION || c == OPT_CHECK) {
			*help |= c == OPT_HELP;
			cfg->show_version |= c == OPT_VERSION;
			cfg->check_only |= c == OPT_CHECK;
			continue;
		}
		if (c < 0 || (size_t)c >= NSETTINGS) {
			fprintf(stderr,
			        "livehub: unknown or incomplete option \"%s\" (see --help)\n",
			        argv[optind - 1]);
			return -1;
		}
		char from[80];
		snprintf(from, sizeof(from), "--%s", settings[c].flag);
		if (apply(cfg, &settings[c], optarg, from))
			return -1;
	}
	if (optind < argc) {
		fprintf(stderr, "livehub: unexpected argument \"%s\" (see --help)\n", argv[optind]);
		return -1;
	}
	return 0;
}

/* Whether path can be read; prints a message naming setting when not. */
static bool readable(const char *path, const char *setting)
{
	if (access(path, R_OK) == 0)
		return true;
	fprintf(stderr, "livehub: %s: cannot read %s: %s\n", setting, path, strerror(errno));
	return false;
}

/* tls_check_pair, with its warning (an expired certificate) logged. */
static int check_pair(const char *cert, const char *key, const char *cs, const char *ks, char *err,
                      size_t errlen, char *warn, size_t warnlen)
{
	if (tls_check_pair(cert, key, cs, ks, err, errlen, warn, warnlen))
		return -1;
	if (warn[0])
		log_warn("msg=\"%s\"", warn);
	return 0;
}

/* Certificates and keys come in pairs; the gRPC pair defaults to the
 * WebSocket one; a client CA needs gRPC TLS. */
static int check_tls(struct lh_config *cfg)
{
	if (!cfg->tls_cert[0] != !cfg->tls_key[0]) {
		fprintf(stderr,
		        "livehub: LIVEHUB_TLS_CERT and LIVEHUB_TLS_KEY must be set together\n");
		return -1;
	}
	if (!cfg->grpc_tls_cert[0] && !cfg->grpc_tls_key[0]) {
		strcpy(cfg->grpc_tls_cert, cfg->tls_cert);
		strcpy(cfg->grpc_tls_key, cfg->tls_key);
	}
	if (!cfg->grpc_tls_cert[0] != !cfg->grpc_tls_key[0]) {
		fprintf(stderr,
		        "livehub: LIVEHUB_GRPC_TLS_CERT and LIVEHUB_GRPC_TLS_KEY must be set "
		        "together\n");
		return -1;
	}
	if (cfg->grpc_tls_client_ca[0] && !cfg->grpc_tls_cert[0]) {
		fprintf(stderr, "livehub: LIVEHUB_GRPC_TLS_CLIENT_CA needs gRPC TLS "
		                "(LIVEHUB_GRPC_TLS_CERT/KEY or LIVEHUB_TLS_CERT/KEY)\n");
		return -1;
	}
	if ((cfg->tls_cert[0] && (!readable(cfg->tls_cert, "LIVEHUB_TLS_CERT") ||
	                          !readable(cfg->tls_key, "LIVEHUB_TLS_KEY"))) ||
	    (cfg->grpc_tls_cert[0] && (!readable(cfg->grpc_tls_cert, "LIVEHUB_GRPC_TLS_CERT") ||
	                               !readable(cfg->grpc_tls_key, "LIVEHUB_GRPC_TLS_KEY"))) ||
	    (cfg->grpc_tls_client_ca[0] &&
	     !readable(cfg->grpc_tls_client_ca, "LIVEHUB_GRPC_TLS_CLIENT_CA")))
		return -1;
	char err[768], warn[512];
	if ((cfg->tls_cert[0] &&
	     check_pair(cfg->tls_cert, cfg->tls_key, "LIVEHUB_TLS_CERT", "LIVEHUB_TLS_KEY", err,
	                sizeof err, warn, sizeof warn)) ||
	    (cfg->grpc_tls_cert[0] &&
	     check_pair(cfg->grpc_tls_cert, cfg->grpc_tls_key, "LIVEHUB_GRPC_TLS_CERT",
	                "LIVEHUB_GRPC_TLS_KEY", err, sizeof err, warn, sizeof warn)) ||
	    (cfg->grpc_tls_client_ca[0] &&
	     tls_check_ca(cfg->grpc_tls_client_ca, "LIVEHUB_GRPC_TLS_CLIENT_CA", err,
	                  sizeof err))) {
		fprintf(stderr, "livehub: %s\n", err);
		return -1;
	}
	return 0;
}

bool config_host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (strcmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	const char *h = host;
	char buf[64];
	size_t n = strlen(h);
	if (n >= 2 && h[0] == '[' && h[n - 1] == ']' && n - 2 < sizeof buf) {
		memcpy(buf, h + 1, n - 2);
		buf[n - 2] = '\0';
		h = buf;
	}
	return inet_pton(AF_INET6, h, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* Whether s is 1..max-1 characters of [A-Za-z0-9_.-]. */
static bool plain_name(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n >= max)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
			return false;
	return true;
}

static int check_redis(const struct lh_config *cfg)
{
	if (cfg->redis_url[0]) {
		struct broker_url u;
		const char *why;
		if (broker_url_parse(cfg->redis_url, &u, &why)) {
			/* The URL may hold a password: name the problem, not the URL. */
			fprintf(stderr, "livehub: LIVEHUB_REDIS_URL: %s\n", why);
			return -1;
		}
	}
	if (!plain_name(cfg->redis_prefix, BROKER_PREFIX_MAX)) {
		fprintf(stderr,
		        "livehub: LIVEHUB_REDIS_PREFIX \"%s\" must be 1-63 characters of "
		        "A-Z a-z 0-9 _ . -\n",
		        cfg->redis_prefix);
		return -1;
	}
	if (cfg->node_id[0] && !plain_name(cfg->node_id, BROKER_NODE_MAX)) {
		fprintf(stderr,
		        "livehub: LIVEHUB_NODE_ID \"%s\" must be 1-63 characters of "
		        "A-Z a-z 0-9 _ . -\n",
		        cfg->node_id);
		return -1;
	}
	return 0;
}

static int check(struct lh_config *cfg)
{
	int lvl = log_level_parse(cfg->log_level);
	if (lvl < 0) {
		fprintf(stderr,
		        "livehub: log level \"%s\" is not one of debug, info, warn, error\n",
		        cfg->log_level);
		return -1;
	}
	int fmt = log_format_parse(cfg->log_format);
	if (fmt < 0) {
		fprintf(stderr, "livehub: log format \"%s\" is not one of logfmt, json\n",
		        cfg->log_format);
		return -1;
	}
	if (strcmp(cfg->event_loop, "poll") != 0 && strcmp(cfg->event_loop, "libuv") != 0) {
		fprintf(stderr, "livehub: event loop \"%s\" is not one of poll, libuv\n",
		        cfg->event_loop);
		return -1;
	}
	struct hub_limits lim;
	if (config_hub_limits(cfg, &lim))
		return -1;
	const char *pwhy;
	if (presence_config_check(cfg->presence_channels, &pwhy)) {
		fprintf(stderr, "livehub: LIVEHUB_PRESENCE_CHANNELS: %s\n", pwhy);
		return -1;
	}
	if (presence_config_check(cfg->client_events, &pwhy)) {
		fprintf(stderr, "livehub: LIVEHUB_CLIENT_EVENTS: %s\n", pwhy);
		return -1;
	}
	log_set_level((enum log_level)lvl);
	log_set_format((enum log_format)fmt);
	if (cfg->ping_timeout_s <= cfg->ping_interval_s) {
		fprintf(stderr,
		        "livehub: LIVEHUB_PING_TIMEOUT (%d) must be greater than "
		        "LIVEHUB_PING_INTERVAL (%d)\n",
		        cfg->ping_timeout_s, cfg->ping_interval_s);
		return -1;
	}
	const char *why;
	struct origins *o = origins_new(cfg->allowed_origins, &why);
	origins_free(o);
	if (why) {
		fprintf(stderr, "livehub: LIVEHUB_ALLOWED_ORIGINS: %s in \"%s\"\n", why,
		        cfg->allowed_origins);
		return -1;
	}
	if (check_tls(cfg))
		return -1;
	if (check_redis(cfg))
		return -1;
	cfg->jwt_secret_len = strlen(cfg->jwt_secret);
	if (cfg->jwt_secret_len > 0 && cfg->jwt_secret_len < 32) {
		fprintf(stderr,
		        "livehub: LIVEHUB_JWT_SECRET must be at least 32 bytes for HS256 "
		        "(got %zu)\n",
		        cfg->jwt_secret_len);
		return -1;
	}
	/* Keys, claims and guest patterns are checked by building them once. */
	struct auth_config ac;
	char err[400];
	config_auth(cfg, &ac);
	if (!ac.secret_len && !ac.keys[0]) {
		ac.secret = "a development secret stands in here";
		ac.secret_len = strlen(ac.secret);
	}
	struct auth *a = auth_new(&ac, err, sizeof err);
	if (!a) {
		fprintf(stderr, "livehub: %s\n", err);
		return -1;
	}
	auth_free(a);
	return 0;
}

void config_auth(const struct lh_config *cfg, struct auth_config *ac)
{
	*ac = (struct auth_config){
	        .secret = cfg->jwt_secret,
	        .secret_len = cfg->jwt_secret_len,
	        .keys = cfg->jwt_keys,
	        .tenant_claim = cfg->tenant_claim,
	        .user_claim = cfg->user_claim,
	        .leeway_s = cfg->jwt_leeway_s,
	        .issuer = cfg->jwt_issuer,
	        .audience = cfg->jwt_audience,
	        .guest_channels = cfg->guest_channels,
	};
}

int config_load(struct lh_config *cfg, int argc, char **argv, bool *help)
{
	*help = false;
	defaults(cfg);
	const char *path = config_path(argc, argv);
	if (path && strlen(path) >= sizeof cfg->config_file) {
		fprintf(stderr, "livehub: --config: longer than %zu characters\n",
		        sizeof cfg->config_file - 1);
		return -1;
	}
	if (path && from_file(cfg, path))
		return -1;
	if (from_env(cfg) || from_flags(cfg, argc, argv, help))
		return -1;
	return *help ? 0 : check(cfg);
}

/* Reads the development secret, creating it (0600, in a 0700 directory)
 * the first time. */
int config_resolve_secret(struct lh_config *cfg)
{
	if (cfg->jwt_secret_len > 0 || cfg->jwt_keys[0])
		return 0; /* no development secret when keys are configured */
	const char *path = cfg->dev_secret_file;
	char dir[sizeof(cfg->dev_secret_file)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash) {
		*slash = '\0';
		if (mkdir(dir, 0700) && errno != EEXIST) {
			fprintf(stderr,
			        "livehub: cannot create %s for the development secret: %s\n", dir,
			        strerror(errno));
			return -1;
		}
	}
	int fd = open(path, O_RDONLY);
	if (fd < 0 && errno == ENOENT) {
		unsigned char raw[32];
		char hex[65];
		if (auth_random(raw, sizeof(raw)))
			return -1;
		for (size_t i = 0; i < sizeof(raw); i++)
			snprintf(hex + 2 * i, 3, "%02x", raw[i]);
		int wfd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
		if (wfd >= 0) {
			ssize_t w = write(wfd, hex, 64);
			close(wfd);
			if (w != 64)
				unlink(path);
		}
		fd = open(path, O_RDONLY);
	}
	if (fd < 0) {
		fprintf(stderr, "livehub: cannot read the development secret %s: %s\n", path,
		        strerror(errno));
		return -1;
	}
	ssize_t n = read(fd, cfg->jwt_secret, sizeof(cfg->jwt_secret) - 1);
	close(fd);
	while (n > 0 && (cfg->jwt_secret[n - 1] == '\n' || cfg->jwt_secret[n - 1] == '\r'))
		n--;
	if (n < 32) {
		fprintf(stderr, "livehub: the development secret in %s is shorter than 32 bytes\n",
		        path);
		return -1;
	}
	cfg->jwt_secret[n] = '\0';
	cfg->jwt_secret_len = (size_t)n;
	cfg->jwt_secret_dev = true;
	return 0;
}

void config_usage(FILE *out)
{
	fprintf(out,
	        "usage: livehub [options]             run the hub\n"
	        "       livehub token --tenant T --user U [--ttl SECONDS] [options]\n"
	        "                                     print a development token\n"
	        "       livehub apikey --name N --scopes publish|admin [--tenants T+T]\n"
	        "                                     make a gRPC API key and its configuration entries\n"
	        "       livehub --version\n"
	        "       livehub --check-config [options]  validate the configuration, exit 0 or 2\n\n"
	        "Settings: defaults < --config FILE (JSON, keys like \"ws_port\") < environment\n"
	        "< flags. SIGHUP re-reads them and applies the JWT secret and limits.\n\n"
	        "options (each also read from the environment variable shown):\n");
	struct lh_config d;
	defaults(&d);
	for (size_t i = 0; i < NSETTINGS; i++) {
		const struct setting *st = &settings[i];
		const char *field = (const char *)&d + st->off;
		char def[80];
		if (st->kind == K_INT)
			snprintf(def, sizeof def, "%d", *(const int *)field);
		else
			snprintf(def, sizeof def, "%s", field[0] ? field : "none");
		fprintf(out, "  --%-20s %-26s %s [default: %s]\n", st->flag, st->env, st->help,
		        def);
	}
}

int config_hub_limits(const struct lh_config *cfg, struct hub_limits *lim)
{
	char err[200];
	memset(lim, 0, sizeof(*lim));
	lim->max_subs_per_conn = (uint32_t)cfg->max_subs_per_conn;
	lim->sendq_max_frames = (uint32_t)cfg->sendq_max_frames;
	lim->sendq_max_bytes = (uint64_t)cfg->sendq_max_bytes;
	lim->hist.size = (uint32_t)cfg->history_size;
	lim->hist.ttl_s = (uint32_t)cfg->history_ttl_s;
	lim->hist.max_bytes = (uint64_t)cfg->history_max_bytes;
	lim->idem_window_s = (uint32_t)cfg->idem_window_s;
	lim->idem_max = cfg->idem_window_s ? (uint32_t)cfg->idem_max : 0;
	if (hist_parse_kinds(cfg->history_kinds, &lim->hist, err, sizeof(err))) {
		fprintf(stderr, "livehub: LIVEHUB_HISTORY_KINDS: %s\n", err);
		return -1;
	}
	return 0;
}

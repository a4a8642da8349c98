/*
 * config: livehub's settings. Embedded defaults, overridden by a JSON
 * configuration file (--config / LIVEHUB_CONFIG), overridden by LIVEHUB_*
 * environment variables, overridden by command-line flags.
 * docs/CONFIGURATION.md lists every setting.
 */
#ifndef LH_CONFIG_H
#define LH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct lh_config {
	char ws_host[64];     /* LIVEHUB_WS_HOST, --ws-host; default 0.0.0.0 */
	int ws_port;          /* LIVEHUB_WS_PORT, --ws-port; default 8080, 0 = any free */
	char grpc_host[64];   /* LIVEHUB_GRPC_HOST, --grpc-host; default 127.0.0.1 */
	int grpc_port;        /* LIVEHUB_GRPC_PORT, --grpc-port; default 50051, 0 = any free */
	char jwt_secret[512]; /* LIVEHUB_JWT_SECRET, --jwt-secret; empty = development secret */
	size_t jwt_secret_len;
	bool jwt_secret_dev;       /* the secret is the generated development one */
	char dev_secret_file[256]; /* LIVEHUB_DEV_SECRET_FILE; default .livehub/dev-secret */
	char tenant_claim[64];     /* LIVEHUB_JWT_TENANT_CLAIM; default tenant_id */
	int jwt_leeway_s;          /* LIVEHUB_JWT_LEEWAY; default 30 */
	char jwt_keys[4096];       /* LIVEHUB_JWT_KEYS; "kid:ALG:SOURCE,..."; default none */
	char user_claim[64];       /* LIVEHUB_JWT_USER_CLAIM; default sub */
	char jwt_issuer[256];      /* LIVEHUB_JWT_ISSUER; required iss; default none */
	char jwt_audience[256];    /* LIVEHUB_JWT_AUDIENCE; required aud; default none */
	char guest_channels
	        [1024];          /* LIVEHUB_GUEST_CHANNELS; patterns for role guest; default none */
	int auth_timeout_s;      /* LIVEHUB_AUTH_TIMEOUT; first-message auth; default 5, 0 = off */
	int handoff_max;         /* LIVEHUB_HANDOFF_MAX; gRPC -> hub queue bound; default 65536 */
	int max_subs_per_conn;   /* LIVEHUB_MAX_SUBSCRIPTIONS; default 128 */
	int sendq_max_frames;    /* LIVEHUB_SENDQ_MAX_FRAMES; default 4096 */
	int sendq_max_bytes;     /* LIVEHUB_SENDQ_MAX_BYTES; default 4 MiB */
	int handoff_max_bytes;   /* LIVEHUB_HANDOFF_MAX_BYTES; default 64 MiB */
	int history_size;        /* LIVEHUB_HISTORY_SIZE; default 100 */
	int history_ttl_s;       /* LIVEHUB_HISTORY_TTL; default 300 */
	int history_max_bytes;   /* LIVEHUB_HISTORY_MAX_BYTES; default 256 MiB */
	char history_kinds[512]; /* LIVEHUB_HISTORY_KINDS; per-kind size/ttl */
	int idem_window_s;       /* LIVEHUB_IDEMPOTENCY_WINDOW; default 300 */
	int idem_max;            /* LIVEHUB_IDEMPOTENCY_MAX; default 100000 */
	int ping_interval_s;     /* LIVEHUB_PING_INTERVAL; default 30 */
	int ping_timeout_s;      /* LIVEHUB_PING_TIMEOUT; default 90 */
	int shutdown_timeout_s;  /* LIVEHUB_SHUTDOWN_TIMEOUT; default 10 */
	int rx_buffer_size; /* LIVEHUB_RX_BUFFER; lws receive buffer per connection; default 128 */
	int write_batch; /* LIVEHUB_WRITE_BATCH; bytes of queued messages per send; default 32768 */
	int direct_writes; /* LIVEHUB_DIRECT_WRITES; 1: write publications without a writable event */
	/* Edge limits (docs/SECURITY.md); reloadable on SIGHUP. */
	char allowed_origins[2048]; /* LIVEHUB_ALLOWED_ORIGINS (or CORS_ORIGINS); empty = any */
	int max_connections;        /* LIVEHUB_MAX_CONNECTIONS; 0 = from the fd limit */
	int max_conns_per_ip;       /* LIVEHUB_MAX_CONNECTIONS_PER_IP; default 1000, 0 = off */
	int max_conns_per_user;     /* LIVEHUB_MAX_CONNECTIONS_PER_USER; default 32, 0 = off */
	int max_conns_per_tenant;   /* LIVEHUB_MAX_CONNECTIONS_PER_TENANT; default 0 = off */
	int rate_limit;        /* LIVEHUB_RATE_LIMIT; messages a minute; default 100, 0 = off */
	int rate_burst;        /* LIVEHUB_RATE_BURST; bucket capacity; default 10 */
	int rate_strikes;      /* LIVEHUB_RATE_LIMIT_STRIKES; default 10, 0 = never close */
	int max_message_size;  /* LIVEHUB_MAX_MESSAGE_SIZE; bytes; default 65536 */
	int max_json_depth;    /* LIVEHUB_MAX_JSON_DEPTH; default 16 */
	int max_json_elements; /* LIVEHUB_MAX_JSON_ELEMENTS; default 1000 */
	int demo;            /* LIVEHUB_DEMO; serve the demo page at / and /livehub.js; default 1 */
	char event_loop[8];  /* LIVEHUB_EVENT_LOOP; poll or libuv; default poll */
	char log_level[16];  /* LIVEHUB_LOG_LEVEL; default info */
	char log_format[16]; /* LIVEHUB_LOG_FORMAT; logfmt or json; default logfmt */
	char config_file[256]; /* LIVEHUB_CONFIG, --config; default none */
	/* Service authentication and TLS (docs/SECURITY.md). */
	char api_keys_file[256];      /* LIVEHUB_API_KEYS_FILE; JSON key file; default none */
	char api_keys[4096];          /* LIVEHUB_API_KEYS; compact key list; default none */
	char tls_cert[256];           /* LIVEHUB_TLS_CERT; PEM chain for wss/https; default none */
	char tls_key[256];            /* LIVEHUB_TLS_KEY; its PEM private key */
	char grpc_tls_cert[256];      /* LIVEHUB_GRPC_TLS_CERT; default tls_cert */
	char grpc_tls_key[256];       /* LIVEHUB_GRPC_TLS_KEY; default tls_key */
	char grpc_tls_client_ca[256]; /* LIVEHUB_GRPC_TLS_CLIENT_CA; mTLS when set */

	/* Presence and client events (presence.h); reloaded on SIGHUP. */
	char presence_channels[512]; /* LIVEHUB_PRESENCE_CHANNELS; default "" */
	char client_events[512];     /* LIVEHUB_CLIENT_EVENTS; default "" */
	int client_event_rate;       /* LIVEHUB_CLIENT_EVENT_RATE; default 10 */
	int client_event_burst;      /* LIVEHUB_CLIENT_EVENT_BURST; default 20 */
	int tenant_presence;         /* LIVEHUB_TENANT_PRESENCE; 0 or 1; default 0 */
	int presence_ttl;            /* LIVEHUB_PRESENCE_TTL; s, 0 = per node; default 30 */
	/* Scale-out over Redis (broker.h, docs/SCALING.md). */
	char redis_url[1024];  /* LIVEHUB_REDIS_URL; empty = memory broker, one node */
	char redis_prefix[64]; /* LIVEHUB_REDIS_PREFIX; default livehub */
	char node_id[64];      /* LIVEHUB_NODE_ID; empty = random 16 hex */
	/* Actions asked for on the command line (not settings). */
	bool show_version; /* --version */
	bool check_only;   /* --check-config: validate, then exit 0 or 2 */
};

/* Fills cfg with the defaults, then the configuration file (when --config
 * or LIVEHUB_CONFIG names one), then the environment, then argv (argv[0]
 * and a subcommand already skipped). Returns 0, or -1 after printing a
 * message naming the bad setting and the accepted values to stderr. Sets
 * *help when --help was given (nothing is validated then). Also applies
 * the log level and format. */
int config_load(struct lh_config *cfg, int argc, char **argv, bool *help);

/* Fills in the JWT secret: the configured one, or the development secret
 * read from (or created in) cfg->dev_secret_file. Returns 0 or -1 with a
 * message on stderr. */
int config_resolve_secret(struct lh_config *cfg);

void config_usage(FILE *out);

struct auth_config;
/* Fills ac with cfg's token settings (pointers into cfg). */
void config_auth(const struct lh_config *cfg, struct auth_config *ac);

struct hub_limits;
/* Fills lim from a loaded (validated) cfg. Returns 0, or -1 after a message
 * on stderr (a bad LIVEHUB_HISTORY_KINDS; config_load checks it already). */
int config_hub_limits(const struct lh_config *cfg, struct hub_limits *lim);

/* Whether host (a listen address) is loopback only: 127.0.0.0/8, ::1 or
 * localhost. */
bool config_host_is_loopback(const char *host);

#endif

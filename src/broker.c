/* broker: the Redis broker (see broker.h). Skeleton: the interface links
 * and reports Redis unavailable; the broker thread follows. */
#include "broker.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "livehub.h"
#include "log.h"
#include "publication.h"

struct broker {
	struct broker_url url;
	char prefix[BROKER_PREFIX_MAX];
	char node[BROKER_NODE_MAX];
	_Atomic bool up;
};

struct broker *broker_new(const struct broker_config *cfg)
{
	struct broker *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	const char *why = NULL;
	if (broker_url_parse(cfg->url, &b->url, &why)) {
		log_error("event=redis_url_invalid reason=\"%s\"", why);
		free(b);
		return NULL;
	}
	snprintf(b->prefix, sizeof(b->prefix), "%s", cfg->prefix);
	snprintf(b->node, sizeof(b->node), "%s", cfg->node_id ? cfg->node_id : "");
	return b;
}

int broker_start(struct broker *b, void (*wake)(void *), void *wake_arg)
{
	return 0;
}

void broker_service(struct broker *b)
{
}

void broker_stop(struct broker *b)
{
}

void broker_free(struct broker *b)
{
	free(b);
}

int broker_cmd(struct broker *b, broker_reply_fn fn, void *arg, int argc, const char **argv,
               const size_t *lens)
{
	return LH_EUNAVAILABLE;
}

int broker_listen(struct broker *b, const char *name,
                  void (*fn)(void *arg, const char *msg, size_t len), void *arg)
{
	return 0;
}

bool broker_up(const struct broker *b)
{
	return atomic_load(&b->up);
}

const char *broker_node_id(const struct broker *b)
{
	return b->node;
}

int broker_on_state(struct broker *b, void (*fn)(void *arg, bool up), void *arg)
{
	return 0;
}

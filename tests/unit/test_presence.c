/* Unit tests of presence.c over a real hub with a fake transport: patterns,
 * join/leave per user, online/offline, presence answers, client events and
 * their rate limit, and the control commands. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "command.h"
#include "hub.h"
#include "livehub.h"
#include "presence.h"
#include "ws_protocol.h"

/* ------------------------------------------------------------------------
 * Fixtures
 * ------------------------------------------------------------------------ */

struct fake {
	int kills;
	int code;
	char reason[128];
};

static void fake_want_write(void *tctx)
{
	(void)tctx;
}

static void fake_kill(void *tctx, int code, const char *reason)
{
	struct fake *f = tctx;
	f->kills++;
	f->code = code;
	snprintf(f->reason, sizeof(f->reason), "%s", reason);
}

static const struct hub_transport fake_tr = {fake_want_write, fake_kill};

struct env {
	struct hub *h;
	struct presence *pr;
	struct fake fk[8];
	struct hub_conn *c[8];
	int n;
};

static struct env *env_new(const char *events, const char *publish, bool tenant)
{
	struct env *e = calloc(1, sizeof(*e));
	struct hub_limits lim = {.max_subs_per_conn = 4, .sendq_max_frames = 1000};
	e->h = hub_new(&lim, &fake_tr);
	struct presence_config pc = {events, publish, 1, 2, tenant};
	e->pr = presence_new(&pc);
	assert_non_null(e->h);
	assert_non_null(e->pr);
	return e;
}

/* Opens a connection of tenant/user (hub_conn_open + the open hook). */
static struct hub_conn *env_open(struct env *e, const char *tenant, const char *user)
{
	int i = e->n++;
	e->c[i] = hub_conn_open(e->h, tenant, user, &e->fk[i]);
	assert_non_null(e->c[i]);
	presence_on_open(e->pr, e->h, e->c[i]);
	return e->c[i];
}

static void env_sub(struct env *e, struct hub_conn *c, const char *ch)
{
	assert_int_equal(hub_subscribe(e->h, c, ch), 0);
	presence_on_subscribed(e->pr, e->h, c, ch);
}

static void env_close(struct env *e, struct hub_conn *c)
{
	for (int i = 0; i < e->n; i++)
		if (e->c[i] == c)
			e->c[i] = NULL;
	presence_on_close(e->pr, e->h, c);
	hub_conn_close(e->h, c);
}

static void env_free(struct env *e)
{
	for (int i = 0; i < e->n; i++)
		if (e->c[i])
			hub_conn_close(e->h, e->c[i]);
	hub_free(e->h);
	presence_free(e->pr);
	free(e);
}

/* Pops every queued frame of c into one '|'-joined string (static). */
static const char *drain(struct hub_conn *c)
{
	static char buf[4096];
	size_t n = 0;
	buf[0] = '\0';
	struct frame *f;
	while ((f = hub_conn_peek(c))) {
		if (n)
			buf[n++] = '|';
		memcpy(buf + n, frame_payload(f), f->len);
		n += f->len;
		buf[n] = '\0';
		hub_conn_pop(c);
	}
	return buf;
}

static void expect_frame(struct frame *f, const char *want)
{
	assert_non_null(f);
	char got[4096];
	memcpy(got, frame_payload(f), f->len);
	got[f->len] = '\0';
	assert_string_equal(got, want);
	frame_unref(f);
}

static struct wsp_request parse(const char *text)
{
	struct wsp_request req;
	struct wsp_error err;
	assert_int_equal(wsp_parse(text, strlen(text), &req, &err), 0);
	return req;
}

/* ------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------ */

static void test_patterns(void **state)
{
	(void)state;
	const char *why;
	assert_int_equal(presence_config_check("", &why), 0);
	assert_int_equal(presence_config_check("board:*, project:*,room", &why), 0);
	assert_int_equal(presence_config_check("*", &why), 0);
	assert_int_equal(presence_config_check("a*b", &why), -1);
	assert_int_equal(presence_config_check("board:**", &why), -1);
	assert_int_equal(presence_config_check("$tenant", &why), -1);
	assert_int_equal(presence_config_check("bad!", &why), -1);
	struct presence_config pc = {"board:*,room", "", 1, 1, false};
	struct presence *pr = presence_new(&pc);
	assert_true(presence_events_on(pr, "board:1"));
	assert_true(presence_events_on(pr, "board:"));
	assert_true(presence_events_on(pr, "room"));
	assert_false(presence_events_on(pr, "roomy"));
	assert_false(presence_events_on(pr, "boar"));
	assert_false(presence_events_on(pr, "job:1"));
	presence_free(pr);
	pc.presence_channels = "*";
	pr = presence_new(&pc);
	assert_true(presence_events_on(pr, "anything"));
	presence_free(pr);
	pc.presence_channels = "a*b";
	assert_null(presence_new(&pc));
}

static void test_join_leave_per_user(void **state)
{
	(void)state;
	struct env *e = env_new("board:*", "", false);
	struct hub_conn *bob = env_open(e, "t", "bob");
	env_sub(e, bob, "board:1");
	assert_string_equal(drain(bob), "");
	struct hub_conn *a1 = env_open(e, "t", "alice");
	env_sub(e, a1, "board:1");
	char want[256];
	snprintf(want, sizeof(want),
	         "{\"type\":\"presence:join\",\"channel\":\"board:1\",\"user\":\"alice\","
	         "\"clientId\":\"%s\"}",
	         hub_conn_id(a1, (char[HUB_CONN_ID_MAX]){0}));
	assert_string_equal(drain(bob), want);
	assert_string_equal(drain(a1), ""); /* not to itself */
	struct hub_conn *a2 = env_open(e, "t", "alice");
	env_sub(e, a2, "board:1");
	assert_string_equal(drain(bob), ""); /* a second device is no join */
	env_close(e, a1);
	assert_string_equal(drain(bob), "");
	assert_int_equal(hub_unsubscribe(e->h, a2, "board:1"), 0);
	presence_on_unsubscribed(e->pr, e->h, a2, "board:1");
	snprintf(want, sizeof(want),
	         "{\"type\":\"presence:leave\",\"channel\":\"board:1\",\"user\":\"alice\","
	         "\"clientId\":\"%s\"}",
	         hub_conn_id(a2, (char[HUB_CONN_ID_MAX]){0}));
	assert_string_equal(drain(bob), want);
	/* Not a presence channel. */
	env_sub(e, bob, "job:1");
	env_sub(e, a2, "job:1");
	assert_string_equal(drain(bob), "");
	/* A close is a leave of every presence channel. */
	env_sub(e, a2, "board:1");
	drain(bob);
	env_close(e, a2);
	assert_string_equal(drain(bob), want);
	struct presence_stats ps;
	presence_stats_read(&ps);
	assert_true(ps.presence_events >= 3);
	env_free(e);
}

static void test_online_offline(void **state)
{
	(void)state;
	struct env *e = env_new("", "", true);
	struct hub_conn *w = env_open(e, "t", "watcher");
	struct hub_conn *other = env_open(e, "u", "watcher2");
	struct hub_conn *a1 = env_open(e, "t", "alice");
	char want[256];
	snprintf(want, sizeof(want),
	         "{\"type\":\"user:online\",\"channel\":\"$tenant\",\"user\":\"alice\","
	         "\"clientId\":\"%s\"}",
	         hub_conn_id(a1, (char[HUB_CONN_ID_MAX]){0}));
	assert_string_equal(drain(w), want);
	assert_string_equal(drain(other), "");
	struct hub_conn *a2 = env_open(e, "t", "alice");
	assert_string_equal(drain(w), "");
	env_close(e, a1);
	assert_string_equal(drain(w), "");
	snprintf(want, sizeof(want),
	         "{\"type\":\"user:offline\",\"channel\":\"$tenant\",\"user\":\"alice\","
	         "\"clientId\":\"%s\"}",
	         hub_conn_id(a2, (char[HUB_CONN_ID_MAX]){0}));
	env_close(e, a2);
	assert_string_equal(drain(w), want);
	env_free(e);
}

static void test_presence_request(void **state)
{
	(void)state;
	struct env *e = env_new("", "", false);
	struct hub_conn *a1 = env_open(e, "t", "alice");
	struct hub_conn *a2 = env_open(e, "t", "alice");
	struct hub_conn *b = env_open(e, "t", "bob");
	struct hub_conn *x = env_open(e, "t2", "alice");
	env_sub(e, b, "board:1");
	env_sub(e, a2, "board:1");
	env_sub(e, a1, "board:1");
	env_sub(e, x, "board:1");
	struct wsp_request req = parse("{\"type\":\"presence\",\"channel\":\"board:1\",\"id\":7}");
	expect_frame(presence_request(e->pr, e->h, b, &req),
	             "{\"type\":\"presence\",\"channel\":\"board:1\",\"connections\":3,\"users\":["
	             "{\"user\":\"alice\",\"connections\":2},{\"user\":\"bob\",\"connections\":1}],"
	             "\"id\":7}");
	req = parse("{\"type\":\"presence\",\"channel\":\"board:2\"}");
	expect_frame(
	        presence_request(e->pr, e->h, b, &req),
	        "{\"type\":\"error\",\"code\":\"CHANNEL_ACCESS_DENIED\",\"message\":\"subscribe "
	        "to the channel before asking its presence\",\"recoverable\":true}");
	req = parse("{\"type\":\"presence\",\"channel\":\"$tenant\",\"id\":\"q\"}");
	expect_frame(presence_request(e->pr, e->h, b, &req),
	             "{\"type\":\"error\",\"code\":\"CHANNEL_ACCESS_DENIED\",\"message\":\"tenant "
	             "presence is not enabled\",\"recoverable\":true,\"id\":\"q\"}");
	env_free(e);
}

/* The pieces presence_cluster.c answers and announces with: a frame from
 * given counts (partial flagged), this node's answer, and an announcement
 * that leaves out the connection named by its id. */
static void test_cluster_pieces(void **state)
{
	(void)state;
	struct env *e = env_new("board:*", "", true);
	struct hub_conn *a = env_open(e, "t", "alice");
	struct hub_conn *b = env_open(e, "t", "bob");
	env_sub(e, a, "board:1");
	env_sub(e, b, "board:1");
	drain(a);
	drain(b);
	struct command_entry users[2] = {{"alice", 2}, {"zed", 1}};
	struct command cmd = {.connections = 3, .entries = users, .nentries = 2};
	expect_frame(presence_frame_build("board:1", "7", 1, &cmd, false),
	             "{\"type\":\"presence\",\"channel\":\"board:1\",\"connections\":3,\"users\":["
	             "{\"user\":\"alice\",\"connections\":2},{\"user\":\"zed\",\"connections\":1}],"
	             "\"id\":7}");
	expect_frame(presence_local_frame(e->h, "t", "board:1", "", 0, true),
	             "{\"type\":\"presence\",\"channel\":\"board:1\",\"connections\":2,\"users\":["
	             "{\"user\":\"alice\",\"connections\":1},{\"user\":\"bob\",\"connections\":1}],"
	             "\"partial\":true}");
	struct frame *f = NULL;
	assert_int_equal(presence_announce(e->h, "t", "presence:leave", "board:1", "carol",
	                                   hub_conn_id(a, (char[HUB_CONN_ID_MAX]){0}), &f),
	                 1);
	char want[256];
	snprintf(want, sizeof want,
	         "{\"type\":\"presence:leave\",\"channel\":\"board:1\",\"user\":\"carol\","
	         "\"clientId\":\"%s\"}",
	         hub_conn_id(a, (char[HUB_CONN_ID_MAX]){0}));
	expect_frame(f, want);
	assert_string_equal(drain(a), "");
	assert_string_equal(drain(b), want);
	env_free(e);
}

static void test_client_events(void **state)
{
	(void)state;
	struct env *e = env_new("", "board:*", false);
	struct hub_conn *a = env_open(e, "t", "alice");
	struct hub_conn *b = env_open(e, "t", "bob");
	struct hub_conn *x = env_open(e, "t2", "bob");
	env_sub(e, a, "board:1");
	env_sub(e, b, "board:1");
	env_sub(e, x, "board:1");
	env_sub(e, a, "job:1");
	struct presence_bucket bk = {0};
	struct wsp_request req = parse("{\"type\":\"publish\",\"channel\":\"board:1\",\"event\":"
	                               "\"typing\",\"data\":{\"user\":\"mallory\", \"n\":[1, 2]},"
	                               "\"id\":1}");
	expect_frame(presence_publish(e->pr, e->h, a, &bk, 1000, &req),
	             "{\"type\":\"published\",\"channel\":\"board:1\",\"id\":1}");
	char want[256];
	snprintf(want, sizeof(want),
	         "{\"type\":\"client:typing\",\"channel\":\"board:1\",\"user\":\"alice\","
	         "\"clientId\":\"%s\",\"data\":{\"user\":\"mallory\",\"n\":[1,2]}}",
	         hub_conn_id(a, (char[HUB_CONN_ID_MAX]){0}));
	assert_string_equal(drain(b), want);
	assert_string_equal(drain(a), "");
	assert_string_equal(drain(x), "");
	/* Burst 2 at 1/s: the second goes, the third is refused, a second
	 * later one more goes. */
	expect_frame(presence_publish(e->pr, e->h, a, &bk, 1000, &req),
	             "{\"type\":\"published\",\"channel\":\"board:1\",\"id\":1}");
	expect_frame(presence_publish(e->pr, e->h, a, &bk, 1001, &req),
	             "{\"type\":\"error\",\"code\":\"RATE_LIMITED\",\"message\":\"too many client "
	             "events; slow down\",\"recoverable\":true,\"id\":1}");
	expect_frame(presence_publish(e->pr, e->h, a, &bk, 2001, &req),
	             "{\"type\":\"published\",\"channel\":\"board:1\",\"id\":1}");
	drain(b);
	req = parse("{\"type\":\"publish\",\"channel\":\"job:1\",\"event\":\"x\"}");
	expect_frame(
	        presence_publish(e->pr, e->h, a, &bk, 9000, &req),
	        "{\"type\":\"error\",\"code\":\"PERMISSION_DENIED\",\"message\":\"client events "
	        "are not enabled on this channel\",\"recoverable\":true}");
	req = parse("{\"type\":\"publish\",\"channel\":\"board:2\",\"event\":\"x\"}");
	expect_frame(
	        presence_publish(e->pr, e->h, a, &bk, 9000, &req),
	        "{\"type\":\"error\",\"code\":\"CHANNEL_ACCESS_DENIED\",\"message\":\"subscribe "
	        "to the channel before publishing on it\",\"recoverable\":true}");
	assert_string_equal(drain(b), "");
	env_free(e);
}

/* Runs cmd for tenant t; returns p.status. */
static int run(struct env *e, const char *tenant, struct command *cmd)
{
	struct publication p;
	memset(&p, 0, sizeof(p));
	snprintf(p.tenant, sizeof(p.tenant), "%s", tenant);
	p.cmd = cmd;
	presence_command(e->pr, e->h, &p);
	return p.status;
}

static void test_commands(void **state)
{
	(void)state;
	struct env *e = env_new("", "", false);
	struct hub_conn *a1 = env_open(e, "t", "alice");
	struct hub_conn *a2 = env_open(e, "t", "alice");
	struct hub_conn *b = env_open(e, "t", "bob");
	struct hub_conn *x = env_open(e, "t2", "alice");
	(void)a2;
	(void)x;

	/* Subscribe every device of alice. */
	struct command cmd = {.kind = CMD_SUBSCRIBE};
	strcpy(cmd.user, "alice");
	strcpy(cmd.channel, "board:1");
	assert_int_equal(run(e, "t", &cmd), 0);
	assert_int_equal(cmd.connections, 2);
	assert_int_equal(cmd.already, 0);
	assert_int_equal(strlen(cmd.epoch), 16);
	char want[256];
	snprintf(want, sizeof(want),
	         "{\"type\":\"subscribed\",\"channel\":\"board:1\",\"offset\":0,\"epoch\":\"%s\"}",
	         cmd.epoch);
	assert_string_equal(drain(a1), want);
	assert_string_equal(drain(a2), want);
	assert_string_equal(drain(x), "");
	assert_true(hub_conn_subscribed(e->h, a2, "board:1"));
	assert_false(hub_conn_subscribed(e->h, x, "board:1"));
	memset(&cmd.connections, 0, sizeof(cmd) - offsetof(struct command, connections));
	assert_int_equal(run(e, "t", &cmd), 0);
	assert_int_equal(cmd.already, 2);
	assert_string_equal(drain(a1), "");

	/* Presence of the channel and of the tenant. */
	env_sub(e, b, "board:2");
	struct command pc = {.kind = CMD_PRESENCE};
	strcpy(pc.channel, "board:1");
	assert_int_equal(run(e, "t", &pc), 0);
	assert_int_equal(pc.connections, 2);
	assert_int_equal(pc.nentries, 1);
	assert_string_equal(pc.entries[0].name, "alice");
	assert_int_equal(pc.entries[0].count, 2);
	command_clear(&pc);
	memset(&pc, 0, sizeof(pc));
	pc.kind = CMD_PRESENCE;
	assert_int_equal(run(e, "t", &pc), 0);
	assert_int_equal(pc.connections, 3);
	assert_int_equal(pc.nentries, 2);
	assert_string_equal(pc.entries[1].name, "bob");
	command_clear(&pc);

	/* ListChannels: sorted, cut at the limit. */
	struct command lc = {.kind = CMD_LIST_CHANNELS, .limit = 1};
	assert_int_equal(run(e, "t", &lc), 0);
	assert_int_equal(lc.nentries, 1);
	assert_true(lc.truncated);
	assert_string_equal(lc.entries[0].name, "board:1");
	assert_int_equal(lc.entries[0].count, 2);
	command_clear(&lc);
	memset(&lc, 0, sizeof(lc));
	lc.kind = CMD_LIST_CHANNELS;
	strcpy(lc.channel, "board:2");
	assert_int_equal(run(e, "t", &lc), 0);
	assert_int_equal(lc.nentries, 1);
	assert_false(lc.truncated);
	command_clear(&lc);

	/* Unsubscribe. */
	struct command uc = {.kind = CMD_UNSUBSCRIBE};
	strcpy(uc.user, "alice");
	strcpy(uc.channel, "board:1");
	assert_int_equal(run(e, "t", &uc), 0);
	assert_int_equal(uc.connections, 2);
	assert_string_equal(drain(a1), "{\"type\":\"unsubscribed\",\"channel\":\"board:1\"}");
	assert_false(hub_conn_subscribed(e->h, a1, "board:1"));

	/* Disconnect: one client, then a user (the killed one is not counted
	 * twice), then a tenant. */
	struct command dc = {.kind = CMD_DISCONNECT, .close_code = LH_CLOSE_RECONNECT};
	strcpy(dc.client_id, hub_conn_id(a1, (char[HUB_CONN_ID_MAX]){0}));
	strcpy(dc.reason, "bye");
	assert_int_equal(run(e, "t2", &dc), 0); /* another tenant: not found */
	assert_int_equal(dc.connections, 0);
	assert_int_equal(run(e, "t", &dc), 0);
	assert_int_equal(dc.connections, 1);
	assert_int_equal(e->fk[0].kills, 1);
	assert_int_equal(e->fk[0].code, LH_CLOSE_RECONNECT);
	assert_string_equal(e->fk[0].reason, "bye");
	memset(&dc, 0, sizeof(dc));
	dc.kind = CMD_DISCONNECT;
	dc.close_code = LH_CLOSE_GOODBYE;
	strcpy(dc.user, "alice");
	assert_int_equal(run(e, "t", &dc), 0);
	assert_int_equal(dc.connections, 1);
	assert_int_equal(e->fk[1].code, LH_CLOSE_GOODBYE);
	assert_string_equal(e->fk[1].reason, "DISCONNECTED");
	assert_int_equal(e->fk[3].kills, 0);
	memset(&dc, 0, sizeof(dc));
	dc.kind = CMD_DISCONNECT;
	dc.close_code = LH_CLOSE_GOODBYE;
	assert_int_equal(run(e, "t", &dc), 0);
	assert_int_equal(dc.connections, 1); /* bob; alice's are closing already */
	assert_int_equal(e->fk[3].kills, 0); /* the other tenant */

	/* A bad tenant is refused. */
	struct command bad = {.kind = CMD_PRESENCE};
	assert_int_equal(run(e, "bad tenant", &bad), LH_EINVAL);
	env_free(e);
}

static int runner_calls;

static void runner(void *arg, struct publication *p)
{
	struct env *e = arg;
	runner_calls++;
	presence_command(e->pr, e->h, p);
}

static int done_status = 1;

static void on_done(struct publication *p)
{
	done_status = p->status;
}

/* hub_publish hands a publication with cmd set to the command runner, and
 * fails it without one. */
static void test_command_runner(void **state)
{
	(void)state;
	struct env *e = env_new("", "", false);
	struct hub_conn *a = env_open(e, "t", "alice");
	env_sub(e, a, "board:1");
	struct command cmd = {.kind = CMD_LIST_CHANNELS};
	struct publication p;
	memset(&p, 0, sizeof(p));
	strcpy(p.tenant, "t");
	p.cmd = &cmd;
	p.on_done = on_done;
	hub_publish(e->h, &p);
	assert_int_equal(done_status, LH_EINVAL);
	assert_int_equal(runner_calls, 0);
	hub_set_command_runner(e->h, runner, e);
	hub_publish(e->h, &p);
	assert_int_equal(done_status, 0);
	assert_int_equal(runner_calls, 1);
	assert_int_equal(cmd.nentries, 1);
	assert_string_equal(cmd.entries[0].name, "board:1");
	command_clear(&cmd);
	env_free(e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_patterns),       cmocka_unit_test(test_join_leave_per_user),
	        cmocka_unit_test(test_online_offline), cmocka_unit_test(test_presence_request),
	        cmocka_unit_test(test_client_events),  cmocka_unit_test(test_commands),
	        cmocka_unit_test(test_command_runner), cmocka_unit_test(test_cluster_pieces),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

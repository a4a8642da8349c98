/* log: leveled log lines on stderr, one write(2) each. See log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 2048

static _Atomic int min_level = LOG_INFO;
static _Atomic int format = LOG_LOGFMT;
static const char *const names[] = {"debug", "info", "warn", "error"};
static const char *const formats[] = {"logfmt", "json"};

void log_set_level(enum log_level lvl)
{
	atomic_store(&min_level, (int)lvl);
}

void log_set_format(enum log_format fmt)
{
	atomic_store(&format, (int)fmt);
}

int log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

int log_format_parse(const char *s)
{
	for (int i = 0; i < 2; i++)
		if (strcmp(s, formats[i]) == 0)
			return i;
	return -1;
}

/* A bounded output buffer; writes past the end are dropped. */
struct out {
	char *p;
	size_t len, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (n > o->cap - o->len)
		n = o->cap - o->len;
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

/* Appends s[0..n) as the inside of a JSON string. */
static void put_escaped(struct out *o, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(o, esc, 2);
		} else if (c < 0x20) {
			int k = snprintf(esc, sizeof esc, "\\u%04x", c);
			put(o, esc, (size_t)k);
		} else {
			put(o, (const char *)&s[i], 1);
		}
	}
}

/* Whether v[0..n) is a JSON integer. */
static bool is_int(const char *v, size_t n)
{
	size_t i = v[0] == '-';
	if (i >= n || n - i > 18 || (v[i] == '0' && n - i > 1))
		return false;
	for (; i < n; i++)
		if (v[i] < '0' || v[i] > '9')
			return false;
	return true;
}

/* Reads one logfmt value at *s: "quoted \"text\"" (unescaped into buf) or
 * a bare word. Returns its length; *quoted tells which. */
static size_t read_value(const char **s, char *buf, size_t cap, bool *quoted)
{
	const char *p = *s;
	size_t n = 0;
	*quoted = *p == '"';
	if (*quoted) {
		for (p++; *p && *p != '"'; p++) {
			if (*p == '\\' && p[1])
				p++;
			if (n < cap)
				buf[n++] = *p;
		}
		if (*p == '"')
			p++;
	} else {
		for (; *p && *p != ' '; p++)
			if (n < cap)
				buf[n++] = *p;
	}
	*s = p;
	return n;
}

/* Turns the logfmt pairs of text into JSON members (",\"k\":v"). A word
 * without '=' goes under "text". */
static void pairs_to_json(struct out *o, const char *text)
{
	char val[LINE_MAX_BYTES];
	const char *p = text;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *k = p;
		while (*p && *p != '=' && *p != ' ')
			p++;
		size_t klen = (size_t)(p - k);
		bool has_value = *p == '=';
		put(o, ",\"", 2);
		put_escaped(o, has_value ? k : "text", has_value ? klen : 4);
		put(o, "\":", 2);
		if (!has_value) {
			put(o, "\"", 1);
			put_escaped(o, k, klen);
			put(o, "\"", 1);
			continue;
		}
		p++;
		bool quoted;
		size_t n = read_value(&p, val, sizeof val, &quoted);
		if (!quoted && n > 0 && is_int(val, n)) {
			put(o, val, n);
		} else {
			put(o, "\"", 1);
			put_escaped(o, val, n);
			put(o, "\"", 1);
		}
	}
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	if ((int)lvl < atomic_load(&min_level))
		return;
	char text[LINE_MAX_BYTES];
	char line[LINE_MAX_BYTES + 256];
	char stamp[64];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
	         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);

	struct out o = {line, 0, sizeof line - 2};
	if (atomic_load(&format) == LOG_JSON) {
		put(&o, "{\"time\":\"", 9);
		put(&o, stamp, strlen(stamp));
		put(&o, "\",\"level\":\"", 11);
		put(&o, names[lvl], strlen(names[lvl]));
		put(&o, "\"", 1);
		pairs_to_json(&o, text);
		o.cap = sizeof line - 1; /* room for the brace is kept */
		put(&o, "}", 1);
	} else {
		put(&o, "time=", 5);
		put(&o, stamp, strlen(stamp));
		put(&o, " level=", 7);
		put(&o, names[lvl], strlen(names[lvl]));
		put(&o, " ", 1);
		put(&o, text, strlen(text));
	}
	line[o.len++] = '\n';
	/* One write per line keeps lines from different threads whole. */
	ssize_t w = write(STDERR_FILENO, line, o.len);
	(void)w;
}

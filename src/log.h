/*
 * log: leveled log lines on stderr, one line each, safe from any thread.
 * Callers write logfmt pairs ("msg=\"...\" key=value", or "event=connect
 * client=..."); the line is printed as logfmt,
 *   time=2026-11-21T10:00:00.123Z level=info event=connect client=c1-2
 * or, with the json format, as one JSON object per line,
 *   {"time":"2026-11-21T10:00:00.123Z","level":"info","event":"connect",...}
 * Tokens and secrets are never passed to it.
 */
#ifndef LH_LOG_H
#define LH_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_LOGFMT, LOG_JSON };

void log_set_level(enum log_level lvl);
void log_set_format(enum log_format fmt);
/* Parses "logfmt", "json"; returns -1 when unknown. */
int log_format_parse(const char *s);
/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_level_parse(const char *s);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif

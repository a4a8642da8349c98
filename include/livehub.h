/*
 * livehub: a real-time hub. Backend services publish over gRPC, livehub
 * delivers JSON WebSocket frames to the browsers allowed to see them.
 *
 * This header holds what every module shares: the version and the error
 * values. Functions return 0 on success or one of the negative LH_E* values.
 */
#ifndef LIVEHUB_H
#define LIVEHUB_H

#define LH_VERSION "0.1.0"
/* The client protocol version announced in `connected`. */
#define LH_PROTOCOL_VERSION 1

enum lh_err {
	LH_OK = 0,
	LH_ENOMEM = -1,        /* allocation failed */
	LH_EINVAL = -2,        /* malformed argument or name */
	LH_EEXIST = -3,        /* already there (already subscribed) */
	LH_ENOENT = -4,        /* not there (not subscribed, no such channel) */
	LH_ELIMIT = -5,        /* a configured limit was reached */
	LH_EFULL = -6,         /* a bounded queue is full */
	LH_EUTF8 = -7,         /* a string is not valid UTF-8 */
	LH_EAUTH = -8,         /* authentication failed */
	LH_EEXPIRED = -9,      /* the token has expired */
	LH_ECLOSED = -10,      /* the target is shutting down or gone */
	LH_EIO = -11,          /* an I/O or library call failed */
	LH_EUNAVAILABLE = -12, /* a service we need (Redis) is unreachable now */
};

/* Returns a static, human-readable text for an LH_E* value. */
const char *lh_strerror(int err);

#endif

/* errors: texts for the LH_E* values of livehub.h. */
#include "livehub.h"

const char *lh_strerror(int err)
{
	switch (err) {
	case LH_OK: return "ok";
	case LH_ENOMEM: return "out of memory";
	case LH_EINVAL: return "invalid argument";
	case LH_EEXIST: return "already exists";
	case LH_ENOENT: return "not found";
	case LH_ELIMIT: return "limit reached";
	case LH_EFULL: return "queue full";
	case LH_EUTF8: return "invalid UTF-8";
	case LH_EAUTH: return "authentication failed";
	case LH_EEXPIRED: return "token expired";
	case LH_ECLOSED: return "closed";
	case LH_EIO: return "I/O error";
	case LH_EUNAVAILABLE: return "unavailable";
	}
	return "unknown error";
}

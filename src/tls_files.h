/*
 * tls_files: checks the TLS files livehub is configured with before the
 * listeners load them, so that a bad certificate, key or CA bundle stops
 * start-up (and --check-config, and a SIGHUP reload) with a message naming
 * the setting, instead of failing inside libwebsockets or gRPC. OpenSSL
 * only; belongs to the auth library.
 */
#ifndef LH_TLS_FILES_H
#define LH_TLS_FILES_H

#include <stddef.h>

/* Checks that cert (a PEM chain) and key (a PEM private key) load and
 * belong together; cert_setting/key_setting name them in messages. Returns
 * 0 (filling warn, when non-empty, with a warning such as an expiry), or
 * -1 with err filled. */
int tls_check_pair(const char *cert, const char *key, const char *cert_setting,
                   const char *key_setting, char *err, size_t errlen, char *warn, size_t warnlen);

/* Checks that path is a PEM bundle of at least one CA certificate.
 * Returns 0, or -1 with err filled. */
int tls_check_ca(const char *path, const char *setting, char *err, size_t errlen);

#endif

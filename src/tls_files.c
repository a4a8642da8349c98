/*
 * tls_files: see tls_files.h.
 */
#include "tls_files.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>

/* The reason of OpenSSL's last error, for a message; clears the queue. */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	ERR_clear_error();
	return r ? r : "unknown error";
}

int tls_check_pair(const char *cert, const char *key, const char *cert_setting,
                   const char *key_setting, char *err, size_t errlen, char *warn, size_t warnlen)
{
	int rc = -1;
	warn[0] = '\0';
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(err, errlen, "%s: cannot set up OpenSSL: %s", cert_setting, ssl_reason());
		return -1;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		snprintf(err, errlen, "%s: %s is not a usable PEM certificate chain: %s",
		         cert_setting, cert, ssl_reason());
		goto out;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		snprintf(err, errlen, "%s: %s is not a usable PEM private key: %s", key_setting,
		         key, ssl_reason());
		goto out;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen, "%s: %s is not the private key of %s (%s)", key_setting, key,
		         cert, cert_setting);
		ERR_clear_error();
		goto out;
	}
	X509 *x = SSL_CTX_get0_certificate(ctx);
	if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
		snprintf(warn, warnlen, "%s: the certificate in %s has expired", cert_setting,
		         cert);
	else if (x && X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
		snprintf(warn, warnlen, "%s: the certificate in %s is not valid yet", cert_setting,
		         cert);
	rc = 0;
out:
	SSL_CTX_free(ctx);
	return rc;
}

int tls_check_ca(const char *path, const char *setting, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(err, errlen, "%s: cannot set up OpenSSL: %s", setting, ssl_reason());
		return -1;
	}
	int rc = 0;
	if (SSL_CTX_load_verify_locations(ctx, path, NULL) != 1) {
		snprintf(err, errlen, "%s: %s is not a usable PEM CA bundle: %s", setting, path,
		         ssl_reason());
		rc = -1;
	}
	SSL_CTX_free(ctx);
	return rc;
}

/*
 * rpc: the gRPC server on the C core. The only module that includes
 * grpc/grpc.h.
 *
 * Methods are registered generically from the protoc-c service descriptor;
 * each call's request is decoded with its method's input descriptor,
 * validated and turned into a publication pushed on the hand-off queue; the
 * reply is sent when the service thread has queued it (rpc_methods.c).
 */
#ifndef LH_RPC_H
#define LH_RPC_H

#include "apikeys.h"
#include "config.h"
#include "handoff.h"
#include "hub.h"

struct rpc;

/* Starts the server (grpc_init, bind, completion-queue thread), with TLS
 * when cfg names gRPC certificate files. keys (ownership passes to the
 * server, also on failure) are the API keys callers must present; NULL
 * lets every caller call every method (development mode). Returns NULL
 * after logging why. Block SIGINT/SIGTERM before calling. */
struct broker;
struct rpc *rpc_start(const struct lh_config *cfg, struct hub *hub, struct broker *broker,
                      struct handoff *q, struct apikeys *keys);
/* Replaces the API keys (SIGHUP; ownership of keys passes to r). Calls
 * that have started keep the key they were authorized with. Call from one
 * thread at a time. */
void rpc_set_keys(struct rpc *r, struct apikeys *keys);
/* The bound gRPC port. */
int rpc_port(const struct rpc *r);
/* Stops accepting calls, lets calls in flight finish for up to drain_ms
 * (the service thread must keep draining the hand-off queue meanwhile),
 * cancels the rest and tears gRPC down. Frees r. */
void rpc_stop(struct rpc *r, int drain_ms);

#endif

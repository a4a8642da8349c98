// @ts-check
// livehub's gRPC API for Node: the service client, loaded from proto/ at
// run time with @grpc/proto-loader (nothing generated, nothing to commit;
// a change to proto/ is picked up on the next start).
//
//   const { connect } = require('./livehub-grpc');
//   const hub = connect('127.0.0.1:50051');
//   const reply = await hub.call('PublishJobProgress', { tenantId: 'demo', event: {...} });
//
// Field names are lowerCamelCase (proto-loader's default), 64-bit integers
// are strings, enums are names ('JOB_KIND_SLICE'): the proto3 JSON mapping,
// the same shapes browsers get in `data`. When livehub requires API keys
// (docs/SECURITY.md), LIVEHUB_API_KEY (or the apiKey option) is sent as
// `authorization: Bearer <key>` on every call.
'use strict';
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = process.env.LIVEHUB_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');

/** @type {protoLoader.Options} */
const LOADER_OPTIONS = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] };

/** Loads livehub.v1 from proto/: returns the grpc package object. */
function loadPackage() {
  const def = protoLoader.loadSync(['livehub/v1/hub.proto', 'livehub/v1/events.proto'], LOADER_OPTIONS);
  return /** @type {any} */ (grpc.loadPackageDefinition(def)).livehub.v1;
}

/**
 * A HubService client with a promise-returning call().
 * @param {string} addr host:port of livehub's gRPC listener
 * @param {{creds?: grpc.ChannelCredentials, apiKey?: string}} [opts]
 *   creds default: plaintext (loopback; grpc.credentials.createSsl(ca) for TLS);
 *   apiKey default: $LIVEHUB_API_KEY
 */
function connect(addr, opts = {}) {
  const pkg = loadPackage();
  const client = new pkg.HubService(addr, opts.creds || grpc.credentials.createInsecure());
  const apiKey = opts.apiKey || process.env.LIVEHUB_API_KEY;
  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set('authorization', 'Bearer ' + apiKey);
  return {
    client,
    /**
     * Calls a unary method; resolves with its reply object.
     * @param {string} method e.g. 'PublishJobProgress'
     * @param {object} request
     * @param {number} [timeoutMs]
     * @returns {Promise<any>}
     */
    call(method, request, timeoutMs = 10000) {
      return new Promise((resolve, reject) => {
        if (typeof client[method] !== 'function') return reject(new Error('no method HubService.' + method));
        client[method](request, metadata, { deadline: Date.now() + timeoutMs }, (/** @type {any} */ err, /** @type {any} */ reply) => (err ? reject(err) : resolve(reply)));
      });
    },
    close() {
      client.close();
    },
  };
}

module.exports = { connect, loadPackage, PROTO_DIR };

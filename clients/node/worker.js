#!/usr/bin/env node
// @ts-check
// A queue worker reporting job progress to livehub (Node, @grpc/grpc-js):
//
//   node clients/node/worker.js --tenant demo --job 42 [--project p1] [--steps 10] [--interval 500]
//
// A browser subscribed to job:42 (or project:p1) sees one job:progress per
// step, then job:completed. Install once: `npm install` in clients/node.
'use strict';
const { parseArgs } = require('node:util');
const { connect } = require('./livehub-grpc');

/**
 * @typedef {Object} JobProgress    livehub.v1.JobProgress, proto3 JSON names
 * @property {string} jobId
 * @property {string} [projectId]
 * @property {string} [kind]        a JobKind name, e.g. 'JOB_KIND_SLICE'
 * @property {number} progress      0–100
 * @property {number} [etaSeconds]
 * @property {string} [message]
 *
 * @typedef {Object} PublishResult
 * @property {string} offset        uint64 as a string
 * @property {string} epoch
 * @property {number} subscribers
 */

class JobReporter {
  /**
   * @param {ReturnType<typeof connect>} hub
   * @param {string} tenantId
   * @param {string} jobId
   * @param {string} [projectId]
   */
  constructor(hub, tenantId, jobId, projectId = '') {
    this.hub = hub;
    this.tenantId = tenantId;
    this.base = { jobId, projectId, kind: 'JOB_KIND_SLICE' };
  }

  /** @param {number} progress @param {string} message @param {number} etaSeconds @returns {Promise<PublishResult>} */
  async progress(progress, message, etaSeconds) {
    /** @type {JobProgress} */
    const event = { ...this.base, progress, message, etaSeconds };
    return (await this.hub.call('PublishJobProgress', { tenantId: this.tenantId, event })).result;
  }

  /** @param {number} durationMs @returns {Promise<PublishResult>} */
  async completed(durationMs) {
    const event = { ...this.base, durationMs: String(durationMs) };
    return (await this.hub.call('PublishJobCompleted', { tenantId: this.tenantId, event })).result;
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string', default: '127.0.0.1:50051' },
      tenant: { type: 'string', default: 'demo' },
      job: { type: 'string', default: '42' },
      project: { type: 'string', default: '' },
      steps: { type: 'string', default: '10' },
      interval: { type: 'string', default: '500' },
    },
  });
  const steps = Number(values.steps);
  const interval = Number(values.interval);
  const hub = connect(String(values.addr));
  const job = new JobReporter(hub, String(values.tenant), String(values.job), String(values.project));
  const started = Date.now();
  try {
    for (let step = 1; step <= steps; step++) {
      const pct = (100 * step) / steps;
      const r = await job.progress(pct, `step ${step}/${steps}`, Math.round(((steps - step) * interval) / 1000));
      console.log(`job:${values.job} ${pct.toFixed(1).padStart(5)}%  offset=${r.offset} subscribers=${r.subscribers}`);
      await new Promise((res) => setTimeout(res, interval));
    }
    const r = await job.completed(Date.now() - started);
    console.log(`job:${values.job} completed  offset=${r.offset}`);
  } finally {
    hub.close();
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e.message || e);
    process.exit(1);
  });
}

module.exports = { JobReporter };

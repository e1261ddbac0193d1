#!/usr/bin/env node
// Converts an OpenAPI document into a Postman Collection v2.1 with openapi-to-postmanv2 (the
// version pinned in tests/js/package.json), deterministically: the converter's random choices
// (fake values for schemas without examples) come from a fixed-seed generator and a fixed
// clock, and its random ids are replaced by ids derived from what they name (method + path for
// a request). The same spec therefore always gives the same bytes. Called by generate.sh.
//
//   node generate.js <spec.json> <out.json>
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

// A fixed-seed PRNG (mulberry32) in place of Math.random, before the converter (and the
// schema faker inside it) is loaded.
let seed = 0x464f5247; // "FORG"
Math.random = function random() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

// A fixed clock as well: the faker dates its fake timestamps relative to `new Date()`.
const RealDate = Date;
const FIXED_NOW = RealDate.UTC(2025, 4, 21, 2, 35, 12); // 2025-05-21T02:35:12Z
global.Date = class FixedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(FIXED_NOW);
    else super(...args);
  }

  static now() {
    return FIXED_NOW;
  }
};

const root = path.resolve(__dirname, '..', '..');
const converterDir = path.join(root, 'tests', 'js', 'node_modules', 'openapi-to-postmanv2');
if (!fs.existsSync(converterDir)) {
  console.error(`generate.js: ${converterDir} is missing (run .ci/install-tools.sh)`);
  process.exit(2);
}
// Reseed before each operation, from its method and path, so that an operation's fake values
// do not depend on the operations before it: a change to one operation of the spec changes
// only that part of the collection. (Internal to the pinned converter; should the hook move,
// the output stays deterministic, only less local.)
try {
  const schemaUtils = require(path.join(converterDir, 'libV2', 'CollectionGeneration', 'schemaUtils'));
  const resolve = schemaUtils.resolvePostmanRequest;
  if (typeof resolve === 'function') {
    schemaUtils.resolvePostmanRequest = function reseeded(context, pathItem, opPath, method, ...rest) {
      const h = crypto.createHash('sha1').update(`${String(method).toUpperCase()} ${opPath}`).digest();
      seed = h.readInt32LE(0);
      return resolve.call(this, context, pathItem, opPath, method, ...rest);
    };
  }
} catch (e) {
  // Not there in this converter version: keep the one seed for the whole run.
}
const Converter = require(converterDir);

const [specPath, outPath] = process.argv.slice(2);
if (!specPath || !outPath) {
  console.error('usage: node generate.js <spec.json> <out.json>');
  process.exit(2);
}
const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));

const DEFAULT_BASE_URL = 'http://localhost:3000';

const OPTIONS = {
  folderStrategy: 'Tags',
  // `requestParametersResolution` is this option's name in the converter's v1 interface; the
  // v2 interface (the default, used here) calls it `parametersResolution`.
  parametersResolution: 'Example',
  requestNameSource: 'Fallback',
  indentCharacter: 'Space',
  includeAuthInfoInExample: true,
  enableOptionalParameters: true,
  alwaysInheritAuthentication: false,
};

/** A UUID-shaped id derived from `text` (SHA-1, version/variant bits set like a v5 UUID). */
function stableId(text) {
  const h = crypto.createHash('sha1').update(`forge-postman:${text}`).digest('hex');
  const variant = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** `/api/project/{project_id}` from a Postman URL's path segments (`:project_id`). */
function templatePath(url) {
  const segments = Array.isArray(url.path) ? url.path : String(url.path || '').split('/');
  return '/' + segments
    .filter((s) => s !== '')
    .map((s) => (s.startsWith(':') ? `{${s.slice(1)}}` : s))
    .join('/');
}

/** Replaces every `id` below `node` by one derived from `key` and the JSON path to it. */
function restamp(node, key) {
  if (Array.isArray(node)) {
    node.forEach((child, i) => restamp(child, `${key}/${i}`));
  } else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'id' && typeof v === 'string') {
        node.id = stableId(key);
      } else {
        restamp(v, `${key}/${k}`);
      }
    }
  }
}

/** (method, path) → whether the spec says the operation needs no authentication. */
function publicOperations() {
  const open = new Set();
  const globalSecurity = spec.security;
  for (const [p, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      if (!op || typeof op !== 'object' || Array.isArray(op)) continue;
      const security = op.security !== undefined ? op.security : globalSecurity;
      if (Array.isArray(security) && (security.length === 0
        || security.some((s) => Object.keys(s).length === 0))) {
        open.add(`${method.toUpperCase()} ${p}`);
      }
    }
  }
  return open;
}

function postProcess(collection) {
  const open = publicOperations();
  const seen = new Set();
  const visit = (items, folderKey) => {
    for (const item of items) {
      if (Array.isArray(item.item)) {
        const key = `${folderKey}/folder:${item.name}`;
        if (item.id !== undefined) item.id = stableId(key);
        visit(item.item, key);
        continue;
      }
      const op = `${item.request.method.toUpperCase()} ${templatePath(item.request.url)}`;
      let key = `request:${op}`;
      // Two items naming one operation never happen with one spec; keep ids unique anyway.
      for (let n = 2; seen.has(key); n += 1) key = `request:${op}#${n}`;
      seen.add(key);
      restamp(item, key);
      // An operation that needs no authentication sends none (instead of inheriting the
      // collection's Bearer token).
      if (open.has(op) && !item.request.auth) item.request.auth = { type: 'noauth' };
    }
  };
  visit(collection.item || [], '');
  collection.info._postman_id = stableId(`collection:${collection.info.name}`);
  restamp(collection.event || [], 'collection-event');
  // Variables: baseUrl (from the spec's first server) and bearerToken, the API token that the
  // collection-level Bearer auth sends.
  // A relative server URL (the spec's `/`, right for Swagger UI on the instance) means nothing
  // to Postman: baseUrl then defaults to a local server, with that path.
  const variables = (collection.variable || []).filter((v) => v.key !== 'bearerToken'
    && v.key !== 'baseUrl');
  const server = spec.servers && spec.servers[0] && spec.servers[0].url;
  let baseUrl = typeof server === 'string' && /^https?:\/\//.test(server) ? server : DEFAULT_BASE_URL;
  if (typeof server === 'string' && server.startsWith('/')) baseUrl += server;
  variables.unshift({ key: 'baseUrl', value: baseUrl.replace(/\/+$/, ''), type: 'string' });
  variables.push({ key: 'bearerToken', value: '', type: 'string' });
  collection.variable = variables;
  collection.auth = {
    type: 'bearer',
    bearer: [{ key: 'token', value: '{{bearerToken}}', type: 'string' }],
  };
  return collection;
}

Converter.convertV2({ type: 'json', data: spec }, OPTIONS, (err, result) => {
  if (err || !result || !result.result) {
    console.error(`generate.js: conversion failed: ${err ? err.message || err : result && result.reason}`);
    process.exit(1);
  }
  const collection = postProcess(result.output[0].data);
  fs.writeFileSync(outPath, `${JSON.stringify(collection, null, 2)}\n`);
});

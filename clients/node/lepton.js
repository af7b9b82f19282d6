'use strict';
// A small Node.js client for Lepton. The .proto files are loaded at run time from
// ../../protos (or $LEPTON_PROTOS), so there is no generated code to keep current.
//
//   const lepton = require('./lepton');
//   const client = lepton.connect('127.0.0.1:50051');
//   const x = new Float32Array([1, 2, 3]);
//   const out = await client.submit('sum', { x });               // 1-D: a bare typed array
//   const hist = await client.submit('histogram', { x: { data: x, shape: [3] } },
//                                    { bins: 4, range: [0, 4] });
//   out.sum.data[0]; hist.counts.data;   // results: { name: { dtype, shape, data: TypedArray } }
//   client.close();
//
// Security (each option falls back to its environment variable): { token (LEPTON_TOKEN), tokenFile
// (LEPTON_TOKEN_FILE), tlsCa (LEPTON_TLS_CA), tlsCert (LEPTON_TLS_CERT), tlsKey (LEPTON_TLS_KEY), tls
// (LEPTON_TLS=1: the system's roots) }. TLS is on when a CA or a certificate is given or tls is set, and
// the server's certificate is always checked. The token rides in `authorization: Bearer` metadata.
//
// Wire format (ARCHITECTURE.md §7): a header per tensor (dtype enum, shape, total bytes), then the raw
// little-endian C-order bytes in chunks of at most 1 MiB. Errors reject with an Error carrying the
// gRPC `code` (e.g. 3 = INVALID_ARGUMENT), `codeName` and `details`.

const fs = require('fs');
const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = process.env.LEPTON_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const CHUNK_BYTES = 1 << 20;

// dtype name -> [DataType enum name, TypedArray constructor]. float16 travels as raw bits (Uint16Array).
const DTYPES = {
  float32: ['DATA_TYPE_FLOAT32', Float32Array],
  float64: ['DATA_TYPE_FLOAT64', Float64Array],
  int32: ['DATA_TYPE_INT32', Int32Array],
  int64: ['DATA_TYPE_INT64', BigInt64Array],
  int8: ['DATA_TYPE_INT8', Int8Array],
  uint8: ['DATA_TYPE_UINT8', Uint8Array],
  int16: ['DATA_TYPE_INT16', Int16Array],
  uint16: ['DATA_TYPE_UINT16', Uint16Array],
  uint32: ['DATA_TYPE_UINT32', Uint32Array],
  uint64: ['DATA_TYPE_UINT64', BigUint64Array],
  float16: ['DATA_TYPE_FLOAT16', Uint16Array],
  bool: ['DATA_TYPE_BOOL', Uint8Array],
};
const BY_ENUM = Object.fromEntries(Object.entries(DTYPES).map(([name, [e, ctor]]) => [e, [name, ctor]]));
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

if (os.endianness() !== 'LE') {
  throw new Error('lepton.js sends typed arrays as they are in memory; this host is big-endian');
}

let v1;
function protos() {
  if (!v1) {
    const definition = protoLoader.loadSync('lepton/v1/coordinator_service.proto', {
      includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
    });
    v1 = grpc.loadPackageDefinition(definition).lepton.v1;
  }
  return v1;
}

function dtypeOf(data) {
  for (const [name, [, ctor]] of Object.entries(DTYPES)) {
    if (data instanceof ctor && !['float16', 'bool'].includes(name)) return name;
  }
  throw new TypeError(`input data must be a typed array (Float32Array, Float64Array, Int32Array, ...); got ${data}`);
}

// { name: TypedArray | { data: TypedArray, shape: [..], dtype?: 'float16' | 'bool' } } -> normalized list
function normalizeInputs(inputs) {
  return Object.entries(inputs).map(([name, value]) => {
    const spec = ArrayBuffer.isView(value) ? { data: value, shape: [value.length] } : value;
    const dtype = spec.dtype || dtypeOf(spec.data);
    if (!DTYPES[dtype]) throw new TypeError(`input '${name}': unknown dtype '${dtype}'`);
    const shape = spec.shape || [spec.data.length];
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== spec.data.length) {
      throw new RangeError(`input '${name}': shape [${shape}] holds ${count} elements, data has ${spec.data.length}`);
    }
    const bytes = Buffer.from(spec.data.buffer, spec.data.byteOffset, spec.data.byteLength);
    return { name, dtype, shape, bytes };
  });
}

// JS values -> lepton.v1.Param. Integers become int_value, other numbers float_value; arrays become
// int_list when every value is an integer, else float_list. Use lepton.float(3) / lepton.floatList([0, 1])
// to force floats, or pass a Param object ({ float_list: { values: [...] } }) as it is.
function float(value) { return { float_value: value }; }
function floatList(values) { return { float_list: { values } }; }
function encodeParams(params) {
  const out = {};
  for (const [key, value] of Object.entries(params || {})) {
    if (typeof value === 'boolean') out[key] = { bool_value: value };
    else if (typeof value === 'string') out[key] = { string_value: value };
    else if (typeof value === 'number') out[key] = Number.isInteger(value) ? { int_value: value } : float(value);
    else if (Array.isArray(value)) {
      out[key] = value.every(Number.isInteger) ? { int_list: { values: value } } : floatList(value);
    } else if (value && typeof value === 'object') out[key] = value;
    else throw new TypeError(`parameter '${key}': expected a number, string, bool or list; got ${value}`);
  }
  return out;
}

function rpcError(err) {
  const e = new Error(`${CODE_NAMES[err.code] || err.code}: ${err.details}`);
  Object.assign(e, { code: err.code, codeName: CODE_NAMES[err.code], details: err.details });
  return e;
}

function readFile(path) { return path ? fs.readFileSync(path) : null; }

// Channel credentials and call metadata from the security options (see the top of this file).
function security(options = {}) {
  const env = process.env;
  const tokenFile = options.tokenFile || env.LEPTON_TOKEN_FILE;
  const token = options.token ?? (env.LEPTON_TOKEN || (tokenFile ? fs.readFileSync(tokenFile, 'utf8').trim() : ''));
  const ca = options.tlsCa || env.LEPTON_TLS_CA;
  const cert = options.tlsCert || env.LEPTON_TLS_CERT;
  const key = options.tlsKey || env.LEPTON_TLS_KEY;
  const tls = options.tls ?? Boolean(ca || cert || (env.LEPTON_TLS && env.LEPTON_TLS !== '0'));
  const credentials = tls ? grpc.credentials.createSsl(readFile(ca), readFile(key), readFile(cert))
    : grpc.credentials.createInsecure();
  const metadata = new grpc.Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return { credentials, metadata };
}

class Client {
  constructor(address = '127.0.0.1:50051', { timeoutMs = 0, ...options } = {}) {
    this.address = address;
    this.timeoutMs = timeoutMs;
    const { credentials, metadata } = security(options);
    this.metadata = metadata;
    this.stub = new (protos().CoordinatorService)(address, credentials);
  }

  close() { this.stub.close(); }

  _options(timeoutMs) {
    const ms = timeoutMs ?? this.timeoutMs;
    return ms ? { deadline: new Date(Date.now() + ms) } : {};
  }

  _unary(method, request, timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata.clone(), this._options(timeoutMs), (err, response) => (err ? reject(rpcError(err)) : resolve(response)));
    });
  }

  clusterStatus() { return this._unary('GetClusterStatus', {}); }

  // Ops that at least one device in the cluster advertises.
  async ops() {
    const status = await this.clusterStatus();
    return new Set(status.agents.flatMap((a) => a.devices.flatMap((d) => d.ops)));
  }

  // Run `op` on the named inputs; resolves to the named result tensors { dtype, shape, data }.
  // options: { partitions, label, timeoutMs, onStatus(JobStatus) }.
  submit(op, inputs, params = {}, options = {}) {
    const tensors = normalizeInputs(inputs);
    const spec = {
      op,
      label: options.label || '',
      params: encodeParams(params),
      inputs: tensors.map((t) => ({
        name: t.name,
        tensor: { name: t.name, dtype: DTYPES[t.dtype][0], shape: t.shape, total_bytes: t.bytes.length },
      })),
      partitioning: { scheme: 'PARTITION_SCHEME_ROW_BLOCKS', count: options.partitions || 0 },
    };
    return new Promise((resolve, reject) => {
      const call = this.stub.SubmitJob(this.metadata.clone(), this._options(options.timeoutMs));
      const headers = [];
      const buffers = [];
      const received = [];
      let settled = false;
      let ended = false;
      let ok = false;
      const fail = (err) => {
        if (!settled) { settled = true; reject(err); }
      };
      const finish = () => {
        if (settled || !ended || !ok) return;
        settled = true;
        const out = {};
        for (let i = 0; i < headers.length; i += 1) {
          const h = headers[i];
          if (received[i] !== h.total_bytes) {
            reject(new Error(`result '${h.name}': stream ended after ${received[i]} of ${h.total_bytes} bytes`));
            return;
          }
          const [dtype, ctor] = BY_ENUM[h.dtype] || [];
          if (!ctor) { reject(new Error(`result '${h.name}': unsupported dtype ${h.dtype}`)); return; }
          const b = buffers[i];  // a fresh Buffer per tensor: aligned for the typed array view
          out[h.name] = { dtype, shape: h.shape.map(Number), data: new ctor(b.buffer, b.byteOffset, b.length / ctor.BYTES_PER_ELEMENT) };
        }
        resolve(out);
      };
      call.on('data', (response) => {
        const event = response.event;
        if (event === 'result_header') {
          const h = response.result_header;
          headers.push(h);
          // ArrayBuffer-backed (not pooled) so typed arrays over it are aligned.
          buffers.push(Buffer.from(new ArrayBuffer(h.total_bytes)));
          received.push(0);
        } else if (event === 'result_chunk') {
          const c = response.result_chunk;
          const i = c.tensor_index;
          if (i >= headers.length || c.offset !== received[i] || c.offset + c.data.length > headers[i].total_bytes) {
            call.cancel();
            fail(new Error(`bad result chunk: tensor ${i}, offset ${c.offset}, ${c.data.length} bytes`));
            return;
          }
          c.data.copy(buffers[i], c.offset);
          received[i] += c.data.length;
        } else if (options.onStatus) {
          options.onStatus(response[event]);
        }
      });
      call.on('error', (err) => fail(rpcError(err)));
      call.on('status', (status) => { ok = status.code === grpc.status.OK; finish(); });
      call.on('end', () => { ended = true; finish(); });

      // Send the spec, then every input's bytes in order, honouring back-pressure.
      (async () => {
        const write = (message) => new Promise((done) => {
          if (call.write(message)) done(); else call.once('drain', done);
        });
        await write({ spec });
        for (let index = 0; index < tensors.length; index += 1) {
          const bytes = tensors[index].bytes;
          for (let offset = 0; offset < bytes.length && !settled; offset += CHUNK_BYTES) {
            await write({ chunk: { tensor_index: index, offset, data: bytes.subarray(offset, offset + CHUNK_BYTES) } });
          }
        }
        call.end();
      })().catch((err) => { call.cancel(); fail(err); });
    });
  }
}

function connect(address, options) { return new Client(address, options); }

module.exports = { connect, Client, security, float, floatList, encodeParams, DTYPES, CHUNK_BYTES };

'use strict';
// Calls a running Lepton cluster from Node.js and prints the results as one JSON object.
//
//   npm ci && node example.js 127.0.0.1:50051 [--tls-ca CA.pem] [--tls-cert C.pem --tls-key C.key]
//                                            [--token TOKEN | --token-file FILE]
// (or LEPTON_TLS_CA, LEPTON_TLS_CERT, LEPTON_TLS_KEY, LEPTON_TOKEN, LEPTON_TOKEN_FILE)
//
// x[i] = (i % 1000) / 7 as float32 for i < 1,000,000 (4 MB, streamed in 1 MiB chunks); runs sum,
// mean and a histogram on it, then matmul of two small matrices if some device advertises it.
const lepton = require('./lepton');

const N = 1000000;

function plain(tensor) {
  const data = Array.from(tensor.data, (v) => (typeof v === 'bigint' ? Number(v) : v));
  return { dtype: tensor.dtype, shape: tensor.shape, data };
}

function plainAll(results) {
  return Object.fromEntries(Object.entries(results).map(([name, t]) => [name, plain(t)]));
}

// ADDRESS and --flag VALUE pairs -> { address, options }.
function parseArgs(argv) {
  const flags = { '--token': 'token', '--token-file': 'tokenFile', '--tls-ca': 'tlsCa', '--tls-cert': 'tlsCert',
    '--tls-key': 'tlsKey' };
  const options = {};
  let address;
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--tls') options.tls = true;
    else if (flags[argv[i]]) {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      options[flags[argv[i]]] = argv[i += 1];
    } else if (argv[i].startsWith('--')) throw new Error(`unknown option ${argv[i]}`);
    else address = argv[i];
  }
  return { address: address || process.env.LEPTON_ADDRESS || '127.0.0.1:50051', options };
}

async function main() {
  const { address, options } = parseArgs(process.argv.slice(2));
  const client = lepton.connect(address, { timeoutMs: 60000, ...options });
  try {
    const x = new Float32Array(N);
    for (let i = 0; i < N; i += 1) x[i] = (i % 1000) / 7;

    const out = { client: 'node', address, n: N };
    out.sum = plainAll(await client.submit('sum', { x: { data: x, shape: [N] } }));
    out.mean = plainAll(await client.submit('mean', { x }));
    out.histogram = plainAll(await client.submit('histogram', { x }, { bins: 10, range: [0, 150] }));

    // Errors come back as gRPC statuses with a message saying what to fix.
    try {
      await client.submit('histogram', { x: new Float32Array([1, 2, 3]) }, { bins: 10 });
      out.bad_request = { code: 0 };
    } catch (err) {
      out.bad_request = { code: err.code, code_name: err.codeName, details: err.details };
    }

    // Devices advertise matmul by plan ("matmul.rows", "matmul.inner"); clients submit "matmul".
    if ([...(await client.ops())].some((op) => op === 'matmul' || op.startsWith('matmul.'))) {
      const a = { data: new Float32Array([1, 2, 3, 4, 5, 6]), shape: [2, 3] };
      const b = { data: new Float32Array([7, 8, 9, 10, 11, 12]), shape: [3, 2] };
      out.matmul = plainAll(await client.submit('matmul', { a, b }));
    } else {
      out.matmul = { skipped: 'no device in the cluster advertises op "matmul" (or a matmul.* plan)' };
      process.stderr.write('matmul skipped: no device advertises it\n');
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`error: ${err.message}\n`);
  process.exit(1);
});

#!/usr/bin/env node
// Interop check of an MQTT broker with the Node.js `mqtt` package (pinned in
// package.json / package-lock.json). For one protocol version it runs pub/sub at
// QoS 0/1/2, a retained message, a will on an abrupt socket close and a
// persistent-session resume; prints "ok <scenario>" per scenario and exits non-zero
// on the first failure. Every wait is bounded.
//
// usage: node mqtt_check.js --host 127.0.0.1 --port 1883 --version 311|5 --prefix UNIQUE
//                           [--ids s=ID,p=ID,rp=ID,rs=ID,ww=ID,wd=ID,ps=ID,pp=ID]
//                           [--ws-path /mqtt]
//
// --ws-path runs every client over WebSocket (`ws://host:port/path`).
//
// --ids names the client id of each role (the test harness picks ids that land on chosen
// broker shards); a role not named gets PREFIX-ROLE.
'use strict';

const mqtt = require('mqtt');

const TIMEOUT_MS = 10000;
// How long to keep listening after the expected messages arrived, to catch duplicates.
const SETTLE_MS = 700;

function parseArgs(argv) {
  const out = { host: '127.0.0.1' };
  for (let i = 2; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out.port || !out.version || !out.prefix) throw new Error('need --port --version --prefix');
  const ids = {};
  for (const item of (out.ids || '').split(',').filter((x) => x)) {
    const eq = item.indexOf('=');
    if (eq <= 0 || eq === item.length - 1) throw new Error(`bad --ids item ${item} (want role=client_id)`);
    ids[item.slice(0, eq)] = item.slice(eq + 1);
  }
  out.ids = ids;
  return out;
}

function cid(args, role) {
  return args.ids[role] || `${args.prefix}-${role}`;
}

function withTimeout(promise, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out waiting for ' + what)), TIMEOUT_MS);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

class Peer {
  constructor(args, clientId, opts = {}) {
    this.messages = [];
    this.waiters = [];
    const v5 = args.version === '5';
    const o = {
      clientId,
      protocolVersion: v5 ? 5 : 4,
      clean: opts.clean !== false,
      reconnectPeriod: 0,
      connectTimeout: TIMEOUT_MS,
      keepalive: 60,
    };
    if (v5 && opts.expiry !== undefined) o.properties = { sessionExpiryInterval: opts.expiry };
    if (opts.will) o.will = opts.will;
    const url = args['ws-path']
      ? `ws://${args.host}:${args.port}${args['ws-path']}`
      : `mqtt://${args.host}:${args.port}`;
    this.client = mqtt.connect(url, o);
    this.client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain });
      this.waiters = this.waiters.filter((w) => !w());
    });
    this.connected = withTimeout(
      new Promise((resolve, reject) => {
        this.client.once('connect', (connack) => resolve(connack));
        this.client.once('error', reject);
      }),
      'CONNACK for ' + clientId,
    );
  }

  async subscribe(topic, qos) {
    const granted = await withTimeout(
      new Promise((resolve, reject) =>
        this.client.subscribe(topic, { qos }, (err, g) => (err ? reject(err) : resolve(g))),
      ),
      'SUBACK for ' + topic,
    );
    if (granted.length !== 1 || granted[0].qos !== qos) {
      throw new Error(`SUBACK for ${topic}: ${JSON.stringify(granted)}`);
    }
  }

  publish(topic, payload, qos, retain = false) {
    return withTimeout(
      new Promise((resolve, reject) =>
        this.client.publish(topic, payload, { qos, retain }, (err) => (err ? reject(err) : resolve())),
      ),
      `publish to ${topic} at QoS ${qos}`,
    );
  }

  waitMessages(n, what) {
    return withTimeout(
      new Promise((resolve) => {
        const check = () => {
          if (this.messages.length >= n) {
            resolve(this.messages.slice());
            return true;
          }
          return false;
        };
        if (!check()) this.waiters.push(check);
      }),
      what + ` (have ${JSON.stringify(this.messages)})`,
    );
  }

  close() {
    return withTimeout(new Promise((resolve) => this.client.end(false, {}, resolve)), 'close');
  }
}

function expectEq(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Error(`${what}: got ${g} want ${w}`);
}

async function scenarioPubsub(args) {
  const t = `${args.prefix}/pubsub`;
  const sub = new Peer(args, cid(args, 's'));
  const pub = new Peer(args, cid(args, 'p'));
  await sub.connected;
  await pub.connected;
  await sub.subscribe(t + '/#', 2);
  for (const q of [0, 1, 2]) await pub.publish(`${t}/${q}`, `m${q}`, q);
  await sub.waitMessages(3, '3 messages');
  // Anything beyond the three (a duplicate, a stray) must show up now.
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  const got = sub.messages.slice().sort((a, b) => a.topic.localeCompare(b.topic));
  expectEq(got, [0, 1, 2].map((q) => ({ topic: `${t}/${q}`, payload: `m${q}`, qos: q, retain: false })), 'pubsub');
  await sub.close();
  await pub.close();
}

async function scenarioRetained(args) {
  const t = `${args.prefix}/retained`;
  const pub = new Peer(args, cid(args, 'rp'));
  await pub.connected;
  await pub.publish(t, 'kept', 1, true);
  const sub = new Peer(args, cid(args, 'rs'));
  await sub.connected;
  await sub.subscribe(t, 1);
  const got = await sub.waitMessages(1, 'retained message');
  expectEq(got[0], { topic: t, payload: 'kept', qos: 1, retain: true }, 'retained');
  await pub.publish(t, '', 1, true);
  await sub.close();
  await pub.close();
}

async function scenarioWill(args) {
  const wt = `${args.prefix}/will`;
  const watcher = new Peer(args, cid(args, 'ww'));
  await watcher.connected;
  await watcher.subscribe(wt, 1);
  const dying = new Peer(args, cid(args, 'wd'), { will: { topic: wt, payload: 'gone', qos: 1, retain: false } });
  await dying.connected;
  dying.client.stream.destroy(); // no DISCONNECT: the will must fire
  const got = await watcher.waitMessages(1, 'will message');
  expectEq([got[0].topic, got[0].payload, got[0].qos], [wt, 'gone', 1], 'will');
  dying.client.end(true);
  await watcher.close();
}

async function scenarioSession(args) {
  const t = `${args.prefix}/session`;
  const sid = cid(args, 'ps');
  let sub = new Peer(args, sid, { clean: false, expiry: 60 });
  await sub.connected;
  await sub.subscribe(t, 1);
  await sub.close();
  const pub = new Peer(args, cid(args, 'pp'));
  await pub.connected;
  await pub.publish(t, 'offline', 1);
  sub = new Peer(args, sid, { clean: false, expiry: 60 });
  const connack = await sub.connected;
  if (!connack.sessionPresent) throw new Error('session: session present was 0 on resume');
  const got = await sub.waitMessages(1, 'message queued while offline');
  expectEq([got[0].topic, got[0].payload, got[0].qos], [t, 'offline', 1], 'session');
  await sub.close();
  await pub.close();
}

async function main() {
  const args = parseArgs(process.argv);
  console.log(`mqtt.js ${require('mqtt/package.json').version}, MQTT ${args.version}`);
  const scenarios = [
    ['pubsub', scenarioPubsub],
    ['retained', scenarioRetained],
    ['will', scenarioWill],
    ['session', scenarioSession],
  ];
  for (const [name, fn] of scenarios) {
    try {
      await fn(args);
    } catch (e) {
      console.log(`FAIL ${name}: ${e && e.message ? e.message : e}`);
      process.exit(1);
    }
    console.log(`ok ${name}`);
  }
  process.exit(0);
}

main();

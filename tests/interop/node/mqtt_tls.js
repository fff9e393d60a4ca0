// mqtt.js over TLS (mqtts:// with the test CA): a subscriber and a publisher;
// prints `ok mqttjs-tls <payload>` when the message arrives.
// Run by tests/tls.rs from this directory as: node mqtt_tls.js HOST PORT CAFILE TOPIC
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [host, port, cafile, topic] = process.argv.slice(2);
const url = `mqtts://${host}:${port}`;
const opts = { ca: fs.readFileSync(cafile), rejectUnauthorized: true, reconnectPeriod: 0 };
const fail = (why) => {
  console.error(why);
  process.exit(1);
};
setTimeout(() => fail('timeout'), 20000).unref();

const sub = mqtt.connect(url, { ...opts, clientId: `${topic.replace(/\//g, '-')}-sub` });
sub.on('error', (e) => fail(`subscriber: ${e.message}`));
sub.on('message', (_t, payload) => {
  console.log(`ok mqttjs-tls ${payload.toString()}`);
  sub.end(true, () => process.exit(0));
});
sub.on('connect', () => {
  sub.subscribe(topic, { qos: 1 }, (err) => {
    if (err) fail(`subscribe: ${err.message}`);
    const pub = mqtt.connect(url, { ...opts, clientId: `${topic.replace(/\//g, '-')}-pub` });
    pub.on('error', (e) => fail(`publisher: ${e.message}`));
    pub.on('connect', () => pub.publish(topic, 'from-mqttjs', { qos: 1 }, () => pub.end()));
  });
});

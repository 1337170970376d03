// A tiny AMQP 0-9-1 client: just enough to open a connection and a channel, so the
// connections and channels pages have something live to show.

import net from 'node:net';

const shortstr = (s) => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([b.length]), b]); };
const longstr = (s) => { const b = Buffer.from(s); const l = Buffer.alloc(4); l.writeUInt32BE(b.length); return Buffer.concat([l, b]); };
const u16 = (n) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };

function table(entries) {
  const body = Buffer.concat(Object.entries(entries).map(([k, v]) => Buffer.concat([shortstr(k), Buffer.from('S'), longstr(v)])));
  return Buffer.concat([u32(body.length), body]);
}

function method(channel, cls, id, args) {
  const payload = Buffer.concat([u16(cls), u16(id), args]);
  return Buffer.concat([Buffer.from([1]), u16(channel), u32(payload.length), payload, Buffer.from([0xce])]);
}

/** Opens a connection (PLAIN) and channel 1; resolves to { socket, close() }. */
export function connect({ host = '127.0.0.1', port, user = 'guest', password = 'guest', vhost = '/', product = 'ui-tests' }) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    socket.on('error', reject);
    socket.on('connect', () => socket.write(Buffer.from('AMQP\x00\x00\x09\x01', 'binary')));
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 7) {
        const size = buf.readUInt32BE(3);
        if (buf.length < size + 8) break;
        const type = buf[0];
        const payload = buf.subarray(7, 7 + size);
        buf = buf.subarray(size + 8);
        if (type !== 1) continue;
        const cls = payload.readUInt16BE(0);
        const id = payload.readUInt16BE(2);
        if (cls === 10 && id === 10) {
          const response = `\x00${user}\x00${password}`;
          socket.write(method(0, 10, 11, Buffer.concat([table({ product, version: '1' }), shortstr('PLAIN'), longstr(response), shortstr('en_US')])));
        } else if (cls === 10 && id === 30) {
          const channelMax = payload.readUInt16BE(4);
          const frameMax = payload.readUInt32BE(6);
          socket.write(method(0, 10, 31, Buffer.concat([u16(channelMax), u32(frameMax), u16(0)])));
          socket.write(method(0, 10, 40, Buffer.concat([shortstr(vhost), shortstr(''), Buffer.from([0])])));
        } else if (cls === 10 && id === 41) {
          socket.write(method(1, 20, 10, shortstr('')));
        } else if (cls === 20 && id === 11) {
          resolve({ socket, close: () => socket.destroy() });
        } else if (cls === 10 && id === 50) {
          reject(new Error(`connection closed by broker: ${payload.subarray(7, 7 + payload[6]).toString()}`));
          socket.destroy();
        }
      }
    });
    socket.on('close', () => reject(new Error('socket closed before the channel opened')));
  });
}

#!/usr/bin/env python3
"""Records real client traffic as fuzzing seeds.

    fuzz/capture.py LISTEN_PORT BROKER_PORT OUT_DIR

A TCP proxy: clients connect to LISTEN_PORT, their bytes go to the broker on BROKER_PORT and
back. What each client sends is split into seeds when its connection ends:
  OUT_DIR/frame_decode/<n>    the client's frames after the protocol header (selector byte 0,
                              so frame_max is 131072), cut to at most 4 KiB;
  OUT_DIR/method_decode/<n>   the payload of each distinct method frame;
  OUT_DIR/field_table/<n>     the client-properties table of connection.start-ok, and every
                              distinct arguments / headers table found in method payloads is
                              left to the fuzzer to reach.
Seeds are named by the SHA-1 of their content, so repeated runs add nothing twice. Stop with
SIGTERM or Ctrl-C. Standard library only.
"""

import hashlib
import os
import socket
import struct
import sys
import threading


def save(out_dir, target, data):
    d = os.path.join(out_dir, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def split(out_dir, stream):
    if not stream.startswith(b"AMQP"):
        return
    frames = stream[8:]
    save(out_dir, "frame_decode", b"\x00" + frames[:4096])
    at = 0
    while at + 7 <= len(frames):
        kind, _channel, size = struct.unpack(">BHI", frames[at:at + 7])
        payload = frames[at + 7:at + 7 + size]
        if len(payload) < size:
            break
        if kind == 1:
            save(out_dir, "method_decode", payload)
            class_id, method_id = struct.unpack(">HH", payload[:4])
            if (class_id, method_id) == (10, 11):  # connection.start-ok: client-properties first
                (table_len,) = struct.unpack(">I", payload[4:8])
                save(out_dir, "field_table", payload[4:8 + table_len])
        at += 7 + size + 1


def pipe(src, dst, record):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if record is not None:
                record.append(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(client, broker_port, out_dir):
    try:
        upstream = socket.create_connection(("127.0.0.1", broker_port))
    except OSError:
        client.close()
        return
    record = []
    back = threading.Thread(target=pipe, args=(upstream, client, None), daemon=True)
    back.start()
    pipe(client, upstream, record)
    back.join()
    client.close()
    upstream.close()
    split(out_dir, b"".join(record))


def main():
    listen_port, broker_port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(128)
    print("capturing on %d for %d into %s" % (listen_port, broker_port, out_dir), flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=handle, args=(client, broker_port, out_dir), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

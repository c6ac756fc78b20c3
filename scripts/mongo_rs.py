#!/usr/bin/env python3
"""Minimal MongoDB client (python stdlib only) used by scripts/stack.sh.

There is no mongosh on the dev/CI machines and pymongo would be one more
download, so this speaks the wire protocol directly: one OP_MSG request per
command, a small BSON encoder/decoder, no auth, no TLS. It is enough to
initiate a single-node replica set, wait for PRIMARY and run ad-hoc commands.

  mongo_rs.py ping     --port P                  # exit 0 when mongod answers `hello`
  mongo_rs.py initiate --port P [--rs rs0]       # replSetInitiate if needed, wait for PRIMARY
  mongo_rs.py status   --port P                  # print PRIMARY / SECONDARY / ... / NOT_INITIALIZED
  mongo_rs.py cmd      --port P [--db admin] '{"ping": 1}'   # run a command, print the reply as JSON
"""

import argparse
import base64
import datetime
import json
import os
import socket
import struct
import sys
import time

OP_MSG = 2013

# ---------------------------------------------------------------- BSON types
# Values that have no JSON/python equivalent decode to these small wrappers so that a
# document read from the server (e.g. a replica set config) can be sent back unchanged.


class ObjectId(bytes):
    def json(self):
        return {"$oid": self.hex()}


class Int64(int):
    def json(self):
        return int(self)


class _Value:
    """A plain (non-int, non-tuple) holder, so json.dumps() calls to_json() for it."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(self) is type(other) and self.v == other.v

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.v)


class DateTime(_Value):  # v = milliseconds since the epoch
    def json(self):
        try:
            return {"$date": datetime.datetime.fromtimestamp(self.v / 1000, datetime.timezone.utc).isoformat()}
        except (OverflowError, OSError, ValueError):
            return {"$date": self.v}


class Timestamp(_Value):  # v = (t, i)
    def json(self):
        return {"$timestamp": {"t": self.v[0], "i": self.v[1]}}


class Binary(_Value):  # v = (subtype, data)
    def json(self):
        return {"$binary": base64.b64encode(self.v[1]).decode(), "$type": "%02x" % self.v[0]}


class Decimal128(bytes):
    def json(self):
        return {"$numberDecimalBytes": self.hex()}


def to_json(v):
    if hasattr(v, "json"):
        return v.json()
    raise TypeError("not JSON serialisable: %r" % (v,))


# ---------------------------------------------------------------- BSON encoding


def _cstring(s):
    b = s.encode("utf-8")
    if b"\x00" in b:
        raise ValueError("BSON key contains NUL: %r" % s)
    return b + b"\x00"


def _element(key, value):
    k = _cstring(key)
    if isinstance(value, bool):  # before int: bool is an int subclass
        return b"\x08" + k + (b"\x01" if value else b"\x00")
    if isinstance(value, ObjectId):
        return b"\x07" + k + bytes(value)
    if isinstance(value, DateTime):
        return b"\x09" + k + struct.pack("<q", value.v)
    if isinstance(value, Int64):
        return b"\x12" + k + struct.pack("<q", value)
    if isinstance(value, Timestamp):
        return b"\x11" + k + struct.pack("<II", value.v[1], value.v[0])
    if isinstance(value, Binary):
        return b"\x05" + k + struct.pack("<iB", len(value.v[1]), value.v[0]) + value.v[1]
    if isinstance(value, Decimal128):
        return b"\x13" + k + bytes(value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"\x10" + k + struct.pack("<i", value)
        return b"\x12" + k + struct.pack("<q", value)
    if isinstance(value, float):
        return b"\x01" + k + struct.pack("<d", value)
    if isinstance(value, str):
        s = value.encode("utf-8")
        return b"\x02" + k + struct.pack("<i", len(s) + 1) + s + b"\x00"
    if value is None:
        return b"\x0a" + k
    if isinstance(value, dict):
        return b"\x03" + k + encode(value)
    if isinstance(value, (list, tuple)):
        return b"\x04" + k + encode({str(i): v for i, v in enumerate(value)})
    raise TypeError("cannot BSON-encode %r" % (value,))


def encode(doc):
    body = b"".join(_element(k, v) for k, v in doc.items())
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


# ---------------------------------------------------------------- BSON decoding


def _read_cstring(buf, pos):
    end = buf.index(b"\x00", pos)
    return buf[pos:end].decode("utf-8", "replace"), end + 1


def _read_string(buf, pos):
    (n,) = struct.unpack_from("<i", buf, pos)
    return buf[pos + 4 : pos + 4 + n - 1].decode("utf-8", "replace"), pos + 4 + n


def decode(buf, pos=0, as_list=False):
    """Decode the document at buf[pos:]; returns a dict (or a list for arrays)."""
    (size,) = struct.unpack_from("<i", buf, pos)
    end = pos + size - 1
    pos += 4
    out = {}
    while pos < end:
        t = buf[pos]
        key, pos = _read_cstring(buf, pos + 1)
        if t == 0x01:
            (v,) = struct.unpack_from("<d", buf, pos)
            pos += 8
        elif t in (0x02, 0x0D, 0x0E):  # string, JS code, symbol
            v, pos = _read_string(buf, pos)
        elif t in (0x03, 0x04):
            (n,) = struct.unpack_from("<i", buf, pos)
            v = decode(buf, pos, as_list=(t == 0x04))
            pos += n
        elif t == 0x05:
            (n,) = struct.unpack_from("<i", buf, pos)
            sub = buf[pos + 4]
            data = buf[pos + 5 : pos + 5 + n]
            v = Binary((sub, bytes(data)))
            pos += 5 + n
        elif t in (0x06, 0x0A):  # undefined, null
            v = None
        elif t == 0x07:
            v = ObjectId(buf[pos : pos + 12])
            pos += 12
        elif t == 0x08:
            v = buf[pos] != 0
            pos += 1
        elif t == 0x09:
            v = DateTime(struct.unpack_from("<q", buf, pos)[0])
            pos += 8
        elif t == 0x0B:
            pattern, pos = _read_cstring(buf, pos)
            options, pos = _read_cstring(buf, pos)
            v = {"$regex": pattern, "$options": options}
        elif t == 0x0C:
            ns, pos = _read_string(buf, pos)
            v = {"$dbPointer": {"$ref": ns, "$id": buf[pos : pos + 12].hex()}}
            pos += 12
        elif t == 0x0F:
            (n,) = struct.unpack_from("<i", buf, pos)
            code, p2 = _read_string(buf, pos + 4)
            v = {"$code": code, "$scope": decode(buf, p2)}
            pos += n
        elif t == 0x10:
            (v,) = struct.unpack_from("<i", buf, pos)
            pos += 4
        elif t == 0x11:
            inc, ts = struct.unpack_from("<II", buf, pos)
            v = Timestamp((ts, inc))
            pos += 8
        elif t == 0x12:
            v = Int64(struct.unpack_from("<q", buf, pos)[0])
            pos += 8
        elif t == 0x13:
            v = Decimal128(buf[pos : pos + 16])
            pos += 16
        elif t == 0xFF:
            v = {"$minKey": 1}
        elif t == 0x7F:
            v = {"$maxKey": 1}
        else:
            raise ValueError("unknown BSON type 0x%02x at key %r" % (t, key))
        out[key] = v
    return list(out.values()) if as_list else out


# ---------------------------------------------------------------- wire protocol


class MongoError(Exception):
    def __init__(self, reply):
        self.reply = reply
        self.code = reply.get("code")
        self.code_name = reply.get("codeName")
        super().__init__("%s (code %s %s)" % (reply.get("errmsg"), self.code, self.code_name))


_request_id = 0


def _recv_exact(sock, n):
    chunks = []
    while n:
        c = sock.recv(n)
        if not c:
            raise ConnectionError("connection closed by mongod")
        chunks.append(c)
        n -= len(c)
    return b"".join(chunks)


def command(host, port, cmd, db="admin", timeout=10.0, check=True):
    """Run one command (a dict; first key is the command name) and return the reply dict."""
    global _request_id
    _request_id += 1
    body = dict(cmd)
    body["$db"] = db
    payload = struct.pack("<I", 0) + b"\x00" + encode(body)
    header = struct.pack("<iiii", 16 + len(payload), _request_id, 0, OP_MSG)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(header + payload)
        (length,) = struct.unpack("<i", _recv_exact(s, 4))
        rest = _recv_exact(s, length - 4)
    _req, _resp_to, opcode = struct.unpack_from("<iii", rest, 0)
    if opcode != OP_MSG:
        raise ValueError("unexpected reply opcode %d" % opcode)
    (flags,) = struct.unpack_from("<I", rest, 12)
    end = len(rest) - (4 if flags & 1 else 0)  # checksumPresent
    pos = 16
    reply = None
    while pos < end:
        kind = rest[pos]
        pos += 1
        if kind == 0:
            reply = decode(rest, pos)
            pos += struct.unpack_from("<i", rest, pos)[0]
        else:  # kind 1 document sequence: skip
            pos += struct.unpack_from("<i", rest, pos)[0]
    if reply is None:
        raise ValueError("reply without a body section")
    if check and reply.get("ok") != 1 and reply.get("ok") != 1.0:
        raise MongoError(reply)
    return reply


# ---------------------------------------------------------------- replica set helpers

STATES = {0: "STARTUP", 1: "PRIMARY", 2: "SECONDARY", 3: "RECOVERING", 5: "STARTUP2",
          6: "UNKNOWN", 7: "ARBITER", 8: "DOWN", 9: "ROLLBACK", 10: "REMOVED"}


def rs_state(host, port, timeout=5.0):
    """PRIMARY / SECONDARY / ... or NOT_INITIALIZED / INVALID_CONFIG."""
    try:
        st = command(host, port, {"replSetGetStatus": 1}, timeout=timeout)
    except MongoError as e:
        if e.code == 94:  # NotYetInitialized
            return "NOT_INITIALIZED"
        if e.code == 93:  # InvalidReplicaSetConfig: we are not a member of our own config
            return "INVALID_CONFIG"
        raise
    return STATES.get(st.get("myState"), "STATE_%s" % st.get("myState"))


def wait_reachable(host, port, deadline):
    last = None
    while time.monotonic() < deadline:
        try:
            return command(host, port, {"hello": 1}, timeout=2.0)
        except (OSError, ConnectionError, ValueError) as e:
            last = e
            time.sleep(0.2)
    raise TimeoutError("mongod at %s:%d not reachable: %s" % (host, port, last))


def initiate(host, port, rs, member_host, deadline):
    wait_reachable(host, port, deadline)
    state = rs_state(host, port)
    if state == "NOT_INITIALIZED":
        cfg = {"_id": rs, "members": [{"_id": 0, "host": member_host}]}
        try:
            command(host, port, {"replSetInitiate": cfg}, timeout=30.0)
            print("mongo_rs: replSetInitiate %s with member %s" % (rs, member_host), file=sys.stderr)
        except MongoError as e:
            if e.code != 23:  # AlreadyInitialized (lost a race with ourselves): fine
                raise
    elif state in ("INVALID_CONFIG", "REMOVED"):
        # The data dir was initiated with another host:port (e.g. --free-ports picked a new
        # port for an existing dir): force a one-member config pointing at us.
        cfg = command(host, port, {"replSetGetConfig": 1})["config"]
        cfg["members"] = [{"_id": cfg["members"][0]["_id"] if cfg.get("members") else 0, "host": member_host}]
        cfg["version"] = type(cfg.get("version", 1))(cfg.get("version", 1) + 1)
        command(host, port, {"replSetReconfig": cfg, "force": True}, timeout=30.0)
        print("mongo_rs: forced reconfig of %s to member %s" % (rs, member_host), file=sys.stderr)
    while True:
        try:
            hello = command(host, port, {"hello": 1}, timeout=2.0)
            if hello.get("isWritablePrimary") and hello.get("setName") == rs:
                return hello
            if hello.get("setName") not in (None, rs):
                raise SystemExit("mongo_rs: mongod belongs to replica set %r, not %r" % (hello.get("setName"), rs))
        except (OSError, ConnectionError) as e:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError("mongod at %s:%d did not become PRIMARY (state %s)" % (host, port, rs_state(host, port)))
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["ping", "initiate", "status", "cmd"])
    ap.add_argument("json", nargs="?", help="command document for `cmd`")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MONGO_PORT", "27017")))
    ap.add_argument("--rs", default="rs0", help="replica set name (default rs0)")
    ap.add_argument("--member-host", help="host:port recorded in the replica set config (default HOST:PORT)")
    ap.add_argument("--db", default="admin")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    a = ap.parse_intermixed_args()
    deadline = time.monotonic() + a.timeout
    try:
        if a.action == "ping":
            wait_reachable(a.host, a.port, deadline)
        elif a.action == "status":
            print(rs_state(a.host, a.port, timeout=a.timeout))
        elif a.action == "initiate":
            hello = initiate(a.host, a.port, a.rs, a.member_host or "%s:%d" % (a.host, a.port), deadline)
            print("PRIMARY %s (set %s)" % (hello.get("me"), hello.get("setName")))
        elif a.action == "cmd":
            if not a.json:
                ap.error("cmd needs a JSON command document")
            reply = command(a.host, a.port, json.loads(a.json), db=a.db, timeout=a.timeout, check=False)
            print(json.dumps(reply, indent=2, default=to_json))
            return 0 if reply.get("ok") in (1, 1.0) else 1
    except (MongoError, TimeoutError, OSError, ConnectionError, ValueError) as e:
        print("mongo_rs: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

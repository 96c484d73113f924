#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets: tests/fuzz/corpus/<target>/<name>.

Hand-made inputs, bad ones mostly, each named for what it tries. Rerun after editing this file
(python3 tests/fuzz/gen_corpus.py); it rewrites the seeds it knows and leaves other files (the
reproducers, repro-*, added by hand from fuzzer findings) alone.

Input formats (see each fuzz_*.c):
  json_scan  the body as is
  ingest     byte 0 selects: bits 0-2 the call (0-5 single with track, identify, page, screen,
             group, alias; 6 batch; 7 webhook), bit 3 ctx.ip set, bits 4-5 max_event_size
             (32 KB, 256, 1024, 64 MB); the rest is the body
  params     name=value pairs separated by '&' (or NUL); a pair without '=' has a NULL value
  client_ip  byte 0: bit 0 X-Forwarded-For absent, bit 1 peer absent; the rest is
             forwarded-for, '\\n', peer, and as it is a traceparent and a tracestate
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def nest(n, inner=b"", o=b"[", c=b"]"):
    return o * n + inner + c * n


def nest_obj(n, inner=b"1"):
    return b'{"a":' * n + inner + b"}" * n


JSON = {
    # good
    "good-empty-object": b"{}",
    "good-empty-array": b" [ ] ",
    "good-scalars": b'[0,-0,1.5e-3,-12E+2,true,false,null,"",1e999999,-1e-999999]',
    "good-event": b'{"type":"track","event":"Clicked","userId":"u1","properties":{"a":[1,2,{"b":null}]}}',
    "good-escapes": b'"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\\uD83D\\uDE00"',
    "good-utf8": '"héllo €  𝄞 日本"'.encode(),
    "good-u0000": b'{"a\\u0000b":"x\\u0000y","a":1}',
    "good-dup-keys": b'{"a":1,"a":"two","a":[3]}',
    "good-escaped-keys": b'{"user\\u0049d":"u","\\u0074ype":"track","ty\\u0070e":1}',
    "good-depth32-empty": nest(32),
    "good-depth31-scalar": nest(31, b"1"),
    "good-objects32": nest_obj(31, b"{}"),
    "good-whitespace": b' \t\r\n{ "a" : [ 1 , 2 ] }\n',
    "good-huge-int": b"123456789012345678901234567890123456789",
    "good-long-string": b'"' + b"x" * 3000 + b'"',
    "good-max-codepoint": b'["\\uDBFF\\uDFFF","\xf4\x8f\xbf\xbf"]',
    # truncated
    "trunc-object": b'{"a":',
    "trunc-string": b'"abc',
    "trunc-escape": b'"abc\\',
    "trunc-u": b'"\\u12',
    "trunc-array": b"[1,2",
    "trunc-literal": b"tru",
    "trunc-number": b"-",
    "trunc-exp": b"1e",
    "trunc-frac": b"1.",
    "trunc-key": b'{"a"',
    "trunc-utf8": b'"\xe2\x82',
    # escapes and surrogates
    "bad-escape": b'"\\x41"',
    "bad-escape-U": b'"\\U0041"',
    "bad-u-hex": b'"\\u12G4"',
    "lone-high": b'"\\ud800"',
    "lone-low": b'"\\udc00"',
    "high-then-ascii": b'"\\ud800\\u0041"',
    "high-then-high": b'"\\ud800\\ud800"',
    "high-at-end": b'"\\udbff',
    "reversed-pair": b'"\\ude00\\ud83d"',
    # UTF-8
    "utf8-ff": b'"\xff"',
    "utf8-overlong": b'"\xc0\xaf"',
    "utf8-overlong3": b'"\xe0\x80\xaf"',
    "utf8-surrogate": b'"\xed\xa0\x80"',
    "utf8-too-big": b'"\xf4\x90\x80\x80"',
    "utf8-lone-cont": b'"\x80"',
    "utf8-outside-string": b"\xc3\xa9",
    "bom": b"\xef\xbb\xbf{}",
    # control characters and NUL bytes
    "raw-newline": b'"a\nb"',
    "raw-nul-in-string": b'"a\x00b"',
    "nul-after-value": b"{}\x00",
    "nul-before-value": b"\x00{}",
    "nul-only": b"\x00",
    # nesting
    "depth33-arrays": nest(33),
    "depth33-objects": nest_obj(33),
    "depth1000": nest(1000),
    "depth-unbalanced": b"[" * 40 + b"}" * 40,
    # numbers and literals
    "num-leading-zero": b"[01]",
    "num-plus": b"+1",
    "num-dot": b".5",
    "num-hex": b"0x1F",
    "num-nan": b"NaN",
    "num-infinity": b"[-Infinity]",
    "num-huge-exp": b"1e99999999999999999999",
    "num-long": b"9" * 2000,
    "lit-caps": b"TRUE",
    "lit-nul": b"nul",
    # grammar
    "empty": b"",
    "ws-only": b" \n\t ",
    "trailing-comma-array": b"[1,]",
    "trailing-comma-object": b'{"a":1,}',
    "two-values": b"{} {}",
    "missing-colon": b'{"a" 1}',
    "unquoted-key": b"{a:1}",
    "single-quotes": b"{'a':1}",
    "comment": b"{} // x",
    "colon-in-array": b'["a":1]',
    "comma-first": b"[,1]",
}

TYPES = ["track", "identify", "page", "screen", "group", "alias"]


def sel(call, ip=False, size=0):
    return bytes([call | (8 if ip else 0) | (size << 4)])


def ev(**kw):
    return json.dumps(kw, separators=(",", ":")).encode()


BATCH, WEBHOOK = 6, 7
INGEST = {
    "single-track-ok": sel(0, True) + ev(event="Clicked", userId="u1", properties={"a": 1}),
    "single-identify-anon": sel(1, True) + ev(anonymousId="a1", traits={"x": "y"}),
    "single-page-context": sel(2, True) + ev(userId=1234, context={"library": {"name": "x"}}),
    "single-screen-ctx-ip": sel(3, True) + ev(userId="u", context={"ip": "10.0.0.1"}),
    "single-group-ok": sel(4) + ev(userId="u", groupId="g"),
    "single-alias-ok": sel(5) + ev(userId="u", previousId="p"),
    "single-track-no-event": sel(0) + ev(userId="u1"),
    "single-track-event-number": sel(0) + ev(userId="u1", event=5),
    "single-group-no-groupid": sel(4) + ev(userId="u"),
    "single-alias-no-previous": sel(5) + ev(userId="u"),
    "single-no-user": sel(1) + ev(traits={}),
    "single-empty-ids": sel(1) + ev(userId="", anonymousId=""),
    "single-ids-wrong-type": sel(1) + ev(userId=True, anonymousId=None),
    "single-not-object": sel(0) + b'["userId","u"]',
    "single-string": sel(0) + b'"x"',
    "single-bad-json": sel(0, True) + b'{"userId":"u","event":"e",}',
    "single-owned-fields": sel(0, True)
    + ev(userId="u", event="e", type="identify", receivedAt=1, rudderId=[], request_ip={}, messageId=""),
    "single-messageid-kept": sel(0) + ev(userId="u", event="e", messageId="m-1"),
    "single-messageid-number": sel(0) + ev(userId="u", event="e", messageId=12),
    "single-escaped-keys": sel(0, True)
    + b'{"user\\u0049d":"u","\\u0065vent":"e","\\u0074ype":"x","c\\u006fntext":{"\\u0069p":1}}',
    "single-escaped-key-u0000": sel(0, True)
    + b'{"userId":"u","event":"e","type\\u0000":"x","context\\u0000":5,"messageId\\u0000":1}',
    "single-dup-keys": sel(0, True)
    + b'{"userId":"u","event":"e","context":{"a":1},"context":{"b":2},"userId":"v","messageId":1,"messageId":"m"}',
    "single-context-not-object": sel(0, True) + ev(userId="u", event="e", context="c"),
    "single-context-empty": sel(0, True) + ev(userId="u", event="e", context={}),
    "single-long-user-id": sel(1) + ev(userId="u" * 3000),
    "single-unicode-ids": sel(1) + b'{"userId":"\\ud83d\\ude00\\u0000x","anonymousId":"\xc3\xa9"}',
    "single-over-size": sel(0, True, 1) + ev(userId="u", event="e", properties={"p": "x" * 300}),
    "single-at-size": sel(0, False, 1) + ev(userId="u", event="e"),
    "single-deep-33": sel(0) + b'{"userId":"u","event":"e","p":' + nest(32) + b"}",
    "single-nul": sel(0) + b'{"userId":"u\x00","event":"e"}',
    "batch-ok": sel(BATCH, True)
    + b'{"batch":[' + ev(type="track", userId="u", event="e") + b"," + ev(type="identify", anonymousId="a") + b'],"sentAt":"2024-01-01T00:00:00.000Z"}',
    "batch-empty": sel(BATCH) + b'{"batch":[]}',
    "batch-not-array": sel(BATCH) + b'{"batch":{}}',
    "batch-missing": sel(BATCH) + b'{"events":[]}',
    "batch-elem-not-object": sel(BATCH) + b'{"batch":[' + ev(type="track", userId="u", event="e") + b',1,"x",null,[]]}',
    "batch-no-type": sel(BATCH) + b'{"batch":[{"userId":"u"}]}',
    "batch-wrong-type": sel(BATCH) + b'{"batch":[{"type":"tracks","userId":"u"}]}',
    "batch-type-number": sel(BATCH) + b'{"batch":[{"type":1,"userId":"u"}]}',
    "batch-type-long": sel(BATCH) + b'{"batch":[{"type":"identifyidentifyidentify","userId":"u"}]}',
    "batch-type-escaped": sel(BATCH) + b'{"batch":[{"type":"\\u0074rack","userId":"u","event":"e"}]}',
    "batch-type-nul": sel(BATCH) + b'{"batch":[{"type":"track\\u0000x","userId":"u","event":"e"}]}',
    "batch-missing-user": sel(BATCH) + b'{"batch":[{"type":"page","userId":"u"},{"type":"page"}]}',
    "batch-sentat-kept": sel(BATCH) + b'{"sentAt":1,"batch":[{"type":"page","userId":"u","sentAt":"s"}]}',
    "batch-escaped-batch-key": sel(BATCH) + b'{"b\\u0061tch":[{"type":"page","userId":"u"}]}',
    "batch-dup-batch": sel(BATCH) + b'{"batch":[{"type":"page","userId":"u"}],"batch":[]}',
    "batch-over-size": sel(BATCH, True, 1)
    + b'{"batch":[{"type":"page","userId":"u"},{"type":"page","userId":"u","p":"' + b"x" * 300 + b'"}]}',
    "batch-not-object": sel(BATCH) + b"[]",
    "batch-trailing": sel(BATCH) + b'{"batch":[]} x',
    "webhook-object": sel(WEBHOOK, True) + b'{"action":"opened","n":1}',
    "webhook-scalar": sel(WEBHOOK) + b"42",
    "webhook-string": sel(WEBHOOK) + b'"hello"',
    "webhook-array": sel(WEBHOOK) + b"[1,2]",
    "webhook-empty": sel(WEBHOOK) + b"",
    "webhook-bad": sel(WEBHOOK) + b"{",
    "webhook-depth32": sel(WEBHOOK) + nest(32),
    "webhook-over-size": sel(WEBHOOK, False, 1) + b'{"p":"' + b"x" * 300 + b'"}',
    "empty-input": b"",
    "selector-only": sel(0),
}

PARAMS = {
    "simple": b"anonymousId=a1&event=Clicked&writeKey=secret",
    "dotted": b"context.page.path=/x&context.page.title=T&properties.a=1",
    "object-wins": b"a=1&a.b=2",
    "later-wins": b"a.b=2&a=1",
    "dup": b"x=1&x=2&x=3",
    "no-value": b"flag&x=",
    "empty-name": b"=v&&=",
    "dots-only": b".=1&..=2&a..b=3&a.=4&.a=5",
    "quotes-and-controls": b'k"\\=v"\\\x01\x1f&\t=\n',
    "utf8-and-invalid": b"n\xc3\xa9=\xff\xfe&\xed\xa0\x80=1",
    "deep": b"a" + b".a" * 40 + b"=deep",
    "nul-separated": b"a=1\x00b=2\x00c.d=3",
    "write-key-nested": b"writeKey.x=1&writeKey=2",
    "many": b"&".join(b"k%d=v%d" % (i, i) for i in range(200)),
    "empty": b"",
}

CLIENT_IP = {
    "v4": b"\x00203.0.113.7\n10.0.0.1",
    "v6": b"\x00 2001:db8::1, 10.0.0.2\n::1",
    "list": b"\x00198.51.100.1,203.0.113.9\n10.0.0.1",
    "junk": b"\x00not-an-ip\n10.0.0.1",
    "long-ff": b"\x00" + b"1" * 100 + b"\n10.0.0.1",
    "long-peer": b"\x00\n" + b"f" * 100,
    "v4-mapped": b"\x00::ffff:192.0.2.1\n10.0.0.1",
    "zone": b"\x00fe80::1%eth0\n10.0.0.1",
    "tabs": b"\x00\t \t\n",
    "no-ff": b"\x01\n10.0.0.1",
    "no-peer": b"\x02garbage\n",
    "nothing": b"\x03",
    "empty": b"",
    "max-v6": b"\x00ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255\n10.0.0.1",
    # the same bytes are a traceparent and a tracestate (common/trace.h)
    "tp-good": b"\x03 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
    "tp-future": b"\x03cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-next",
    "tp-upper": b"\x0300-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    "tp-zero": b"\x0300-00000000000000000000000000000000-0000000000000000-01",
    "tp-ff": b"\x03ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tp-nul": b"\x0300-4bf92f3577b34da6a3\x00ce929d0e0e4736-00f067aa0ba902b7-01",
    "ts-good": b"\x03congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,,t@v=a b",
    "ts-dup": b"\x03a=1,b=2,a=3",
    "ts-long": b"\x03" + b",".join(b"k%d=%s" % (i, b"v" * (i * 9 % 250 + 1)) for i in range(32)),
}


def main():
    for target, seeds in (("json_scan", JSON), ("ingest", INGEST), ("params", PARAMS),
                          ("client_ip", CLIENT_IP)):
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()

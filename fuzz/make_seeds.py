#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/ (run from anywhere).

Seeds are small, valid-or-nearly-valid examples of each input format so libFuzzer starts from the
interesting paths instead of rediscovering HTTP and RFC 6455 framing byte by byte.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = bytes([0x12, 0x34, 0x56, 0x78])

BROWSER_UPGRADE = (
    b"GET /ws?user=alice HTTP/1.1\r\n"
    b"Host: mail.example:8080\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://mail.example\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)
FIREFOX_UPGRADE = (
    b"GET /ws?user=bob&x=1 HTTP/1.1\r\nHost: mail.example\r\n"
    b"Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n"
)
MALFORMED_UPGRADE = (  # key is not base64 of 16 bytes, version 8
    b"GET /ws?user=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: not-a-key\r\n\r\n"
)
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
BARE_LF_UPGRADE = BROWSER_UPGRADE.replace(b"\r\n", b"\n")
PLAIN_HTTP = b"GET /health?status=200 HTTP/1.1\r\nHost: x\r\nX-Content-Type: text/plain\r\n\r\n"
INJECTION_HTTP = b"GET /h?status=200 HTTP/1.1\r\nHost: x\r\nX-Content-Type: a\rSet-Cookie: x\r\n\r\n"


def frame(first, payload, mask=MASK, length=None):
    """A client frame; `length` overrides the encoded length (for truncated/oversized headers)."""
    n = len(payload) if length is None else length
    if n < 126:
        out = bytes([first, 0x80 | n])
    elif n <= 0xFFFF:
        out = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        out = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    return out + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


TEXT = frame(0x81, b"hello")
BINARY = frame(0x82, bytes(range(40)))
PING = frame(0x89, b"ping!")
PONG = frame(0x8A, b"")
CLOSE = frame(0x88, struct.pack(">H", 1000) + b"bye")
EURO = "€uro".encode()  # the 3-byte code point is split across the fragments below
FRAGMENTED = frame(0x01, EURO[:2]) + frame(0x89, b"") + frame(0x00, EURO[2:4]) + frame(0x80, EURO[4:])
# Text cut into one-byte fragments: every code point of 1-4 bytes is split somewhere.
ONE_BYTE_TEXT = "aé€😀".encode()
ONE_BYTE_FRAGMENTS = (
    frame(0x01, ONE_BYTE_TEXT[:1])
    + b"".join(frame(0x00, ONE_BYTE_TEXT[i:i + 1]) for i in range(1, len(ONE_BYTE_TEXT) - 1))
    + frame(0x80, ONE_BYTE_TEXT[-1:])
)
SMILE = "😀".encode()
INTERLEAVED = (
    frame(0x01, SMILE[:1]) + PING + frame(0x00, SMILE[1:3]) + PONG + frame(0x8A, b"pong")
    + frame(0x80, SMILE[3:]) + BINARY + CLOSE
)
HEADER_64K = frame(0x82, b"", length=64 * 1024)  # header only: the payload never comes
HEADER_MSB = bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]) + MASK
INVALID_UTF8 = frame(0x81, b"ok\xff")
UNMASKED = bytes([0x81, 0x02]) + b"hi"

SEEDS = {
    "upgrade_request": {
        "browser_upgrade": BROWSER_UPGRADE,
        "firefox_upgrade_with_frame": FIREFOX_UPGRADE + TEXT,
        "malformed_upgrade": MALFORMED_UPGRADE,
        "bare_lf_upgrade": BARE_LF_UPGRADE,
        "plain_http": PLAIN_HTTP,
        "truncated_upgrade": BROWSER_UPGRADE[:100],
    },
    # frame_decoder: [limit index, chunking, chunk sizes..., stream...]; the low nibble of
    # `chunking` counts the chunk-size bytes (b = b + 1 bytes). Limit indexes: 6 = 16 bytes,
    # 10 = 300, 11 = 1024, 12 = 65535, 13 = 65536, 15 = usize::MAX.
    "frame_decoder": {
        "text_binary_ping_close": bytes([13, 0]) + TEXT + BINARY + PING + PONG + CLOSE,
        "fragmented_split_code_point": bytes([11, 3, 0, 5, 1]) + FRAGMENTED + CLOSE,
        "fragmented_one_byte_text": bytes([11, 1, 0]) + ONE_BYTE_FRAGMENTS,
        "interleaved_controls": bytes([11, 2, 3, 9]) + INTERLEAVED,
        "invalid_utf8_first_fragment": bytes([11, 0]) + frame(0x01, b"ok\xff") + frame(0x80, b"!"),
        "invalid_utf8_middle_fragment": bytes([11, 1, 6]) + frame(0x01, b"\xe2\x82") + frame(0x00, b"A") + frame(0x80, b"!"),
        "invalid_utf8_truncated_at_end": bytes([11, 0]) + frame(0x01, b"ab") + frame(0x80, b"\xf0\x9f\x98"),
        "invalid_utf8_surrogate": bytes([11, 0]) + frame(0x81, b"\xed\xa0\x80"),
        "invalid_utf8_overlong": bytes([11, 0]) + frame(0x81, b"\xc0\xaf"),
        "invalid_close_reason": bytes([11, 0]) + frame(0x88, struct.pack(">H", 1000) + b"\xff"),
        "close_codes": bytes([11, 0]) + frame(0x88, struct.pack(">H", 1005)) + frame(0x88, b"\x03"),
        "oversize_single_frame": bytes([6, 0]) + frame(0x82, bytes(17)),
        "oversize_reassembled": bytes([6, 1, 7]) + frame(0x02, bytes(10)) + frame(0x00, bytes(6)) + frame(0x80, bytes(1)),
        "at_limit_reassembled": bytes([6, 0]) + frame(0x01, b"a" * 10) + frame(0x80, b"b" * 6),
        "new_message_inside_fragmented": bytes([11, 0]) + frame(0x01, b"a") + TEXT,
        "continuation_without_start": bytes([11, 0]) + frame(0x80, b"x"),
        "header_64k_at_limit": bytes([13, 0]) + HEADER_64K,
        "header_64k_over_limit": bytes([12, 0]) + HEADER_64K,
        "header_msb_set": bytes([15, 0]) + HEADER_MSB,
        "medium_126": bytes([11, 1, 100]) + frame(0x82, bytes(300)),
        "unmasked": bytes([13, 0]) + UNMASKED,
        "fragmented_ping": bytes([11, 0]) + frame(0x09, b"x"),
    },
    # proxy_header: what a load balancer sends first (HAProxy's proxy-protocol.txt examples).
    "proxy_header": {
        "v1_tcp4": b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n",
        "v1_tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 80\r\n",
        "v1_unknown": b"PROXY UNKNOWN\r\n",
        "v1_unknown_longest": b"PROXY UNKNOWN " + b" ".join([b"ffff:" * 7 + b"ffff"] * 2) + b" 65535 65535\r\n",
        "v2_inet": PROXY_V2_SIG + bytes([0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 4, 1, 0xBB]),
        "v2_inet6_tlvs": PROXY_V2_SIG + bytes([0x21, 0x21, 0, 36 + 5]) + bytes(range(1, 17)) + bytes(16)
        + bytes([1, 0xBB, 0, 80, 0x01, 0, 2]) + b"h2",
        "v2_local": PROXY_V2_SIG + bytes([0x20, 0x00, 0, 0]),
        "v2_unix": PROXY_V2_SIG + bytes([0x21, 0x31, 0, 216]) + bytes(216),
    },
    # redis_reply: what the Redis bridge reads (replies to its scripts, pub/sub pushes with a
    # user's message, a history read, errors).
    "redis_reply": {
        "publish_script": b"*3\r\n$16\r\n00000000000000ff\r\n:7\r\n:2\r\n",
        "smessage": b"*3\r\n$8\r\nsmessage\r\n$16\r\nwspush:{u:alice}:c\r\n$24\r\n00000000000000ff:7:t:hey\r\n",
        "history_read": b"*3\r\n$16\r\n00000000000000ff\r\n:2\r\n*2\r\n$2\r\ntx\r\n$3\r\nb\x00\xff\r\n",
        "errors_and_nulls": b"-NOSCRIPT No matching script\r\n$-1\r\n*-1\r\n+OK\r\n",
    },
    # connection: [flags, chunk sizes..., payload]; flags bit 0 = target sends its own upgrade
    # first, bit 1 = paced chunks, bit 2 = abortive close, high nibble = number of chunk sizes.
    "connection": {
        "browser_upgrade_then_frames": bytes([0x00]) + BROWSER_UPGRADE + TEXT + BINARY + PING + CLOSE,
        "frames_after_upgrade": bytes([0x01]) + TEXT + BINARY + PING + PONG + CLOSE,
        "fragmented_paced_1_1_3": bytes([0x33, 0, 0, 2]) + FRAGMENTED + CLOSE,
        "upgrade_paced_7": bytes([0x12, 6]) + FIREFOX_UPGRADE + TEXT,
        "malformed_upgrade": bytes([0x00]) + MALFORMED_UPGRADE,
        "plain_http_host_response": bytes([0x00]) + PLAIN_HTTP,
        "header_injection": bytes([0x00]) + INJECTION_HTTP,
        "header_64k": bytes([0x01]) + HEADER_64K + bytes(32),
        "invalid_utf8_abort": bytes([0x05]) + INVALID_UTF8 + TEXT[:3],
        "unmasked": bytes([0x01]) + UNMASKED,
    },
}

for target, seeds in SEEDS.items():
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)

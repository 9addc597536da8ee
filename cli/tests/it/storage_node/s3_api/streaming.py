# Streaming uploads as SDKs send them, against a node serving TLS: boto3's default
# (aws-chunked, STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32 trailer), and as raw
# HTTP, byte for byte as AWS documents them (sigv4-streaming.html and
# sigv4-streaming-trailers.html): signed chunks, signed trailers, chunked transfer
# encoding with and without aws-chunked, and Expect: 100-continue.
import hmac, http.client, io, socket, ssl, zlib
from urllib.parse import urlsplit
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY, SECRET = os.environ["KEY"], os.environ["SECRET"]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
host, port = urlsplit(endpoint).hostname, urlsplit(endpoint).port
tls = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
s3.create_bucket(Bucket="stream")


def crc32_b64(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def sign(method, path, headers, payload_hash):
    """SigV4 headers for a request whose x-amz-content-sha256 is `payload_hash`,
    with the seed signature and the timestamp chunk signatures chain from."""
    req = AWSRequest(method=method, url=endpoint + path, headers=dict(headers))
    req.headers["x-amz-content-sha256"] = payload_hash
    SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1").add_auth(req)
    signed = dict(req.headers.items())
    return signed, signed["Authorization"].rsplit("Signature=", 1)[1], signed["X-Amz-Date"]


def signing_key(stamp):
    key = hmac.new(("AWS4" + SECRET).encode(), stamp[:8].encode(), hashlib.sha256).digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def string_signature(key, kind, stamp, previous, digest):
    scope = f"{stamp[:8]}/us-east-1/s3/aws4_request"
    text = "\n".join([kind, stamp, scope, previous] + digest)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_chunks(seed, stamp, pieces, trailer=None, bad_chunk=None, bad_trailer=False):
    """An aws-chunked body with chunk signatures (and a signed trailer)."""
    key, previous, out = signing_key(stamp), seed, b""
    for index, data in enumerate(pieces + [b""]):
        previous = string_signature(key, "AWS4-HMAC-SHA256-PAYLOAD", stamp, previous,
                                    [EMPTY_SHA256, hashlib.sha256(data).hexdigest()])
        signature = "0" * 64 if index == bad_chunk else previous
        out += b"%x;chunk-signature=%s\r\n" % (len(data), signature.encode()) + data
        if data or trailer is None:
            out += b"\r\n"
    if trailer is not None:
        line = f"{trailer[0]}:{trailer[1]}"
        signature = string_signature(key, "AWS4-HMAC-SHA256-TRAILER", stamp, previous,
                                     [hashlib.sha256((line + "\n").encode()).hexdigest()])
        if bad_trailer:
            signature = "f" * 64
        out += f"{line}\r\nx-amz-trailer-signature:{signature}\r\n\r\n".encode()
    return out


def unsigned_chunks(pieces, trailer):
    out = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n"
    return out + f"{trailer[0]}:{trailer[1]}\r\n\r\n".encode()


def send(method, path, headers, body, chunked=False):
    """(status, S3 error code or None, response headers) of one raw request."""
    conn = http.client.HTTPSConnection(host, port, context=tls)
    if chunked:
        conn.request(method, path, body=iter(body), headers=headers, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    conn.close()
    code = text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else None
    return resp.status, code, resp.headers


def aws_chunked(pieces, body, trailer_name=None, length=True):
    """The headers of an aws-chunked `body` carrying `pieces`."""
    data = b"".join(pieces)
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))}
    if length:
        headers["Content-Length"] = str(len(body))
    if trailer_name:
        headers["x-amz-trailer"] = trailer_name
    return headers


def stored(key):
    return s3.get_object(Bucket="stream", Key=key)["Body"].read()


def absent(key, what):
    expect(404, "404", lambda: s3.head_object(Bucket="stream", Key=key), what)


pieces = [os.urandom(65536), os.urandom(65536), os.urandom(1000)]
data = b"".join(pieces)
md5 = '"%s"' % hashlib.md5(data).hexdigest()
big_pieces, big_data, big_md5 = pieces, data, md5
small_pieces = [os.urandom(8192), os.urandom(8192), os.urandom(1000)]
small_data = b"".join(small_pieces)
small_md5 = '"%s"' % hashlib.md5(small_data).hexdigest()

# boto3's default over TLS: aws-chunked with an unsigned payload and a CRC32 trailer.
sent = []
s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers)))
r = s3.put_object(Bucket="stream", Key="boto3", Body=io.BytesIO(data))
h = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in sent[-1].items()}
assert h["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", h
assert "aws-chunked" in h["content-encoding"] and h["x-amz-trailer"] == "x-amz-checksum-crc32", h
assert r["ETag"] == md5 and r["ChecksumCRC32"] == crc32_b64(data), r
assert stored("boto3") == data
head = s3.head_object(Bucket="stream", Key="boto3", ChecksumMode="ENABLED")
assert head["ChecksumCRC32"] == crc32_b64(data) and "ContentEncoding" not in head, head

# Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), as the Java SDK and minio-go send.
# These bodies stay under 64 KiB, which the node reads whole before it answers: a body
# refused at its first chunk is otherwise answered (and the connection closed) while the
# client still sends, as AWS does, and the client may lose the answer to the reset.
pieces, data, md5 = small_pieces, small_data, small_md5
payload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
probe = signed_chunks("0" * 64, "20260101T000000Z", pieces)
for name, bad_chunk in [("signed", None), ("bad-first-chunk", 0), ("bad-last-chunk", 3)]:
    base = aws_chunked(pieces, probe)
    headers, seed, stamp = sign("PUT", f"/stream/{name}", base, payload)
    body = signed_chunks(seed, stamp, pieces, bad_chunk=bad_chunk)
    status, code, resp = send("PUT", f"/stream/{name}", headers, body)
    if bad_chunk is None:
        assert (status, code) == (200, None) and resp["ETag"] == md5, (status, code)
        assert stored(name) == data
    else:
        assert (status, code) == (403, "SignatureDoesNotMatch"), (name, status, code)
        absent(name, name)
# Changed data under a valid chunk signature is found too.
headers, seed, stamp = sign("PUT", "/stream/tampered", aws_chunked(pieces, probe), payload)
body = signed_chunks(seed, stamp, pieces)
body = body.replace(pieces[1][:16], bytes(16), 1)
assert send("PUT", "/stream/tampered", headers, body)[:2] == (403, "SignatureDoesNotMatch")
absent("tampered", "tampered")

# Signed chunks with a signed trailer carrying the checksum.
payload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
good = ("x-amz-checksum-crc32", crc32_b64(data))
wrong = ("x-amz-checksum-crc32", crc32_b64(data + b"x"))
for name, trailer, bad_trailer, want in [
        ("trailer", good, False, (200, None)),
        ("trailer-bad-digest", wrong, False, (400, "BadDigest")),
        ("trailer-bad-signature", good, True, (403, "SignatureDoesNotMatch"))]:
    probe = signed_chunks("0" * 64, "20260101T000000Z", pieces, trailer=trailer)
    headers, seed, stamp = sign("PUT", f"/stream/{name}", aws_chunked(pieces, probe, trailer[0]), payload)
    got = send("PUT", f"/stream/{name}", headers, signed_chunks(seed, stamp, pieces, trailer, bad_trailer=bad_trailer))
    assert got[:2] == want, (name, got[:2])
    if want[0] == 200:
        assert stored(name) == data
        assert s3.head_object(Bucket="stream", Key=name, ChecksumMode="ENABLED")["ChecksumCRC32"] == good[1]
    else:
        absent(name, name)

# Unsigned chunks with a trailer, over TLS as SDKs send them; a wrong digest is BadDigest
# (found at the end of the body, so these may be large).
pieces, data, md5 = big_pieces, big_data, big_md5
good = ("x-amz-checksum-crc32", crc32_b64(data))
wrong = ("x-amz-checksum-crc32", crc32_b64(data + b"x"))
payload = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
for name, trailer, want in [("unsigned", good, (200, None)), ("unsigned-bad", wrong, (400, "BadDigest"))]:
    body = unsigned_chunks(pieces, trailer)
    headers, _, _ = sign("PUT", f"/stream/{name}", aws_chunked(pieces, body, trailer[0]), payload)
    got = send("PUT", f"/stream/{name}", headers, body)
    assert got[:2] == want, (name, got[:2])
    if want[0] == 200:
        assert stored(name) == data
    else:
        absent(name, name)

# aws-chunked inside HTTP chunked transfer encoding, without Content-Length.
body = unsigned_chunks(pieces, good)
headers, _, _ = sign("PUT", "/stream/both", aws_chunked(pieces, body, good[0], length=False), payload)
assert send("PUT", "/stream/both", headers, [body[:1000], body[1000:]], chunked=True)[:2] == (200, None)
assert stored("both") == data

# Plain chunked transfer encoding: signed payload hash, unsigned payload, presigned URL.
for name, payload_hash in [("te-signed", hashlib.sha256(data).hexdigest()), ("te-unsigned", "UNSIGNED-PAYLOAD")]:
    headers, _, _ = sign("PUT", f"/stream/{name}", {}, payload_hash)
    status, code, resp = send("PUT", f"/stream/{name}", headers, pieces, chunked=True)
    assert (status, code) == (200, None) and resp["ETag"] == md5, (name, status, code)
    assert stored(name) == data
headers, _, _ = sign("PUT", "/stream/te-wrong", {}, hashlib.sha256(b"other").hexdigest())
assert send("PUT", "/stream/te-wrong", headers, pieces, chunked=True)[:2] == (400, "XAmzContentSHA256Mismatch")
absent("te-wrong", "te-wrong")
url = urlsplit(s3.generate_presigned_url("put_object", Params={"Bucket": "stream", "Key": "te-presigned"}))
assert send("PUT", f"{url.path}?{url.query}", {}, pieces, chunked=True)[:2] == (200, None)
assert stored("te-presigned") == data
# Chunked bodies of other calls are read as well (a tagging document).
tagging = b'<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>'
headers, _, _ = sign("PUT", "/stream/te-signed?tagging", {}, hashlib.sha256(tagging).hexdigest())
assert send("PUT", "/stream/te-signed?tagging", headers, [tagging[:10], tagging[10:]], chunked=True)[:2] == (200, None)
assert s3.get_object_tagging(Bucket="stream", Key="te-signed")["TagSet"] == [{"Key": "k", "Value": "v"}]


def exchange(path, headers, body, continue_expected):
    """A PUT with Expect: 100-continue on a raw socket, the body sent only after an
    interim 100 response: (interim status line or None, final status, error code)."""
    conn = tls.wrap_socket(socket.create_connection((host, port)), server_hostname=host)
    lines = [f"PUT {path} HTTP/1.1", f"Host: {host}:{port}", "Expect: 100-continue", "Connection: close",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = b""
    while b"\r\n\r\n" not in received:
        piece = conn.recv(65536)
        if not piece:
            break
        received += piece
    first = received.split(b"\r\n", 1)[0].decode()
    interim = None
    if first.startswith("HTTP/1.1 100"):
        interim = first
        received = received.split(b"\r\n\r\n", 1)[1]
        conn.sendall(body)
    while True:
        piece = conn.recv(65536)
        if not piece:
            break
        received += piece
    conn.close()

    class Replay:
        def makefile(self, *_args, **_kwargs):
            return io.BufferedReader(io.BytesIO(received))

    resp = http.client.HTTPResponse(Replay())
    resp.begin()
    text = resp.read().decode(errors="replace")
    code = text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else None
    return interim, resp.status, code


big = os.urandom(1 << 20)
headers, _, _ = sign("PUT", "/stream/continued", {}, hashlib.sha256(big).hexdigest())
interim, status, code = exchange("/stream/continued", headers, big, True)
assert interim == "HTTP/1.1 100 Continue" and (status, code) == (200, None), (interim, status, code)
assert stored("continued") == big
# A request refused on its headers is answered at once, without 100, its body unread.
headers, _, _ = sign("PUT", "/no-such-bucket/x", {}, hashlib.sha256(big).hexdigest())
interim, status, code = exchange("/no-such-bucket/x", headers, big, False)
assert interim is None and (status, code) == (404, "NoSuchBucket"), (interim, status, code)
print("ALL OK")

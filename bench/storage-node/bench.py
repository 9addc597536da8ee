#!/usr/bin/env python3
"""PUT/GET throughput of 4 MiB objects and 4 KiB ops/s against one S3 endpoint.

Usage: bench.py ENDPOINT ACCESS_KEY SECRET_KEY LABEL
Requests are presigned (SigV4, UNSIGNED-PAYLOAD) before timing, so the timed
loop is plain HTTP from 16 threads with keep-alive connections: the client
costs as little as Python allows and is the same for every server.
"""
import http.client, os, sys, threading, time, urllib.parse
import boto3
from botocore.config import Config

endpoint, access, secret, label = sys.argv[1:5]
THREADS = 16
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                  region_name="us-east-1", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
bucket = "bench"
try:
    s3.create_bucket(Bucket=bucket)
except Exception:
    pass

def presign(method, key):
    op = "put_object" if method == "PUT" else "get_object"
    return urllib.parse.urlparse(s3.generate_presigned_url(op, Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600))

def run(method, keys, body):
    urls = [presign(method, k) for k in keys]
    per = [urls[i::THREADS] for i in range(THREADS)]
    moved = [0] * THREADS
    errors = []
    def worker(i):
        u0 = urlparse0
        conn = http.client.HTTPConnection(u0.hostname, u0.port)
        for u in per[i]:
            path = u.path + "?" + u.query
            if method == "PUT":
                conn.request("PUT", path, body=body, headers={"Content-Length": str(len(body))})
            else:
                conn.request("GET", path)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                errors.append((r.status, data[:200]))
                return
            moved[i] += len(body) if method == "PUT" else len(data)
        conn.close()
    urlparse0 = urls[0]
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{label}: {method} errors: {errors[:3]}")
    return sum(moved), elapsed

big = os.urandom(4 << 20)
small = os.urandom(4096)
n_big = int(os.environ.get("BENCH_BIG_OBJECTS", "256"))
n_small = int(os.environ.get("BENCH_SMALL_OBJECTS", "4000"))
big_keys = [f"big/{i:05}" for i in range(n_big)]
small_keys = [f"small/{i // 256:02x}/{i:06}" for i in range(n_small)]
b, t = run("PUT", big_keys, big); put_mb = b / t / 1e6
b, t = run("GET", big_keys, None); get_mb = b / t / 1e6
_, t = run("PUT", small_keys, small); put_ops = n_small / t
_, t = run("GET", small_keys, None); get_ops = n_small / t
print(f"| {label} | {put_mb:.0f} MB/s | {get_mb:.0f} MB/s | {put_ops:.0f} ops/s | {get_ops:.0f} ops/s |")

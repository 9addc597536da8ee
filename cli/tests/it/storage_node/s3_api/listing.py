# ListObjects v1/v2 with keys that need encoding, as boto3 (which always asks
# for encoding-type=url and decodes) and raw encoded replies show them.
bucket = "names"
s3.create_bucket(Bucket=bucket)
keys = ["a+b", "a b", "a%2Bb", "100%", "x/\u00fc/\u00f1", "\u65e5\u672c/\u8a9e", "a/../b", "../up", "./dot",
        "dir/./x", "sp ace/+plus/%pct", "tab\tkey", "amp&<lt>'\"", "q?x#y", "a//b", "trailing/", "~tilde*star"]
for key in keys:
    s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode(), key
expected = sorted(keys)  # code point order is UTF-8 byte order, S3's order

# boto3 decodes what it asked to be encoded: every name comes back as stored.
v2 = s3.list_objects_v2(Bucket=bucket)
assert [o["Key"] for o in v2["Contents"]] == expected, v2["Contents"]
assert v2["KeyCount"] == len(keys) and "Owner" not in v2["Contents"][0], v2
owned = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"]
assert all(o["Owner"]["ID"] == os.environ["KEY"] for o in owned), owned
v1 = s3.list_objects(Bucket=bucket)
assert [o["Key"] for o in v1["Contents"]] == expected, v1["Contents"]
assert all(o["Owner"]["ID"] == os.environ["KEY"] and o["StorageClass"] == "STANDARD" for o in v1["Contents"]), v1

# The raw encoded form (a caller that sets EncodingType itself gets it undecoded):
# space as '+', '+' as %2B, '%' as %25, UTF-8 bytes as %XX, '/' literal.
raw = s3.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="sp ace/", StartAfter="sp ace/")
assert raw["EncodingType"] == "url" and raw["Prefix"] == "sp+ace/" and raw["StartAfter"] == "sp+ace/", raw
assert [o["Key"] for o in raw["Contents"]] == ["sp+ace/%2Bplus/%25pct"], raw
raw = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, EncodingType="url")["Contents"]}
for encoded in ["a%2Bb", "a+b", "a%252Bb", "100%25", "x/%C3%BC/%C3%B1", "tab%09key", "q%3Fx%23y", "a/../b"]:
    assert encoded in raw, (encoded, raw)
raw = s3.list_objects(Bucket=bucket, EncodingType="url", Marker="a b", Delimiter="/", MaxKeys=1)
assert raw["Marker"] == "a+b" and raw["Delimiter"] == "/" and raw["IsTruncated"], raw
assert raw["NextMarker"] == "a%252Bb" and [o["Key"] for o in raw["Contents"]] == ["a%252Bb"], raw
raw = s3.list_objects_v2(Bucket=bucket, EncodingType="url", Delimiter="/", Prefix="sp ace/")
assert [p["Prefix"] for p in raw["CommonPrefixes"]] == ["sp+ace/%2Bplus/"], raw

# Delimiters: '/', one that is not a slash, and an empty one (no grouping, left out).
top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["../", "./", "a/", "dir/", "sp ace/", "trailing/", "x/", "\u65e5\u672c/"], top
assert [o["Key"] for o in top["Contents"]] == [k for k in expected if "/" not in k], top
plus = s3.list_objects_v2(Bucket=bucket, Delimiter="+", Prefix="a")
assert [p["Prefix"] for p in plus["CommonPrefixes"]] == ["a+"], plus
flat = s3.list_objects_v2(Bucket=bucket, Delimiter="")
assert "Delimiter" not in flat and [o["Key"] for o in flat["Contents"]] == expected, flat

# Pagination through both versions with boto3's paginators (tokens, markers).
for op in ("list_objects", "list_objects_v2"):
    pages = s3.get_paginator(op).paginate(Bucket=bucket, PaginationConfig={"PageSize": 3})
    assert [o["Key"] for p in pages for o in p["Contents"]] == expected, op
after = s3.list_objects_v2(Bucket=bucket, StartAfter="a b")["Contents"]
assert [o["Key"] for o in after] == [k for k in expected if k > "a b"], after

# Refusals AWS documents.
expect(400, "InvalidArgument", lambda: s3.list_objects_v2(Bucket=bucket, ContinuationToken="not-a-token"), "foreign token")
expect(400, "InvalidArgument", lambda: s3.list_objects_v2(Bucket=bucket, EncodingType="base64"), "unknown encoding")
expect(404, "NoSuchBucket", lambda: s3.list_objects_v2(Bucket="no-such-bucket"), "missing bucket")

# Delete by the names listed: half one by one, the rest in one DeleteObjects.
listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
for key in listed[::2]:
    s3.delete_object(Bucket=bucket, Key=key)
batch = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in listed[1::2]]})
assert "Errors" not in batch and sorted(d["Key"] for d in batch["Deleted"]) == sorted(listed[1::2]), batch
assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
s3.delete_bucket(Bucket=bucket)
print("ALL OK")
